"""A study's folder on disk: one slot per run, version folders, atomic claims, and when a run is done.

Layout (``out`` is the study folder)::

    out/study.json                                  how the study was started (sweep file, --set, --seeds, extra)
    out/runs/<point>/seed<S>/version_<k>/           one version per distinct settings (signature) of the run
        sweep_point.yaml, sweep_point.json          its merged ptmdd config; its signature, point, seed
        claim.json                                  present while a process runs it (host, pid, heartbeat)
        sweep_failed.json / sweep_done.json         the last attempt's exit status (informational)
        attempt_<n>/                                files of an earlier attempt that left no checkpoint
        config.yaml, checkpoints/, results.*, ...   what ptmdd itself writes

Identical runs are not repeated across studies: before a study runs, :meth:`Study.adopt` copies into it every done
run of a *sibling* study (another folder next to ``out``, e.g. ``lightning_logs/sweeps/<other>``) whose signature
equals one of its own runs that has nothing to resume (never started, or its attempts left no ``last.ckpt``, e.g.
one that failed at once for want of data); the copy's ``sweep_point.json`` names its source (``adopted_from``).
``ptmdd-sweep --no-reuse`` turns this off (e.g. to check that a rerun gives the same numbers).

A run whose settings changed gets the next ``version_<k>``; earlier versions are never touched (``--clean``
deletes them, explicitly). A run is *done* when its own files say so, whoever ran it (this study process, another
one, a SLURM job, or a user with ``--point``): a distillation run with a
:class:`~ptmdd_lightning.callbacks.SyntheticSetEvaluation` is done when ``results.json`` has the rows of every
evaluation architecture (and the random-real baseline) at its final step, ``checkpoints/last.ckpt`` (when a
``ModelCheckpoint`` is configured) is at that step, and ``synthetic_set.pt`` exists (when a
:class:`~ptmdd_lightning.callbacks.SyntheticSetExport` is configured); a ``prepare`` run with ``creates`` when those
files exist; any other run when its last attempt exited 0.

Claims: a process claims a run by writing ``claim.json`` while it holds the study's lock (``out/.study.lock``, a
:class:`filelock.FileLock`). A claim is live while its owner is: on the same host, while its pid runs and has the
recorded start time (no pid reuse); on another host (a SLURM node), while its heartbeat (the file's mtime, touched
every ``lease_s / 10`` seconds) is younger than ``lease_s``. A claim whose owner died is taken over.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from filelock import FileLock

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.fileio import atomic_write_text
from ptmdd_lightning.studies.configs import point_config, signature, with_logger
from ptmdd_lightning.studies.spec import Point, SweepSpec, expand, substitute

__all__ = ["ADOPTED_FROM", "LEASE_S", "Claim", "Slot", "Study", "run_complete"]

#: seconds after its last heartbeat that a claim made on another host counts as abandoned
LEASE_S = 600.0
_POINT_YAML = "sweep_point.yaml"
_POINT_JSON = "sweep_point.json"
_CLAIM = "claim.json"
_FAILED = "sweep_failed.json"
_DONE = "sweep_done.json"
#: the key of ``sweep_point.json`` that names the sibling study's run a version folder was copied from
ADOPTED_FROM = "adopted_from"
#: what ptmdd writes into a run folder (an attempt that left these but no checkpoint is moved aside)
_RUN_FILES = ("config.yaml", "hparams.yaml", "checkpoints", "synthetic_set.pt", "synthetic_set.png", "results.json")


@dataclass
class Slot:
    """One run of a study: a point (or baseline, or prepare run) at one seed.

    Attributes:
        point: the point.
        seed: the seed (``seed_everything`` and ``data.init_args.seed``).
        subcommand: the ``ptmdd`` subcommand (``fit``).
        config: the merged ``ptmdd`` config without its logger folder.
        signature: :func:`~ptmdd_lightning.studies.configs.signature` of the config, subcommand and extra args.
        root: ``<out>/runs/<point>/seed<S>``, which holds the run's version folders.
        creates: files whose existence means a ``prepare`` run is done.

    Raises:
        Nothing of its own.
    """

    point: Point
    seed: int
    subcommand: str
    config: dict[str, Any]
    signature: str
    root: Path
    creates: list[Path] = field(default_factory=list)

    @property
    def key(self) -> str:
        """``<point>@seed<S>``: how ``--point``, the logs and the SLURM jobs name a run."""
        return f"{self.point.id}@seed{self.seed}"

    @property
    def is_prepare(self) -> bool:
        """Whether this is a ``prepare`` run (a PTM pool), which every point waits for."""
        return self.point.kind == "prepare"


def _pid_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from ``/proc``), or ``None`` when it is gone.

    Linux only; elsewhere ``"unknown"`` for a running pid (the pid alone then identifies the owner).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "unknown"


@dataclass
class Claim:
    """This process's claim of a run folder: ``claim.json`` plus a heartbeat thread that touches it.

    Attributes:
        folder: the run's version folder.
        token: a random id that tells this claim from a later one of the same folder.

    Raises:
        Nothing of its own.
    """

    folder: Path
    token: str
    lease_s: float = LEASE_S
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start_heartbeat(self) -> None:
        """Touch ``claim.json`` every ``lease_s / 10`` seconds until :meth:`release`."""

        def beat() -> None:
            while not self._stop.wait(self.lease_s / 10):
                try:
                    os.utime(self.folder / _CLAIM)
                except OSError:
                    return

        self._thread = threading.Thread(target=beat, name=f"heartbeat {self.folder.name}", daemon=True)
        self._thread.start()

    def release(self, study: Study) -> None:
        """Stop the heartbeat and remove ``claim.json`` if it is still this claim's."""
        self._stop.set()
        with study.lock():
            path = self.folder / _CLAIM
            if _read_json(path).get("token") == self.token:
                path.unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _callbacks(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{class name: init_args}`` of a config's ``trainer.callbacks`` (class names without their module)."""
    items = (config.get("trainer") or {}).get("callbacks") or []
    items = items if isinstance(items, list) else [items]
    out = {}
    for item in items:
        if isinstance(item, dict) and item.get("class_path"):
            out[str(item["class_path"]).rsplit(".", 1)[-1]] = dict(item.get("init_args") or {})
    return out


def _last_checkpoint(folder: Path) -> Path:
    """The ``last.ckpt`` a run in ``folder`` writes (``ModelCheckpoint(save_last=True)``) and resumes from."""
    return folder / "checkpoints" / "last.ckpt"


def _checkpoint_step(path: Path) -> int | None:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None
    return int(ckpt.get("global_step", -1)) if isinstance(ckpt, dict) else None


def run_complete(folder: Path, config: dict[str, Any]) -> bool:
    """Whether the distillation run in ``folder`` (with the merged ``config``) finished, judged from its own files.

    Done: ``results.json`` holds, at one final step (``trainer.max_steps`` when it is set), a ``synthetic`` row for
    every evaluation architecture and a ``random_real`` row too when the evaluation's ``baseline`` is on; a
    configured ``ModelCheckpoint``'s ``checkpoints/last.ckpt`` is at that step; a configured
    ``SyntheticSetExport`` wrote ``synthetic_set.pt``. A run killed during its final evaluation is therefore not
    done, even though it trained to the end.

    Args:
        folder: the run's version folder.
        config: its merged ``ptmdd`` config (to know the evaluation's architectures, the steps, the callbacks).

    Returns:
        ``False`` also when the config has no ``SyntheticSetEvaluation`` (such runs are judged by exit status).

    Raises:
        Nothing of its own.
    """
    callbacks = _callbacks(config)
    evaluation = callbacks.get("SyntheticSetEvaluation")
    if evaluation is None:
        return False
    try:
        rows = json.loads((folder / "results.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(rows, list) or not rows:
        return False
    max_steps = (config.get("trainer") or {}).get("max_steps")
    final = int(max_steps) if isinstance(max_steps, int) and max_steps > 0 else max(int(r["step"]) for r in rows)
    have = {(r.get("arch"), r.get("set")) for r in rows if int(r.get("step", -1)) == final}
    archs = evaluation.get("archs") or ["ConvNet"]
    sets = ["synthetic", "random_real"] if evaluation.get("baseline", True) else ["synthetic"]
    if not all((a, s) in have for a in archs for s in sets):
        return False
    if "ModelCheckpoint" in callbacks:
        last = _last_checkpoint(folder)
        if not last.is_file() or _checkpoint_step(last) != final:
            return False
    return not ("SyntheticSetExport" in callbacks and not (folder / "synthetic_set.pt").is_file())


class Study:
    """A sweep's runs and their state in the study folder ``out`` (see the module docstring for the layout).

    Args:
        spec: the parsed sweep file.
        out: the study folder.
        extra: extra ``ptmdd`` arguments of every run (part of each run's signature).
        seeds: replaces the sweep's seeds (not those of ``prepare`` runs).
        lease_s: seconds without heartbeat after which another host's claim counts as abandoned.

    Raises:
        PtmddError: from expanding the sweep or merging a point's config.
    """

    def __init__(
        self,
        spec: SweepSpec,
        out: str | os.PathLike,
        extra: list[str] | None = None,
        seeds: list[int] | None = None,
        lease_s: float = LEASE_S,
    ) -> None:
        self.spec = spec
        self.out = Path(out).resolve()
        self.extra = list(extra or [])
        self.seeds = list(seeds) if seeds else None
        self.lease_s = lease_s
        self.points = expand(spec)
        self._slots: list[Slot] | None = None

    # ---------------------------------------------------------------------------------------- the runs
    def slots(self) -> list[Slot]:
        """Every run: the ``prepare`` runs first, then each point (grid order, then baselines) at each seed."""
        if self._slots is None:
            slots = []
            for point in [*self.spec.prepare, *self.points]:
                subcommand = point.subcommand or self.spec.subcommand
                for seed in point.seeds or self.seeds or self.spec.seeds:
                    config = point_config(point, seed)
                    slots.append(
                        Slot(
                            point=point,
                            seed=seed,
                            subcommand=subcommand,
                            config=config,
                            signature=signature(config, subcommand, self.extra),
                            root=self.out / "runs" / point.id / f"seed{seed}",
                            creates=[Path(substitute(c, {"seed": seed})) for c in point.creates],
                        )
                    )
            self._slots = slots
        return self._slots

    def select(self, keys: list[str] | None = None, shard: tuple[int, int] | None = None) -> list[Slot]:
        """The runs named by ``keys`` (``<point>`` for all its seeds, or ``<point>@seed<S>``) and/or in ``shard``.

        ``shard = (k, n)`` keeps every n-th point run starting at the k-th (0-based), in :meth:`slots` order, of
        the runs ``keys`` selects (of all, without ``keys``), so that n processes given the same ``keys`` share
        them evenly; ``prepare`` runs are always kept (every point needs them; a claim makes sure one process runs
        each).

        Raises:
            PtmddError: a key that names no run (the message lists the run names), or a bad shard.
        """
        slots = self.slots()
        chosen = [s for s in slots if not s.is_prepare]
        if keys:
            names = {s.key for s in chosen} | {s.point.id for s in chosen}
            unknown = [k for k in keys if k not in names]
            if unknown:
                listing = ", ".join(dict.fromkeys(s.point.id for s in chosen))
                raise PtmddError(f"--point {unknown[0]!r} names no run of this study; its points are: {listing}.")
            chosen = [s for s in chosen if s.key in keys or s.point.id in keys]
        if shard is not None:
            k, n = shard
            if not (n >= 1 and 0 <= k < n):
                raise PtmddError(f"--shard k/N needs 0 <= k < N, got {k}/{n}.")
            chosen = [s for i, s in enumerate(chosen) if i % n == k]
        return [s for s in slots if s.is_prepare] + chosen

    # ---------------------------------------------------------------------------------------- folders
    def lock(self) -> FileLock:
        """The study's lock (``out/.study.lock``), held for the milliseconds of a folder or claim change."""
        self.out.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.out / ".study.lock"), timeout=300)

    def versions(self, slot: Slot) -> list[Path]:
        """The version folders of ``slot``, oldest first."""
        if not slot.root.is_dir():
            return []
        found = [p for p in slot.root.glob("version_*") if p.is_dir() and p.name[8:].isdigit()]
        return sorted(found, key=lambda p: int(p.name[8:]))

    def folder(self, slot: Slot) -> Path | None:
        """The version folder of ``slot`` with its current signature, or ``None`` when it has none yet."""
        for path in reversed(self.versions(slot)):
            if _read_json(path / _POINT_JSON).get("signature") == slot.signature:
                return path
        return None

    def _next_version(self, slot: Slot) -> Path:
        """The path of ``slot``'s next version folder (``version_0`` first; caller holds :meth:`lock`)."""
        versions = self.versions(slot)
        return slot.root / f"version_{int(versions[-1].name[8:]) + 1 if versions else 0}"

    def _write_point(self, slot: Slot, where: Path, folder: Path, **more: str) -> None:
        """Write ``slot``'s ``sweep_point.yaml`` (its logger writing into ``folder``) and ``.json`` into ``where``."""
        atomic_write_text(where / _POINT_YAML, yaml.safe_dump(with_logger(slot.config, folder), sort_keys=False))
        record = {
            "signature": slot.signature,
            "point": slot.point.id,
            "kind": slot.point.kind,
            "seed": slot.seed,
            "subcommand": slot.subcommand,
            "extra": self.extra,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **more,
        }
        atomic_write_text(where / _POINT_JSON, json.dumps(record, indent=1))

    def _make_folder(self, slot: Slot) -> Path:
        """Create the next version folder for ``slot`` with its config (caller holds :meth:`lock`)."""
        folder = self._next_version(slot)
        folder.mkdir(parents=True)
        self._write_point(slot, folder, folder)
        return folder

    def sibling_runs(self) -> dict[str, list[Path]]:
        """The version folders of the sibling studies (the other folders of ``out.parent``), by signature.

        Returns:
            ``{signature: [version folder, ...]}`` (sorted paths); empty when ``out`` has no sibling study.
        """
        found: dict[str, list[Path]] = {}
        if not self.out.parent.is_dir():
            return found
        for record in sorted(self.out.parent.glob(f"*/runs/*/seed*/version_*/{_POINT_JSON}")):
            folder = record.parent
            if folder.parents[3] == self.out:
                continue
            sig = _read_json(record).get("signature")
            if isinstance(sig, str):
                found.setdefault(sig, []).append(folder)
        return found

    def adopt(self, slot: Slot, siblings: dict[str, list[Path]] | None = None) -> Path | None:
        """Copy a sibling study's done run with ``slot``'s signature into a new version folder of ``slot``.

        Only a run with nothing to resume is adopted: ``slot`` has no version folder of its signature, or that
        folder is unclaimed, not done and holds no ``checkpoints/last.ckpt`` (its attempts failed before the first
        checkpoint, e.g. at once for want of data: rerunning it would start from step 0 anyway). That folder is kept
        as it is and the copy becomes the next version, which :meth:`folder` finds first. A run with a checkpoint is
        continued by its own study, never replaced. Only a point is adopted (never a ``prepare`` run), and only a
        source that is done by :meth:`is_done`'s test and unclaimed. The copy is made next to the version folders
        and renamed into place under :meth:`lock`; its ``sweep_point.{yaml,json}`` are this study's (its logger
        folder, point, creation time) plus ``adopted_from`` (the source folder). A run whose signature is equal ran
        the same merged config, seed, subcommand and extra arguments; the code version is not part of the
        signature (as for resuming).

        Args:
            slot: one of this study's runs.
            siblings: :meth:`sibling_runs` (computed when ``None``).

        Returns:
            The new version folder, or ``None`` when nothing was adopted.
        """
        if slot.is_prepare or slot.creates or not self._nothing_to_resume(slot):
            return None
        siblings = self.sibling_runs() if siblings is None else siblings
        for source in siblings.get(slot.signature, []):
            if self.owner(source) is not None or not self.is_done(slot, source):
                continue
            with self.lock():
                if not self._nothing_to_resume(slot):
                    return None
                folder = self._next_version(slot)
                staging = slot.root / f".adopting_{uuid.uuid4().hex}"
                shutil.copytree(source, staging, ignore=shutil.ignore_patterns(_CLAIM, _FAILED))
                self._write_point(slot, staging, folder, **{ADOPTED_FROM: str(source)})
                staging.rename(folder)
            return folder
        return None

    def _nothing_to_resume(self, slot: Slot) -> bool:
        """``slot`` has no folder of its signature, or one that is unclaimed, not done and without ``last.ckpt``."""
        folder = self.folder(slot)
        if folder is None:
            return True
        if self.owner(folder) is not None or self.is_done(slot, folder):
            return False
        return not _last_checkpoint(folder).is_file()  # what prepare_attempt would resume

    def stale_versions(self) -> list[Path]:
        """Version folders whose signature no current run has (kept until ``--clean``)."""
        current = {(s.root, s.signature) for s in self.slots()}
        stale = []
        for slot in self.slots():
            for path in self.versions(slot):
                if (slot.root, _read_json(path / _POINT_JSON).get("signature")) not in current:
                    stale.append(path)
        return list(dict.fromkeys(stale))

    # ---------------------------------------------------------------------------------------- state
    def is_done(self, slot: Slot, folder: Path | None = None) -> bool:
        """Whether ``slot`` is done (see the module docstring), from its files alone."""
        if slot.creates:
            return all(p.is_file() for p in slot.creates)
        folder = folder or self.folder(slot)
        if folder is None:
            return False
        if "SyntheticSetEvaluation" in _callbacks(slot.config):
            return run_complete(folder, self.ran_config(slot, folder))
        done = _read_json(folder / _DONE)
        return done.get("signature") == slot.signature

    @staticmethod
    def ran_config(slot: Slot, folder: Path) -> dict[str, Any]:
        """The config the run in ``folder`` ran with.

        The config the run in ``folder`` ran with: ptmdd's own ``config.yaml`` there (the sweep's config with
        the extra arguments applied), else the sweep's merged config.
        """
        try:
            ran = yaml.safe_load((folder / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            ran = None
        return ran if isinstance(ran, dict) else slot.config

    def owner(self, folder: Path) -> dict[str, Any] | None:
        """The live claim of ``folder`` (its ``claim.json`` record), or ``None`` when unclaimed or abandoned."""
        path = folder / _CLAIM
        record = _read_json(path)
        if not record:
            return None
        if record.get("host") == socket.gethostname():
            start = _pid_start(int(record.get("pid", -1)))
            return record if start is not None and start == record.get("pid_start") else None
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None
        return record if age < self.lease_s else None

    def state(self, slot: Slot) -> str:
        """``"done"``, ``"running"`` (a live claim), ``"failed"`` (the last attempt failed) or ``"pending"``."""
        folder = self.folder(slot)
        if self.is_done(slot, folder):
            return "done"
        if folder is None:
            return "pending"
        if self.owner(folder) is not None:
            return "running"
        return "failed" if (folder / _FAILED).is_file() else "pending"

    def failed_exit(self, slot: Slot) -> int | None:
        """The exit status of ``slot``'s last attempt when it failed (its ``sweep_failed.json``), else ``None``."""
        folder = self.folder(slot)
        if folder is None or not (folder / _FAILED).is_file() or self.is_done(slot, folder):
            return None
        return int(json.loads((folder / _FAILED).read_text())["exit"])

    def counts(self, slots: list[Slot] | None = None) -> dict[str, int]:
        """``{"done", "running", "failed", "pending"}`` counts over ``slots`` (default: every run)."""
        counts = dict.fromkeys(("done", "running", "failed", "pending"), 0)
        for slot in slots if slots is not None else self.slots():
            counts[self.state(slot)] += 1
        return counts

    # ---------------------------------------------------------------------------------------- claims
    def claim(self, slot: Slot) -> tuple[Claim | None, Path, str]:
        """Claim ``slot`` atomically.

        Returns:
            ``(claim, folder, why)``: ``claim`` is ``None`` when the run is done (``why == "done"``) or another live
            process holds it (``why == "running"``); otherwise this process owns ``folder`` (created if needed) and
            ``why`` is ``"claimed"`` or ``"taken over"`` (its earlier owner died).
        """
        with self.lock():
            folder = self.folder(slot)
            if self.is_done(slot, folder):
                return None, folder or slot.root, "done"
            why = "claimed"
            if folder is None:
                folder = self._make_folder(slot)
            elif (folder / _CLAIM).is_file():
                if self.owner(folder) is not None:
                    return None, folder, "running"
                why = "taken over"
            token = uuid.uuid4().hex
            record = {
                "token": token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "pid_start": _pid_start(os.getpid()),
                "claimed": time.time(),
                "slurm_job": os.environ.get("SLURM_JOB_ID"),
            }
            atomic_write_text(folder / _CLAIM, json.dumps(record))
        claim = Claim(folder, token, self.lease_s)
        claim.start_heartbeat()
        return claim, folder, why

    # ---------------------------------------------------------------------------------------- markers
    def prepare_attempt(self, slot: Slot, folder: Path) -> list[str]:
        """The ``ptmdd`` arguments of the next attempt in ``folder``, resuming ``checkpoints/last.ckpt`` if any.

        An earlier attempt that left files but no ``last.ckpt`` is moved into ``folder/attempt_<n>/`` first (so
        ptmdd starts in a clean folder and nothing written before is lost).
        """
        args = [slot.subcommand, "--config", str(folder / _POINT_YAML)]
        last = _last_checkpoint(folder)
        if slot.subcommand == "fit" and last.is_file():
            return [*args, "--ckpt_path", str(last), *self.extra]
        leftovers = [p for p in folder.iterdir() if p.name in _RUN_FILES or p.name.startswith(("events.", "results."))]
        if leftovers:
            n = sum(1 for p in folder.glob("attempt_*")) + 1
            aside = folder / f"attempt_{n}"
            aside.mkdir()
            for p in leftovers:
                shutil.move(str(p), str(aside / p.name))
        return [*args, *self.extra]

    def finish_attempt(self, slot: Slot, folder: Path, returncode: int, seconds: float) -> str:
        """Record an attempt's outcome; return ``"done"``, ``"stopped"`` (SIGTERM) or ``"failed"``."""
        record = {
            "signature": slot.signature,
            "exit": returncode,
            "seconds": round(seconds, 1),
            "host": socket.gethostname(),
        }
        if returncode == 0:
            atomic_write_text(folder / _DONE, json.dumps(record, indent=1))
            (folder / _FAILED).unlink(missing_ok=True)
        if self.is_done(slot, folder):
            return "done"
        if returncode in (143, -15):
            return "stopped"
        atomic_write_text(folder / _FAILED, json.dumps(record, indent=1))
        return "failed"

    def write_record(self, args: dict[str, Any]) -> None:
        """Write ``out/study.json``, how the study was started.

        Write ``out/study.json``: how the study was started, so that ``--status``/``--collect-only`` need only
        the folder.
        """
        atomic_write_text(self.out / "study.json", json.dumps(args, indent=1))
