"""Collecting a study: one long-format table (a row per evaluation model), the summary grouped from it, the plot.

Written with pandas into the study folder, each file atomically:

- ``results_long.csv``: one row per evaluated model: ``kind, point, name, <axes>, x, series, seed, run, arch, labels,
  set, model, acc, step`` (``acc`` a fraction in [0, 1]; ``set`` is ``synthetic`` or ``random_real``; ``labels`` how
  the models were trained, :func:`ptmdd_lightning.result_rows.evaluation_labels`: ``hard``, or e.g. ``soft (<teacher>)``
  for a run evaluated with teachers, docs/soft_labels.md);
- ``summary.{md,csv,json}``: one row per point, evaluation architecture and labels, grouped from it: the mean and the
  population std over every model of every seed, the random-real baseline under the identical protocol, the gain
  over it, the gain over the first baseline, and the paired difference to that baseline over the seeds the two
  share (mean and 95 % CI half-width, :func:`ptmdd_lightning.compare.paired_difference`, with >= 2 seeds);
- ``summary.png``: accuracy against the sweep's x axis (:func:`plot_summary`);
- ``labels.{md,json}``, for a study evaluated under several label kinds (soft-label teachers, docs/soft_labels.md):
  every pair of label kinds compared on the same distilled and random sets (:func:`label_contrasts`).

A run counts only when it is done (:meth:`~ptmdd_lightning.studies.store.Study.is_done`), whoever ran it.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ptmdd_lightning.compare import paired_difference
from ptmdd_lightning.fileio import atomic_write, atomic_write_text
from ptmdd_lightning.result_rows import evaluation_labels
from ptmdd_lightning.studies.spec import SUMMARY_FIELDS, SweepSpec
from ptmdd_lightning.studies.store import Study

__all__ = [
    "SUMMARY_FIELDS",
    "collect",
    "format_label_contrasts",
    "format_summary",
    "label_contrasts",
    "long_table",
    "plot_summary",
    "write_summary",
]


def long_table(study: Study) -> pd.DataFrame:
    """Every evaluated model of every done run (the final step of its ``results.json``), one row each.

    Raises:
        Nothing of its own.
    """
    spec = study.spec
    x_axis = spec.x or (spec.axes[0].name if spec.axes else None)
    axes = [a.name for a in spec.axes]
    records = []
    for slot in study.slots():
        if slot.is_prepare:
            continue
        folder = study.folder(slot)
        if folder is None or not study.is_done(slot, folder):
            continue
        rows = json.loads((folder / "results.json").read_text())
        final = max(int(r["step"]) for r in rows)
        point = slot.point
        for r in rows:
            if int(r["step"]) != final:
                continue
            for i, acc in enumerate(r["accs"]):
                records.append(
                    {
                        "kind": point.kind,
                        "point": point.id,
                        "name": point.name,
                        **{a: point.labels.get(a, "") for a in axes},
                        "x": point.values.get(x_axis) if x_axis else None,
                        "series": ", ".join(f"{k}={v}" for k, v in point.labels.items() if k != x_axis),
                        "seed": slot.seed,
                        "run": str(folder.relative_to(study.out)),
                        "arch": r["arch"],
                        "labels": evaluation_labels(r),
                        "set": r["set"],
                        "model": i,
                        "acc": float(acc),
                        "step": final,
                    }
                )
    columns = [
        *("kind", "point", "name", *axes, "x", "series", "seed", "run"),
        *("arch", "labels", "set", "model", "acc", "step"),
    ]
    return pd.DataFrame.from_records(records, columns=columns)


def _population_std(values: pd.Series) -> float:
    return float(values.std(ddof=0))


def collect(study: Study) -> list[dict[str, Any]]:
    """The summary rows of ``study``: one per point (sweep order, then baselines), evaluation architecture and labels.

    Every comparison stays within one ``labels`` value (hard labels with hard labels, a teacher's soft labels with the
    same teacher's): the random-real baseline, the gain over the first baseline, the paired difference.

    Returns:
        Rows with :data:`SUMMARY_FIELDS` and the axis labels (accuracies as fractions). ``gain_vs_baseline`` is the
        difference of the pooled means to the first baseline's; ``paired_gain`` the mean over shared seeds of the
        per-seed differences of the mean accuracies, ``paired_ci95`` its 95 % CI half-width (``None`` below 2
        shared seeds). A run evaluated without the random-real subset (``baseline: false``) gets the study's
        random-real result of the same architecture when all runs that have one agree (the same IPC and
        evaluation seed give the same subset and models).

    Raises:
        PtmddError: from :func:`ptmdd_lightning.compare.paired_difference` (a confidence level outside (0, 1)).
    """
    spec = study.spec
    table = long_table(study)
    if table.empty:
        return []
    keys = ["point", "arch", "labels"]
    stats = table.groupby([*keys, "set"], sort=False)["acc"].agg(mean="mean", std=_population_std, n="size")
    runs = table.groupby(keys, sort=False)["seed"].nunique()
    per_seed = table[table["set"] == "synthetic"].groupby([*keys, "seed"])["acc"].mean()
    first = next(iter(spec.baselines), None)
    baseline_id = next((p.id for p in study.points if p.kind == "baseline" and p.name == first), None)
    axes = [a.name for a in spec.axes]
    rows: list[dict[str, Any]] = []
    for (point_id, arch, labels), group in table.groupby(keys, sort=False):
        if (point_id, arch, labels, "synthetic") not in stats.index:
            continue
        head = group.iloc[0]
        syn = stats.loc[(point_id, arch, labels, "synthetic")]
        series = head["series"]
        if labels != "hard":  # each label kind is its own series in the plot
            series = f"{series}, {labels}" if series else labels
        row: dict[str, Any] = {
            "kind": head["kind"],
            "point": point_id,
            "name": head["name"],
            **{a: head[a] for a in axes},
            "x": head["x"],
            "series": series,
            "arch": arch,
            "labels": labels,
            "synthetic_mean": float(syn["mean"]),
            "synthetic_std": float(syn["std"]),
            "n": int(syn["n"]),
            "runs": int(runs.loc[(point_id, arch, labels)]),
            "random_real_mean": None,
            "random_real_std": None,
            "gain_vs_random": None,
            "gain_vs_baseline": None,
            "baseline": None,
            "paired_gain": None,
            "paired_ci95": None,
            "paired_seeds": None,
        }
        if (point_id, arch, labels, "random_real") in stats.index:
            real = stats.loc[(point_id, arch, labels, "random_real")]
            row.update(
                random_real_mean=float(real["mean"]),
                random_real_std=float(real["std"]),
                gain_vs_random=float(syn["mean"] - real["mean"]),
            )
        rows.append(row)
    for arch, labels in {(r["arch"], r["labels"]) for r in rows}:
        shared = {
            (r["random_real_mean"], r["random_real_std"])
            for r in rows
            if (r["arch"], r["labels"]) == (arch, labels) and r["random_real_mean"] is not None
        }
        if len(shared) == 1:
            rm, rs = shared.pop()
            for r in rows:
                if (r["arch"], r["labels"]) == (arch, labels) and r["random_real_mean"] is None:
                    r.update(random_real_mean=rm, random_real_std=rs, gain_vs_random=r["synthetic_mean"] - rm)
    order = {p.id: i for i, p in enumerate(study.points)}
    rows.sort(key=lambda r: order.get(r["point"], len(order)))
    if baseline_id is not None:
        for row in rows:
            ref = next(
                (r for r in rows if (r["point"], r["arch"], r["labels"]) == (baseline_id, row["arch"], row["labels"])),
                None,
            )
            if ref is None or ref is row:
                continue
            row["gain_vs_baseline"] = row["synthetic_mean"] - ref["synthetic_mean"]
            row["baseline"] = first
            mine = per_seed.loc[(row["point"], row["arch"], row["labels"])]
            theirs = per_seed.loc[(baseline_id, row["arch"], row["labels"])]
            seeds = sorted(set(mine.index) & set(theirs.index))
            row["paired_seeds"] = len(seeds)
            if seeds:
                diffs = [float(mine[s] - theirs[s]) for s in seeds]
                row["paired_gain"] = sum(diffs) / len(diffs)
            if len(seeds) >= 2:
                pair = paired_difference([float(theirs[s]) for s in seeds], [float(mine[s]) for s in seeds])
                row["paired_ci95"] = pair["half_width"]
    return rows


def label_contrasts(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Every pair of label kinds ``(a, b)`` compared on the same sets: the paired difference ``b - a``.

    A cell is one run's set (``synthetic`` of a point and seed) or the random real subset (``random_real``); its value
    under a label kind is the mean accuracy of its models. ``b - a`` is paired over the cells evaluated under both
    kinds, separately for the distilled sets (every point and seed of the study) and the random real subset, with
    the 95 % CI half-width (:func:`ptmdd_lightning.compare.paired_difference`, from 2 cells). So "is the ensemble a
    better teacher than one PTM" pools every distillation of the study, each compared with itself.

    Args:
        table: :func:`long_table`'s rows.

    Returns:
        Rows ``{"a", "b", "set", "arch", "cells", "mean", "ci95"}`` (accuracy differences as fractions; ``ci95``
        ``None`` below 2 cells), label kinds in the order they appear, hard labels first.

    Raises:
        PtmddError: from :func:`ptmdd_lightning.compare.paired_difference` (a confidence level outside (0, 1)).
    """
    if table.empty:
        return []
    kinds = list(dict.fromkeys(["hard", *table["labels"]]))
    kinds = [k for k in kinds if k in set(table["labels"])]
    cells = table.groupby(["arch", "set", "point", "seed", "labels"])["acc"].mean()
    rows: list[dict[str, Any]] = []
    for arch in dict.fromkeys(table["arch"]):
        for which in ("synthetic", "random_real"):
            for i, a in enumerate(kinds):
                for b in kinds[i + 1 :]:
                    pairs = []
                    for (c_arch, c_set, point, seed, labels), value in cells.items():
                        if (c_arch, c_set, labels) == (arch, which, a) and (arch, which, point, seed, b) in cells:
                            pairs.append((float(value), float(cells[(arch, which, point, seed, b)])))
                    if which == "random_real":  # the same subset in every run that evaluated it: count it once
                        pairs = list(dict.fromkeys(pairs))
                    if not pairs:
                        continue
                    diffs = [y - x for x, y in pairs]
                    ci = None
                    if len(pairs) >= 2:
                        ci = paired_difference([x for x, _ in pairs], [y for _, y in pairs])["half_width"]
                    rows.append(
                        {
                            "a": a,
                            "b": b,
                            "set": which,
                            "arch": arch,
                            "cells": len(pairs),
                            "mean": sum(diffs) / len(diffs),
                            "ci95": ci,
                        }
                    )
    return rows


def format_label_contrasts(spec: SweepSpec, rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`label_contrasts` (differences in points).

    Raises:
        Nothing of its own.
    """
    cells = [
        {
            "arch": r["arch"],
            "set": r["set"],
            "labels b": r["b"],
            "minus labels a": r["a"],
            "b - a (points, 95 % CI)": _gain(r["mean"], r["ci95"]),
            "sets compared": str(r["cells"]),
        }
        for r in rows
    ]
    frame = pd.DataFrame(cells)
    if frame.empty:
        return f"## {spec.title}: label kinds compared\n\n(one label kind only)"
    align = ["left", "left", "left", "left", "right", "right"]
    title = f"## {spec.title}: label kinds compared on the same sets\n\n"
    return title + frame.to_markdown(index=False, colalign=align, disable_numparse=True)


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"  # noqa: RUF001 - the typographic dash of an empty table cell
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _gain(value: float | None, ci: float | None = None) -> str:
    if value is None:
        return "–"  # noqa: RUF001 - empty cell
    return f"{100 * value:+.2f}" + (f" ± {100 * ci:.2f}" if ci is not None else "")


def format_summary(spec: SweepSpec, rows: list[dict[str, Any]]) -> str:
    """The Markdown summary table (accuracies in %), built with pandas (``DataFrame.to_markdown``).

    Raises:
        Nothing of its own.
    """
    axes = [a.name for a in spec.axes]
    base = next(iter(spec.baselines), None)
    cells = []
    for r in rows:
        cell = {"run": r["name"] if r["kind"] == "baseline" else "point"}
        cell.update({a: r.get(a, "") for a in axes})
        if any(x["labels"] != "hard" for x in rows):
            cell["labels"] = r["labels"]
        cell.update(
            {
                "arch": r["arch"],
                "distilled acc. (%)": _pct(r["synthetic_mean"], r["synthetic_std"]),
                "random real (%)": _pct(r["random_real_mean"], r["random_real_std"]),
                "gain vs random": _gain(r["gain_vs_random"]),
            }
        )
        if base is not None:
            cell[f"gain vs {base}"] = _gain(r["gain_vs_baseline"])
            cell["paired gain (95 % CI)"] = _gain(r["paired_gain"], r["paired_ci95"])
        cell["runs / models"] = f"{r['runs']} / {r['n']}"
        cells.append(cell)
    frame = pd.DataFrame(cells)
    if frame.empty:
        return f"## {spec.title}\n\n(no finished runs yet)"
    align = ["left" if c in ("run", "arch", "labels", *axes) else "right" for c in frame.columns]
    return f"## {spec.title}\n\n" + frame.to_markdown(index=False, colalign=align, disable_numparse=True)


def write_summary(study: Study, rows: list[dict[str, Any]]) -> list[Path]:
    """Write ``results_long.csv``, ``summary.{md,csv,json}`` (and ``labels.{md,json}``) atomically; return them.

    Raises:
        PtmddError: from :func:`label_contrasts` (a confidence level outside (0, 1)).
    """
    spec, out = study.spec, study.out
    out.mkdir(parents=True, exist_ok=True)
    table = long_table(study)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    files = [atomic_write_text(out / "results_long.csv", buffer.getvalue())]
    files.append(atomic_write_text(out / "summary.md", format_summary(spec, rows) + "\n"))
    fields = [*SUMMARY_FIELDS[:3], *[a.name for a in spec.axes], *SUMMARY_FIELDS[3:]]
    buffer = io.StringIO()
    pd.DataFrame(rows, columns=fields).to_csv(buffer, index=False)
    files.append(atomic_write_text(out / "summary.csv", buffer.getvalue()))
    x = spec.x or (spec.axes[0].name if spec.axes else None)
    text = json.dumps({"sweep": str(spec.path), "title": spec.title, "x": x, "rows": rows}, indent=1, default=str)
    files.append(atomic_write_text(out / "summary.json", text))
    if not table.empty and table["labels"].nunique() > 1:
        contrasts = label_contrasts(table)
        files.append(atomic_write_text(out / "labels.md", format_label_contrasts(spec, contrasts) + "\n"))
        files.append(atomic_write_text(out / "labels.json", json.dumps(contrasts, indent=1)))
    return files


def plot_summary(spec: SweepSpec, rows: list[dict[str, Any]], out: Path) -> Path | None:
    """Plot accuracy (%) against the x axis, one panel per evaluation architecture; return the PNG path.

    A numeric x axis draws one line with error bars (the pooled std) per series (the other axes' values), on a
    log scale when the values span a factor of 20 or more; a categorical one draws grouped bars. Baselines are
    solid horizontal lines with a +-std band; the random-real subset is a dashed grey line when all points
    share it. ``None`` when there is nothing to plot yet.

    Raises:
        Nothing of its own.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return None
    archs = [a for a in (spec.plot_archs or []) if any(r["arch"] == a for r in rows)]
    archs = archs or list(dict.fromkeys(r["arch"] for r in rows))
    x_axis = spec.x or (spec.axes[0].name if spec.axes else None)
    axis = next((a for a in spec.axes if a.name == x_axis), None)
    cols = min(len(archs), 2)
    nrows = math.ceil(len(archs) / cols)
    fig, axs = plt.subplots(nrows, cols, figsize=(6.2 * cols, 4.2 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, arch in zip(axs.flat, archs, strict=False):
        pts = [r for r in rows if r["arch"] == arch and r["kind"] == "point"]
        series = list(dict.fromkeys(r["series"] for r in pts))
        if axis is not None and pts:
            if axis.numeric:
                for i, s in enumerate(series):
                    sr = sorted((r for r in pts if r["series"] == s), key=lambda r: r["x"])
                    ax.errorbar(
                        [r["x"] for r in sr],
                        [100 * r["synthetic_mean"] for r in sr],
                        yerr=[100 * r["synthetic_std"] for r in sr],
                        marker="o",
                        capsize=4,
                        color=colors[i % len(colors)],
                        label=s or "distilled",
                    )
                xs = [v.value for v in axis.values]
                if min(xs) > 0 and max(xs) / min(xs) >= 20:
                    ax.set_xscale("log")
                ax.set_xticks(xs)
                ax.set_xticklabels([v.label for v in axis.values])
            else:
                labels = [v.label for v in axis.values]
                width = 0.8 / max(len(series), 1)
                for i, s in enumerate(series):
                    by_label = {r[x_axis]: r for r in pts if r["series"] == s}
                    pos = [j + (i - (len(series) - 1) / 2) * width for j, lab in enumerate(labels) if lab in by_label]
                    sel = [by_label[lab] for lab in labels if lab in by_label]
                    ax.bar(
                        pos,
                        [100 * r["synthetic_mean"] for r in sel],
                        width=width * 0.95,
                        yerr=[100 * r["synthetic_std"] for r in sel],
                        capsize=4,
                        color=colors[i % len(colors)],
                        label=s or "distilled",
                    )
                ax.set_xticks(range(len(labels)))
                ax.set_xticklabels(labels)
            ax.set_xlabel(x_axis)
        for j, b in enumerate(r for r in rows if r["arch"] == arch and r["kind"] == "baseline"):
            name = b["name"] if b["labels"] == "hard" else f"{b['name']}, {b['labels']}"
            color = colors[(len(series) + j) % len(colors)]
            lo, hi = (
                100 * (b["synthetic_mean"] - b["synthetic_std"]),
                100 * (b["synthetic_mean"] + b["synthetic_std"]),
            )
            ax.axhspan(lo, hi, color=color, alpha=0.12)
            ax.axhline(100 * b["synthetic_mean"], color=color, lw=1.6, label=f"{name} (baseline)")
        for labels in dict.fromkeys(r["labels"] for r in rows if r["arch"] == arch):
            real = [
                r["random_real_mean"]
                for r in rows
                if (r["arch"], r["labels"]) == (arch, labels) and r["random_real_mean"] is not None
            ]
            if real and max(real) - min(real) < 1e-9:
                name = "random real subset" + ("" if labels == "hard" else f", {labels}")
                ax.axhline(100 * real[0], color="grey", ls="--", lw=1.2, label=name)
        ax.set_title(f"{spec.title} — {arch}", fontsize=10)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axs.flat)[len(archs) :]:
        ax.axis("off")
    fig.tight_layout()
    png = atomic_write(Path(out) / "summary.png", lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)
    return png
