"""The machine a run ran on, for the record: CPU model and ISA, threads, torch version, precision, fast paths, commit.

Results can differ in the last bits between thread counts and between CPU kinds (docs/distributed.md,
"Determinism"), and the CPU speed paths differ by CPU (AMX on Intel Sapphire Rapids; none of it on an AVX2-only
CPU), so every ``results.json`` and every benchmark JSON carries :func:`machine_record`.

Pure Python + torch; never imports Lightning or the rest of ptmdd at import time.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ptmdd_lightning.errors import PtmddError

__all__ = [
    "PRECISIONS",
    "attempt_kinds",
    "attempt_record",
    "auto_precision",
    "backend_record",
    "busy_cpus",
    "code_record",
    "contention_warning",
    "cpu_info",
    "emulated_bf16_warning",
    "fast_paths_ran",
    "kinds_summary",
    "machine_record",
    "native_bf16_cpu",
    "record_backend_request",
    "record_fast_path",
    "register_backend_status",
    "trainer_precision",
]

#: the /proc/cpuinfo flags that decide ptmdd's CPU paths and bf16 speed
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")

_PATHS_RAN: dict[str, int] = {}


def record_fast_path(name: str) -> None:
    """Count one call through the speed path ``name`` (``"cpu_kernels"``, ``"amx"``, ``"compile"``, ``"eager"``).

    Raises:
        Nothing of its own.
    """
    _PATHS_RAN[name] = _PATHS_RAN.get(name, 0) + 1


def fast_paths_ran() -> list[str]:
    """The speed paths that ran in this process so far, sorted.

    The speed paths that ran in this process so far through :func:`ptmdd_lightning.nets.forward.net_forward`,
    sorted: ``"cpu_kernels"``, ``"amx"`` (the AMX weight gradient), ``"compile"``, ``"eager"`` (the module itself).

    Nets that never go through ``net_forward`` (the PTMs' guidance forwards) always run eagerly and are not counted.

    Raises:
        Nothing of its own.
    """
    return sorted(_PATHS_RAN)


_BACKENDS_ASKED: set[str] = set()
_BACKEND_STATUS: dict[str, Callable[[], dict[str, Any]]] = {}


def record_backend_request(name: str) -> None:
    """Note that a net was asked for through backend ``name`` (``"auto"``, ``"eager"``, ...) in this process.

    Raises:
        Nothing of its own.
    """
    _BACKENDS_ASKED.add(name)


def register_backend_status(name: str, status: Callable[[], dict[str, Any]]) -> None:
    """Let a backend add its state to :func:`backend_record`.

    Let a backend add its state (built or not, and why; the ISA it uses) to :func:`backend_record` under
    ``name``. Called by the backend when it is first used; ``status`` must not raise.

    Raises:
        Nothing of its own.
    """
    _BACKEND_STATUS[name] = status


def backend_record() -> dict[str, Any]:
    """The backends asked for, the speed paths that ran and each backend's state.

    ``{"requested": [...], "ran": [...], <backend>: {...}}``: the backends asked for in this process, the speed
    paths that ran (:func:`fast_paths_ran`), and each used backend's own state (e.g. ``cpu``: whether its kernels
    built, why not, whether AMX runs).

    Raises:
        Nothing of its own.
    """
    return {
        "requested": sorted(_BACKENDS_ASKED),
        "ran": fast_paths_ran(),
        **{name: status() for name, status in sorted(_BACKEND_STATUS.items())},
    }


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """``{"model": str, "vendor": str, "isa": [flags of ISA_FLAGS present], "kind": str}`` of this CPU.

    ``kind`` is ``"amx-bf16"`` (e.g. Intel Sapphire Rapids), ``"avx512-bf16"`` (e.g. AMD EPYC Zen 4),
    ``"avx512"``, ``"avx2"`` or ``"other"``. Read from ``/proc/cpuinfo`` (Linux); elsewhere
    ``platform.processor()`` and an empty ISA list. Never raises.

    Raises:
        Nothing: an unreadable ``/proc/cpuinfo`` gives the fallback.
    """
    model, vendor, flags = platform.processor() or platform.machine(), "", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.processor() or platform.machine()):
                    model = value.strip()
                elif key == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    isa = [f for f in ISA_FLAGS if f in flags]
    if "amx_bf16" in flags:
        kind = "amx-bf16"
    elif "avx512_bf16" in flags:
        kind = "avx512-bf16"
    elif "avx512f" in flags:
        kind = "avx512"
    elif "avx2" in flags:
        kind = "avx2"
    else:
        kind = "other"
    return {"model": model, "vendor": vendor, "isa": isa, "kind": kind}


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AMX-bf16 or AVX512-BF16).

    Without it bf16 is emulated and many times slower than fp32 (docs/speed.md, "CPUs without native bf16").

    Raises:
        Nothing of its own.
    """
    return cpu_info()["kind"] in ("amx-bf16", "avx512-bf16")


def auto_precision(device: torch.device | str | None = None) -> str:
    """The precision ``"auto"`` stands for on ``device``: ``"bf16"`` where bf16 pays, else ``"32"``.

    bf16 autocast on a GPU with bf16 support (``torch.cuda.is_bf16_supported()``) and on a CPU with AMX-bf16;
    fp32 on every other CPU: there bf16 is emulated (AVX2) or, with AVX512-BF16 alone, no faster than fp32 for
    ConvNet-3's convolutions, so fp32 keeps the digits at no cost in speed (``benchmarks/conv_floor.py``,
    docs/speed.md, "CPUs without native bf16"). The result is recorded with every run (``machine.precision``).

    Args:
        device: ``"cpu"``, ``"cuda:0"``, a ``torch.device``; ``None`` = CPU.

    Returns:
        ``"bf16"`` or ``"32"`` (the names :class:`~ptmdd_lightning.core.evaluate.EvalProtocol` takes).

    Raises:
        Nothing of its own.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32"
    if dev.type == "cpu":
        return "bf16" if cpu_info()["kind"] == "amx-bf16" else "32"
    return "32"


def emulated_bf16_warning(precision: str | int | None) -> str | None:
    """A warning naming the fix when a CPU run asks for bf16 that this CPU can only emulate.

    Without AMX-bf16 or AVX512-BF16 (:func:`native_bf16_cpu`; e.g. an AVX2-only AMD EPYC) bf16 arithmetic is
    emulated: a DM step of the findings campaign (IPC 10, batch_real 256, one thread) took 29.3 s in bf16-mixed
    against 3.49 s in fp32 (``benchmarks/bench.py --precision``, docs/speed.md, "CPUs without native bf16").
    ptmdd's own default is fp32 there (:func:`trainer_precision`); this catches a config, ``--trainer.precision``
    or ``PTMDD_PRECISION`` that pins bf16.

    Args:
        precision: the run's Lightning ``trainer.precision`` (e.g. ``"bf16-mixed"``, ``"32-true"``, ``32``).

    Returns:
        the message, or ``None`` for a precision without bf16 or a CPU with native bf16.

    Raises:
        Nothing of its own.
    """
    if "bf16" not in str(precision) or native_bf16_cpu():
        return None
    kind = cpu_info()["kind"]
    return (
        f"trainer.precision {precision} on a CPU without native bf16 (kind {kind}: no AMX-bf16, no AVX512-BF16): "
        "bf16 is emulated here, a DM step about 8x slower than fp32. Leave trainer.precision unset (fp32 on this "
        "CPU) or set it to 32-true, and unset PTMDD_PRECISION; a campaign that must stay in bf16 belongs on an "
        "AMX or AVX512-BF16 machine; docs/speed.md#cpus-without-native-bf16."
    )


#: the values ``PTMDD_PRECISION`` may take (Lightning ``trainer.precision`` names)
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true")


def trainer_precision(accelerator: str | None) -> str:
    """The Lightning ``trainer.precision`` a run gets when its config leaves it unset.

    ``"bf16-mixed"`` where :func:`auto_precision` gives bf16 (a bf16 GPU, an AMX CPU) on the device the
    ``accelerator`` selects (``"auto"``/``None``: CUDA when available, else the CPU; ``"gpu"``/``"cuda"``:
    CUDA; ``"cpu"``), else ``"32-true"``; other accelerators (``"mps"``, ``"tpu"``, an object) get ``"32-true"``.
    ``PTMDD_PRECISION`` (one of :data:`PRECISIONS`) replaces this machine default for a whole process, e.g. so
    that a campaign that spans machines of several CPU kinds (and resumes its runs on them) distils every run in
    one precision (``scripts/findings.sh``); an explicit ``trainer.precision`` still wins.

    Raises:
        PtmddError: ``PTMDD_PRECISION`` is set to something else than one of :data:`PRECISIONS`.
    """
    forced = os.environ.get("PTMDD_PRECISION")
    if forced:
        if forced not in PRECISIONS:
            raise PtmddError(
                f"PTMDD_PRECISION={forced!r} is not a Lightning precision ptmdd runs; use one of "
                f"{', '.join(PRECISIONS)} or unset it for this machine's default."
            )
        return forced
    name = str(accelerator or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name in ("gpu", "cuda"):
        return "bf16-mixed" if auto_precision("cuda") == "bf16" else "32-true"
    if name == "cpu":
        return "bf16-mixed" if auto_precision("cpu") == "bf16" else "32-true"
    return "32-true"


def busy_cpus(interval: float = 0.2) -> float | None:
    """How many of the CPUs this process may run on are busy with work, measured over ``interval`` seconds.

    Sums ``1 - idle fraction`` (``/proc/stat``, idle + iowait jiffies) over the CPUs of the affinity mask
    (``os.sched_getaffinity``: a SLURM cpuset or ``taskset`` narrows it). Call it while this process is idle
    (before training starts), so that what it measures is the neighbours' load.

    Returns:
        busy CPUs as a float in ``[0, len(affinity)]``, or ``None`` where ``/proc/stat`` is not readable.

    Raises:
        Nothing of its own.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []

    def read() -> dict[int, tuple[int, int]]:
        times = {}
        with open("/proc/stat") as fh:
            for line in fh:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    values = [int(v) for v in fields]
                    times[int(name[3:])] = (values[3] + values[4], sum(values[:8]))
        return times

    try:
        before = read()
        time.sleep(interval)
        after = read()
    except (OSError, ValueError, IndexError):
        return None
    busy = 0.0
    for cpu in cpus or sorted(after):
        if cpu in before and cpu in after:
            idle, total = (a - b for a, b in zip(after[cpu], before[cpu], strict=True))
            busy += 1.0 - idle / total if total > 0 else 0.0
    return busy


def contention_warning(threads: int | None = None, busy: float | None = None) -> str | None:
    """A warning naming the fix when other processes already keep the CPUs busy that ``threads`` would use.

    OpenMP threads on busy cores wait for each other at every barrier, so two multi-threaded runs on the same cores
    slow each other many times over; one thread each does not (docs/speed.md, "Contention").

    Args:
        threads: torch's intra-op threads (default ``torch.get_num_threads()``).
        busy: busy CPUs (default: measured now with :func:`busy_cpus`).

    Returns:
        the message, or ``None`` when ``threads`` fit on the idle CPUs (or the load cannot be read).

    Raises:
        Nothing of its own.
    """
    threads = torch.get_num_threads() if threads is None else threads
    busy = busy_cpus() if busy is None else busy
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if busy is None or threads <= 1:
        return None
    idle = max(1, int(cpus - busy + 0.5))
    if threads <= idle:
        return None
    return (
        f"about {busy:.1f} of the {cpus} CPUs this run may use are busy with other processes, and torch "
        f"runs {threads} OpenMP threads: each step can run many times slower than alone (2 such runs on 2 "
        f"cores: 23x). Give this run its share, e.g. OMP_NUM_THREADS={idle} (and taskset -c to pin it), or "
        "stop the other work; docs/speed.md#contention."
    )


@functools.lru_cache(maxsize=1)
def code_record() -> dict[str, Any]:
    """Which ptmdd ran: ``{"version", "commit", "dirty"}``, once per process.

    ``version`` is the installed distribution's (``None`` when ptmdd runs from a source tree without being
    installed); ``commit`` the full hash of ``HEAD`` and ``dirty`` whether tracked files differ from it, when the
    package is imported from a git checkout (``git`` on PATH), else both ``None`` (e.g. an installed wheel). A run
    resumed at another commit records the commit of its last process; a study's runner also keeps every commit
    that worked on it (scripts/findings.sh's ``commits.txt``, scripts/reproduce.sh's ``<run>.commit``).

    Raises:
        Nothing of its own.
    """
    try:
        version = metadata.version("ptmdd")
    except metadata.PackageNotFoundError:
        version = None
    root = Path(__file__).resolve().parent.parent
    commit = dirty = None
    if (root / ".git").exists():
        try:
            head = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            )
            status = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            head = status = None
        if head is not None and head.returncode == 0 and status.returncode == 0:
            commit, dirty = head.stdout.strip(), bool(status.stdout.strip())
    return {"version": version, "commit": commit, "dirty": dirty}


def machine_record(device: torch.device | str | None = None, precision: str | None = None) -> dict[str, Any]:
    """What a results file records about the machine and the code path of a run.

    Args:
        device: the run's device (``"cpu"``, ``"cuda:0"``, ...); ``None`` = CPU.
        precision: the run's precision as its owner names it (e.g. ``"bf16-mixed"``, ``"32"``).

    Returns:
        a JSON-ready dict: ``cpu`` (:func:`cpu_info`), ``threads`` (``torch.get_num_threads()``),
        ``omp_num_threads`` (the environment variable or ``None``), ``torch``, ``device``, ``gpu`` (CUDA device
        name or ``None``), ``precision``, ``fast_paths`` (:func:`fast_paths_ran`), ``backend``
        (:func:`backend_record`), the ``PTMDD_*`` overrides set and ``code`` (:func:`code_record`: ptmdd's
        version and git commit).

    Raises:
        Nothing of its own.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gpu = None
    if dev.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(dev)
    return {
        "cpu": cpu_info(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "device": str(dev),
        "gpu": gpu,
        "precision": None if precision is None else str(precision),
        "fast_paths": fast_paths_ran(),
        "backend": backend_record(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("PTMDD_") and k != "PTMDD_DATA"},
        "code": code_record(),
    }


def attempt_record(step: int, device: torch.device | str | None = None, precision: str | None = None) -> dict[str, Any]:
    """One attempt of a run (its start, or a resume from a checkpoint), for the run's ``machine["attempts"]``.

    A run stopped on one machine and resumed on another (a campaign that spans sessions) has steps, and
    evaluation models, computed on each; results can differ in the last bits between CPU kinds, so a results file
    lists every attempt, not just the machine that finished it.

    Args:
        step: the optimizer step the attempt starts at (``trainer.global_step`` after the checkpoint is restored;
            0 for a fresh run).
        device: the run's device; ``None`` = CPU.
        precision: the run's precision as its owner names it (e.g. ``"bf16-mixed"``).

    Returns:
        JSON-ready ``{"from_step": int, "cpu_kind": str, "cpu": str, "device": str, "threads": int,
        "precision": str | None, "commit": str | None, "started": "YYYY-MM-DDTHH:MM:SSZ"}`` (UTC).
        ``cpu_kind`` is :func:`cpu_info`'s ``kind``, or ``"cuda"`` on a GPU.

    Raises:
        Nothing of its own.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    cpu = cpu_info()
    return {
        "from_step": int(step),
        "cpu_kind": "cuda" if dev.type == "cuda" else cpu["kind"],
        "cpu": cpu["model"],
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "precision": None if precision is None else str(precision),
        "commit": code_record()["commit"],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def attempt_kinds(machine: dict[str, Any] | None) -> tuple[str, ...]:
    """The CPU kinds (or ``"cuda"``) a run's attempts ran on, in order, consecutive repeats merged.

    Args:
        machine: a results row's ``"machine"`` (:func:`machine_record`, with ``"attempts"`` since 2026-12-04).

    Returns:
        e.g. ``("amx-bf16", "avx512-bf16")`` for a run started on Intel and resumed on AMD. A record without
        ``attempts`` (older runs) gives its single kind; an attempt that is not known (a run resumed from a
        checkpoint of a ptmdd that kept no attempts) gives ``"?"``; no record at all gives ``("?",)``.

    Raises:
        Nothing of its own.
    """
    machine = machine or {}
    attempts = machine.get("attempts")
    if not attempts:
        kind = (machine.get("cpu") or {}).get("kind")
        if machine.get("gpu"):
            kind = "cuda"
        return (kind or "?",)
    kinds: list[str] = []
    for attempt in attempts:
        kind = attempt.get("cpu_kind") or "?"
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
    return tuple(kinds)


def kinds_summary(attempt_lists: Iterable[list[dict[str, Any]] | None]) -> str:
    """Where a set of runs ran, counted: e.g. ``"? x1, amx-bf16 x2, amx-bf16 -> avx512-bf16 x1"``.

    Args:
        attempt_lists: each run's ``attempts`` (:func:`attempt_record` entries, e.g. a PTM pool member file's
            ``"attempts"``), ``None`` for a run that kept none (it counts as ``"?"``).

    Returns:
        each distinct chain of :func:`attempt_kinds` (``"a -> b"`` for a run resumed on another kind) with its
        number of runs, sorted by name and joined by ``", "``; ``""`` for no runs. Why it matters: an hour of
        one CPU kind is not one of another (a 5-class DM step: 0.31 s on Intel AMX, 0.43-0.48 s on AMD Zen 4;
        docs/reproduce.md).

    Raises:
        Nothing of its own.
    """
    counts: dict[str, int] = {}
    for attempts in attempt_lists:
        chain = " -> ".join(attempt_kinds({"attempts": attempts}))
        counts[chain] = counts.get(chain, 0) + 1
    return ", ".join(f"{chain} x{n}" for chain, n in sorted(counts.items()))
