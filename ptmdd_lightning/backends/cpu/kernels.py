"""Hand-written CPU kernels for the training path of ConvNet-3 (conv -> instance norm -> ReLU -> 2x2 average pool).

Why: in a training step of ConvNet-3 on 28x28 images (Fashion-MNIST/MNIST) the blocks' maps are written, read
and differentiated several times by memory-bound passes (im2col matmul, norm, ReLU, pool and their backward); the
first block alone took more than half of a forward + backward in the profile of docs/speed.md, lever 12. Three
kernels:

* :func:`pooled_relu_affine`, the first block. Its conv has few input channels (``k = C_in * 9 <= 64`` patch
  values per position), so with the instance-norm statistics folded into a per-image affine map (see
  :func:`ptmdd_lightning.backends.cpu.fastnet.first_block_kernel`) the whole block is

      ``out[n, i, j, c] = 1/4 * sum_{a, b in {0, 1}} relu(B[n, c] + sum_k A[n, k, c] * cols[n, 2i + a, 2j + b, k])``

  computed in one pass per image, writing only the pooled map (float32 or bf16) and the ReLU mask (1 bit per
  value); its backward (``dA``, ``dB`` and, when asked, ``dcols``) is one pass of ``k + 1`` multiply-adds per
  value.
* :func:`instance_norm_relu_pool`, every later block after its (oneDNN) convolution: the statistics, the
  normalisation, ReLU and the pooling of channels-last float32/bf16 maps in one pass each way.
* :func:`conv3x3_weight_grad`, the weight (and bias) gradient of the later blocks' 3x3 convolutions on bf16
  channels-last maps, on the CPU's AMX tile units where it has them (:func:`amx_available`); oneDNN's own
  weight gradient was the largest single cost of a training step. :func:`channels_last_conv3x3` is the convolution
  that uses it (oneDNN's forward and input gradient).

Everything else (the statistics of the first block, ``A`` and ``B`` from the weights, the convolutions' forward
and input gradient, the chain rule to the weights) is ordinary autograd.

The kernels are the C++ file ``csrc/convnet_kernels.cpp``, built once per machine by
``torch.utils.cpp_extension.load`` (``-O3 -march=native -fopenmp``; needs a C++ compiler and ninja, the ``cpu``
extra) into ``$PTMDD_CACHE/kernels/<key>`` (default ``~/.cache/ptmdd``; the key hashes the source, the flags, the
CPU's feature flags and the torch version), and registered as ``torch.library`` custom ops ``torch.ops.ptmdd.*``
with their autograd formulas (:func:`torch.library.register_autograd`) and fake implementations (so that
``torch.library.opcheck``, ``torch.compile`` and ``torch.export`` can trace them). Threads split the images
(the weight gradient: the positions); the result does not depend on the thread count except for the float32
summation order of the weight gradient (every image is computed by one thread, sums over images happen in torch).

The threads are OpenMP's: the library needs ``libgomp.so.1``, which the dynamic loader resolves to the copy torch
has already loaded, so the kernels run on torch's own intra-op thread pool. Threads of their own (``std::thread``,
the fallback when the compiler has no OpenMP) compete with torch's OpenMP workers, which keep spinning for a while
after every parallel op, which made a training step markedly slower (docs/speed.md, lever 17).

:func:`available` says whether the kernels could be built (``PTMDD_CPU_KERNELS=0`` turns them off; ``PTMDD_AMX=0``
only the AMX kernel) and :func:`status` why not; the callers fall back to the compiled tensor formulation, oneDNN
or the module. Nothing is built on import: the first call of :func:`available` builds (once per machine, then
cached).

Pure torch; never imports Lightning.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from typing_extensions import override


def _no_cuda_home_notice(record: logging.LogRecord) -> bool:
    """``False`` for torch's CUDA_HOME notice, logged when ``torch.utils.cpp_extension`` is imported without CUDA.

    These kernels are CPU code and need no CUDA, so the notice would only mislead.
    """
    return "No CUDA runtime is found" not in record.getMessage()


# registered before the first import of cpp_extension by this backend or by torch.compile (the notice is logged at
# that import)
logging.getLogger("torch.utils.cpp_extension").addFilter(_no_cuda_home_notice)

__all__ = [
    "SOURCE",
    "ChannelsLastConv3x3",
    "KernelStatus",
    "amx_available",
    "available",
    "channels_last_conv3x3",
    "conv3x3_shapes_ok",
    "conv3x3_weight_grad",
    "instance_norm_relu_pool",
    "pooled_relu_affine",
    "status",
]

#: the kernels' C++ source
SOURCE = Path(__file__).with_name("csrc") / "convnet_kernels.cpp"
_CFLAGS = ["-O3", "-march=native", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]
_OFF = ("0", "off", "false", "no")


@dataclass(frozen=True)
class KernelStatus:
    """Whether the kernels run in this process, and why not.

    Attributes:
        available: the library is built and its ops are registered.
        reason: why not (``None`` when available): turned off by ``PTMDD_CPU_KERNELS=0``, the platform, or the
            build/load error.
        library: the built shared library's path (``None`` when not built).

    Raises:
        Nothing of its own.
    """

    available: bool
    reason: str | None = None
    library: str | None = None


def _cpu_signature() -> str:
    """The CPU model and feature flags (a library built with ``-march=native`` on one CPU may not run on another)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("flags", "model name"))][:2]
        return "\n".join(lines)
    except OSError:
        import platform

        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("PTMDD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ptmdd")
    return Path(root) / "kernels"


@functools.lru_cache(maxsize=1)
def status() -> KernelStatus:
    """Build (once per machine), load and register the kernels; the result is cached for the process.

    Returns:
        a :class:`KernelStatus`. Never raises: a failed build warns once and reports its error.

    Raises:
        Nothing: a failed build warns once and is reported in the status.
    """
    if os.environ.get("PTMDD_CPU_KERNELS", "1").strip().lower() in _OFF:
        return KernelStatus(False, "turned off by PTMDD_CPU_KERNELS=0")
    if sys.platform.startswith("win"):
        return KernelStatus(False, "not built on Windows")
    source = SOURCE.read_text()
    key = hashlib.sha256(
        "\0".join([source, " ".join(_CFLAGS + _LDFLAGS), _cpu_signature(), torch.__version__]).encode()
    ).hexdigest()[:16]
    build = _cache_dir() / key
    try:
        from torch.utils import cpp_extension

        build.mkdir(parents=True, exist_ok=True)
        # cpp_extension locks the build folder, so concurrent ranks/processes build once and load the same file
        path = cpp_extension.load(
            name="ptmdd_cpu_kernels",
            sources=[str(SOURCE)],
            extra_cflags=_CFLAGS,
            extra_ldflags=_LDFLAGS,
            build_directory=str(build),
            is_python_module=False,
            verbose=False,
        )
        _register_python_side()
    except Exception as e:  # noqa: BLE001 - any build/load failure: the callers use the other paths
        detail = " ".join(str(e).split())  # one line: the compiler's last words are the useful ones
        reason = f"build or load failed: {type(e).__name__}: {detail[-300:]}"
        warnings.warn(
            f"ptmdd: the CPU kernels for ConvNet-3 could not be built or loaded ({reason}); using the "
            "compiled tensor formulation or the module instead (slower). Install the `cpu` extra "
            "(ninja) and a C++ compiler, or set PTMDD_CPU_KERNELS=0 to silence this.",
            stacklevel=3,
        )
        return KernelStatus(False, reason)
    return KernelStatus(True, None, str(path))


def available() -> bool:
    """Whether the kernels are built and loaded (builds them on the first call; see :func:`status`).

    Raises:
        Nothing of its own.
    """
    return status().available


def _register_python_side() -> None:
    """The fake implementations and autograd formulas of the C++ ops (once per process, after loading them)."""
    ops = torch.ops.ptmdd

    @torch.library.register_fake("ptmdd::pooled_relu_affine")
    def _(cols, a, b, bf16_out, keep_mask):
        n, h, w, _k = cols.shape
        c = a.shape[-1]
        out = cols.new_empty((n, h // 2, w // 2, c), dtype=torch.bfloat16 if bf16_out else torch.float32)
        mask = cols.new_empty((n, c // 16, h * w) if keep_mask else (0,), dtype=torch.int16)
        return out, mask

    @torch.library.register_fake("ptmdd::pooled_relu_affine_backward")
    def _(cols, a, gout, mask, need_dcols):
        n, c = a.shape[0], a.shape[-1]
        return torch.empty_like(a), a.new_empty((n, c)), torch.empty_like(cols) if need_dcols else cols.new_empty(0)

    @torch.library.register_fake("ptmdd::instance_norm_relu_pool")
    def _(z, gamma, beta, eps):
        n, h, w, c = z.shape
        return z.new_empty((n, h // 2, w // 2, c)), gamma.new_empty((n, c)), gamma.new_empty((n, c))

    @torch.library.register_fake("ptmdd::instance_norm_relu_pool_backward")
    def _(z, gamma, beta, mean, rstd, gout):
        n, c = z.shape[0], z.shape[-1]
        return torch.empty_like(z), gamma.new_empty((n, c)), gamma.new_empty((n, c))

    @torch.library.register_fake("ptmdd::conv3x3_weight_grad")
    def _(x, gout):
        co, ci = gout.shape[-1], x.shape[-1]
        return x.new_empty((co, ci, 3, 3), dtype=torch.float32), x.new_empty((co,), dtype=torch.float32)

    def pra_setup(ctx, inputs, output) -> None:
        cols, a, _b, _bf16_out, _keep_mask = inputs
        ctx.save_for_backward(cols, a, output[1])

    def pra_backward(ctx, gout, _gmask):
        cols, a, mask = ctx.saved_tensors
        gout = gout.contiguous() if gout.dtype == torch.bfloat16 else gout.float().contiguous()
        need_dcols = bool(ctx.needs_input_grad[0])
        da, db, dcols = ops.pooled_relu_affine_backward(cols, a, gout, mask, need_dcols)
        return (dcols if need_dcols else None), da, db, None, None

    torch.library.register_autograd("ptmdd::pooled_relu_affine", pra_backward, setup_context=pra_setup)

    def inrp_setup(ctx, inputs, output) -> None:
        z, gamma, beta, _eps = inputs
        _out, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(z, gamma, beta, mean, rstd)

    def inrp_backward(ctx, gout, _gmean, _grstd):
        z, gamma, beta, mean, rstd = ctx.saved_tensors
        dz, dgamma, dbeta = ops.instance_norm_relu_pool_backward(
            z, gamma, beta, mean, rstd, gout.to(z.dtype).contiguous()
        )
        return dz, dgamma.sum(0), dbeta.sum(0), None

    torch.library.register_autograd("ptmdd::instance_norm_relu_pool", inrp_backward, setup_context=inrp_setup)


def _require() -> None:
    st = status()
    if not st.available:
        raise RuntimeError(f"the ptmdd CPU kernels are not available here ({st.reason})")


def _check(cols: Tensor, a: Tensor, b: Tensor) -> tuple[int, int, int, int, int]:
    if cols.dim() != 4 or a.dim() != 3:
        raise ValueError(
            f"pooled_relu_affine needs cols (N, H, W, K) and A (N, K, C); got {tuple(cols.shape)}, {tuple(a.shape)}"
        )
    n, h, w, k = cols.shape
    c = a.shape[-1]
    if (
        cols.device.type != "cpu"
        or cols.dtype != torch.float32
        or a.shape != (n, k, c)
        or b.shape != (n, c)
        or h % 2
        or w % 2
        or c % 16
        or k > 64
    ):
        raise ValueError(
            f"pooled_relu_affine needs float32 CPU cols (N, H, W, K) with even H, W and K <= 64, A (N, K, "
            f"C) with C a multiple of 16, B (N, C); got {tuple(cols.shape)} {cols.dtype} {cols.device}, "
            f"{tuple(a.shape)}, {tuple(b.shape)}"
        )
    return n, k, c, h, w


def pooled_relu_affine(cols: Tensor, a: Tensor, b: Tensor, out_dtype: torch.dtype = torch.float32) -> Tensor:
    """``out[n, i, j, c] = 1/4 sum_{a,b in {0,1}} relu(B[n, c] + sum_k A[n, k, c] cols[n, 2i+a, 2j+b, k])``.

    The op ``torch.ops.ptmdd.pooled_relu_affine``; its forward keeps the ReLU mask (1 bit per value) when a
    gradient is wanted, and its backward (``torch.ops.ptmdd.pooled_relu_affine_backward``) is then one pass of
    ``K + 1`` multiply-adds per value.

    Args:
        cols: ``(N, H, W, K)`` float32 CPU patch values, ``K <= 64`` per position last (``H``, ``W`` even).
        a: ``(N, K, C)`` per-image weights; b: ``(N, C)`` per-image offsets (cast to float32).
        out_dtype: ``torch.float32`` (default) or ``torch.bfloat16`` (computed in float32, rounded to nearest
            even once: what a bf16 autocast consumer would cast it to anyway).

    Returns:
        ``(N, H / 2, W / 2, C)`` in ``out_dtype`` (channels last). Differentiable w.r.t. all three inputs.

    Raises:
        ValueError: other dtypes/devices/shapes. RuntimeError: the kernels are not :func:`available`.
    """
    _require()
    cols, a, b = cols.contiguous(), a.float().contiguous(), b.float().contiguous()
    _check(cols, a, b)
    if out_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"pooled_relu_affine writes float32 or bfloat16, not {out_dtype}")
    keep_mask = torch.is_grad_enabled() and (cols.requires_grad or a.requires_grad or b.requires_grad)
    out, _mask = torch.ops.ptmdd.pooled_relu_affine(cols, a, b, out_dtype == torch.bfloat16, keep_mask)
    return out


def _check_maps(z: Tensor, gamma: Tensor, beta: Tensor) -> tuple[int, int, int, int]:
    if (
        z.dim() != 4
        or z.device.type != "cpu"
        or z.dtype not in (torch.float32, torch.bfloat16)
        or z.shape[-1] % 16
        or gamma.shape != (z.shape[-1],)
        or beta.shape != (z.shape[-1],)
        or z.shape[1] < 2
        or z.shape[2] < 2
    ):
        raise ValueError(
            f"instance_norm_relu_pool needs float32/bfloat16 CPU maps (N, H, W, C) with H, W >= 2 and C a "
            f"multiple of 16, gamma and beta (C,); got {tuple(z.shape)} {z.dtype} {z.device}, "
            f"{tuple(gamma.shape)}, {tuple(beta.shape)}"
        )
    n, h, w, c = z.shape
    return n, h, w, c


def instance_norm_relu_pool(z: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
    """Instance norm -> ReLU -> 2x2 average pooling of channels-last maps, fused.

    Instance norm -> ReLU -> 2x2 average pooling of channels-last maps, in one pass each way (the later blocks of
    ConvNet-3: ``GroupNorm(C, C)`` -> ``ReLU`` -> ``AvgPool2d(2, 2)``, DC/DSA/DM ``networks.py``).

    ``out[n, i, j, c] = 1/4 sum_{a, b in {0, 1}} relu((z[n, 2i+a, 2j+b, c] - mu[n, c]) / sqrt(var[n, c] + eps)
    * gamma[c] + beta[c])`` with ``mu``, ``var`` the mean and biased variance over ``(H, W)`` (all positions, also
    the last row/column that odd sizes drop from the pooling, as ``AvgPool2d`` floors). Statistics and arithmetic
    in float32; a bfloat16 ``z`` gives a bfloat16 result (rounded to nearest even), as the compiled formulation's
    ``.to(bfloat16)``. The op ``torch.ops.ptmdd.instance_norm_relu_pool`` (backward:
    ``torch.ops.ptmdd.instance_norm_relu_pool_backward``).

    Args:
        z: ``(N, H, W, C)`` float32 or bfloat16 CPU maps (``H, W >= 2``, ``C`` a multiple of 16), e.g. a conv
            output in ``channels_last`` memory, permuted to ``(N, H, W, C)``.
        gamma, beta: ``(C,)`` the norm's affine weight and bias.
        eps: the norm's epsilon.

    Returns:
        ``(N, H // 2, W // 2, C)`` in ``z``'s dtype. Differentiable w.r.t. ``z``, ``gamma`` and ``beta``.

    Raises:
        ValueError: other dtypes/devices/shapes. RuntimeError: the kernels are not :func:`available`.
    """
    _require()
    z = z.contiguous()
    _check_maps(z, gamma, beta)
    out, _mean, _rstd = torch.ops.ptmdd.instance_norm_relu_pool(
        z, gamma.float().contiguous(), beta.float().contiguous(), float(eps)
    )
    return out


@functools.lru_cache(maxsize=1)
def amx_available() -> bool:
    """Whether :func:`conv3x3_weight_grad` (AMX) runs here.

    Whether :func:`conv3x3_weight_grad` runs here: the kernels are built, the library was compiled for a CPU with
    AMX (``amx_tile``, ``amx_bf16``; Intel Sapphire Rapids and later) and Linux grants this process the AMX tile
    state (``arch_prctl(ARCH_REQ_XCOMP_PERM)``). ``PTMDD_AMX=0`` turns it off.

    Raises:
        Nothing of its own.
    """
    if not available() or os.environ.get("PTMDD_AMX", "1").strip().lower() in _OFF:
        return False
    return bool(torch.ops.ptmdd.amx_ready())


def conv3x3_weight_grad(x: Tensor, gout: Tensor) -> tuple[Tensor, Tensor]:
    """The weight and bias gradients of a 3x3 convolution on the CPU's AMX units.

    The weight and bias gradients of a 3x3 convolution (stride 1, zero padding 1) on channels-last bf16 maps, on
    the CPU's AMX units: bf16 products summed in float32.

    ``dw[o, i, kh, kw] = sum_{n, h, w} gout[n, h, w, o] * x[n, h + kh - 1, w + kw - 1, i]`` (zero outside the
    image) and ``db[o] = sum_{n, h, w} gout[n, h, w, o]``: what ``torch.ops.aten.convolution_backward`` returns for
    the weight and the bias of ``conv2d(x, w, b, padding=1)``, with float32 instead of bf16 sums.

    Why: oneDNN's weight gradients of the two 128 -> 128 convolutions were the largest single cost of a bf16 training
    step of ConvNet-3; this kernel computes them faster on AMX (docs/speed.md, lever 18).

    Args:
        x: ``(N, H, W, Ci)`` bfloat16 CPU maps (the conv input, channels last, contiguous).
        gout: ``(N, H, W, Co)`` bfloat16 CPU maps (the gradient of the conv output). ``Ci`` and ``Co`` multiples
            of 32, at most 1024.

    Returns:
        ``(dw, db)``: ``(Co, Ci, 3, 3)`` and ``(Co,)`` float32.

    Raises:
        ValueError: other shapes, dtypes or devices. RuntimeError: AMX is not :func:`amx_available`.
    """
    if (
        x.dim() != 4
        or gout.dim() != 4
        or x.shape[:3] != gout.shape[:3]
        or x.dtype != torch.bfloat16
        or gout.dtype != torch.bfloat16
        or x.device.type != "cpu"
        or gout.device.type != "cpu"
        or x.shape[-1] % 32
        or gout.shape[-1] % 32
        or x.shape[-1] > 1024
        or gout.shape[-1] > 1024
        or min(x.shape) < 1
    ):
        raise ValueError(
            f"conv3x3_weight_grad needs bfloat16 CPU maps x (N, H, W, Ci) and gout (N, H, W, Co) with Ci "
            f"and Co multiples of 32 (at most 1024); got {tuple(x.shape)} {x.dtype} {x.device}, "
            f"{tuple(gout.shape)} {gout.dtype} {gout.device}"
        )
    if not amx_available():
        raise RuntimeError(
            "conv3x3_weight_grad needs AMX (amx_available() is False); use torch.ops.aten.convolution_backward instead"
        )
    return torch.ops.ptmdd.conv3x3_weight_grad(x.contiguous(), gout.contiguous())


def conv3x3_shapes_ok(x: Tensor, weight: Tensor, bias: Tensor, padding: int = 1) -> bool:
    """Whether :func:`channels_last_conv3x3` takes these shapes.

    Whether :func:`channels_last_conv3x3` takes these: ``x`` bfloat16 CPU maps ``(N, H, W, Ci)``, ``weight``
    ``(Co, Ci, 3, 3)``, ``bias`` ``(Co,)``, ``padding`` 1, ``Ci`` and ``Co`` multiples of 32 and at most 1024 (what
    :func:`conv3x3_weight_grad` takes). Shapes only: whether AMX runs here is :func:`amx_available`.

    Raises:
        Nothing of its own.
    """
    if x.dim() != 4 or weight.dim() != 4 or min(x.shape) < 1:
        return False
    co, ci = weight.shape[0], x.shape[-1]
    return (
        padding == 1
        and x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and tuple(weight.shape) == (co, ci, 3, 3)
        and tuple(bias.shape) == (co,)
        and ci % 32 == 0
        and co % 32 == 0
        and ci <= 1024
        and co <= 1024
    )


class ChannelsLastConv3x3(torch.autograd.Function):
    """A channels-last bf16 3x3 convolution with its weight gradient on AMX.

    ``conv2d(x, w, b, padding=1)`` on channels-last bf16 maps: oneDNN's forward and input gradient, and the weight
    and bias gradients from :func:`conv3x3_weight_grad` (AMX). See :func:`channels_last_conv3x3`.

    Raises:
        ValueError, RuntimeError: from :func:`conv3x3_weight_grad` in the backward (other shapes, dtypes or
            devices; no AMX).
    """

    @override
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        wb = weight.detach().to(torch.bfloat16)
        z = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), wb, bias.detach().to(torch.bfloat16), padding=1)
        ctx.save_for_backward(x, wb)
        ctx.param_dtypes = (weight.dtype, bias.dtype)
        return z.permute(0, 2, 3, 1)

    @override
    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[override]
        x, wb = ctx.saved_tensors
        gout = gout.to(torch.bfloat16).contiguous()
        gx = dw = db = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(
                gout.permute(0, 3, 1, 2),
                x.permute(0, 3, 1, 2),
                wb,
                [wb.shape[0]],
                [1, 1],
                [1, 1],
                [1, 1],
                False,
                [0, 0],
                1,
                [True, False, False],
            )[0].permute(0, 2, 3, 1)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dw, db = conv3x3_weight_grad(x, gout)
            dw, db = dw.to(ctx.param_dtypes[0]), db.to(ctx.param_dtypes[1])
        return gx, dw, db


def channels_last_conv3x3(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """A 3x3 convolution (stride 1, zero padding 1) of channels-last bf16 maps whose weight gradient runs on AMX.

    The forward and the input gradient are oneDNN's (``torch.nn.functional.conv2d`` in bf16, as under bf16
    autocast); the weight and bias gradients come from :func:`conv3x3_weight_grad` (bf16 products, float32 sums,
    returned in the parameters' dtype). Used by ConvNet-3's later blocks on the CPU kernel path
    (:func:`ptmdd_lightning.backends.cpu.fastnet._kernel_features`). Once differentiable (no double backward).

    Args:
        x: ``(N, H, W, Ci)`` bfloat16 CPU maps (contiguous channels last).
        weight: ``(Co, Ci, 3, 3)`` (any float dtype; used in bf16); bias: ``(Co,)``.

    Returns:
        ``(N, H, W, Co)`` bfloat16, contiguous in that order (oneDNN writes the NCHW result channels last).

    Raises:
        ValueError: shapes or dtypes :func:`conv3x3_weight_grad` does not take. RuntimeError: no AMX.
    """
    if not conv3x3_shapes_ok(x, weight, bias):
        raise ValueError(
            f"channels_last_conv3x3 needs bfloat16 CPU maps (N, H, W, Ci), weight (Co, Ci, 3, 3) and bias "
            f"(Co,) with Ci, Co multiples of 32 (at most 1024); got {tuple(x.shape)} {x.dtype}, "
            f"{tuple(weight.shape)}, {tuple(bias.shape)}"
        )
    if not amx_available():
        raise RuntimeError("channels_last_conv3x3 needs AMX (amx_available() is False)")
    return ChannelsLastConv3x3.apply(x, weight, bias)
