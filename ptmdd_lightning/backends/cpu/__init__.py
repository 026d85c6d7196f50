"""The CPU backend: ConvNet-3 through ptmdd's C++ kernels or a compiled channels-last formulation.

Chosen by the run's ``backend`` (``auto``, ``cpu_kernels`` or ``compile``; :mod:`ptmdd_lightning.nets.forward`),
never imported by the core or the modules. Its pieces: :mod:`.kernels` (the C++ custom ops ``torch.ops.ptmdd.*``,
built on first use), :mod:`.fastnet` (:class:`~.fastnet.FastNet`, the formulations and the per-call choice of
path) and :mod:`.allocator` (an opt-in glibc setting). What this backend did in a process (kernels built or why
not, AMX, compile possible, the allocator setting) is added to every ``results.json`` under
``machine.backend.cpu``. Measurements: docs/speed.md.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ptmdd_lightning.backends.cpu import allocator, kernels
from ptmdd_lightning.backends.cpu.fastnet import FastNet, can_compile, compile_choice, convnet_supported
from ptmdd_lightning.machine import register_backend_status

__all__ = ["keep_freed_memory", "make_forward", "state"]


def state() -> dict[str, Any]:
    """This backend's state in this process, for ``results.json`` (builds nothing; never raises).

    Returns:
        ``{"kernels": bool | None, "kernels_reason": str | None, "amx": bool | None, "compile_possible": bool,
        "keep_freed_memory": bool}``; ``None`` where the kernels were never asked for.

    Raises:
        Nothing: builds nothing and never raises.
    """
    asked = kernels.status.cache_info().currsize > 0
    st = kernels.status() if asked else None
    return {
        "kernels": None if st is None else st.available,
        "kernels_reason": None if st is None else st.reason,
        "amx": None if st is None or not st.available else kernels.amx_available(),
        "compile_possible": can_compile(),
        "keep_freed_memory": allocator.keep_freed_memory.cache_info().currsize > 0 and allocator.keep_freed_memory(),
    }


def make_forward(
    net: nn.Module, backend: str, *, total_steps: int | None = None, compile: bool | None = None
) -> FastNet | None:
    """The forward of ``net`` through this backend, or ``None`` where it does not apply (then the module runs).

    Args:
        net: any net of :mod:`ptmdd_lightning.nets`.
        backend: ``"auto"`` (kernels where they apply, compiled where ``compile`` or, when it is ``None``,
            :func:`~.fastnet.compile_choice` ``(total_steps)`` says so), ``"cpu_kernels"`` (no compiling) or
            ``"compile"`` (no kernels).
        total_steps, compile: see :func:`ptmdd_lightning.nets.forward.net_forward`.

    Returns:
        a :class:`~.fastnet.FastNet` for a supported ConvNet or where the kernels apply, else ``None``.

    Raises:
        Nothing of its own.
    """
    register_backend_status("cpu", state)
    if backend == "cpu_kernels":
        fast = FastNet(net, compile=False, kernels=True)
    elif backend == "compile":
        fast = FastNet(net, compile=True, kernels=False)
    else:
        fast = FastNet(net, compile=compile_choice(total_steps) if compile is None else compile)
    return fast if fast.kernels or fast.compiled or convnet_supported(net) else None


def keep_freed_memory() -> bool:
    """Opt in to :func:`.allocator.keep_freed_memory` (process-wide; recorded in :func:`state`).

    Raises:
        Nothing of its own.
    """
    register_backend_status("cpu", state)
    return allocator.keep_freed_memory()
