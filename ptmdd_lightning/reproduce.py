"""The reproduction table: every row of ``configs/reproduce/`` against its published number, and the CLoM gains.

``python -m ptmdd_lightning.reproduce OUTDIR`` reads the runs that ``scripts/reproduce.sh OUTDIR`` made
(``OUTDIR/lightning_logs/reproduce_<row>_seed<S>/version_<n>/results.json`` and ``OUTDIR/<run>.commit``) and prints
a Markdown table: the setting, the protocol, the published number with its source, ptmdd's accuracy (one seed:
mean ± std over the evaluation models; several: the mean over seeds ± the std over seeds, with the models per
seed), the difference to the published mean, the random-real baseline under the identical protocol, the seeds,
the commit and the CPU. Below it, the gain of CLoM: the paired difference (same seed with and without CLoM) with a
95 % t-interval over the seeds when there are >= 2, else the single difference. Rows without finished runs are
listed as such. Accuracies in percent; the runs store fractions.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ptmdd_lightning.compare import final_rows, outdir_table_main, paired_difference
from ptmdd_lightning.errors import PtmddError

__all__ = ["ROWS", "Row", "main", "table"]


@dataclass(frozen=True)
class Row:
    """One reproduction setting: ``configs/reproduce/<name>.yaml``.

    Raises:
        Nothing of its own.
    """

    name: str
    setting: str
    protocol: str
    published: tuple[float, float] | None = None  # (mean, std) in percent
    source: str = ""
    base: str | None = None  # the row without CLoM, for the paired gain


_DC = "1000 outer iter., batch_real 256, init noise; eval. 20 ConvNet-3 x 300 ep., no aug., fp32"
_DSA = "1000 outer iter., batch_real 256, init noise, DSA; eval. 20 ConvNet-3 x 1000 ep. with DSA, fp32"
_DM = "20,000 iter., batch_real 256, init real, DSA; eval. 20 ConvNet-3 x 1000 ep. with DSA, fp32"
_README = "DatasetCondensation README, Fashion-MNIST"
_CLOM = " + CLoM (alpha 100, 1 ConvNet-3 PTM, authors-scaled-30, epoch 30)"

#: the rows, in the order of the campaign
ROWS: tuple[Row, ...] = (
    Row("dm_ipc10", "DM, IPC 10", _DM, None, "none for Fashion-MNIST in the DM paper; FRePo's Table 1 not checked yet"),
    Row("dm_ipc10_clom", "DM" + _CLOM + ", IPC 10", _DM, base="dm_ipc10"),
    Row("dsa_ipc1", "DSA, IPC 1", _DSA, (70.6, 0.6), _README),
    Row("dsa_ipc1_clom", "DSA" + _CLOM + ", IPC 1", _DSA, base="dsa_ipc1"),
    Row("dc_ipc1", "DC, IPC 1", _DC, (70.5, 0.6), _README),
    Row("dc_ipc1_clom", "DC" + _CLOM + ", IPC 1", _DC, base="dc_ipc1"),
)


def _runs(outdir: Path, row: str) -> dict[int, Path]:
    """``{seed: run folder}`` of the finished runs of ``row`` (the newest version folder of each seed)."""
    found: dict[int, Path] = {}
    for folder in sorted((outdir / "lightning_logs").glob(f"reproduce_{row}_seed*")):
        seed_text = folder.name.rsplit("_seed", 1)[1]
        if not seed_text.isdigit():
            continue
        versions = sorted(folder.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
        done = [v for v in versions if (v / "results.json").is_file() and (v / "synthetic_set.pt").is_file()]
        if done:
            found[int(seed_text)] = done[-1]
    return found


def _commit_of(outdir: Path, run: str) -> str:
    """The short commit a run was made with (``""`` when unknown).

    ``OUTDIR/<run>.commit``, else the first script version's ``OUTDIR/commit.txt``.
    """
    for path in (outdir / f"{run}.commit", outdir / "commit.txt"):
        if path.is_file():
            return path.read_text().strip()[:7]
    return ""


def _pm(values: Sequence[float]) -> str:
    """``mean ± population std`` in percent of fractions."""
    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.pstdev(values):.2f}"


def table(outdir: str | Path) -> str:
    """The Markdown reproduction table of ``outdir`` (see the module docstring).

    Raises:
        PtmddError: ``outdir`` does not exist.
    """
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise PtmddError(f"{outdir} does not exist; give the OUTDIR of scripts/reproduce.sh.")
    lines = [
        "| setting | protocol | published (%) | ptmdd (%) | ptmdd - published | random real (%) | seeds | "
        "commit | CPU |",
        "|---|---|---|---|---:|---|---|---|---|",
    ]
    means: dict[str, dict[int, float]] = {}
    for row in ROWS:
        runs = _runs(outdir, row.name)
        published = f"{row.published[0]:.1f} ± {row.published[1]:.1f} ({row.source})" if row.published else row.source
        if not runs:
            lines.append(f"| {row.setting} | {row.protocol} | {published} | not run yet | | | | | |")
            continue
        seed_rows = {seed: final_rows(run) for seed, run in sorted(runs.items())}
        synthetic = {seed: rows[("ConvNet", "synthetic")] for seed, rows in seed_rows.items()}
        means[row.name] = {seed: float(r["mean"]) for seed, r in synthetic.items()}
        if len(synthetic) == 1:
            (only,) = synthetic.values()
            ours, mean = f"{_pm(only['accs'])} ({only['n']} models)", 100 * float(only["mean"])
        else:
            seed_means = list(means[row.name].values())
            mean = 100 * statistics.fmean(seed_means)
            ours = f"{_pm(seed_means)} over {len(seed_means)} seeds ({next(iter(synthetic.values()))['n']} models each)"
        diff = f"{mean - row.published[0]:+.2f}" if row.published else ""
        base = next((rows.get(("ConvNet", "random_real")) for rows in seed_rows.values()), None)
        real = f"{_pm(base['accs'])}" if base else ""
        commits = sorted({c for run in runs.values() if (c := _commit_of(outdir, run.parent.name))})
        cpu = sorted({str(r.get("machine", {}).get("cpu", {}).get("kind", "")) for r in synthetic.values()})
        lines.append(
            f"| {row.setting} | {row.protocol} | {published} | {ours} | {diff} | {real} | "
            f"{', '.join(map(str, sorted(runs)))} | {', '.join(commits)} | {', '.join(cpu)} |"
        )
    notes = ["", "Gain of CLoM (same seed with and without CLoM):"]
    for row in ROWS:
        if row.base is None or row.name not in means or row.base not in means:
            continue
        seeds = sorted(set(means[row.name]) & set(means[row.base]))
        if not seeds:
            continue
        with_clom = [means[row.name][s] for s in seeds]
        without = [means[row.base][s] for s in seeds]
        if len(seeds) >= 2:
            d = paired_difference(without, with_clom)
            low, high = 100 * (d["mean"] - d["half_width"]), 100 * (d["mean"] + d["half_width"])
            notes.append(
                f"- {row.setting}: {100 * d['mean']:+.2f} points, 95 % CI [{low:+.2f}, {high:+.2f}] over seeds {seeds}"
            )
        else:
            notes.append(
                f"- {row.setting}: {100 * (with_clom[0] - without[0]):+.2f} points (seed {seeds[0]} only: no interval)"
            )
    if len(notes) == 2:
        notes.append("- no row has both arms finished yet")
    return "\n".join(lines + notes) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ptmdd_lightning.reproduce OUTDIR``; a user error exits 2 with one line.

    Raises:
        Nothing of its own.
    """
    outdir_table_main(argv, table, "reproduce", "reproduce.sh")


if __name__ == "__main__":
    main()
