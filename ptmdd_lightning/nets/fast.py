"""Fast forward passes of the DD nets: ConvNet in channels-last with fused norm/activation/pooling, compiled.

Where the time goes (measured on a 2-core Sapphire Rapids CPU, ConvNet-3 on 1x28x28, bf16 autocast, 256 images,
one thread): the reference layer order conv -> ``GroupNorm(C, C)`` -> ReLU -> ``AvgPool2d`` in NCHW spends ~2/3
of a forward in memory-bound passes over the 128x32x32 maps of the first block (the first conv alone, with one
input channel, 75 ms; ``avg_pool2d`` in NCHW bf16 88 ms; the norm 45 ms), while the convolutions of the later
blocks run 3x faster in channels-last than in NCHW. This module computes the same function as
:meth:`ConvNet.embed` / :meth:`ConvNet.forward`, differently:

* channels-last (``(N, H, W, C)``) activations throughout, so the 128->128 convolutions use oneDNN's fast
  channels-last kernels and the per-channel reductions are contiguous;
* the first convolution (few input channels: ``C_in * 9 <= 64``) as ``unfold`` + one matrix product whose
  output is channels-last already;
* instance norm (the statistics over ``(H, W)`` of every image and channel, ``eps`` and affine of the module's
  ``GroupNorm(C, C)``), the activation and the 2x2 pooling written as plain tensor expressions, which
  ``torch.compile`` (inductor) fuses into two or three loops per block instead of five or six passes;
* a large no-grad batch is cut into chunks of about :data:`DEFAULT_CHUNK` images, so that the temporaries stay
  below glibc's 32 MiB mmap threshold and are recycled instead of page-faulted on every call (measured: 512
  images in 1 chunk 231 ms, in chunks of 64 103 ms).

Together (compiled) these make a no-grad ConvNet-3 forward ~6x faster than the eager bf16 module and ~12x
faster than eager fp32 (one thread, CPU time per 512 images: 103 ms vs ~660 ms vs ~1240 ms). In fp32 the
result equals the module's to rounding (tests/core/test_fast.py); under bf16 autocast both use bf16
convolutions and agree to bf16 precision.

The fast path is chosen automatically: on a CPU when ``torch.compile`` can build C++ kernels (a C++ compiler
is found) it is used; on CUDA and for every other net the module itself runs (eager: cuDNN is fast there),
unless ``compile=True`` is passed. Failures to compile fall back to the module with one warning.

Pure torch; never imports Lightning.
"""

from __future__ import annotations

import functools
import math
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptmdd_lightning.nets.convnet import ConvNet

__all__ = ["DEFAULT_CHUNK", "FastNet", "can_compile", "convnet_supported", "convnet_features_cl"]

#: images per chunk of a CPU forward (keeps the first block's maps, forward and backward, in a few MiB)
DEFAULT_CHUNK = 32
#: dynamo's default of 8 cached graphs per function is too few for (grad/no-grad) x (fp32/bf16) x shapes
_RECOMPILE_LIMIT = 64


@functools.lru_cache(maxsize=1)
def can_compile() -> bool:
    """Whether ``torch.compile`` can generate CPU kernels here: a C++ compiler on PATH, not Windows, and
    ``torch._dynamo`` importable. Cached."""
    if sys.platform.startswith("win"):
        return False
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return False
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # pragma: no cover - broken installs
        return False
    return True


def convnet_supported(net: nn.Module) -> bool:
    """Whether :func:`convnet_features_cl` computes ``net.embed``: a :class:`ConvNet` with instance norm (or no
    norm), any activation, average/max/no pooling and plain 3x3 convolutions (``groups=1``, stride 1)."""
    if not isinstance(net, ConvNet) or net.norm not in ("instancenorm", "none"):
        return False
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    return all(c.groups == 1 and c.stride == (1, 1) and c.dilation == (1, 1) and c.kernel_size == (3, 3)
               for c in convs)


def _blocks(net: ConvNet) -> list[tuple[nn.Conv2d, nn.GroupNorm | None]]:
    """``[(conv, norm or None), ...]`` per block of a supported ConvNet."""
    out: list[tuple[nn.Conv2d, nn.GroupNorm | None]] = []
    for m in net.features:
        if isinstance(m, nn.Conv2d):
            out.append((m, None))
        elif isinstance(m, nn.GroupNorm):
            out[-1] = (out[-1][0], m)
    return out


def _flat_params(net: ConvNet) -> list[Tensor]:
    """conv weight, conv bias, norm weight, norm bias (``None`` for no norm) per block, then the classifier's."""
    ps: list[Tensor] = []
    for conv, norm in _blocks(net):
        ps += [conv.weight, conv.bias]
        if norm is not None:
            ps += [norm.weight, norm.bias]
    return ps + [net.classifier.weight, net.classifier.bias]


def convnet_features_cl(x: Tensor, params: Sequence[Tensor], paddings: Sequence[int], norm: str, act: str,
                        pool: str, eps: float) -> Tensor:
    """The feature map of a ConvNet, channels-last: ``(N, C, H, W) -> (N, h, w, width)``.

    Exactly the blocks of :class:`ConvNet` (DC/DSA/DM ``networks.py``): conv3x3 (with bias) -> instance norm
    (``GroupNorm(width, width)``: per image and channel, biased variance over ``(h, w)``, ``eps``, affine) or
    none -> activation (ReLU, sigmoid, LeakyReLU 0.01) -> 2x2 average/max pooling or none; only the memory
    layout (channels last) and the arithmetic order differ. The norm statistics are computed in float32 (as
    PyTorch's CPU ``GroupNorm`` accumulates), the convolutions in the autocast dtype when autocast is on.

    Args:
        x: ``(N, C, H, W)`` images.
        params: per block ``conv.weight (width, C_in, 3, 3)``, ``conv.bias (width,)`` and, with instance norm,
            ``norm.weight (width,)``, ``norm.bias (width,)``.
        paddings: the conv padding of each block (3 for the first conv of 1-channel nets, else 1).
        norm: ``"instancenorm"`` or ``"none"``; act: ``"relu"``, ``"sigmoid"`` or ``"leakyrelu"``;
        pool: ``"avgpool"``, ``"maxpool"`` or ``"none"``.
        eps: the norm's epsilon.

    Returns:
        ``(N, h, w, width)`` contiguous, in the dtype of the last convolution's output.
    """
    per = 4 if norm == "instancenorm" else 2
    h: Tensor | None = None
    out_dtype = x.dtype
    for b, pad in enumerate(paddings):
        w, bias = params[per * b], params[per * b + 1]
        cout, cin = w.shape[0], w.shape[1]
        if b == 0 and cin * 9 <= 64:
            # first conv with few input channels: im2col (N, cin*9, L) and one matmul -> channels-last output
            n, _, hin, win = x.shape
            ho, wo = hin + 2 * pad - 2, win + 2 * pad - 2
            cols = F.unfold(x, 3, padding=pad).transpose(1, 2)  # (N, ho*wo, cin*9)
            z = torch.matmul(cols, w.reshape(cout, cin * 9).t()) + bias
            z = z.view(n, ho, wo, cout)
        else:
            src = x if h is None else h.permute(0, 3, 1, 2)  # NCHW view of NHWC memory = channels_last
            z = F.conv2d(src, w, bias, padding=pad).permute(0, 2, 3, 1)
        out_dtype = z.dtype
        y = z.float()
        if norm == "instancenorm":
            var, mean = torch.var_mean(y, dim=(1, 2), keepdim=True, correction=0)
            y = (y - mean) * (torch.rsqrt(var + eps) * params[per * b + 2].float()) + params[per * b + 3].float()
        if act == "relu":
            y = torch.relu(y)
        elif act == "sigmoid":
            y = torch.sigmoid(y)
        else:
            y = F.leaky_relu(y, 0.01)
        if pool != "none":
            n, hh, ww, c = y.shape
            hh2, ww2 = hh // 2, ww // 2
            y = y[:, : 2 * hh2, : 2 * ww2].reshape(n, hh2, 2, ww2, 2, c)
            y = y.mean((2, 4)) if pool == "avgpool" else y.amax((2, 4))
        h = y.to(out_dtype)
    assert h is not None
    return h.contiguous()


def _convnet_embed(x: Tensor, params: Sequence[Tensor], paddings: Sequence[int], norm: str, act: str, pool: str,
                   eps: float) -> Tensor:
    """``ConvNet.embed``: the channels-last features flattened in NCHW order ``(N, width * h * w)``."""
    f = convnet_features_cl(x, params, paddings, norm, act, pool, eps)
    return f.permute(0, 3, 1, 2).flatten(1)


def _convnet_forward(x: Tensor, params: Sequence[Tensor], paddings: Sequence[int], norm: str, act: str, pool: str,
                     eps: float) -> Tensor:
    """``ConvNet.forward``: logits ``(N, K)`` = classifier(embed)."""
    e = _convnet_embed(x, params[:-2], paddings, norm, act, pool, eps)
    return F.linear(e, params[-2], params[-1])


@functools.cache
def _compiled(fn_name: str) -> Callable:
    """One compiled function per kind (shared by all nets: their tensors are arguments, not constants)."""
    fn = {"embed": _convnet_embed, "forward": _convnet_forward}[fn_name]
    return torch.compile(fn, dynamic=False)


_WARNED: set[str] = set()


class FastNet:
    """A fast view of a net: ``embed(x)`` and ``forward(x)`` compute what ``net.embed``/``net(x)`` compute.

    For a supported :class:`ConvNet` (:func:`convnet_supported`) with ``compile`` on, the calls run the
    compiled channels-last formulation (:func:`convnet_features_cl`) on the net's current parameters (read at
    every call, so re-initialising the net in place with :func:`ptmdd_lightning.nets.reinit_` is seen, and
    gradients flow to the parameters and the input as with the module). Otherwise they call the module.
    No-grad calls on the CPU are cut into chunks of ``chunk`` images (outputs concatenated; the result is the
    same because every image is processed independently, as long as the net holds no BatchNorm in training
    mode).

    Args:
        net: any net of :mod:`ptmdd_lightning.nets` (``forward``/``embed``).
        compile: ``True``/``False``; ``None`` (default): on for supported ConvNets on a CPU where
            :func:`can_compile`, off on CUDA and elsewhere.
        chunk: images per chunk of no-grad CPU calls (``None``: :data:`DEFAULT_CHUNK`; 0: no chunks).

    Shapes: ``embed``: ``(N, C, H, W) -> (N, D)``; ``forward``: ``(N, C, H, W) -> (N, K)``; dtypes as the
    module's (autocast respected).
    """

    def __init__(self, net: nn.Module, compile: bool | None = None, chunk: int | None = None) -> None:
        self.net = net
        dev = next(net.parameters()).device
        supported = convnet_supported(net)
        if compile is None:
            compile = supported and dev.type == "cpu" and can_compile()
        self.compiled = bool(compile) and supported
        self.chunk = DEFAULT_CHUNK if chunk is None else int(chunk)
        if self.compiled:
            blocks = _blocks(net)  # type: ignore[arg-type]
            self._paddings = tuple(int(c.padding[0]) for c, _ in blocks)
            self._norm, self._act, self._pool = net.norm, net.act, net.pool  # type: ignore[union-attr]
            self._eps = float(blocks[0][1].eps) if blocks[0][1] is not None else 0.0

    def _chunks(self, x: Tensor) -> list[Tensor]:
        n = x.shape[0]
        if self.chunk <= 0 or n <= self.chunk or x.device.type != "cpu":
            return [x]
        k = math.ceil(n / self.chunk)
        size = math.ceil(n / k)  # equal chunks: at most two distinct shapes to compile
        return list(x.split(size))

    def _run(self, kind: str, x: Tensor) -> Tensor:
        parts = self._chunks(x)
        if self.compiled:
            params = _flat_params(self.net)  # type: ignore[arg-type]
            if kind == "embed":
                params = params[:-2]
            try:
                fn = _compiled(kind)
                with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
                    outs = [fn(p, params, self._paddings, self._norm, self._act, self._pool, self._eps)
                            for p in parts]
                return outs[0] if len(outs) == 1 else torch.cat(outs)
            except Exception as e:  # noqa: BLE001 - any compiler failure: fall back to the module
                self.compiled = False
                if "compile" not in _WARNED:
                    _WARNED.add("compile")
                    warnings.warn(f"ptmdd: torch.compile of the fast ConvNet path failed ({type(e).__name__}: "
                                  f"{str(e)[:200]}); using the eager module instead.", stacklevel=2)
        f = self.net.embed if kind == "embed" else self.net
        outs = [f(p) for p in parts]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def embed(self, x: Tensor) -> Tensor:
        """``net.embed(x)``: ``(N, C, H, W) -> (N, D)``."""
        return self._run("embed", x)

    def forward(self, x: Tensor) -> Tensor:
        """``net(x)``: ``(N, C, H, W) -> (N, K)`` logits."""
        return self._run("forward", x)

    __call__ = forward
