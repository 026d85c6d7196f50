"""How the core and the modules run a net: one small interface in front of the optional speed backends.

The DD code (the objectives, the evaluation engine, the Lightning modules) never calls a speed path directly. It asks
:func:`net_forward` for a :class:`NetForward` of a net, by the name of a backend from the run's config:

* ``"eager"``: the module itself (:class:`EagerForward`), on every device; the reference for every number.
* ``"cpu_kernels"``: ConvNet-3 through ptmdd's C++ CPU kernels (``ptmdd_lightning/backends/cpu``) where they apply
  (images that need no gradient, CPU, the kernels built); the module elsewhere.
* ``"compile"``: supported ConvNets as a ``torch.compile``-d channels-last formulation; the module elsewhere.
* ``"auto"`` (the default): the kernels where they apply and the compiled formulation where it pays (a CPU with a
  C++ compiler, runs of at least 20 steps); on CUDA the module.

A backend is a plugin module loaded by name when first asked for (:data:`BACKEND_MODULES`), so importing the core
builds, compiles and changes nothing. ``PTMDD_BACKEND`` overrides the config for a whole process (e.g.
``PTMDD_BACKEND=eager`` to check a result on the reference path). Which backend was asked for and which paths ran
go into every ``results.json`` (:func:`ptmdd_lightning.machine.machine_record`, ``backend``).

Pure torch; never imports Lightning, the core, or a backend at import time.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Mapping
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.machine import record_backend_request, record_fast_path

__all__ = [
    "BACKENDS",
    "BACKEND_MODULES",
    "DEFAULT_CHUNK",
    "BackendName",
    "EagerForward",
    "NetForward",
    "keep_freed_memory",
    "net_forward",
    "resolve_backend",
]

#: the backend names a config may give
BACKENDS = ("auto", "eager", "cpu_kernels", "compile")
BackendName = Literal["auto", "eager", "cpu_kernels", "compile"]
#: the module that implements each non-eager backend (imported on first use; it provides ``make_forward``)
BACKEND_MODULES = {
    "auto": "ptmdd_lightning.backends.cpu",
    "cpu_kernels": "ptmdd_lightning.backends.cpu",
    "compile": "ptmdd_lightning.backends.cpu",
}
#: images per chunk of a large CPU batch (keeps the first block's maps of ConvNet-3 in a few MiB; the result is the
#: same because every image is processed on its own, unless a BatchNorm is in training mode, which is never split)
DEFAULT_CHUNK = 32


class NetForward(Protocol):
    """What :func:`net_forward` returns: ``forward``/``embed`` compute what ``net(x)``/``net.embed(x)`` compute.

    Attributes:
        net: the wrapped module (its current parameters are read on every call).
        kernels: whether the CPU kernel path may run for this net; compiled: whether the compiled formulation may.

    Raises:
        Nothing of its own.
    """

    net: nn.Module
    kernels: bool
    compiled: bool

    def forward(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """Logits ``(N, K)`` of images ``(N, C, H, W)``, with ``params`` (name -> tensor) in place of the net's own."""
        ...

    def embed(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """Features ``(N, D)`` before the classifier, as ``net.embed(x)``."""
        ...

    def class_grads(self, x: Tensor, y: Tensor, num_classes: int) -> dict[str, Tensor] | None:
        """Per-class parameter gradients of the cross-entropy (DC's matching), or ``None`` without a fused path."""
        ...

    def __call__(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """Same as :meth:`forward`."""
        ...


class _Embed(nn.Module):
    """``net.embed`` as a module's forward, so that ``torch.func.functional_call`` can replace its parameters."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.embed(x)


class EagerForward:
    """The module itself: ``forward``/``embed`` call ``net``/``net.embed``; the ``eager`` backend and every fallback.

    Large CPU batches are cut into chunks of ``chunk`` images and concatenated (the same function, because every
    image is processed on its own; a net with a BatchNorm in training mode is never split), which keeps the
    temporaries small. With ``params`` (``name -> tensor`` as ``net.named_parameters()``) the call runs with those
    parameters, as ``torch.func.functional_call``.

    Args:
        net: any net of :mod:`ptmdd_lightning.nets` (``forward``; ``embed`` where called).
        chunk: images per chunk on the CPU (``None``: :data:`DEFAULT_CHUNK`; ``0``: never split).

    Shapes: ``embed``: ``(N, C, H, W) -> (N, D)``; ``forward``: ``(N, C, H, W) -> (N, K)``; dtypes as the
    module's (autocast respected).

    Raises:
        Nothing of its own.
    """

    kernels = False
    compiled = False

    def __init__(self, net: nn.Module, chunk: int | None = None) -> None:
        self.net = net
        self.chunk = DEFAULT_CHUNK if chunk is None else int(chunk)
        self._bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def chunks(self, x: Tensor, size: int) -> list[Tensor]:
        """``x`` in about equal chunks of at most ``size`` images (CPU only; ``[x]`` for ``size <= 0``)."""
        n = x.shape[0]
        if size <= 0 or n <= size or x.device.type != "cpu" or any(m.training for m in self._bns):
            return [x]
        k = math.ceil(n / size)
        return list(x.split(math.ceil(n / k)))

    def run_module(self, kind: str, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """``net(x)`` (``kind="forward"``) or ``net.embed(x)`` (``"embed"``), chunked, with ``params`` if given."""
        record_fast_path("eager")
        parts = self.chunks(x, self.chunk)
        if params is not None:
            module = self.net if kind == "forward" else _Embed(self.net)
            prefix = "" if kind == "forward" else "net."
            state = {prefix + k: v for k, v in {**dict(self.net.named_buffers()), **dict(params)}.items()}
            outs = [torch.func.functional_call(module, state, (p,)) for p in parts]
        else:
            f = self.net if kind == "forward" else self.net.embed
            outs = [f(p) for p in parts]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def forward(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """``net(x)``: ``(N, C, H, W) -> (N, K)`` logits; ``params`` replace the net's parameters."""
        return self.run_module("forward", x, params)

    def embed(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """``net.embed(x)``: ``(N, C, H, W) -> (N, D)``; ``params`` as in :meth:`forward`."""
        return self.run_module("embed", x, params)

    def class_grads(self, x: Tensor, y: Tensor, num_classes: int) -> dict[str, Tensor] | None:
        """``None``: the eager path has no fused per-class gradient.

        ``None``: the eager path has no fused per-class gradient; the caller uses the generic
        :func:`ptmdd_lightning.core.objectives.dc_class_gradients`.
        """
        return None

    __call__ = forward


def resolve_backend(backend: str) -> str:
    """The backend that runs: ``PTMDD_BACKEND`` if set, else ``backend``.

    Raises:
        PtmddError: an unknown name (naming the choices and where it came from).
    """
    env = os.environ.get("PTMDD_BACKEND", "").strip().lower()
    name = env or str(backend).strip().lower()
    if name not in BACKENDS:
        where = "the environment variable PTMDD_BACKEND" if env else "the config's backend"
        raise PtmddError(f"unknown backend {name!r} in {where}; use one of {', '.join(BACKENDS)}.")
    return name


def net_forward(
    net: nn.Module, backend: str = "auto", *, total_steps: int | None = None, compile: bool | None = None
) -> NetForward:
    """The forward of ``net`` through ``backend`` (see the module docstring).

    Args:
        net: any net of :mod:`ptmdd_lightning.nets`.
        backend: ``"auto"``, ``"eager"``, ``"cpu_kernels"`` or ``"compile"`` (``PTMDD_BACKEND`` overrides).
        total_steps: the run's length in steps, for ``"auto"``'s decision whether compiling pays (``None``:
            unknown, compile where possible).
        compile: for ``"auto"``: ``False`` never compiles, ``True`` always (where the net is supported),
            ``None`` decides by ``total_steps``.

    Returns:
        a :class:`NetForward`; the backend's, or :class:`EagerForward` where it does not apply.

    Raises:
        PtmddError: an unknown backend name.
    """
    name = resolve_backend(backend)
    record_backend_request(name)
    if name == "eager":
        return EagerForward(net)
    plugin = importlib.import_module(BACKEND_MODULES[name])
    fast = plugin.make_forward(net, name, total_steps=total_steps, compile=compile)
    return fast if fast is not None else EagerForward(net)


def keep_freed_memory() -> bool:
    """Opt in to keeping freed memory in this process.

    Opt in to keeping freed memory in this process (glibc ``mallopt``; the CPU backend's
    :func:`ptmdd_lightning.backends.cpu.allocator.keep_freed_memory`): faster CPU steps, a larger resident heap.
    Process-wide and not undone; called only by a run whose config sets ``keep_freed_memory: true``.

    Returns:
        whether the setting was applied (``False`` off Linux/glibc or with ``PTMDD_MALLOC_TUNE=0``).

    Raises:
        Nothing of its own.
    """
    return importlib.import_module(BACKEND_MODULES["cpu_kernels"]).keep_freed_memory()
