"""Where every random stream of a run comes from: the one place that derives seeds.

A run has one seed (``seed_everything``). Everything random is derived from it here, so that a step's randomness
depends only on ``(seed, rank, step)`` and a resumed run continues exactly (tests/test_resume.py):

- :func:`batch_seed`: the real batch that rank ``rank`` draws at step ``step``
  (:class:`ptmdd_lightning.data.DistillDataModule`);
- :func:`mix_seed`: the distillers' per-step streams (the global RNG of a step, DM's fresh embedding net, DC/DSA's
  networks and their inner loops, the PTM draws), each tagged with a constant so that no two coincide;
- :func:`random_real_seed`: the random real subset of a run's evaluation when it is drawn per run
  (:class:`ptmdd_lightning.callbacks.SyntheticSetEvaluation` ``baseline_draw="run"``);
- the evaluation engine (:mod:`ptmdd_lightning.core.evaluate`) draws one seed per model from a generator seeded with
  the evaluation seed, in model order, so that model ``i`` is the same however many models run.

Two functions, not one (``numpy.random.SeedSequence([seed, rank, step])`` would do either job): both are the
derivations every earlier result of ptmdd was made with, and replacing them would change every synthetic set and
every number in docs/ (issue "The house": the same seed must give the same synthetic set before and after).
"""

from __future__ import annotations

import hashlib
import os

from ptmdd_lightning.errors import PtmddError

__all__ = [
    "BASELINE_DRAWS",
    "baseline_draw_seed",
    "batch_seed",
    "check_baseline_draw",
    "mix_seed",
    "random_real_seed",
    "run_seed",
]

_MASK64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN = 0x9E3779B97F4A7C15


def run_seed() -> int:
    """The run's seed: what ``seed_everything`` (``--seed_everything``, LightningCLI) set, 0 when nothing set it.

    Read from ``PL_GLOBAL_SEED``, the environment variable Lightning's ``seed_everything`` writes, so that it is the
    same in every DDP rank and in every process a run spawns. The one place that reads it: the distillers' set-up,
    :class:`ptmdd_lightning.callbacks.PTMCheckpoint`'s member seed, the evaluation callback's and ``ptmdd test``'s
    random real draw.

    Returns:
        a Python ``int`` (Lightning keeps it in ``[0, 2**32)``).

    Raises:
        Nothing of its own.
    """
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers, so that a step's randomness depends only on them.

    Args:
        parts: any Python ints (e.g. ``seed, rank, step, tag``); order matters.

    Returns:
        an ``int`` in ``[0, 2**63)``, for ``torch.manual_seed`` or ``torch.Generator().manual_seed``.

    A splitmix64-style hash-combine (``h ^= p + golden + (h << 6) + (h >> 2)``, then a multiply by splitmix64's
    first constant), kept bit for bit since the first commit: changing it changes every synthetic set.

    Raises:
        Nothing of its own.
    """
    h = _GOLDEN
    for p in parts:
        h ^= (int(p) + _GOLDEN + (h << 6) + (h >> 2)) & _MASK64
        h = (h * 0xBF58476D1CE4E5B9) & _MASK64
    return h & 0x7FFFFFFFFFFFFFFF


def batch_seed(seed: int, rank: int, step: int) -> int:
    """The 63-bit seed of the real batch drawn by ``rank`` at ``step`` of a run seeded with ``seed``.

    The first 8 bytes (little-endian) of the SHA-256 of ``"ptmdd-data:{seed}:{rank}:{step}"``, so that neighbouring
    seeds, ranks and steps give independent streams and the data stream never coincides with a :func:`mix_seed`
    stream of the same ``(seed, rank, step)``.

    Returns:
        an ``int`` in ``[0, 2**63)``.

    Raises:
        Nothing of its own.
    """
    digest = hashlib.sha256(f"ptmdd-data:{int(seed)}:{int(rank)}:{int(step)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_real_seed(seed: int, eval_seed: int) -> int:
    """The 63-bit seed of the random real subset drawn for a run seeded with ``seed``, evaluated with ``eval_seed``.

    The first 8 bytes (little-endian) of the SHA-256 of ``"ptmdd-random-real:{seed}:{eval_seed}"``: like
    :func:`batch_seed`, a stream of its own that no data or :func:`mix_seed` stream can coincide with.

    Returns:
        an ``int`` in ``[0, 2**63)``.

    Raises:
        Nothing of its own.
    """
    digest = hashlib.sha256(f"ptmdd-random-real:{int(seed)}:{int(eval_seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


#: how the random real subset of an evaluation is drawn: from the evaluation seed alone, or from the run's seed too
BASELINE_DRAWS = ("evaluation", "run")


def check_baseline_draw(draw: str) -> str:
    """``draw`` if it is one of :data:`BASELINE_DRAWS`; the one check of the ``baseline_draw`` config key.

    Used by :class:`ptmdd_lightning.callbacks.SyntheticSetEvaluation` and
    :class:`ptmdd_lightning.modules.SyntheticSetEvaluator` at construction.

    Raises:
        PtmddError: any other value, with what each value means.
    """
    if draw not in BASELINE_DRAWS:
        raise PtmddError(
            f"baseline_draw must be one of {', '.join(BASELINE_DRAWS)}, got {draw!r}: 'evaluation' draws the random "
            "real subset from the evaluation seed (eval_seed), 'run' from the run's seed_everything too."
        )
    return draw


def baseline_draw_seed(draw: str, eval_seed: int, run_seed: int) -> int:
    """The seed of the random real subset's draw (``torch.Generator().manual_seed``).

    Args:
        draw: ``"evaluation"``: ``eval_seed + 1``, the same subset for every run evaluated with ``eval_seed`` (every
            earlier result of ptmdd); ``"run"``: :func:`random_real_seed` ``(run_seed, eval_seed)``, a new subset
            per distillation seed, as the DC/DSA/DM code draws new real images in every experiment.
        eval_seed: the evaluation seed.
        run_seed: the run's ``seed_everything`` (used by ``"run"`` only).

    Returns:
        an ``int`` in ``[0, 2**63)``.

    Raises:
        PtmddError: ``draw`` is not one of :data:`BASELINE_DRAWS` (:func:`check_baseline_draw`).
    """
    if check_baseline_draw(draw) == "evaluation":
        return int(eval_seed) + 1
    return random_real_seed(run_seed, eval_seed)
