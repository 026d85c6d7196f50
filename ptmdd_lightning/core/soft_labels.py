"""PTMs as teachers: soft-label evaluation (knowledge distillation) and DD-Ranking's robust scores (pure torch).

Soft labels. Since SRe2L (Yin et al., NeurIPS 2023), RDED (Sun et al., CVPR 2024) and "A Label is Worth a Thousand
Images" (Qin et al., 2024), evaluation networks are often trained on the synthetic images with the soft labels of a
pre-trained teacher instead of the hard class ids: every training batch, after its augmentation, goes through the
teacher, and the student minimises ``T^2 * KL(p_T || q_T)`` with ``p_T = softmax(teacher logits / T)`` and
``q_T = softmax(student logits / T)`` (Hinton et al. 2015, Sec. 2: the ``T^2`` keeps the gradient scale of the
soft term independent of ``T``). :func:`kd_loss` is that loss; :class:`Teacher` is one PTM or an ensemble
(the mean of the members' ``p_T``).

Deviation: DD-Ranking (NUS-HPC-AI-Lab/DD-Ranking, ``ddranking/metrics/soft_label.py``, ``_generate_soft_labels``
and ``utils/train_and_eval.py``, ``train_one_epoch``) averages the members' *logits* of an ensemble; ptmdd averages
their softmax at temperature ``T`` (issue "PTMs as teachers too"), the usual ensemble of probabilities. With one
member the two agree.

Robust scores (DD-Ranking, Li et al. 2025, arXiv 2505.13300; its README, "Benchmark", and
``ddranking/metrics/hard_label.py`` / ``soft_label.py`` / ``aug_robust.py``, ``compute_metrics``), all on accuracies
as fractions in ``[0, 1]``:

- ``HLR = Acc(real, hard) - Acc(syn, hard)`` (hard-label recovery; lower is better);
- ``IOR = Acc(syn, any) - Acc(random, any)`` (improvement over random, the same evaluation for both sets);
- ``LRS = (exp(w * IOR - (1 - w) * HLR) - exp(-1)) / (e - exp(-1))``, ``w = 0.5`` by default (label-robust score);
- ``ARS = (exp(g * (syn - random with augmentation) + (1 - g) * (syn - random without)) - exp(-1)) / (e - exp(-1))``,
  ``g = 0.5`` by default (augmentation-robust score).

DD-Ranking computes each score per evaluation round (one model on the synthetic set, one on the random set) and
reports the mean and the (population) std over the rounds; :func:`robust_scores` does the same, round ``i`` pairing
model ``i`` of every set (the same evaluation seed trains model ``i`` of every set from the same draws).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptmdd_lightning.core.guidance import PTMGroup, PTMPool, PTMRecipe, pool_key
from ptmdd_lightning.data.datasets import DatasetInfo
from ptmdd_lightning.errors import PtmddError

__all__ = [
    "Teacher",
    "TeacherSpec",
    "ars",
    "as_teacher_specs",
    "build_teacher",
    "check_real_hard_acc",
    "kd_loss",
    "lrs",
    "robust_scores",
]

_NORM = math.e - math.exp(-1.0)


def kd_loss(student_logits: Tensor, teacher_probs: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(p || softmax(student_logits / T))``, averaged over the batch (Hinton et al. 2015, Sec. 2).

    Args:
        student_logits: ``(b, K)`` float logits of the student.
        teacher_probs: ``(b, K)`` float probabilities ``p`` of the teacher at temperature ``T`` (rows sum to 1),
            e.g. :meth:`Teacher.forward`; constant (no gradient flows into it).
        temperature: ``T > 0``.

    Returns:
        a scalar float32 tensor: ``T^2 / b * sum_i sum_k p_ik (log p_ik - log q_ik)``, ``q = softmax(s / T)``
        (``0 log 0 = 0``).

    Raises:
        PtmddError: shapes that differ or are not ``(b, K)``, or ``T <= 0``.
    """
    if student_logits.dim() != 2 or student_logits.shape != teacher_probs.shape:
        raise PtmddError(
            f"kd_loss needs (b, K) student logits and teacher probabilities of the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}; the teacher must have the "
            "student's K classes."
        )
    if not temperature > 0:
        raise PtmddError(f"the soft-label temperature T must be > 0, got {temperature!r}; the usual values are 1-20.")
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    p = teacher_probs.detach().float()
    # F.kl_div(input=log q, target=p) = sum p (log p - log q), with 0 log 0 = 0; batchmean divides by b
    return temperature**2 * F.kl_div(log_q, p, reduction="batchmean")


class Teacher(nn.Module):
    """One frozen PTM or an ensemble: soft labels ``p_T = mean_m softmax(member_m(x) / T)``.

    Source: Hinton et al. 2015, Sec. 2 (softmax at temperature T). Deviation: an ensemble averages its members'
    softmax, where DD-Ranking averages their logits (module docstring).

    Args:
        members: frozen nets mapping the student's input ``(b, C, H, W)`` to logits ``(b, K)`` (for PTMs of
            another input domain, wrap them with their domain rule first, e.g.
            :class:`ptmdd_lightning.core.guidance.PTMMember`: ``net(adapt(x))``).
        temperature: ``T > 0``.
        names: a label per member, for records (e.g. ``"ConvNet/seed0/epoch2"``).

    Raises:
        PtmddError: no member, or ``T <= 0``.
    """

    def __init__(self, members: Sequence[nn.Module], temperature: float = 4.0, names: Sequence[str] = ()) -> None:
        super().__init__()
        if len(members) == 0:
            raise PtmddError("a soft-label teacher needs at least one PTM; list one in teacher.ptms.")
        if not temperature > 0:
            raise PtmddError(f"the soft-label temperature T must be > 0, got {temperature!r}; e.g. 4.")
        self.members = nn.ModuleList(members)
        self.temperature = float(temperature)
        self.names = list(names)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """A teacher stays in eval mode (frozen BatchNorm statistics, no dropout)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Soft labels ``(b, K)`` float32 of the batch ``x`` ``(b, C, H, W)`` (normalised like the student's input)."""
        probs = [F.softmax(m(x).float() / self.temperature, dim=1) for m in self.members]
        return torch.stack(probs).mean(dim=0)

    def check(self, num_classes: int, image_shape: Sequence[int], device: torch.device | str = "cpu") -> None:
        """Refuse a teacher that does not fit the student: one trial forward of two blank images.

        Args:
            num_classes: the student's K.
            image_shape: the student's ``(C, H, W)``.
            device: where to run the trial.

        Raises:
            PtmddError: a member that fails on ``(2, C, H, W)`` input, or whose output is not ``(2, K)``.
        """
        x = torch.zeros(2, *image_shape, device=device)
        for i, member in enumerate(self.members):
            name = self.names[i] if i < len(self.names) else f"member {i}"
            try:
                out = member(x)
            except RuntimeError as e:  # a shape mismatch inside the net
                raise PtmddError(
                    f"the soft-label teacher {name} cannot take the student's images {tuple(image_shape)}: {e}; "
                    "use a PTM of the target dataset (its pool source)."
                ) from e
            if tuple(out.shape) != (2, num_classes):
                raise PtmddError(
                    f"the soft-label teacher {name} gives {tuple(out.shape[1:])} outputs per image, but the "
                    f"student has {num_classes} classes; a teacher must share the target's label space."
                )


@dataclass
class TeacherSpec:
    """Which PTMs teach the evaluation networks, and at what temperature (a config argument group).

    Args:
        ptms: pool groups as for CLoM (:class:`~ptmdd_lightning.core.guidance.PTMGroup`: ``arch``, ``num_seeds`` or
            ``seeds``, ``epoch``; ``alpha`` is not used, ``loss`` must be ``clom``: a teacher shares the target's
            label space). One member is a single teacher; several are an ensemble (mean of their softmax).
        temperature: the KD temperature ``T > 0`` (default 4).

    Raises:
        PtmddError: no group, ``T <= 0``, or a group of another loss than ``clom`` (:meth:`validate`).
    """

    ptms: list[PTMGroup] = field(default_factory=list)
    temperature: float = 4.0

    def __post_init__(self) -> None:
        self.ptms = [PTMGroup(**g) if isinstance(g, dict) else g for g in self.ptms]

    def validate(self) -> None:
        """Raise :class:`PtmddError` for an empty teacher, ``T <= 0`` or a ``cclom`` group."""
        if not self.ptms:
            raise PtmddError("teacher.ptms is empty; list the teaching PTMs, e.g. [{arch: ConvNet, epoch: 10}].")
        if not self.temperature > 0:
            raise PtmddError(f"teacher.temperature must be > 0, got {self.temperature!r}; e.g. 4.")
        for g in self.ptms:
            g.validate()
            if g.loss != "clom":
                raise PtmddError(
                    f"teacher group {g.arch} has loss {g.loss!r}; a teacher gives soft labels of the target's "
                    "classes, so it must be a PTM of the target label space (loss: clom, no other source)."
                )

    def describe(self) -> str:
        """A short label, e.g. ``ConvNet e2 s[0, 1] T=4``."""
        parts = [f"{g.arch} e{g.epoch} s{g.member_seeds()}" for g in self.ptms]
        return f"{' + '.join(parts)} T={self.temperature:g}"


def as_teacher_specs(value: TeacherSpec | dict | Sequence[TeacherSpec | dict] | None) -> list[TeacherSpec]:
    """The teachers of an evaluation: ``None`` -> ``[]``, one spec or a list of them (dicts accepted), validated.

    Raises:
        PtmddError: a bad spec (:meth:`TeacherSpec.validate`), or two teachers of the same description (the same
            members and temperature twice: their rows would collide).
    """
    if value is None:
        return []
    items = [value] if isinstance(value, TeacherSpec | dict) else list(value)
    specs = [TeacherSpec(**v) if isinstance(v, dict) else v for v in items]
    seen: set[str] = set()
    for spec in specs:
        if not isinstance(spec, TeacherSpec):
            raise PtmddError(f"a teacher must be a mapping {{ptms: [...], temperature: T}}, got {spec!r}.")
        spec.validate()
        if spec.describe() in seen:
            raise PtmddError(f"teacher {spec.describe()!r} is listed twice; list every teacher once.")
        seen.add(spec.describe())
    return specs


def build_teacher(
    spec: TeacherSpec,
    pool_root: str | Path,
    info: DatasetInfo,
    recipe: PTMRecipe | None = None,
    data_root: str | Path | None = None,
) -> Teacher:
    """The :class:`Teacher` of ``spec``: its members loaded from the PTM pool, as CLoM loads them.

    Args:
        spec: the teacher's groups and temperature.
        pool_root: the pool folder (``<pool_root>/<source>/<arch>/seed<S>/epoch<E>.pt``).
        info: the target data (its pool key, K, normalisation, C and ``(H, W)``; a class subset's view).
        recipe, data_root: as for :class:`~ptmdd_lightning.core.guidance.PTMPool`.

    Raises:
        PtmddError: a bad ``spec`` (:meth:`TeacherSpec.validate`), or any error of ``PTMPool``: a missing member
            (naming its pretraining command), a member of another recipe, label space or input shape.
    """
    spec.validate()
    pool = PTMPool(
        list(spec.ptms),
        pool_root,
        pool_key(info.name, info.classes),
        info.num_classes,
        tuple(info.mean),
        tuple(info.std),
        channels=info.channels,
        image_size=tuple(info.image_size),
        data_root=data_root,
        recipe=recipe,
    )
    names = [f"{g.arch}/seed{s}/epoch{g.epoch}" for g in spec.ptms for s in g.member_seeds()]
    return Teacher(list(pool.members), spec.temperature, names)


def check_real_hard_acc(value: float | None) -> float | None:
    """``Acc(real, hard)`` as given in a config: ``None`` (no robust scores) or a fraction in ``[0, 1]``.

    Used by :class:`~ptmdd_lightning.callbacks.SyntheticSetEvaluation` and ``ptmdd test``. DD-Ranking's metrics take
    accuracies as fractions (its ``book/metrics`` pages); HLR is ``Acc(real, hard) - Acc(syn, hard)``.

    Args:
        value: a Python float (fraction, not percent), or ``None``.

    Returns:
        ``value`` unchanged.

    Raises:
        PtmddError: a value outside ``[0, 1]`` (e.g. a percentage), naming the fix.
    """
    if value is not None and not 0 <= value <= 1:
        raise PtmddError(
            f"real_hard_acc is a fraction in [0, 1] (DD-Ranking's Acc(real, hard)), got {value!r}; write 0.91, not 91."
        )
    return value


def lrs(ior: float | Tensor, hlr: float | Tensor, weight: float = 0.5) -> float | Tensor:
    """DD-Ranking's label-robust score ``(exp(w * IOR - (1 - w) * HLR) - exp(-1)) / (e - exp(-1))``.

    Args:
        ior: improvement over random, fraction (``Acc(syn) - Acc(random)``, in ``[-1, 1]``); a float or a tensor.
        hlr: hard-label recovery, fraction (``Acc(real, hard) - Acc(syn, hard)``).
        weight: ``w`` in ``[0, 1]`` (DD-Ranking's ``lrs_lambda``, default 0.5).

    Returns:
        the score (in ``[0, 1]`` when ``IOR, HLR`` lie in ``[-1, 1]``), of the type of the inputs.

    Raises:
        PtmddError: ``weight`` outside ``[0, 1]``.
    """
    if not 0 <= weight <= 1:
        raise PtmddError(f"the LRS weight w must lie in [0, 1], got {weight!r}; DD-Ranking uses 0.5.")
    a = weight * ior - (1 - weight) * hlr
    e = torch.exp(a) if isinstance(a, Tensor) else math.exp(a)
    return (e - math.exp(-1.0)) / _NORM


def ars(gain_with_aug: float | Tensor, gain_without_aug: float | Tensor, weight: float = 0.5) -> float | Tensor:
    """DD-Ranking's augmentation-robust score ``(exp(g * with + (1 - g) * without) - exp(-1)) / (e - exp(-1))``.

    Args:
        gain_with_aug: ``Acc(syn) - Acc(random)``, fractions, both evaluated with augmentation.
        gain_without_aug: the same without augmentation.
        weight: ``g`` in ``[0, 1]`` (DD-Ranking's ``ars_lambda``, default 0.5).

    Returns:
        the score, of the type of the inputs.

    Raises:
        PtmddError: ``weight`` outside ``[0, 1]``.
    """
    if not 0 <= weight <= 1:
        raise PtmddError(f"the ARS weight must lie in [0, 1], got {weight!r}; DD-Ranking uses 0.5.")
    b = weight * gain_with_aug + (1 - weight) * gain_without_aug
    e = torch.exp(b) if isinstance(b, Tensor) else math.exp(b)
    return (e - math.exp(-1.0)) / _NORM


def _paired(a: Sequence[float] | Tensor, b: Sequence[float] | Tensor, what: str) -> tuple[Tensor, Tensor]:
    ta = torch.as_tensor(a, dtype=torch.float64).flatten()
    tb = torch.as_tensor(b, dtype=torch.float64).flatten()
    if ta.numel() == 0 or ta.numel() != tb.numel():
        raise PtmddError(
            f"{what} pairs model i of the synthetic set with model i of the random set: it needs the same number "
            f"(>= 1) of accuracies for both, got {ta.numel()} and {tb.numel()}; evaluate both with the same num_models."
        )
    return ta, tb


def _gain(syn: Sequence[float] | Tensor | None, rnd: Sequence[float] | Tensor | None, what: str, n: int):
    """``syn - rnd`` per round (``None`` when neither is given), paired with the ``n`` rounds of the hard labels."""
    if (syn is None) != (rnd is None):
        raise PtmddError(f"{what} needs the accuracies of both the synthetic and the random set.")
    if syn is None:
        return None
    a, b = _paired(syn, rnd, what)
    if a.numel() != n:
        raise PtmddError(f"{what} pairs model i of every evaluation: train as many models in each ({a.numel()}, {n}).")
    return a - b


def _stats(t: Tensor) -> dict[str, float]:
    return {"mean": float(t.mean()), "std": float(t.std(correction=0))}


def robust_scores(
    real_hard: float,
    syn_hard: Sequence[float] | Tensor,
    random_hard: Sequence[float] | Tensor,
    syn_soft: Sequence[float] | Tensor | None = None,
    random_soft: Sequence[float] | Tensor | None = None,
    syn_no_aug: Sequence[float] | Tensor | None = None,
    random_no_aug: Sequence[float] | Tensor | None = None,
    weight: float = 0.5,
) -> dict[str, dict[str, float]]:
    """HLR, IOR, LRS (hard and, with soft-label accuracies, soft) and ARS, per round, as mean and std over rounds.

    Round ``i`` pairs model ``i`` of every set (DD-Ranking's ``num_eval`` rounds); every accuracy is a fraction.

    Args:
        real_hard: ``Acc(real, hard)``, the accuracy of the same architecture trained on the whole training set.
        syn_hard, random_hard: ``(n,)`` accuracies of the models trained on the synthetic set and on the random
            real subset with hard labels (the augmented protocol).
        syn_soft, random_soft: the same with soft labels (the same teacher for both), or ``None``.
        syn_no_aug, random_no_aug: hard-label accuracies without augmentation (for ARS), or ``None``.
        weight: ``w`` of LRS and ``g`` of ARS.

    Returns:
        ``{"hlr": {"mean", "std"}, "ior_hard": ..., "lrs_hard": ..., ["ior_soft", "lrs_soft"], ["ars"]}``;
        ARS here is that of hard labels: the gains of the augmented hard-label protocol against those without
        augmentation (DD-Ranking evaluates ARS in one label mode for both halves).

    Raises:
        PtmddError: sets of different sizes, a missing half of a pair, or ``weight`` outside ``[0, 1]``.
    """
    syn_h, rnd_h = _paired(syn_hard, random_hard, "HLR/IOR")
    hlr_r = float(real_hard) - syn_h
    ior_h = syn_h - rnd_h
    out = {"hlr": _stats(hlr_r), "ior_hard": _stats(ior_h), "lrs_hard": _stats(lrs(ior_h, hlr_r, weight))}
    ior_s = _gain(syn_soft, random_soft, "IOR (soft labels)", syn_h.numel())
    if ior_s is not None:
        out["ior_soft"] = _stats(ior_s)
        out["lrs_soft"] = _stats(lrs(ior_s, hlr_r, weight))
    gain_no_aug = _gain(syn_no_aug, random_no_aug, "ARS (without augmentation)", syn_h.numel())
    if gain_no_aug is not None:
        out["ars"] = _stats(ars(ior_h, gain_no_aug, weight))
    return out
