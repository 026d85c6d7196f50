"""The machine a run ran on, for the record: CPU model and ISA, threads, torch version, precision, fast paths.

Results can differ in the last bits between thread counts and between CPU kinds (docs/distributed.md,
"Determinism"), and the CPU speed paths differ by CPU (AMX on Intel Sapphire Rapids; none of it on an AVX2-only
CPU), so every ``results.json`` and every benchmark JSON carries :func:`machine_record`.

Pure Python + torch; never imports Lightning or the rest of ptmdd at import time.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

import torch

__all__ = ["cpu_info", "machine_record", "native_bf16_cpu", "fast_paths_ran", "record_fast_path"]

#: the /proc/cpuinfo flags that decide ptmdd's CPU paths and bf16 speed
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")

_PATHS_RAN: dict[str, int] = {}


def record_fast_path(name: str) -> None:
    """Count one call through the speed path ``name`` (``"cpu_kernels"``, ``"amx"``, ``"compile"``, ``"eager"``)."""
    _PATHS_RAN[name] = _PATHS_RAN.get(name, 0) + 1


def fast_paths_ran() -> list[str]:
    """The speed paths of :mod:`ptmdd_lightning.nets.fast` that ran in this process so far, sorted.

    ``"eager"`` means the module itself (no kernel, no compile) ran for a ConvNet call through ``FastNet``;
    nets that never go through ``FastNet`` (other architectures, the PTMs) always run eagerly and are not counted.
    """
    return sorted(_PATHS_RAN)


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """``{"model": str, "vendor": str, "isa": [flags of ISA_FLAGS present], "kind": str}`` of this CPU.

    ``kind`` is ``"amx-bf16"`` (e.g. Intel Sapphire Rapids), ``"avx512-bf16"`` (e.g. AMD EPYC Zen 4),
    ``"avx512"``, ``"avx2"`` or ``"other"``. Read from ``/proc/cpuinfo`` (Linux); elsewhere
    ``platform.processor()`` and an empty ISA list. Never raises.
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

    Without it bf16 is emulated and slow: measured on an AVX2-only AMD EPYC (2 threads, conv 256 x 128 x 14 x 14,
    3 x 3, 128 -> 128): fp32 253 ms, bf16 4468 ms (channels_last: 181 vs 1514 ms).
    """
    return cpu_info()["kind"] in ("amx-bf16", "avx512-bf16")


def machine_record(device: torch.device | str | None = None, precision: str | None = None) -> dict[str, Any]:
    """What a results file records about the machine and the code path of a run.

    Args:
        device: the run's device (``"cpu"``, ``"cuda:0"``, ...); ``None`` = CPU.
        precision: the run's precision as its owner names it (e.g. ``"bf16-mixed"``, ``"32"``).

    Returns:
        a JSON-ready dict: ``cpu`` (:func:`cpu_info`), ``threads`` (``torch.get_num_threads()``),
        ``omp_num_threads`` (the environment variable or ``None``), ``torch``, ``device``, ``gpu`` (CUDA device
        name or ``None``), ``precision``, ``fast_paths`` (:func:`fast_paths_ran`) and the ``PTMDD_*`` overrides set.
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
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("PTMDD_") and k != "PTMDD_DATA"},
    }
