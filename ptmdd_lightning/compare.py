"""Two runs under the identical protocol in one table: random real, run A, run B, and the paired difference B - A.

``python -m ptmdd_lightning.compare RUN_A RUN_B [--labels A B]`` reads the ``results.json`` of two run folders
(written by :class:`~ptmdd_lightning.callbacks.SyntheticSetEvaluation` or ``ptmdd test``), takes the final
evaluation of every architecture and prints, per architecture: the random-real baseline, both runs as mean ± std
over the evaluation models, and the paired difference B - A with its 95 % confidence interval. Model ``i`` of
both runs is trained from the same initialisation and sees the same shuffles and DSA draws (the evaluation seed),
so the pairs share that part of the noise; the interval is Student's t over the ``n`` per-model differences. It
covers the evaluation noise of ONE distillation of each; the variation between distillation seeds needs several
runs, and :func:`paired_difference` over their per-seed means.

Accuracies in ``results.json`` are fractions in [0, 1]; the table prints percentage points.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import scipy.stats

from ptmdd_lightning.errors import PtmddError

__all__ = ["compare_runs", "final_rows", "main", "outdir_table_main", "paired_difference", "t_quantile"]


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t: ``t_{(1 + level) / 2, df}`` (``scipy.stats.t.ppf``).

    Args:
        df: degrees of freedom, >= 1 (``n - 1`` for ``n`` paired values).
        level: the interval's coverage in (0, 1): 0.95 gives 4.303 for ``df = 2``; a Bonferroni interval
            over ``m`` contrasts uses ``1 - 0.05 / m`` (0.99 for ``m = 5``: 9.925 for ``df = 2``).

    Raises:
        PtmddError: ``df < 1`` (fewer than 2 paired values) or ``level`` outside (0, 1).
    """
    if df < 1:
        raise PtmddError(f"a confidence interval needs >= 2 paired values (df >= 1), got df={df}.")
    if not 0.0 < level < 1.0:
        raise PtmddError(f"a confidence level lies in (0, 1), got {level}; 0.95 gives the usual 95 % interval.")
    return float(scipy.stats.t.ppf(0.5 + level / 2.0, df))


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float | int]:
    """Mean and ``level`` CI half-width of ``b[i] - a[i]`` (Student's t over the paired differences).

    Args:
        a, b: paired values (same length >= 2), e.g. per-model accuracies or per-seed means.
        level: the interval's coverage (:func:`t_quantile`), 0.95 by default.

    Returns:
        ``{"mean", "half_width", "n"}`` in the units of the inputs (``half_width`` = t_{(1+level)/2, n-1} * sd /
        sqrt(n), sd the sample standard deviation of the differences).

    Raises:
        PtmddError: different lengths, fewer than 2 pairs, or a level outside (0, 1).
    """
    if len(a) != len(b) or len(a) < 2:
        raise PtmddError(f"a paired difference needs two equally long lists of >= 2 values, got {len(a)} and {len(b)}.")
    diffs = [float(y) - float(x) for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    return {
        "mean": statistics.fmean(diffs),
        "half_width": t_quantile(n - 1, level) * statistics.stdev(diffs) / math.sqrt(n),
        "n": n,
    }


def final_rows(run: str | Path) -> dict[tuple[str, str], dict]:
    """``{(arch, set): row}`` of the last evaluated step in ``<run>/results.json``.

    Raises:
        PtmddError: the folder has no ``results.json`` (the message names it).
    """
    path = Path(run) / "results.json"
    if not path.is_file():
        raise PtmddError(
            f"{path} does not exist; give the run folder of a finished run (lightning_logs/<name>/version_<n>)."
        )
    rows = json.loads(path.read_text())
    last = max(int(r["step"]) for r in rows)
    return {(r["arch"], r["set"]): r for r in rows if int(r["step"]) == last}


def _pm(row: dict) -> str:
    return f"{100 * row['mean']:.2f} ± {100 * row['std']:.2f}"


def compare_runs(run_a: str | Path, run_b: str | Path, labels: tuple[str, str] = ("A", "B")) -> str:
    """The Markdown table of :mod:`ptmdd_lightning.compare` for two run folders.

    Raises:
        PtmddError: a missing ``results.json``, no architecture evaluated in both, or evaluations of different
            protocols (different model counts, or random-real baselines that differ).
    """
    rows_a, rows_b = final_rows(run_a), final_rows(run_b)
    archs = [arch for arch, which in rows_a if which == "synthetic" and (arch, "synthetic") in rows_b]
    if not archs:
        raise PtmddError(f"{run_a} and {run_b} have no architecture evaluated in both.")
    lines = ["| arch | set | test acc. (%) | models |", "|---|---|---:|---:|"]
    notes = []
    for arch in archs:
        a, b = rows_a[(arch, "synthetic")], rows_b[(arch, "synthetic")]
        if a["n"] != b["n"]:
            raise PtmddError(f"{arch}: {a['n']} vs {b['n']} evaluation models; compare runs of the identical protocol.")
        base = rows_a.get((arch, "random_real")) or rows_b.get((arch, "random_real"))
        other = rows_b.get((arch, "random_real"))
        if base is not None and other is not None and base["accs"] != other["accs"]:
            raise PtmddError(
                f"{arch}: the random-real baselines of the two runs differ, so their evaluation "
                "protocols (data, epochs, seed, precision or machine) are not identical."
            )
        if base is not None:
            lines.append(f"| {arch} | random real | {_pm(base)} | {base['n']} |")
        lines.append(f"| {arch} | {labels[0]} | {_pm(a)} | {a['n']} |")
        lines.append(f"| {arch} | {labels[1]} | {_pm(b)} | {b['n']} |")
        if a["n"] >= 2:
            d = paired_difference(a["accs"], b["accs"])
            notes.append(
                f"{arch}: {labels[1]} - {labels[0]} = {100 * d['mean']:+.2f} points, 95 % CI "
                f"[{100 * (d['mean'] - d['half_width']):+.2f}, {100 * (d['mean'] + d['half_width']):+.2f}] "
                f"(paired over {d['n']} evaluation models; one distillation each)"
            )
    return "\n".join([*lines, "", *notes]) + "\n"


def outdir_table_main(argv: Sequence[str] | None, table: Callable[[str], str], name: str, script: str) -> None:
    """The body of ``python -m ptmdd_lightning.<name> OUTDIR``: print ``table(OUTDIR)``.

    Args:
        argv: the arguments (``None``: ``sys.argv[1:]``).
        table: builds the Markdown table of a campaign folder (``reproduce.table``, ``findings.table``).
        name: the module's name, for the usage and error lines.
        script: the script whose OUTDIR it reads, for the usage line.

    Raises:
        SystemExit: 2 with one line on stderr for a wrong argument list or a :class:`PtmddError` of ``table``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print(f"usage: python -m ptmdd_lightning.{name} OUTDIR   (the OUTDIR of scripts/{script})", file=sys.stderr)
        sys.exit(2)
    try:
        print(table(args[0]), end="")
    except PtmddError as err:
        print(f"ptmdd {name}: error: {err}", file=sys.stderr)
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ptmdd_lightning.compare RUN_A RUN_B [--labels A B]``; a user error exits 2 with one line.

    Raises:
        SystemExit: status 2 with one line on a user error (a run folder without ``results.json``, too few
            pairs).
    """
    ap = argparse.ArgumentParser(
        prog="python -m ptmdd_lightning.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--labels", nargs=2, default=["A", "B"], metavar=("A", "B"))
    args = ap.parse_args(argv)
    try:
        print(compare_runs(args.run_a, args.run_b, tuple(args.labels)), end="")
    except PtmddError as err:
        print(f"ptmdd compare: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
