"""Running a study's runs: every run is one ``python -m ptmdd_lightning <subcommand>`` process of its own.

Two engines, both built on the claims of :class:`~ptmdd_lightning.studies.store.Study` (so any number of them may
work on one study folder side by side, each run executing exactly once):

- :func:`run_local`: ``--executor local``, N runs at a time on this machine (``--parallel N``). SIGTERM stops the
  study: the running ``ptmdd`` processes get SIGTERM (each checkpoints and exits 143), their claims are released,
  nothing new starts, and the study exits 143; running it again resumes them from ``last.ckpt``.
- :func:`submit_slurm`: ``--executor slurm``, through `submitit <https://github.com/facebookincubator/submitit>`_
  (``pip install ptmdd[slurm]``): the ``prepare`` runs (PTM pools) as one first job, the points as one job array
  that depends on it (``afterok``), with the SLURM parameters of the sweep file's ``slurm:`` section and
  ``--slurm KEY=VALUE``. submitit's ``local`` and ``debug`` executors run the same path without a cluster.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.studies.spec import load_sweep
from ptmdd_lightning.studies.store import Slot, Study

__all__ = ["StudyArgs", "counts_line", "load_study", "run_local", "run_slot", "run_slot_job", "submit_slurm"]

#: the exit status of a study or run stopped by SIGTERM (128 + 15), as ``ptmdd`` itself uses
SIGTERM_EXIT = 143
#: the exit status of ``ptmdd`` for bad input (a config, missing data, ...): every run of a study would fail alike
USER_ERROR_EXIT = 2


@dataclass
class StudyArgs:
    """Everything needed to rebuild a :class:`Study` in another process (a SLURM job): plain, picklable data.

    Attributes:
        sweep: the sweep file.
        out: the study folder.
        sets: ``--set`` overrides ``{dotted key: value}`` added to every run's fixed overrides.
        extra: extra ``ptmdd`` arguments of every run (after ``--``).
        seeds: replaces the sweep's seeds (``None``: keep them).

    Raises:
        Nothing of its own.
    """

    sweep: str
    out: str
    sets: dict[str, Any] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    seeds: list[int] | None = None


def load_study(args: StudyArgs, lease_s: float | None = None) -> Study:
    """Parse the sweep file, add the ``--set`` overrides and build the :class:`Study`.

    Raises:
        PtmddError: a bad sweep file or override.
    """
    spec = load_sweep(args.sweep)
    spec.fixed.update(args.sets)
    kwargs = {} if lease_s is None else {"lease_s": lease_s}
    return Study(spec, args.out, extra=args.extra, seeds=args.seeds, **kwargs)


class _Children:
    """The running ``ptmdd`` processes of this study process, so that SIGTERM reaches each of them."""

    def __init__(self) -> None:
        self.procs: set[subprocess.Popen] = set()
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self.procs.add(proc)
            if self.stop.is_set():
                proc.send_signal(signal.SIGTERM)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self.procs.discard(proc)

    def terminate(self) -> None:
        self.stop.set()
        with self._lock:
            for proc in self.procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)


_CHILDREN = _Children()


def run_slot(study: Study, slot: Slot, log: Callable[[str], None] = print, children: _Children | None = None) -> str:
    """Claim ``slot`` and run it to the end as its own ``ptmdd`` process (its output goes to ``ptmdd.log``).

    Returns:
        ``"done"`` (ran now, or already done), ``"running"`` (another live process holds it), ``"stopped"``
        (SIGTERM; resumable) or ``"failed"`` (``sweep_failed.json`` says why).

    Raises:
        Nothing of its own.
    """
    children = children or _CHILDREN
    claim, folder, why = study.claim(slot)
    if claim is None:
        return why
    try:
        args = study.prepare_attempt(slot, folder)
        resuming = "--ckpt_path" in args
        log(
            f"[ptmdd-sweep] {slot.key}: {'resuming' if resuming else 'starting'}"
            f"{' (its earlier owner died)' if why == 'taken over' else ''}; log {folder / 'ptmdd.log'}"
        )
        start = time.perf_counter()
        with open(folder / "ptmdd.log", "ab") as out:
            out.write(f"\n# ptmdd {' '.join(args)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "ptmdd_lightning", *args], stdout=out, stderr=subprocess.STDOUT
            )
            children.add(proc)
            try:
                returncode = proc.wait()
            finally:
                children.discard(proc)
        seconds = time.perf_counter() - start
        status = study.finish_attempt(slot, folder, returncode, seconds)
        if status == "failed":
            tail = (folder / "ptmdd.log").read_text(errors="replace").strip().splitlines()[-5:]
            log(f"[ptmdd-sweep] {slot.key}: FAILED (exit {returncode}) after {seconds:.0f} s:\n  " + "\n  ".join(tail))
        else:
            log(f"[ptmdd-sweep] {slot.key}: {status} after {seconds:.0f} s")
        return status
    finally:
        claim.release(study)


def counts_line(counts: dict[str, int]) -> str:
    """``"D done, R running, F failed, P pending"`` of :meth:`Study.counts`.

    Raises:
        Nothing of its own.
    """
    c = counts
    return f"{c['done']} done, {c['running']} running, {c['failed']} failed, {c['pending']} pending"


def run_local(
    study: Study,
    slots: list[Slot],
    parallel: int = 1,
    fail_fast: bool = False,
    poll_s: float = 5.0,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Run ``slots`` on this machine, ``parallel`` at a time, until each is done or failed here.

    ``prepare`` runs go first; points start when every ``prepare`` run is done. A run held by another live
    process is waited for (and taken over if that process dies). Runs that failed in an earlier invocation are
    tried again; a run that fails now is not. A run that fails with a user error (``ptmdd``'s exit status 2: a bad
    config, missing data) stops the study as ``fail_fast`` does: the other runs would fail alike, so the error is
    shown once, not once per run.

    Args:
        study: the study.
        slots: the runs (:meth:`Study.select`).
        parallel: runs at a time (>= 1).
        fail_fast: stop starting runs after the first failure.
        poll_s: seconds between looks at runs held by other processes.
        log: where progress lines go.

    Returns:
        ``{slot key: final status}`` (``"done"``, ``"failed"``, ``"stopped"``, or ``"pending"`` for runs never
        started because the study stopped).

    Raises:
        PtmddError: ``parallel < 1``.
    """
    if parallel < 1:
        raise PtmddError(f"--parallel needs at least 1 run at a time, got {parallel}.")
    children = _CHILDREN
    children.stop.clear()
    previous = signal.getsignal(signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, lambda *_: children.terminate())
    results: dict[str, str] = {}
    running: dict[str, threading.Thread] = {}
    lock = threading.Lock()

    def work(slot: Slot) -> None:
        try:
            status = run_slot(study, slot, log, children)
        except Exception as err:  # noqa: BLE001 - one broken run must not take the study down
            log(f"[ptmdd-sweep] {slot.key}: FAILED ({type(err).__name__}: {err})")
            status = "failed"
        with lock:
            results[slot.key] = status

    try:
        todo = list(slots)
        reported = None
        invalid: str | None = None  # the run that stopped at a user error
        while todo or running:
            for key in [k for k, t in running.items() if not t.is_alive()]:
                running.pop(key).join()
                status = results.get(key)
                if status == "running":  # another process claimed it first: wait for it
                    results.pop(key)
                    todo.append(next(s for s in slots if s.key == key))
                if status == "failed" and invalid is None:
                    slot = next(s for s in slots if s.key == key)
                    if study.failed_exit(slot) == USER_ERROR_EXIT:
                        invalid = key
                        log(
                            f"[ptmdd-sweep] {key} stopped at a user error (exit {USER_ERROR_EXIT}, above), which the "
                            "other runs would meet too: no further run is started. Fix it and run the same command "
                            "again; done runs are kept."
                        )
                line = f"[ptmdd-sweep] {counts_line(study.counts(slots))}"
                if line != reported:
                    log(line)
                    reported = line
            if children.stop.is_set() or invalid is not None or (fail_fast and "failed" in results.values()):
                if not running:
                    break
                time.sleep(0.2)
                continue
            prepared = all(study.is_done(s) for s in slots if s.is_prepare)
            started = False
            for slot in list(todo):
                if len(running) >= parallel:
                    break
                if not slot.is_prepare and not prepared:
                    continue
                if any(p.is_prepare and p.key in running for p in slots) and not slot.is_prepare:
                    continue
                state = study.state(slot)
                if state == "done":
                    todo.remove(slot)
                    results[slot.key] = "done"
                    continue
                if state == "running":
                    continue
                todo.remove(slot)
                thread = threading.Thread(target=work, args=(slot,), name=slot.key, daemon=True)
                running[slot.key] = thread
                thread.start()
                started = True
            if not started:
                if not running and todo and not any(study.state(s) == "running" for s in todo):
                    # nothing runs anywhere, yet runs remain: a prepare run failed, so no point can start
                    failed = [s.key for s in slots if s.is_prepare and not study.is_done(s)]
                    if failed:
                        log(f"[ptmdd-sweep] prepare runs not done ({', '.join(failed)}): no point can start")
                        break
                time.sleep(0.2 if running else poll_s)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    for slot in slots:
        results.setdefault(slot.key, "pending")
    if children.stop.is_set():
        log("[ptmdd-sweep] stopped by SIGTERM: the running points checkpointed; run the same command again to resume")
    return results


# ---------------------------------------------------------------------------------------------- SLURM
def run_slot_job(args: StudyArgs, key: str) -> str:
    """The body of one SLURM job (or array task): rebuild the study and run the run named ``key``.

    A ``prepare`` job passes ``key = "prepare"`` and runs every ``prepare`` run. SIGTERM (SLURM's ``scancel`` or
    time limit with ``--signal``) reaches the ``ptmdd`` process, which checkpoints; submitting again resumes it.

    Raises:
        PtmddError: ``key`` names no run; RuntimeError: a run failed (so SLURM marks the task failed and the
            ``afterok`` array does not start after a failed ``prepare`` job).
    """
    study = load_study(args)
    if key == "prepare":
        slots = [s for s in study.slots() if s.is_prepare]
    else:
        slots = [s for s in study.slots() if s.key == key]
        if not slots:
            raise PtmddError(f"no run {key!r} in {args.sweep}.")
    signal.signal(signal.SIGTERM, lambda *_: _CHILDREN.terminate())
    statuses = []
    for slot in slots:
        status = run_slot(study, slot)
        while status == "running":  # another job holds it: wait for it to finish (or die)
            time.sleep(30)
            status = run_slot(study, slot)
        statuses.append(status)
    bad = [f"{s.key}: {st}" for s, st in zip(slots, statuses, strict=True) if st != "done"]
    if bad:
        raise RuntimeError("runs not done: " + "; ".join(bad))
    return "done"


_SLURM_MAP = {
    "partition": "slurm_partition",
    "gpus_per_task": "slurm_gpus_per_task",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb",
    "time_min": "timeout_min",
    "array_parallelism": "slurm_array_parallelism",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
}


def slurm_parameters(params: dict[str, Any], name: str) -> dict[str, Any]:
    """Submitit ``update_parameters`` keywords for the sweep's ``slurm:`` parameters (see ``SLURM_KEYS``)."""
    out: dict[str, Any] = {"name": name, "nodes": 1, "tasks_per_node": 1}
    for key, value in params.items():
        if key == "additional":
            out["slurm_additional_parameters"] = dict(value)
        else:
            out[_SLURM_MAP[key]] = value
    out.setdefault("timeout_min", 60)
    return out


def submit_slurm(
    study: Study,
    args: StudyArgs,
    slots: list[Slot],
    params: dict[str, Any],
    cluster: str | None = None,
    wait: bool = False,
    log: Callable[[str], None] = print,
) -> list[Any]:
    """Submit the study's unfinished runs through submitit: the ``prepare`` runs as one job, the points as an array.

    On SLURM the array depends on the ``prepare`` job (``--dependency=afterok:<id>``); with submitit's ``local``
    or ``debug`` cluster (tests, a workstation) the ``prepare`` job is awaited before the array is submitted.

    Args:
        study: the study.
        args: how to rebuild it inside a job.
        slots: the runs to submit (done ones are left out).
        params: SLURM parameters (the sweep's ``slurm:`` updated by ``--slurm``).
        cluster: ``None`` (SLURM when available, else local), ``"slurm"``, ``"local"`` or ``"debug"``.
        wait: wait for every job to end.
        log: where progress lines go.

    Returns:
        The submitit jobs (the ``prepare`` job first, if any).

    Raises:
        PtmddError: submitit is not installed (the message names ``pip install ptmdd[slurm]``).
    """
    try:
        import submitit
    except ImportError as err:
        raise PtmddError(
            "--executor slurm needs submitit: pip install 'ptmdd[slurm]' (or pip install submitit)."
        ) from err
    folder = study.out / "slurm" / "%j"
    todo = [s for s in slots if not study.is_done(s)]
    prepare = [s for s in todo if s.is_prepare]
    points = [s for s in todo if not s.is_prepare]
    jobs: list[Any] = []
    base = slurm_parameters(params, f"ptmdd-{study.spec.name}")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    dependency: dict[str, Any] = {}
    if prepare:
        executor.update_parameters(**{**base, "name": f"{base['name']}-prepare"})
        job = executor.submit(run_slot_job, args, "prepare")
        jobs.append(job)
        log(f"[ptmdd-sweep] submitted the prepare job {job.job_id} ({len(prepare)} runs)")
        if executor.cluster == "slurm":
            dependency = {
                "slurm_additional_parameters": {
                    **base.get("slurm_additional_parameters", {}),
                    "dependency": f"afterok:{job.job_id}",
                }
            }
        else:
            job.result()
    if points:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        executor.update_parameters(**{**base, **dependency})
        array = executor.map_array(run_slot_job, [args] * len(points), [s.key for s in points])
        jobs.extend(array)
        first = str(array[0].job_id).split("_")[0]
        log(f"[ptmdd-sweep] submitted job array {first} with {len(points)} points: {', '.join(s.key for s in points)}")
    if not jobs:
        log("[ptmdd-sweep] nothing to submit: every run is done")
    log(f"[ptmdd-sweep] watch it with: ptmdd-sweep --status --out {study.out}")
    if wait:
        for job in jobs:
            with contextlib.suppress(Exception):  # a failed job is reported by --status and the summary
                job.result()
    return jobs


def default_out(name: str) -> Path:
    """The default study folder ``lightning_logs/sweeps/<name>`` (relative to the working directory)."""
    return Path("lightning_logs") / "sweeps" / name
