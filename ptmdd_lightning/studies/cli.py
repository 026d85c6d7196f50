r"""``ptmdd-sweep``: run a study (a sweep file's grid of ``ptmdd`` runs) locally or on SLURM, watch it, collect it.

    ptmdd-sweep --sweep configs/paper/cpu/sweeps/nm.yaml                       # run or resume here, then collect
    ptmdd-sweep --sweep configs/paper/cpu/sweeps/nm.yaml --parallel 2          # two runs at a time
    ptmdd-sweep --sweep configs/paper/gpu/sweeps/nm.yaml --executor slurm \\
        --slurm partition=gpu --slurm time_min=240                             # a SLURM job array (submitit)
    ptmdd-sweep --status --out lightning_logs/sweeps/paper_gpu_nm              # done / running / failed / pending
    ptmdd-sweep --sweep configs/paper/cpu/sweeps/nm.yaml --point N_m=2@seed0   # one run by hand
    ptmdd-sweep --sweep configs/paper/cpu/sweeps/nm.yaml --shard 0/4           # every 4th run, from the first
    ptmdd-sweep --sweep configs/paper/cpu/sweeps/nm.yaml --collect-only        # tables and plot of what is done
    ptmdd-sweep --sweep configs/paper/cpu/sweeps/nm.yaml -- --data.init_args.root /data   # extra ptmdd args
    ptmdd-sweep --sweep configs/paper/cpu/sweeps/epoch.yaml --no-reuse        # rerun runs another study finished

The sweep-file format is :mod:`ptmdd_lightning.studies.spec`'s; the study folder's layout, claims and "done" are
:mod:`ptmdd_lightning.studies.store`'s; the engines :mod:`ptmdd_lightning.studies.execute`'s; the tables
:mod:`ptmdd_lightning.studies.collect`'s. Any number of ``ptmdd-sweep`` processes (or SLURM tasks) may work on one
study folder at once: each run is claimed before it runs. A run whose identical settings a sibling study (another
folder next to the study folder) finished is copied from there, not repeated (``--no-reuse`` reruns it). Nothing
is deleted except by ``--clean``, which removes the version folders of settings that are no longer in the sweep.

Exit status: 0 when every selected run is done (or was submitted), 1 when a run failed, 2 for a user error, 143
after SIGTERM (the running points checkpointed; the same command resumes them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.studies.collect import collect, format_summary, plot_summary, write_summary
from ptmdd_lightning.studies.execute import (
    SIGTERM_EXIT,
    StudyArgs,
    counts_line,
    default_out,
    load_study,
    run_local,
    slurm_parameters,
    submit_slurm,
)
from ptmdd_lightning.studies.spec import check_slurm, load_sweep
from ptmdd_lightning.studies.store import ADOPTED_FROM, Study

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``ptmdd-sweep`` argument parser.

    Raises:
        Nothing of its own.
    """
    p = argparse.ArgumentParser(
        prog="ptmdd-sweep",
        description="Run every point of a ptmdd sweep file (each as its own `ptmdd` process; finished ones are "
        "skipped, interrupted ones resume), then collect the results into <out>/summary.{md,csv,json,png} and "
        "<out>/results_long.csv. Arguments after `--` go to every ptmdd run.",
    )
    p.add_argument("--sweep", help="the sweep file, e.g. configs/paper/cpu/sweeps/nm.yaml")
    p.add_argument("--out", default=None, help="the study folder (default lightning_logs/sweeps/<name>)")
    p.add_argument("--executor", choices=["local", "slurm"], default="local", help="where runs execute")
    p.add_argument("--parallel", type=int, default=1, help="local: runs at a time (default 1)")
    p.add_argument("--point", action="append", default=[], metavar="ID", help="run only this point (ID or ID@seedS)")
    p.add_argument(
        "--shard",
        default=None,
        metavar="k/N",
        help="run only every N-th run from the k-th (0-based) of those --point selects (of all without it)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="replace the sweep's seeds")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="add a fixed override to every run (VALUE is YAML), e.g. "
        "--set trainer.callbacks.PretrainPTMPool.init_args.roots.mnist=/data",
    )
    p.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a SLURM parameter over the sweep file's slurm: section (partition, gpus_per_task, cpus_per_task, "
        "mem_gb, time_min, array_parallelism, account, qos, constraint)",
    )
    p.add_argument(
        "--slurm-cluster",
        choices=["auto", "slurm", "local", "debug"],
        default="auto",
        help="submitit's cluster: auto (SLURM when sbatch exists), or local/debug to try the SLURM path here",
    )
    p.add_argument("--wait", action="store_true", help="slurm: wait for the jobs, then collect")
    p.add_argument("--status", action="store_true", help="print each run's state and the counts, run nothing")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their folders, run nothing")
    p.add_argument("--collect-only", action="store_true", help="run nothing, only collect and plot")
    p.add_argument("--clean", action="store_true", help="delete version folders of settings no longer in the sweep")
    p.add_argument("--fail-fast", action="store_true", help="local: start no run after the first failure")
    p.add_argument(
        "--no-reuse",
        action="store_true",
        help="run every run here, even one whose identical settings a sibling study (another folder next to the "
        "study folder) already finished; by default such a run is copied, not repeated",
    )
    p.add_argument("--subprocess", action="store_true", help=argparse.SUPPRESS)  # every run is a process now
    return p


def _pairs(items: list[str], flag: str) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PtmddError(f"{flag} needs KEY=VALUE, got {item!r}.")
        out[key] = yaml.safe_load(value)
    return out


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    k, sep, n = text.partition("/")
    if not sep or not k.isdigit() or not n.isdigit():
        raise PtmddError(f"--shard needs k/N with 0 <= k < N, e.g. --shard 0/4; got {text!r}.")
    return int(k), int(n)


def _study_args(args: argparse.Namespace, extra: list[str]) -> StudyArgs:
    """From ``--sweep`` (and ``--set``, ``--seeds``, ``--``), or from ``<out>/study.json`` when only ``--out``."""
    if args.sweep is None:
        if args.out is None:
            raise PtmddError("give --sweep FILE (or --out FOLDER of a study started before).")
        record = Path(args.out) / "study.json"
        if not record.is_file():
            raise PtmddError(f"{args.out} holds no study.json; give the sweep file with --sweep.")
        saved = json.loads(record.read_text())
        return StudyArgs(
            sweep=saved["sweep"],
            out=str(Path(args.out).resolve()),
            sets={**saved.get("sets", {}), **_pairs(args.set, "--set")},
            extra=extra or saved.get("extra", []),
            seeds=args.seeds or saved.get("seeds"),
        )
    spec = load_sweep(args.sweep)
    out = Path(args.out) if args.out else default_out(spec.name)
    return StudyArgs(
        sweep=str(Path(args.sweep).resolve()),
        out=str(out.resolve()),
        sets=_pairs(args.set, "--set"),
        extra=extra,
        seeds=args.seeds,
    )


def _print_status(study: Study, slots) -> None:
    width = max((len(slot.key) for slot in slots), default=0)  # one column of run names, however long
    for slot in slots:
        folder = study.folder(slot)
        where = folder.relative_to(study.out) if folder is not None else "-"
        print(f"{study.state(slot):8s} {slot.key:{width}s} {where}")
    print(f"{counts_line(study.counts(slots))} ({len(slots)} runs)")


def _adopt(study: Study, slots) -> None:
    """Copy the sibling studies' done runs identical to ``slots`` (:meth:`Study.adopt`), one line each."""
    siblings = study.sibling_runs()
    for slot in slots:
        folder = study.adopt(slot, siblings)
        if folder is not None:
            source = json.loads((folder / "sweep_point.json").read_text())[ADOPTED_FROM]
            print(f"[ptmdd-sweep] {slot.key}: identical to the done run {source}: copied, not rerun")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ptmdd-sweep``; returns the exit status (see the module docstring).

    Raises:
        Nothing: a user error (a bad ``--shard``, ``--set``, a folder without ``study.json``) prints one line
            and returns status 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    stopped = failed = False
    try:
        study_args = _study_args(args, extra)
        study = load_study(study_args)
        slots = study.select(args.point or None, _shard(args.shard))
        if args.status:
            _print_status(study, slots)
            return 0
        if args.clean:
            stale = study.stale_versions()
            for folder in stale:
                shutil.rmtree(folder)
                print(f"[ptmdd-sweep] deleted {folder}")
            print(f"[ptmdd-sweep] --clean: deleted {len(stale)} version folder(s) of settings no longer in the sweep")
            return 0
        if args.dry_run:
            for slot in slots:
                folder = study.folder(slot) or slot.root / "version_<next>"
                print(
                    f"[ptmdd-sweep] {slot.key} ({study.state(slot)}): "
                    f"ptmdd {slot.subcommand} --config {folder}/sweep_point.yaml"
                )
            if args.executor == "slurm":
                params = check_slurm({**study.spec.slurm, **_pairs(args.slurm, "--slurm")}, "--slurm")
                todo = [s for s in slots if not study.is_done(s)]
                prepare = sum(s.is_prepare for s in todo)
                first = f"one prepare job ({prepare} runs), then " if prepare else ""
                after = " (afterok on the prepare job)" if prepare else ""
                print(
                    f"[ptmdd-sweep] would submit: {first}a job array of {len(todo) - prepare} points{after}; "
                    f"submitit parameters {slurm_parameters(params, 'ptmdd-' + study.spec.name)}"
                )
            return 0
        if not args.collect_only:
            study.write_record(
                {
                    "sweep": study_args.sweep,
                    "sets": study_args.sets,
                    "extra": study_args.extra,
                    "seeds": study_args.seeds,
                }
            )
            if not args.no_reuse:
                _adopt(study, slots)
            if args.executor == "slurm":
                params = check_slurm({**study.spec.slurm, **_pairs(args.slurm, "--slurm")}, "--slurm")
                cluster = None if args.slurm_cluster == "auto" else args.slurm_cluster
                submit_slurm(study, study_args, slots, params, cluster, wait=args.wait or cluster in ("local", "debug"))
                if not (args.wait or cluster in ("local", "debug")):
                    return 0
            else:
                results = run_local(study, slots, parallel=args.parallel, fail_fast=args.fail_fast)
                stopped = "stopped" in results.values()
                failed = "failed" in results.values()
        rows = collect(study)
        files = write_summary(study, rows)
        png = plot_summary(study.spec, rows, study.out)
    except PtmddError as err:
        print(f"ptmdd-sweep: error: {err}", file=sys.stderr)
        return 2
    print(format_summary(study.spec, rows))
    print(f"[ptmdd-sweep] wrote {', '.join(str(f) for f in files)}" + (f" and {png}" if png else ""))
    counts = None if args.collect_only else study.counts(slots)
    if counts is not None:
        print(f"[ptmdd-sweep] {counts_line(counts)}")
    if stopped:
        return SIGTERM_EXIT
    return 1 if failed or (args.executor == "slurm" and counts is not None and counts["failed"]) else 0


if __name__ == "__main__":
    sys.exit(main())
