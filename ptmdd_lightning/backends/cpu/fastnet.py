"""The CPU backend's fast ConvNet: channels-last with fused norm/activation/pooling, compiled, or the C++ kernels.

Where the time goes (profiles in docs/speed.md, "The levers and what each gave"): the reference layer order
conv -> ``GroupNorm(C, C)`` -> ReLU -> ``AvgPool2d`` in NCHW spends most of a CPU forward in memory-bound passes
over the 128x32x32 maps of the first block, while the convolutions of the later blocks run faster in channels-last
than in NCHW. This module computes the same function as
:meth:`ConvNet.embed` / :meth:`ConvNet.forward`, differently:

* channels-last (``(N, H, W, C)``) activations throughout, so the 128->128 convolutions use oneDNN's fast
  channels-last kernels and the per-channel reductions are contiguous;
* the first convolution (few input channels: ``C_in * 9 <= 64``) as ``unfold`` + one matrix product whose
  output is channels-last already;
* instance norm (the statistics over ``(H, W)`` of every image and channel, ``eps`` and affine of the module's
  ``GroupNorm(C, C)``), the activation and the 2x2 pooling written as plain tensor expressions, which
  ``torch.compile`` (inductor) fuses into two or three loops per block instead of five or six passes;
* a large no-grad batch is cut into chunks of about :data:`DEFAULT_CHUNK` images, so that the temporaries stay
  below glibc's 32 MiB mmap threshold and are recycled instead of page-faulted on every call.

In fp32 the result equals the module's to rounding (tests/backends/cpu/); under bf16 autocast both use bf16
convolutions and agree to bf16 precision. What each piece gave is measured in docs/speed.md.

Two more pieces serve DC/DSA (gradient matching) and training:

* :func:`convnet_class_grads` / :meth:`FastNet.class_grads`: the per-class gradients of the synthetic side as a
  ``vmap(grad(...))`` of the fused formulation, so that ``torch.compile`` traces the gradient computation into
  a graph and differentiates that graph once (eager, this is a double backward through the module; docs/speed.md,
  lever 11).
* the CPU kernel path (:func:`_kernel_features`): for images that need no gradient -- training the net's
  parameters (the DC/DSA inner loop and real side, evaluation training, PTM pretraining) and no-grad forwards
  (DM's real side) -- ConvNet-3 runs through hand-written CPU kernels (:mod:`ptmdd_lightning.backends.cpu.kernels`):
  the first block never materialises its ``(N, 128, 32, 32)`` maps, each later block's norm, ReLU and pooling is
  one pass each way after oneDNN's channels-last convolution, and under bf16 autocast on a CPU with AMX the
  later convolutions' weight gradients run on AMX (:func:`~ptmdd_lightning.backends.cpu.kernels.channels_last_conv3x3`).
  Eager: it needs no ``torch.compile``, so it also serves short runs and the default (uncompiled) evaluation
  (docs/speed.md, levers 12, 14, 17, 18).

The path is chosen by the run's ``backend`` (:mod:`ptmdd_lightning.nets.forward`; ``auto``: the kernel path where
it applies and builds; otherwise, on a CPU when ``torch.compile`` can build C++ kernels (a C++ compiler is found),
the compiled formulation; on CUDA and for every other net the module itself, eager: cuDNN is fast there). Failures
to compile or to run the kernels fall back to the module with one warning.

Pure torch; never imports Lightning.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptmdd_lightning.backends.cpu import kernels as cpu_kernels
from ptmdd_lightning.machine import record_fast_path
from ptmdd_lightning.nets.convnet import ConvNet
from ptmdd_lightning.nets.forward import DEFAULT_CHUNK, EagerForward

__all__ = [
    "DEFAULT_CHUNK",
    "KERNEL_CHUNK",
    "MIN_COMPILE_STEPS",
    "FastNet",
    "can_compile",
    "compile_choice",
    "convnet_class_grads",
    "convnet_features_cl",
    "convnet_kernels_ok",
    "convnet_supported",
    "first_block_kernel",
]

#: images per chunk on the CPU kernel path (no large temporaries left to bound; larger batches suit the
#: convolutions: docs/speed.md, lever 12)
KERNEL_CHUNK = 256
#: runs shorter than this many steps do not compile (the one-off compile would not pay for itself)
MIN_COMPILE_STEPS = 20
#: dynamo's default of 8 cached graphs per function is too few for (grad/no-grad) x (fp32/bf16) x shapes
_RECOMPILE_LIMIT = 64


@functools.lru_cache(maxsize=1)
def can_compile() -> bool:
    """Whether ``torch.compile`` can generate CPU kernels here.

    Whether ``torch.compile`` can generate CPU kernels here: a C++ compiler on PATH, not Windows, and
    ``torch._dynamo`` importable. Cached.

    Raises:
        Nothing of its own.
    """
    if sys.platform.startswith("win"):
        return False
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return False
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # noqa: BLE001  # pragma: no cover - a broken install fails in many ways
        return False
    return True


def compile_choice(total_steps: int | None = None) -> bool | None:
    """The ``compile`` argument of :class:`FastNet` for a run of ``total_steps`` steps.

    The environment variable ``PTMDD_COMPILE`` decides first: ``1``/``true``/``on`` -> ``True``, ``0``/``false``/
    ``off`` -> ``False``. Otherwise (``auto`` or unset) ``False`` for runs shorter than
    :data:`MIN_COMPILE_STEPS` (``0 < total_steps < MIN_COMPILE_STEPS``, e.g. ``fast_dev_run`` and tests), else
    ``None`` (FastNet's device rule: compile on a CPU with a C++ compiler).

    Raises:
        Nothing of its own.
    """
    env = os.environ.get("PTMDD_COMPILE", "auto").strip().lower()
    if env in ("1", "true", "on", "yes"):
        return True
    if env in ("0", "false", "off", "no"):
        return False
    if total_steps is not None and 0 < total_steps < MIN_COMPILE_STEPS:
        return False
    return None


def convnet_supported(net: nn.Module) -> bool:
    """Whether :func:`convnet_features_cl` computes ``net.embed`` for this net.

    Whether :func:`convnet_features_cl` computes ``net.embed``: a :class:`ConvNet` with instance norm (or no
    norm), any activation, average/max/no pooling and plain 3x3 convolutions (``groups=1``, stride 1).

    Raises:
        Nothing of its own.
    """
    if not isinstance(net, ConvNet) or net.norm not in ("instancenorm", "none"):
        return False
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    return all(c.groups == 1 and c.stride == (1, 1) and c.dilation == (1, 1) and c.kernel_size == (3, 3) for c in convs)


def _blocks(net: ConvNet) -> list[tuple[nn.Conv2d, nn.GroupNorm | None]]:
    """``[(conv, norm or None), ...]`` per block of a supported ConvNet."""
    out: list[tuple[nn.Conv2d, nn.GroupNorm | None]] = []
    for m in net.features:
        if isinstance(m, nn.Conv2d):
            out.append((m, None))
        elif isinstance(m, nn.GroupNorm):
            out[-1] = (out[-1][0], m)
    return out


def _flat_params(net: ConvNet, params: Mapping[str, Tensor] | None = None) -> list[Tensor]:
    """The ConvNet's parameters in forward order, from ``params`` when given.

    Conv weight, conv bias, norm weight, norm bias (with instance norm) per block, then the classifier's
    weight and bias; taken from ``params`` (``name -> tensor`` as ``net.named_parameters()``) when given.
    """
    names = {id(p): n for n, p in net.named_parameters()}
    ps: list[Tensor] = []
    for conv, norm in _blocks(net):
        ps += [conv.weight, conv.bias]
        if norm is not None:
            ps += [norm.weight, norm.bias]
    ps += [net.classifier.weight, net.classifier.bias]
    if params is not None:
        ps = [params[names[id(p)]] for p in ps]
    return ps


def _at_least_f32(t: Tensor) -> Tensor:
    """``t`` in float32, or float64 when it is float64 (low-precision types are upcast)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def convnet_features_cl(
    x: Tensor, params: Sequence[Tensor], paddings: Sequence[int], norm: str, act: str, pool: str, eps: float
) -> Tensor:
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

    Raises:
        Nothing of its own.
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
        y = _at_least_f32(z)
        if norm == "instancenorm":
            var, mean = torch.var_mean(y, dim=(1, 2), keepdim=True, correction=0)
            gamma, beta = _at_least_f32(params[per * b + 2]), _at_least_f32(params[per * b + 3])
            y = (y - mean) * (torch.rsqrt(var + eps) * gamma) + beta
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


def _convnet_embed(
    x: Tensor, params: Sequence[Tensor], paddings: Sequence[int], norm: str, act: str, pool: str, eps: float
) -> Tensor:
    """``ConvNet.embed``: the channels-last features flattened in NCHW order ``(N, width * h * w)``."""
    f = convnet_features_cl(x, params, paddings, norm, act, pool, eps)
    return f.permute(0, 3, 1, 2).flatten(1)


def _convnet_forward(
    x: Tensor, params: Sequence[Tensor], paddings: Sequence[int], norm: str, act: str, pool: str, eps: float
) -> Tensor:
    """``ConvNet.forward``: logits ``(N, K)`` = classifier(embed)."""
    e = _convnet_embed(x, params[:-2], paddings, norm, act, pool, eps)
    return F.linear(e, params[-2], params[-1])


def convnet_kernels_ok(net: nn.Module, image_size: Sequence[int]) -> bool:
    """Whether the CPU kernel path computes ``net``'s features.

    Whether the CPU kernel path (:func:`_kernel_features`: :func:`first_block_kernel`, then oneDNN convs with
    :func:`ptmdd_lightning.backends.cpu.kernels.instance_norm_relu_pool`) computes ``net``'s features: a supported
    ConvNet with instance norm, ReLU and 2x2 average pooling (ConvNet-3 of DC/DSA/DM), ``C_in * 9 <= 64``, a width
    that is a multiple of 16, an even first-conv output size (e.g. 32x32 for 28x28 images with padding 3, 32x32
    for CIFAR), conv outputs of at least 2x2 in every later block, and the CPU kernels build here.

    Raises:
        Nothing of its own.
    """
    if not convnet_supported(net) or net.norm != "instancenorm" or net.act != "relu" or net.pool != "avgpool":
        return False
    conv = _blocks(net)[0][0]  # type: ignore[arg-type]
    pad = int(conv.padding[0])
    if conv.in_channels * 9 > 64 or conv.out_channels % 16 or any((s + 2 * pad - 2) % 2 for s in image_size):
        return False
    sizes = [(s + 2 * pad - 2) // 2 for s in image_size]
    for later, _ in _blocks(net)[1:]:  # type: ignore[arg-type]
        sizes = [s + 2 * int(later.padding[0]) - 2 for s in sizes]
        if min(sizes) < 2:  # every later block's norm/pool kernel needs maps of at least 2x2
            return False
        sizes = [s // 2 for s in sizes]
    return cpu_kernels.available()


def _autocast_bf16() -> bool:
    """Whether CPU autocast to bfloat16 is on (then the kernels hand the convolutions bfloat16 maps directly)."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def first_block_kernel(x: Tensor, w: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor, pad: int, eps: float) -> Tensor:
    """The first ConvNet block (conv3x3 -> instance norm -> ReLU -> 2x2 average pooling) through the CPU kernel.

    With ``k = C_in * 9`` patch values ``c_p`` per position ``p`` (``cols``, im2col), the conv is ``z_p = W c_p + b``
    and the instance-norm statistics of every image follow from the patches' mean ``m`` and covariance ``S``
    (``k x k``): ``mean(z) = W m + b``, ``var(z) = diag(W S W^T)``. So the normalised, affine map is
    ``A^T (c_p - m) + beta`` with ``A = (W * s)^T``, ``s = gamma / sqrt(var + eps)`` (the conv bias cancels, as in
    the module), and :func:`ptmdd_lightning.backends.cpu.kernels.pooled_relu_affine` computes
    ReLU and the pooling of it in one pass, without materialising the ``(N, width, ho, wo)`` maps. The small
    per-image algebra runs in float32 with autocast off; autograd carries the gradients to ``W``, ``b``,
    ``gamma``, ``beta`` and ``x``. Same function as the module's block (tests/backends/cpu/test_kernels.py).

    Args:
        x: ``(N, C_in, H, W)`` images (float32; other float dtypes are cast).
        w: ``(width, C_in, 3, 3)``; bias, gamma, beta: ``(width,)``; pad: the conv padding; eps: the norm's eps.

    Returns:
        ``(N, ho / 2, wo / 2, width)`` channels last: bfloat16 under CPU bfloat16 autocast (what the next conv
        would cast it to), else float32.

    Raises:
        RuntimeError: the CPU kernels are not built (check :func:`convnet_kernels_ok` first); ValueError: shapes the
            kernel does not take (:func:`ptmdd_lightning.backends.cpu.kernels.pooled_relu_affine`).
    """
    out_dtype = torch.bfloat16 if _autocast_bf16() else torch.float32
    with torch.autocast(device_type="cpu", enabled=False):
        cols = F.unfold(x.float(), 3, padding=pad).transpose(1, 2)  # (N, P, k): a position's k values contiguous
        n, npos, k = cols.shape
        ho, wo = x.shape[2] + 2 * pad - 2, x.shape[3] + 2 * pad - 2
        cout = w.shape[0]
        wm = w.float().reshape(cout, k)
        bf = bias.float()
        m = cols.mean(1, keepdim=True)  # (N, 1, k)
        cc = cols - m  # contiguous (N, P, k)
        cov = torch.bmm(cc.transpose(1, 2), cc) / npos  # (N, k, k)
        var = (torch.matmul(wm, cov) * wm).sum(-1)  # (N, width)
        s = torch.rsqrt(var + eps) * gamma.float()
        a = (wm * s[..., None]).transpose(1, 2)  # (N, k, width)
        # z - mean(z) = W (c - m): the kernel runs on the centred patches (no cancellation in float32); the conv
        # bias cancels exactly (value and gradient 0), kept in the graph so that autograd sees every parameter
        b = beta.float() + s * (bf - bf)  # (N, width)
        return cpu_kernels.pooled_relu_affine(cc.view(n, ho, wo, k), a, b, out_dtype)


def _kernel_features(x: Tensor, params: Sequence[Tensor], paddings: Sequence[int], eps: float) -> Tensor:
    """ConvNet-3's feature map through the CPU kernels, channels-last ``(N, h, w, width)``.

    The feature map of ConvNet-3 (instance norm, ReLU, average pooling) through the CPU kernels, channels-last
    ``(N, h, w, width)``: the first block by :func:`first_block_kernel`, each later block as a oneDNN conv on
    channels-last maps (its weight gradient on AMX under bf16 autocast where the CPU has AMX:
    :func:`ptmdd_lightning.backends.cpu.kernels.channels_last_conv3x3`) followed by
    :func:`ptmdd_lightning.backends.cpu.kernels.instance_norm_relu_pool` (norm, ReLU and pooling in one pass each
    way). Eager: nothing to compile. The same function as ``ConvNet``'s feature blocks (DC/DSA/DM ``networks.py``;
    tests/backends/cpu/test_kernels.py).

    Args:
        x: ``(N, C, H, W)`` images that need no gradient; params: per block conv weight ``(width, C_in, 3, 3)``,
            conv bias, norm weight and bias ``(width,)`` (:func:`_flat_params` order, classifier excluded);
            paddings: the conv padding of each block; eps: the norm's epsilon.

    Returns:
        ``(N, h, w, width)`` bfloat16 under CPU bf16 autocast, else float32.

    Raises:
        ValueError / RuntimeError: from the kernels (shapes they do not take, kernels not built); callers check
        :func:`convnet_kernels_ok` first.
    """
    h = first_block_kernel(x, *params[:4], paddings[0], eps)
    for b, pad in enumerate(paddings[1:], start=1):
        w, bias, gamma, beta = params[4 * b : 4 * b + 4]
        if cpu_kernels.conv3x3_shapes_ok(h, w, bias, pad) and cpu_kernels.amx_available():
            record_fast_path("amx")
            z = cpu_kernels.channels_last_conv3x3(h, w, bias)  # weight gradient on AMX (conv3x3_weight_grad)
        else:
            z = F.conv2d(h.permute(0, 3, 1, 2), w, bias, padding=pad).permute(0, 2, 3, 1)
        h = cpu_kernels.instance_norm_relu_pool(z, gamma, beta, eps)
    return h


def _convnet_embed_kernel(x: Tensor, params: Sequence[Tensor], paddings: Sequence[int], eps: float) -> Tensor:
    """``ConvNet.embed`` through :func:`_kernel_features`: ``(N, width * h * w)`` in NCHW flattening order."""
    return _kernel_features(x, params, paddings, eps).permute(0, 3, 1, 2).flatten(1)


def _convnet_forward_kernel(x: Tensor, params: Sequence[Tensor], paddings: Sequence[int], eps: float) -> Tensor:
    """``ConvNet.forward`` through :func:`_kernel_features`: logits ``(N, K)``."""
    return F.linear(_convnet_embed_kernel(x, params[:-2], paddings, eps), params[-2], params[-1])


def convnet_class_grads(
    x: Tensor,
    params: Sequence[Tensor],
    paddings: Sequence[int],
    norm: str,
    act: str,
    pool: str,
    eps: float,
    num_classes: int,
) -> list[Tensor]:
    """Per-class gradients of the mean cross-entropy of a ConvNet, for every parameter, differentiable w.r.t. ``x``.

    For class ``k``: ``d/dtheta CE_mean(net_theta(x[k*B:(k+1)*B]), k)`` -- what DC's ``main.py`` computes with one
    ``torch.autograd.grad(..., create_graph=True)`` per class (the synthetic side of gradient matching, Zhao et
    al. 2021, Alg. 1) -- as one ``torch.func.vmap(torch.func.grad(...))`` over the classes of the channels-last
    formulation (:func:`_convnet_forward`). Written as a plain function of ``x`` so that ``torch.compile`` can
    trace the gradient computation into a graph and differentiate THAT graph once (the eager alternative is a
    double backward through the module, which compiled graphs do not support).

    Args:
        x: ``(K * B, C, H, W)`` images sorted by class, ``B`` per class.
        params: as :func:`_convnet_forward` (blocks, then the classifier's weight ``(K, D)`` and bias ``(K,)``);
            pass them detached (the gradient of the result is wanted w.r.t. ``x`` only).
        paddings, norm, act, pool, eps: as :func:`_convnet_forward`.
        num_classes: ``K``.

    Returns:
        one ``(K, *p.shape)`` tensor per parameter ``p``, in the order of ``params``; float32 (the cross-entropy
        is computed in float32, so its gradients are float32 also under autocast), float64 for float64 input.

    Raises:
        Nothing of its own.
    """
    k = num_classes
    xk = x.view(k, x.shape[0] // k, *x.shape[1:])

    def class_loss(ps: list[Tensor], xb: Tensor, c: Tensor) -> Tensor:
        logits = _convnet_forward(xb, ps, paddings, norm, act, pool, eps)
        return F.cross_entropy(_at_least_f32(logits), c.expand(xb.shape[0]))

    classes = torch.arange(k, device=x.device)
    return torch.func.vmap(torch.func.grad(class_loss), in_dims=(None, 0, 0))(list(params), xk, classes)


@functools.cache
def _compiled(fn_name: str) -> Callable:
    """One compiled function per kind (shared by all nets: their tensors are arguments, not constants)."""
    fn = {"embed": _convnet_embed, "forward": _convnet_forward, "class_grads": convnet_class_grads}[fn_name]
    return torch.compile(fn, dynamic=False)


_WARNED: set[str] = set()


class FastNet(EagerForward):
    """A fast view of a net: ``embed(x)`` and ``forward(x)`` compute what ``net.embed``/``net(x)`` compute.

    Three paths, chosen per call, all reading the net's current parameters (so re-initialising the net in place
    with :func:`ptmdd_lightning.nets.reinit_` is seen; gradients flow to the parameters and the input as with the
    module):

    * the CPU kernels (``kernels``): ConvNet-3 (:func:`convnet_kernels_ok`) trained on images that need no gradient
      (DC/DSA inner loop and real side, evaluation training) runs through :func:`_kernel_features` -- the
      hand-written kernels of :mod:`ptmdd_lightning.backends.cpu.kernels` around oneDNN's convolutions, eager, nothing
      to compile;
    * the compiled channels-last formulation (``compile``, :func:`convnet_features_cl`) for a supported
      :class:`ConvNet` (:func:`convnet_supported`) otherwise;
    * the module itself.

    No-grad calls on the CPU are cut into chunks of ``chunk`` images (outputs concatenated; the result is the
    same because every image is processed independently, as long as the net holds no BatchNorm in training
    mode).

    Args:
        net: any net of :mod:`ptmdd_lightning.nets` (``forward``/``embed``).
        compile: ``True``/``False``; ``None`` (default): on for supported ConvNets on a CPU where
            :func:`can_compile`, off on CUDA and elsewhere.
        chunk: images per chunk of no-grad CPU calls (``None``: :data:`DEFAULT_CHUNK`; 0: no chunks).
        kernels: ``True``/``None`` (default): the CPU kernel path where it applies (a CPU net that
            :func:`convnet_kernels_ok`; ``PTMDD_CPU_KERNELS=0`` turns it off everywhere); ``False``: never.

    Shapes: ``embed``: ``(N, C, H, W) -> (N, D)``; ``forward``: ``(N, C, H, W) -> (N, K)``; dtypes as the
    module's (autocast respected).

    Raises:
        Nothing of its own.
    """

    def __init__(
        self, net: nn.Module, compile: bool | None = None, chunk: int | None = None, kernels: bool | None = None
    ) -> None:
        super().__init__(net, chunk)
        dev = next(net.parameters()).device
        supported = convnet_supported(net)
        if compile is None:
            compile = supported and dev.type == "cpu" and can_compile()
        self.compiled = bool(compile) and supported
        # ConvNet-3 through the hand-written CPU kernels (backends/cpu/kernels.py) where they apply
        self.kernels = (
            kernels is not False
            and dev.type == "cpu"
            and convnet_kernels_ok(net, tuple(getattr(net, "image_size", (0, 0))))
        )
        if self.compiled or self.kernels:
            blocks = _blocks(net)  # type: ignore[arg-type]
            self._paddings = tuple(int(c.padding[0]) for c, _ in blocks)
            self._norm, self._act, self._pool = net.norm, net.act, net.pool  # type: ignore[union-attr]
            self._eps = float(blocks[0][1].eps) if blocks[0][1] is not None else 0.0

    def _use_kernel(self, x: Tensor) -> bool:
        """The CPU kernel path, for images that need no gradient.

        The CPU kernel path: for images that need no gradient, in float32 or under bf16 autocast -- training the
        net's parameters (DC/DSA inner loop and real side, evaluation training) and no-grad forwards (DM's real
        side). Not for image-gradient calls (DM's and DC's synthetic side), which stay on the compiled tensor
        formulation (docs/speed.md, levers 12, 14 and 19).
        """
        return (
            self.kernels
            and not x.requires_grad
            and x.device.type == "cpu"
            and x.dtype != torch.float64
            and (not torch.is_autocast_enabled("cpu") or _autocast_bf16())
        )

    def _run(self, kind: str, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        kernel = self._use_kernel(x)
        if kernel or self.compiled:
            parts = self.chunks(x, KERNEL_CHUNK if kernel and self.chunk > 0 else self.chunk)
            flat = _flat_params(self.net, params)  # type: ignore[arg-type]
            if kind == "embed":
                flat = flat[:-2]
            try:
                if kernel:
                    record_fast_path("cpu_kernels")
                    fn = _convnet_embed_kernel if kind == "embed" else _convnet_forward_kernel
                    outs = [fn(p, flat, self._paddings, self._eps) for p in parts]
                else:
                    record_fast_path("compile")
                    with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
                        fn = _compiled(kind)
                        outs = [
                            fn(p, flat, self._paddings, self._norm, self._act, self._pool, self._eps) for p in parts
                        ]
                return outs[0] if len(outs) == 1 else torch.cat(outs)
            except Exception as e:  # noqa: BLE001 - any compiler/kernel failure: fall back to the module
                self._give_up(e, "the CPU kernels" if kernel else "torch.compile")
        return self.run_module(kind, x, params)

    def embed(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """``net.embed(x)``: ``(N, C, H, W) -> (N, D)``, optionally with other parameters.

        ``net.embed(x)``: ``(N, C, H, W) -> (N, D)``; with ``params`` (``name -> tensor``, the names of
        ``net.named_parameters()``) the net's parameters are replaced by them, as ``torch.func.functional_call``.
        """
        return self._run("embed", x, params)

    def forward(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """``net(x)``: ``(N, C, H, W) -> (N, K)`` logits; ``params`` as in :meth:`embed`."""
        return self._run("forward", x, params)

    def class_grads(self, x: Tensor, y: Tensor, num_classes: int) -> dict[str, Tensor] | None:
        """Per-class cross-entropy gradients of all the net's parameters, differentiable w.r.t. ``x``.

        Per-class cross-entropy gradients of all the net's parameters, differentiable w.r.t. ``x``: the synthetic
        side of DC/DSA gradient matching (:func:`convnet_class_grads`; compiled when this FastNet is), as
        ``{parameter name: (K, *shape)}``. ``None`` when the net or the batch is not supported (not a supported
        ConvNet; labels not sorted with equal counts per class): then use the generic path
        (:func:`ptmdd_lightning.core.objectives.dc_class_gradients`).

        Compiled, this is faster than the eager ``vmap`` over the module (docs/speed.md, lever 11).

        Args:
            x: ``(N, C, H, W)`` images; y: ``(N,)`` int64 labels; num_classes: ``K``.
        """
        if not convnet_supported(self.net) or x.shape[0] % num_classes:
            return None
        b = x.shape[0] // num_classes
        expect = torch.arange(num_classes, device=y.device).repeat_interleave(b)
        if y.shape != expect.shape or not bool((y == expect).all()):
            return None
        net = self.net
        blocks = _blocks(net)  # type: ignore[arg-type]
        pads = tuple(int(c.padding[0]) for c, _ in blocks)
        eps = float(blocks[0][1].eps) if blocks[0][1] is not None else 0.0
        params = _flat_params(net)  # type: ignore[arg-type]
        args = (x, [p.detach() for p in params], pads, net.norm, net.act, net.pool, eps, num_classes)
        grads = None
        if self.compiled:
            try:
                record_fast_path("compile")
                with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
                    grads = _compiled("class_grads")(*args)
            except Exception as e:  # noqa: BLE001 - any compiler failure: the eager formulation
                self._give_up(e, "torch.compile")
        if grads is None:
            record_fast_path("eager")
            grads = convnet_class_grads(*args)
        names = {id(p): n for n, p in net.named_parameters()}
        return {names[id(p)]: g for p, g in zip(params, grads, strict=True)}

    def _give_up(self, error: Exception, what: str) -> None:
        """Stop using the fast paths after ``error`` (from ``what``); warn once per process."""
        self.compiled = False
        self.kernels = False
        if "compile" not in _WARNED:
            _WARNED.add("compile")
            warnings.warn(
                f"ptmdd: {what} on the fast ConvNet path failed ({type(error).__name__}: "
                f"{str(error)[:300]}); using the eager module instead.",
                stacklevel=4,
            )

    __call__ = forward
