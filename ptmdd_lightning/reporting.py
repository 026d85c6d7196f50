"""Run folders and results tables, shared by the Lightning modules and the callbacks (below both of them).

``run_dir`` finds a run's versioned folder; ``format_table`` and ``write_results`` write the evaluation rows as
``results.{md,csv,json}`` with the machine record. Imports only Lightning's types and the standard library.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path
from typing import Any

import yaml
from lightning import Trainer
from torch import Tensor

from ptmdd_lightning.core.evaluate import summarize
from ptmdd_lightning.core.soft_labels import robust_scores
from ptmdd_lightning.fileio import atomic_write_text, plain
from ptmdd_lightning.result_rows import evaluation_labels

__all__ = [
    "COST_FIELDS",
    "SCORE_COLUMNS",
    "attach_scores",
    "evaluation_labels",
    "format_table",
    "record_machine",
    "result_row",
    "run_dir",
    "set_plain_hparam",
    "write_results",
]


def run_dir(trainer: Trainer) -> Path:
    """The run's versioned log folder (``lightning_logs/<name>/version_<n>``), created if needed.

    Built from the logger without ``trainer.log_dir``, which is a collective call under DDP: the callbacks call this
    on global rank 0 alone.

    Raises:
        Nothing of its own.
    """
    logger = trainer.logger
    folder = None
    if logger is not None:
        folder = getattr(logger, "log_dir", None) or logger.save_dir
    path = Path(folder or trainer.default_root_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


#: what a run cost, on its synthetic rows (distillation, guidance pool) and its soft-label rows (the teacher);
#: ``*_pretrain_kinds``: the CPU kinds those pretraining seconds were spent on (``machine.kinds_summary``)
COST_FIELDS = [
    "distill_seconds",
    "guidance_pool_bytes",
    "guidance_pretrain_seconds",
    "guidance_pretrain_kinds",
    "teacher_bytes",
    "teacher_pool_bytes",
    "teacher_pretrain_seconds",
    "teacher_pretrain_kinds",
    "soft_label_bytes",
]
#: DD-Ranking's robust scores as row keys (mean; ``<key>_std`` the std over rounds), and how the table shows them
SCORE_COLUMNS = {"hlr": "HLR (pts)", "ior": "IOR (pts)", "lrs": "LRS (%)", "ars": "ARS (%)"}


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of evaluation rows (``arch``, ``set``, ``mean``, ``std``, ``n``; accuracies in %).

    A ``labels`` column appears when a row was trained on soft labels or without augmentation, and DD-Ranking's
    scores (:data:`SCORE_COLUMNS`, mean ± std over the rounds, in points/%) when a row carries them; a table of
    hard-label rows alone is the same as before either existed.

    Raises:
        Nothing of its own.
    """
    variants = any(evaluation_labels(r) != "hard" for r in rows)
    scores = [k for k in SCORE_COLUMNS if any(k in r for r in rows)]
    head = ["step", "arch", "set", *(["labels"] if variants else []), "test acc. (%)", "models"]
    head += [SCORE_COLUMNS[k] for k in scores]
    lines = ["| " + " | ".join(head) + " |", "|---:|---|---|" + ("---|" if variants else "") + "---:|---:|"]
    lines[-1] += "---:|" * len(scores)
    for r in rows:
        cells = [str(r["step"]), r["arch"], r["set"], *([evaluation_labels(r)] if variants else [])]
        cells += [f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}", str(r["n"])]
        cells += [f"{100 * r[k]:.2f} ± {100 * r.get(k + '_std', 0.0):.2f}" if k in r else "" for k in scores]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attach_scores(rows: list[dict[str, Any]], real_hard_acc: float, source: str | None, weight: float = 0.5) -> None:
    """Add DD-Ranking's HLR, IOR, LRS and ARS to the synthetic rows of ``rows`` (in place).

    For every ``(step, arch)`` with a hard-label, augmented pair of ``synthetic`` and ``random_real`` rows:
    the synthetic hard row gets ``hlr``, ``ior``, ``lrs`` (and ``ars`` when both sets were also evaluated without
    augmentation), every synthetic soft row ``hlr``, ``ior``, ``lrs`` of its teacher's soft labels (paired with
    the random row of the same teacher); each with ``<key>_std``, plus
    ``real_hard_acc`` and ``real_hard_source``. Fractions, per round (model ``i`` of every set), as
    :func:`ptmdd_lightning.core.soft_labels.robust_scores` computes them.

    Raises:
        PtmddError: sets of different sizes (see ``robust_scores``).
    """

    def find(step: int, arch: str, which: str, labels: str, augment: bool, teacher: str | None = None):
        return next(
            (
                r
                for r in rows
                if (r["step"], r["arch"], r["set"]) == (step, arch, which)
                and (r.get("labels", "hard"), r.get("augment", True), r.get("teacher")) == (labels, augment, teacher)
            ),
            None,
        )

    record = {"real_hard_acc": float(real_hard_acc), "real_hard_source": source}
    for step, arch in dict.fromkeys((r["step"], r["arch"]) for r in rows):
        syn, rnd = find(step, arch, "synthetic", "hard", True), find(step, arch, "random_real", "hard", True)
        if syn is None or rnd is None:
            continue
        syn_n, rnd_n = find(step, arch, "synthetic", "hard", False), find(step, arch, "random_real", "hard", False)
        no_aug = syn_n is not None and rnd_n is not None
        out = robust_scores(
            real_hard_acc,
            syn["accs"],
            rnd["accs"],
            syn_no_aug=syn_n["accs"] if no_aug else None,
            random_no_aug=rnd_n["accs"] if no_aug else None,
            weight=weight,
        )
        syn.update(record)
        for key, name in {"hlr": "hlr", "ior": "ior_hard", "lrs": "lrs_hard", "ars": "ars"}.items():
            if name in out:
                syn[key], syn[key + "_std"] = out[name]["mean"], out[name]["std"]
        for syn_s in [r for r in rows if (r["step"], r["arch"], r["set"]) == (step, arch, "synthetic")]:
            teacher = syn_s.get("teacher")
            rnd_s = find(step, arch, "random_real", "soft", True, teacher) if teacher else None
            if syn_s.get("labels") != "soft" or not syn_s.get("augment", True) or rnd_s is None:
                continue
            out = robust_scores(real_hard_acc, syn["accs"], rnd["accs"], syn_s["accs"], rnd_s["accs"], weight=weight)
            syn_s.update(record)
            for key, name in {"hlr": "hlr", "ior": "ior_soft", "lrs": "lrs_soft"}.items():
                syn_s[key], syn_s[key + "_std"] = out[name]["mean"], out[name]["std"]


def result_row(step: int, arch: str, which: str, accs: Tensor, seconds: float) -> dict[str, Any]:
    """One row of a results table.

    One row of a results table: ``accs`` (``(n,)`` test accuracies, fractions in [0, 1]) of ``n`` models of
    ``arch`` trained on the ``which`` set (``"synthetic"`` / ``"random_real"``) at ``step``, with their mean and std
    (:func:`ptmdd_lightning.core.evaluate.summarize`) and the wall ``seconds`` it took.

    Raises:
        PtmddError: no accuracies (:func:`ptmdd_lightning.core.evaluate.summarize`).
    """
    s = summarize(accs)
    return {
        "step": step,
        "arch": arch,
        "set": which,
        "mean": float(s["mean"]),
        "std": float(s["std"]),
        "n": int(s["n"]),
        "accs": [float(a) for a in accs],
        "seconds": round(seconds, 2),
    }


def _commit_text(machine: dict[str, Any]) -> str:
    """``"<40-hex commit>"`` (``" (dirty)"`` added when tracked files differed) or ``""`` when not recorded."""
    code = machine.get("code") or {}
    if not code.get("commit"):
        return ""
    return code["commit"] + (" (dirty)" if code.get("dirty") else "")


def write_results(
    rows: list[dict[str, Any]], folder, stem: str = "results", machine: dict[str, Any] | None = None
) -> None:
    """Write ``rows`` as ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` into ``folder`` (atomic replace).

    ``machine`` (:func:`ptmdd_lightning.machine.machine_record`: CPU model and ISA, threads, torch version,
    precision, fast paths that ran, ptmdd's commit) goes into every JSON row as ``"machine"``, into the CSV as the
    columns ``cpu``, ``isa``, ``threads``, ``torch``, ``precision``, ``fast_paths``, ``commit``, and under the
    Markdown table; a run's ``machine["attempts"]`` (its start and resumes, each with its CPU kind) goes into the JSON
    and, when there are several, under the Markdown table.

    Raises:
        Nothing of its own.
    """
    rows = [dict(r, machine=machine) if machine is not None else dict(r) for r in rows]
    text = format_table(rows) + "\n"
    commit = _commit_text(machine) if machine is not None else ""
    if machine is not None:
        text += (
            f"\nmachine: {machine['cpu']['model']} ({machine['cpu']['kind']}), {machine['threads']} threads, "
            f"torch {machine['torch']}, {machine['device']}, precision {machine['precision']}, fast paths "
            f"{', '.join(machine['fast_paths']) or 'none'}; ptmdd commit {commit or 'unknown'}\n"
        )
        if len(machine.get("attempts") or []) > 1:
            text += (
                "attempts (resumed runs): "
                + "; ".join(
                    f"from step {a.get('from_step')} on {a.get('cpu_kind') or 'unknown'}" for a in machine["attempts"]
                )
                + "\n"
            )
    atomic_write_text(folder / f"{stem}.md", text)
    atomic_write_text(folder / f"{stem}.json", json.dumps(rows, indent=2))
    fields = ["step", "arch", "set", "mean", "std", "n", "accs", "seconds"]
    optional = ["labels", "augment", "teacher", *[f"{k}{s}" for k in SCORE_COLUMNS for s in ("", "_std")]]
    optional += ["real_hard_acc", "real_hard_source", *COST_FIELDS]
    fields += [f for f in optional if any(f in r for r in rows)]  # columns only where a row has them
    extra = ["cpu", "isa", "threads", "torch", "precision", "fast_paths", "commit"] if machine is not None else []
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields + extra, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        flat = {**r, "accs": " ".join(f"{a:.4f}" for a in r["accs"])}
        if machine is not None:
            flat.update(
                cpu=machine["cpu"]["model"],
                isa=" ".join(machine["cpu"]["isa"]),
                threads=machine["threads"],
                torch=machine["torch"],
                precision=machine["precision"],
                fast_paths=" ".join(machine["fast_paths"]),
                commit=commit,
            )
        writer.writerow(flat)
    atomic_write_text(folder / f"{stem}.csv", buffer.getvalue())


def set_plain_hparam(module: Any, key: str, value: Any) -> None:
    """Set the hyper-parameter ``key`` of a LightningModule to ``value`` as plain data.

    Both ``module.hparams`` (checkpoints, which LightningCLI re-reads with ``weights_only=True``) and the copy taken
    by ``save_hyperparameters`` that the loggers write into ``hparams.yaml`` (Lightning's ``hparams_initial``),
    so that ``yaml.safe_load`` reads the file back (a dataclass or a tuple would be written as a Python tag).
    Call it after ``save_hyperparameters``.

    Raises:
        Nothing of its own.
    """
    value = plain(value, lists=True)  # dataclasses as dicts, tuples as lists
    module.hparams[key] = value
    initial = getattr(module, "_hparams_initial", None)
    if initial is not None:
        initial[key] = copy.deepcopy(value)


def record_machine(trainer: Trainer, record: dict[str, Any]) -> None:
    """Put the machine record into the run's logger and its folder's ``hparams.yaml``.

    ``record`` (:func:`ptmdd_lightning.machine.machine_record`) goes to the logger's hyper-parameters (TensorBoard's
    hparams) and, on global rank 0, into ``hparams.yaml`` as ``machine`` (rewritten atomically: TensorBoardLogger
    writes that file once, before training). A ``hparams.yaml`` that is not a plain YAML mapping is left as it is.
    Without a logger nothing is written.

    Raises:
        Nothing of its own.
    """
    logger = trainer.logger
    if logger is None:
        return
    logger.log_hyperparams({"machine": record})
    if not trainer.is_global_zero:
        return
    path = run_dir(trainer) / "hparams.yaml"
    if not path.is_file():
        return
    try:
        hparams = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return
    if isinstance(hparams, dict):
        record_plain = json.loads(json.dumps(record, default=str))  # e.g. torch's TorchVersion -> str
        atomic_write_text(path, yaml.safe_dump({**hparams, "machine": record_plain}, sort_keys=False))
