"""Evaluation of a synthetic set: train fresh networks on it, test them on the real test set (pure torch).

This is the DD-standard protocol of the DC/DSA/DM code (VICO-UoE/DatasetCondensation ``utils.py``,
``evaluate_synset`` and ``epoch``; Zhao et al. ICLR 2021 Sec. 4, Zhao & Bilen ICML 2021 Sec. 4, Zhao & Bilen
WACV 2023 Sec. 4): a freshly initialised network is trained with SGD (lr 0.01, momentum 0.9, weight decay
5e-4, batch 256, cross-entropy), the learning rate is multiplied by 0.1 once at half the epochs, DSA
augments every training batch (non-siamese, one random op per batch), and the test accuracy after the LAST
epoch is reported. Several such models give a mean and a (population) std.

Speed (this is the costliest part of a DD experiment), two training modes that give the same models:

* ``mode="vmap"``: all ``num_models`` models at once with ``torch.func`` (``stack_module_state`` +
  ``functional_call`` + ``vmap(grad(...))``) and ``torch.optim.SGD(foreach=True)`` on the stacked parameters;
  testing all models at once too. The fast mode on a GPU, where one small model leaves the device idle.
* ``mode="loop"``: the models one after the other with ``torch.optim.SGD``, as the reference. The fast
  mode on a CPU (measured on this AMX CPU: ``vmap`` is 1.5-2x slower there, see ``_resolve_mode``), and
  the only one for nets ``vmap`` cannot train (BatchNorm running statistics).
* ``mode="auto"`` (default): ``"vmap"`` on CUDA when a trial step works, else ``"loop"``.

Both modes take bf16 autocast (``precision="bf16"``: AMX on recent Intel CPUs, where ConvNet-3 epochs
run ~1.6x faster than fp32 as instance norm and pooling, not the convolutions, dominate; tensor cores on
GPUs) and, in the loop, channels_last and ``torch.compile``. Every model draws its init, its shuffles and
its DSA parameters from its own generator derived from ``seed``, in the same order in both modes, so
results are deterministic given the seed and the two modes train the same models (up to floating-point
rounding).

Never imports Lightning; ``ptmdd_lightning.nets`` and ``ptmdd_lightning.core.augment`` are imported lazily.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptmdd_lightning.core.augment import DEFAULT_STRATEGY, DSAParams, dsa_augment
from ptmdd_lightning.core.soft_labels import Teacher, kd_loss
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.machine import auto_precision
from ptmdd_lightning.nets import build_net
from ptmdd_lightning.nets.forward import BackendName, net_forward, resolve_backend

__all__ = [
    "EVAL_DSA_STRATEGY",
    "EvalProtocol",
    "as_eval_protocol",
    "evaluate_models",
    "lr_for_epoch",
    "random_real_subset",
    "summarize",
    "train_and_test",
    "train_models",
]

#: the DSA strategy of the reference evaluation (DSA/DM code ``--dsa_strategy`` default)
#: the evaluation's augmentation: the DSA default (:data:`ptmdd_lightning.core.augment.DEFAULT_STRATEGY`)
EVAL_DSA_STRATEGY = DEFAULT_STRATEGY

_PRECISIONS = {"32": "32", "32-true": "32", "bf16": "bf16", "bf16-mixed": "bf16", "auto": "auto"}
_MODES = ("auto", "vmap", "loop")

#: ``progress(done, total)``: model-epochs trained so far and in all (see :func:`train_models`)
Progress = Callable[[int, int], None]

#: an architecture: a ``build_net`` name or a zero-argument factory returning a fresh ``nn.Module``
Arch = str | Callable[[], nn.Module]


@dataclass
class EvalProtocol:
    """Hyper-parameters of the evaluation training (defaults: the DC/DSA/DM reference ``evaluate_synset``).

    Attributes:
        epochs: training epochs; one epoch is one pass over the synthetic set in shuffled batches of
            ``batch_size`` (the last batch may be smaller, as with the reference's ``DataLoader``). The
            reference uses 1000 with DSA (``epoch_eval_train``), 300 for DC without augmentation.
        lr: initial SGD learning rate (reference ``lr_net`` 0.01).
        momentum: SGD momentum (reference 0.9).
        weight_decay: SGD weight decay, added to the gradient (reference 5e-4).
        batch_size: training batch size (reference ``batch_train`` 256).
        lr_decay_at: fraction of ``epochs`` after which the lr is multiplied by 0.1 once: epochs
            ``[0, floor(epochs * lr_decay_at))`` use ``lr``, the rest ``0.1 * lr`` (reference: once, at
            ``Epoch // 2``). ``1.0`` never decays.
        dsa_strategy: DSA ops applied to every training batch (non-siamese, one random op per batch, every
            image its own parameters); ``None``, ``""`` or ``"none"`` trains without augmentation.
        dsa_params: a ``ptmdd_lightning.core.augment.DSAParams``, or ``None`` for its defaults.
        precision: ``"32"`` (fp32) or ``"bf16"`` (bf16 autocast for the forward/backward of training and
            testing; parameters, gradients and the SGD update stay fp32). Lightning's spellings
            ``"32-true"`` and ``"bf16-mixed"`` are accepted. ``"auto"`` (the default) resolves on the device at run
            time with :func:`ptmdd_lightning.machine.auto_precision`: bf16 on a GPU with bf16 and on a CPU with
            AMX-bf16, fp32 elsewhere (where bf16 is no faster, or emulated and many times slower). The paper
            tables use ``"32"`` (the authors' and DC/DSA/DM's fp32).
        channels_last: train and test in the channels_last memory format in the sequential mode (the
            vmapped mode lays out its grouped convolutions itself). Off by default: measured on the 2-core
            AMX CPU, ConvNet-3's instance norm (``GroupNorm(128, 128)``) is ~10x slower in channels_last
            (bf16 backward ~290 ms vs ~45 ms per call at batch 100), which outweighs the ~2x faster bf16
            convolutions, so a bf16 training step takes ~0.9 s instead of ~0.29 s. Nets without such norms
            (e.g. ``ConvNetNN``, ``ResNet18BN``) may gain from it.
        compile: compile the net's training forward in the sequential mode: on a CPU a ConvNet runs as the
            fused channels-last formulation of the CPU backend, any other net (and any net on CUDA) as
            ``torch.compile(net)``. On a CPU, ConvNet-3 trains through the CPU kernels with or without it
            (``backend: auto``; the default, uncompiled path measured 4.5x faster than 5 sequential fp32 runs,
            docs/speed.md), so it matters for other ConvNet variants and nets. Compilation costs ~5-15 s with
            inductor's on-disk cache warm, 25-60 s cold: worth it for the 300/1000-epoch protocol, not for
            short runs.
        test_batch_size: test images per forward, summed over the models tested at once (in vmapped
            testing each forward sees ``ceil(test_batch_size / num_models)`` images of every model).
        reset_momentum_at_decay: start a new momentum buffer when the lr decays, as the reference does (it
            builds a new ``torch.optim.SGD`` at the decay epoch).
        backend: how the evaluation nets train in the sequential mode (:mod:`ptmdd_lightning.nets.forward`):
            ``"auto"`` (ptmdd's CPU kernels for ConvNet-3 on a CPU), ``"eager"`` (the module), ``"cpu_kernels"``,
            ``"compile"``. ``PTMDD_BACKEND`` overrides it.

    Raises:
        PtmddError: a value out of range (``__post_init__``), naming the field and the allowed range.
    """

    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    lr_decay_at: float = 0.5
    dsa_strategy: str | None = EVAL_DSA_STRATEGY
    dsa_params: Any = None
    precision: str = "auto"
    channels_last: bool = False
    compile: bool = False
    test_batch_size: int = 2000
    reset_momentum_at_decay: bool = True
    backend: BackendName = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise PtmddError(f"EvalProtocol.epochs must be an int >= 1, got {self.epochs!r}; set e.g. epochs=300.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise PtmddError(f"EvalProtocol.batch_size must be an int >= 1, got {self.batch_size!r}; use 256.")
        if not isinstance(self.test_batch_size, int) or self.test_batch_size < 1:
            raise PtmddError(
                f"EvalProtocol.test_batch_size must be an int >= 1, got {self.test_batch_size!r}; use 2000."
            )
        if not self.lr > 0:
            raise PtmddError(f"EvalProtocol.lr must be > 0, got {self.lr!r}; the reference uses 0.01.")
        if not 0 <= self.momentum < 1:
            raise PtmddError(f"EvalProtocol.momentum must be in [0, 1), got {self.momentum!r}; use 0.9.")
        if not self.weight_decay >= 0:
            raise PtmddError(f"EvalProtocol.weight_decay must be >= 0, got {self.weight_decay!r}; use 5e-4.")
        if not 0 <= self.lr_decay_at <= 1:
            raise PtmddError(
                f"EvalProtocol.lr_decay_at must be in [0, 1], got {self.lr_decay_at!r}; use 0.5 (half the "
                "epochs) or 1.0 for no decay."
            )
        if str(self.precision) not in _PRECISIONS:
            raise PtmddError(f"EvalProtocol.precision must be one of {sorted(_PRECISIONS)}, got {self.precision!r}.")
        self.precision = _PRECISIONS[str(self.precision)]
        if self.dsa_strategy is not None and not isinstance(self.dsa_strategy, str):
            raise PtmddError(
                f"EvalProtocol.dsa_strategy must be a string like {EVAL_DSA_STRATEGY!r} or None, "
                f"got {self.dsa_strategy!r}."
            )
        resolve_backend(self.backend)  # an unknown name: one error naming the choices

    @property
    def augments(self) -> bool:
        """Whether training batches are augmented with DSA."""
        return self.dsa_strategy is not None and self.dsa_strategy.lower() not in ("", "none")

    @property
    def decay_epoch(self) -> int:
        """The first epoch (0-based) trained with the decayed lr ``0.1 * lr``."""
        return math.floor(self.epochs * self.lr_decay_at)


def as_eval_protocol(value: EvalProtocol | dict[str, Any] | None) -> EvalProtocol:
    """A config's ``protocol:`` as an :class:`EvalProtocol`.

    ``value``: a mapping of its fields (YAML), an ``EvalProtocol``, or ``None`` (the reference defaults).

    Raises:
        PtmddError: anything else (the message shows the YAML form), or a field out of range (``__post_init__``).
    """
    if value is None:
        return EvalProtocol()
    if isinstance(value, dict):
        value = EvalProtocol(**value)
    if not isinstance(value, EvalProtocol):
        raise PtmddError(
            f"protocol must be an EvalProtocol (in YAML a mapping such as {{epochs: 300}}), got {type(value).__name__}."
        )
    return value


def lr_for_epoch(protocol: EvalProtocol, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``: ``lr`` before ``protocol.decay_epoch``, then ``0.1 * lr``.

    Source: ``evaluate_synset`` (DC/DSA/DM ``utils.py``) multiplies the lr by 0.1 once, at ``Epoch // 2``.
    (The reference loops over ``Epoch + 1`` epochs and decays after epoch ``Epoch // 2 + 1``; here exactly
    ``epochs`` epochs run and the decayed phase starts at ``epochs // 2``: two epochs of difference in 1000.)

    Raises:
        Nothing of its own.
    """
    return protocol.lr * (0.1 if epoch >= protocol.decay_epoch else 1.0)


# ----------------------------------------------------------------------------------------------- helpers


def _check_data(images: Tensor, labels: Tensor, num_classes: int | None, what: str) -> None:
    """Raise :class:`PtmddError` unless ``images`` is ``(N, C, H, W)`` float and ``labels`` ``(N,)`` ints."""
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise PtmddError(f"{what} images must be a float tensor (N, C, H, W), got {shape}; normalize them first.")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise PtmddError(
            f"{what} labels must be a (N,) int64 tensor with N = {images.shape[0]} (one per image), got {shape}."
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise PtmddError(f"{what} labels must be int64 class ids, got {labels.dtype}; use labels.long().")
    if images.shape[0] == 0:
        raise PtmddError(f"{what} set is empty; pass at least one image.")
    if num_classes is not None and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise PtmddError(
            f"{what} labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]; "
            "check num_classes."
        )


def _resolve_builder(arch: Arch, channels: int, num_classes: int, image_size: tuple[int, int]) -> Callable:
    """A zero-argument factory of fresh nets for ``arch`` (a ``build_net`` name or a factory)."""
    if isinstance(arch, str):
        return lambda: build_net(arch, channels, num_classes, image_size)
    if callable(arch):
        return arch
    raise PtmddError(f"arch must be a net name such as 'ConvNet' or a factory of nn.Modules, got {arch!r}.")


def _seed_from(generator: torch.Generator) -> int:
    """A fresh 63-bit seed drawn from ``generator``."""
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator, dtype=torch.int64))


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "auto":
        precision = auto_precision(device)
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _cuda_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


class _ModelRNG:
    """The random streams of one model: its init seed, its shuffles (CPU), its DSA draws (on ``device``)."""

    def __init__(self, master: torch.Generator, device: torch.device) -> None:
        self.init_seed = _seed_from(master)
        self.shuffle = torch.Generator().manual_seed(_seed_from(master))
        self.augment = torch.Generator(device=device).manual_seed(_seed_from(master))


def _epoch_batches(n: int, batch_size: int, rngs: Sequence[_ModelRNG]) -> Iterator[Tensor]:
    """Yield ``(num_models, b)`` int64 CPU index batches of one epoch; every model its own permutation."""
    perms = torch.stack([torch.randperm(n, generator=r.shuffle) for r in rngs])
    for start in range(0, n, batch_size):
        yield perms[:, start : start + batch_size]


def _augment(x: Tensor, protocol: EvalProtocol, rng: _ModelRNG) -> Tensor:
    """DSA in the reference's evaluation mode (non-siamese).

    DSA in the reference's evaluation mode (``DiffAugment(img, strategy, param)``: ``seed=-1``, i.e.
    non-siamese, one op per call, every image its own parameters). ``x``: ``(b, C, H, W)``.
    """
    if not protocol.augments:
        return x

    params = protocol.dsa_params if protocol.dsa_params is not None else DSAParams()
    return dsa_augment(
        x,
        protocol.dsa_strategy,
        groups=None,
        params=params,
        siamese=False,
        single_op=True,
        generator=rng.augment,
    )


# -------------------------------------------------------------------------------------------- training


def _build_models(build: Callable[[], nn.Module], rngs: Sequence[_ModelRNG], device: torch.device) -> list:
    """Build one net per model, each under its own seeded global RNG (module inits use the global RNG)."""
    models = []
    for r in rngs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(r.init_seed)
            model = build()
        if not isinstance(model, nn.Module):
            raise PtmddError(f"the net factory must return an nn.Module, got {type(model).__name__}.")
        models.append(model.to(device=device, dtype=torch.float32).train())
    return models


def _train_loop(
    models: list[nn.Module],
    images: Tensor,
    labels: Tensor,
    protocol: EvalProtocol,
    rngs: Sequence[_ModelRNG],
    progress: Progress | None = None,
    teacher: Teacher | None = None,
) -> None:
    """Train the models one after the other with ``torch.optim.SGD`` (the reference ``evaluate_synset``).

    With a ``teacher`` the loss of a batch is :func:`~ptmdd_lightning.core.soft_labels.kd_loss` against the
    teacher's soft labels of the same augmented batch, instead of the cross-entropy with the hard labels.
    """
    device = images.device
    fmt = torch.channels_last if protocol.channels_last else torch.contiguous_format
    for i, (model, rng) in enumerate(zip(models, rngs, strict=True)):
        model.to(memory_format=fmt).train()
        forward = _training_forward(model, device, protocol)
        opt, opt_lr = None, None
        for ep in range(protocol.epochs):
            lr = lr_for_epoch(protocol, ep)
            if opt is None or (lr != opt_lr and protocol.reset_momentum_at_decay):
                # the reference builds a new optimizer (fresh momentum) at the decay epoch
                opt = torch.optim.SGD(
                    model.parameters(), lr=lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay
                )
            for group in opt.param_groups:
                group["lr"] = lr
            opt_lr = lr
            for idx in _epoch_batches(images.shape[0], protocol.batch_size, [rng]):
                idx = idx[0].to(device)
                x = _augment(images[idx], protocol, rng).contiguous(memory_format=fmt)
                with _autocast(device, protocol.precision):
                    out = forward(x)
                    soft = teacher(x) if teacher is not None else None
                if soft is None:
                    loss = F.cross_entropy(out.float(), labels[idx])
                else:
                    loss = kd_loss(out.float(), soft, teacher.temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if progress is not None:
                progress(i * protocol.epochs + ep + 1, len(models) * protocol.epochs)
        models[i] = model.to(memory_format=torch.contiguous_format)


def _training_forward(model: nn.Module, device: torch.device, protocol: EvalProtocol) -> Callable[[Tensor], Tensor]:
    """``model``'s training forward through ``protocol.backend``.

    ``model``'s forward for training, through ``protocol.backend``
    (:func:`ptmdd_lightning.nets.forward.net_forward`).

    With ``auto`` on a CPU, ConvNet-3 trains through ptmdd's C++ kernels (the same function, nothing to compile;
    docs/speed.md, lever 14) and, with ``protocol.compile``, other ConvNets through the compiled channels-last
    formulation (measured 131 ms instead of 349 ms of CPU per bf16 training step of ConvNet-3 on 100 images, 1
    thread). A net the backend does not take is the module itself, or ``torch.compile(model)`` with
    ``protocol.compile`` (also on CUDA).
    """
    if device.type == "cpu":
        fast = net_forward(model, protocol.backend, compile=protocol.compile)
        if fast.kernels or (protocol.compile and fast.compiled):
            return fast
    if protocol.compile and resolve_backend(protocol.backend) != "eager":
        return torch.compile(model)
    return model


def _stack(models: Sequence[nn.Module]) -> tuple[nn.Module, dict[str, Tensor], dict[str, Tensor]]:
    """``(meta-device template, stacked params (M, ...), stacked buffers (M, ...))`` of identical nets."""
    from torch.func import stack_module_state

    params, buffers = stack_module_state(list(models))
    params = {k: v.detach() for k, v in params.items()}
    template = copy.deepcopy(models[0]).to("meta")
    return template, params, buffers


def _vmapped_grad(
    template: nn.Module, device: torch.device, precision: str, temperature: float | None = None
) -> Callable:
    """``vmap(grad(loss))`` over models: ``(params, buffers, x (M, b, C, H, W), y) -> grads``.

    ``y``: hard labels ``(M, b)`` (cross-entropy) or, with a ``temperature``, soft labels ``(M, b, K)``
    (:func:`~ptmdd_lightning.core.soft_labels.kd_loss`).
    """
    from torch.func import functional_call, grad, vmap

    def loss_fn(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        with _autocast(device, precision):
            out = functional_call(template, (params, buffers), (x,))
        if temperature is not None:
            return kd_loss(out.float(), y, temperature)
        return F.cross_entropy(out.float(), y)

    return vmap(grad(loss_fn), in_dims=(0, 0, 0, 0), randomness="different")


def _vmap_works(models: Sequence[nn.Module], images: Tensor, labels: Tensor, precision: str) -> bool:
    """Whether ``vmap(grad(...))`` can train these nets (one trial step on two images; nothing is updated)."""
    if _has_batchnorm(models[0]):
        return False  # vmap cannot update BatchNorm running statistics in place
    try:
        template, params, buffers = _stack(models)
        m = len(models)
        x = images[:2].unsqueeze(0).expand(m, -1, -1, -1, -1)
        y = labels[:2].unsqueeze(0).expand(m, -1)
        with torch.random.fork_rng(devices=_cuda_devices(images.device)):
            _vmapped_grad(template.train(), images.device, precision)(params, buffers, x, y)
    except (RuntimeError, NotImplementedError, ValueError, TypeError):
        return False
    return True


def _train_vmap(
    models: list[nn.Module],
    images: Tensor,
    labels: Tensor,
    protocol: EvalProtocol,
    rngs: Sequence[_ModelRNG],
    progress: Progress | None = None,
    teacher: Teacher | None = None,
) -> None:
    """Train all models at once (vmap).

    Train all models at once: ``vmap(grad(loss))`` on stacked ``(num_models, ...)`` parameters, updated by
    ``torch.optim.SGD(foreach=True)`` (every SGD operation is elementwise, so one step on the stacked tensors is the
    step of every model; a new optimizer at the decay epoch, as in the sequential mode).
    """
    device = images.device
    template, params, buffers = _stack(models)
    template.train()
    grad_fn = _vmapped_grad(template, device, protocol.precision, teacher.temperature if teacher else None)
    names = list(params)
    plist = [params[k] for k in names]
    opt, opt_lr = None, None
    for ep in range(protocol.epochs):
        lr = lr_for_epoch(protocol, ep)
        if opt is None or (lr != opt_lr and protocol.reset_momentum_at_decay):
            # the reference builds a new optimizer (fresh momentum) at the decay epoch
            opt = torch.optim.SGD(
                plist, lr=lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay, foreach=True
            )
        for group in opt.param_groups:
            group["lr"] = lr
        opt_lr = lr
        for idx in _epoch_batches(images.shape[0], protocol.batch_size, rngs):
            idx = idx.to(device)
            x = images[idx]  # (M, b, C, H, W)
            if protocol.augments:
                x = torch.stack([_augment(x[m], protocol, r) for m, r in enumerate(rngs)])
            if teacher is None:
                target = labels[idx]
            else:
                with _autocast(device, protocol.precision):
                    target = torch.stack([teacher(x[m]) for m in range(x.shape[0])])  # (M, b, K)
            grads = grad_fn(params, buffers, x, target)
            for k, p in zip(names, plist, strict=True):
                p.grad = grads[k]
            opt.step()
        if progress is not None:
            progress((ep + 1) * len(models), len(models) * protocol.epochs)
    with torch.no_grad():
        for m, model in enumerate(models):
            for name, p in model.named_parameters():
                p.copy_(params[name][m])


def _resolve_mode(mode: str, models: Sequence[nn.Module], images: Tensor, labels: Tensor, precision: str) -> str:
    """``"vmap"`` or ``"loop"``; ``"auto"`` is ``"vmap"`` on CUDA when a trial step works, else ``"loop"``.

    On CPU ``"auto"`` is ``"loop"``: measured on the AMX CPU (1 thread; 5 ConvNet-3, 100 images of
    1x28x28, DSA), a vmapped epoch of the 5 models takes 4.4 s in fp32 and 3.7 s in bf16, 5 sequential
    ones 2.9 s and 1.9 s, because ``vmap`` turns the 5 convolutions into one grouped convolution, which
    oneDNN runs slower, and decomposes ``GroupNorm``'s backward into several elementwise passes; a batch of
    100 images already fills the cores. On a GPU the vmapped step fills the device that one small model
    cannot.
    """
    if mode not in _MODES:
        raise PtmddError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}.")
    if mode == "loop" or (mode == "auto" and images.device.type != "cuda"):
        return "loop"
    if _vmap_works(models, images, labels, precision):
        return "vmap"
    if mode == "vmap":
        raise PtmddError(
            f"torch.func.vmap cannot train {type(models[0]).__name__} (BatchNorm running statistics or an "
            "unsupported op); use mode='loop' or mode='auto'."
        )
    return "loop"


def train_models(
    arch: Arch,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    num_models: int,
    protocol: EvalProtocol | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    mode: str = "auto",
    progress: Progress | None = None,
    teacher: Teacher | None = None,
) -> list[nn.Module]:
    """Train ``num_models`` freshly initialised nets on ``(images, labels)`` with the evaluation protocol.

    Every model gets its own init, its own shuffling and its own DSA draws, all derived from
    ``torch.Generator().manual_seed(seed)``; the result is deterministic given ``seed`` and the same in
    both modes (up to floating-point rounding). Model ``i``'s streams depend on ``seed`` and ``i`` alone, so a
    model trained by itself (:func:`train_and_test` with ``done``) is the same model. The global RNG state is
    left untouched (module inits and any global-RNG op such as dropout run under a forked global RNG, seeded
    per model in the sequential mode and once in the vmapped one).

    Args:
        arch: a ``ptmdd_lightning.nets.build_net`` name (built as ``build_net(arch, C, num_classes, (H, W))``)
            or a zero-argument factory returning a fresh ``nn.Module`` mapping ``(b, C, H, W) -> (b, K)``.
        images: ``(N, C, H, W)`` float normalized training (synthetic) images; detached, cast to float32.
        labels: ``(N,)`` int64 labels in ``[0, num_classes)``.
        num_classes: K.
        num_models: how many models to train (>= 1).
        protocol: the :class:`EvalProtocol` (default: the reference's, 1000 epochs).
        seed: seed of every random choice.
        device: where to train (default: ``images.device``).
        mode: ``"vmap"`` (all models at once via ``torch.func``), ``"loop"`` (one after the other with
            ``torch.optim.SGD``) or ``"auto"`` (``"vmap"`` on CUDA when a trial step works, else
            ``"loop"``, the faster one on CPU).
        progress: called as ``progress(done, total)`` after every training epoch, in model-epochs
            (``total = num_models * protocol.epochs``; the loop counts one model's epoch, vmap all models'):
            for a progress bar, or to stop early by raising (the exception propagates unchanged).
        teacher: soft-label evaluation (:class:`~ptmdd_lightning.core.soft_labels.Teacher`): every augmented
            batch gets the teacher's soft labels and the loss is ``T^2 * KL`` (SRe2L/RDED evaluation); ``labels``
            then only fix the class balance. ``None`` (default): hard labels and cross-entropy, the reference's.

    Returns:
        the ``num_models`` trained nets (float32, contiguous format, on ``device``, in train mode).

    Raises:
        PtmddError: bad shapes/labels/``num_models``/``mode``; ``mode="vmap"`` for a net vmap cannot train; a
            teacher whose input shape or class count does not match the student's.
    """
    models: list[nn.Module] = []
    for _, group in _train_groups(
        arch, images, labels, num_classes, num_models, protocol, seed, device, mode, progress, teacher, skip=()
    ):
        models.extend(group)
    return models


def _model_seed(global_seed: int, index: int) -> int:
    """The global-RNG seed of model ``index`` in the sequential mode (dropout and other global-RNG ops)."""
    return (global_seed + index) % (2**63 - 1)


def _train_groups(
    arch: Arch,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    num_models: int,
    protocol: EvalProtocol | None,
    seed: int,
    device: torch.device | str | None,
    mode: str,
    progress: Progress | None,
    teacher: Teacher | None,
    skip: Sequence[int],
) -> Iterator[tuple[list[int], list[nn.Module]]]:
    """Train the models of :func:`train_models` except those in ``skip``; yield ``(indices, models)`` as they finish.

    The sequential mode yields every model as soon as it is trained (``([i], [model_i])``), the vmapped mode all
    of them at the end. Model ``i`` draws only from its own streams (:class:`_ModelRNG` ``i`` of ``seed``, and
    :func:`_model_seed` for the global RNG in the sequential mode), so skipping models changes no other model.
    ``progress`` counts the skipped models as done.
    """
    protocol = protocol if protocol is not None else EvalProtocol()
    _check_data(images, labels, num_classes, "training")
    if not isinstance(num_models, int) or num_models < 1:
        raise PtmddError(f"num_models must be an int >= 1, got {num_models!r}; the reference uses 5 to 20.")
    device = torch.device(device) if device is not None else images.device
    images = images.detach().to(device=device, dtype=torch.float32)
    labels = labels.detach().to(device=device, dtype=torch.int64)
    _, c, h, w = images.shape
    build = _resolve_builder(arch, c, num_classes, (h, w))
    master = torch.Generator().manual_seed(int(seed))
    global_seed = _seed_from(master)
    rngs = [_ModelRNG(master, device) for _ in range(num_models)]
    if teacher is not None:
        teacher = teacher.to(device).eval()
        teacher.check(num_classes, (c, h, w), device)
    skipped = set(skip)
    todo = [i for i in range(num_models) if i not in skipped]
    if not todo:
        return
    models = _build_models(build, [rngs[i] for i in todo], device)
    chosen = _resolve_mode(mode, models, images, labels, protocol.precision)
    epochs, total = protocol.epochs, num_models * protocol.epochs
    if chosen == "vmap":
        before = (num_models - len(todo)) * epochs

        def shifted(done: int, _total: int) -> None:
            progress(before + done, total)

        with torch.random.fork_rng(devices=_cuda_devices(device)):
            torch.manual_seed(global_seed)
            _train_vmap(
                models, images, labels, protocol, [rngs[i] for i in todo], shifted if progress else None, teacher
            )
        yield todo, models
        return
    for j, i in enumerate(todo):
        before = (num_models - len(todo) + j) * epochs

        def shifted(done: int, _total: int, before: int = before) -> None:
            progress(before + done, total)

        one = [models[j]]
        with torch.random.fork_rng(devices=_cuda_devices(device)):
            torch.manual_seed(_model_seed(global_seed, i))
            _train_loop(one, images, labels, protocol, [rngs[i]], shifted if progress else None, teacher)
        models[j] = None  # type: ignore[call-overload]  # the caller holds it now
        yield [i], one


# --------------------------------------------------------------------------------------------- testing


@torch.no_grad()
def evaluate_models(
    models: Sequence[nn.Module],
    test_images: Tensor,
    test_labels: Tensor,
    precision: str = "32",
    batch_size: int = 2000,
    device: torch.device | str | None = None,
    mode: str = "auto",
    channels_last: bool = False,
) -> Tensor:
    """Top-1 accuracy of every model on the test set, the models in eval mode, under ``no_grad``.

    With ``mode="vmap"`` (``"auto"`` on CUDA), models of one architecture are tested all at once with
    ``vmap`` over their stacked parameters (one input batch, shared); otherwise (``"loop"``, ``"auto"`` on
    CPU where the loop is faster, BatchNorm nets, mixed architectures) one after the other.
    Source: ``epoch('test', ...)`` of the DC/DSA/DM ``utils.py`` (argmax of the logits vs the label).

    Args:
        models: trained nets mapping ``(b, C, H, W) -> (b, K)``; put in eval mode (left in it).
        test_images: ``(T, C, H, W)`` float normalized test images.
        test_labels: ``(T,)`` int64 labels.
        precision: ``"32"``, ``"bf16"`` (bf16 autocast) or ``"auto"`` (see :class:`EvalProtocol`).
        batch_size: test images per forward summed over the models tested at once.
        device: where to test (default: the device of the first model's first parameter, else the images').
        mode: ``"auto"``, ``"vmap"`` or ``"loop"`` (``"vmap"`` falls back to the loop when impossible).
        channels_last: test in channels_last in the sequential mode.

    Returns:
        ``(num_models,)`` float64 CPU tensor of accuracies in ``[0, 1]``.

    Raises:
        PtmddError: bad shapes or labels, an empty model list, an unknown ``precision`` or ``mode``.
    """
    _check_data(test_images, test_labels, None, "test")
    if len(models) == 0:
        raise PtmddError("evaluate_models needs at least one model; pass the list returned by train_models.")
    if str(precision) not in _PRECISIONS:
        raise PtmddError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}.")
    if mode not in _MODES:
        raise PtmddError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}.")
    precision = _PRECISIONS[str(precision)]
    if device is None:
        first = next(iter(models[0].parameters()), None)
        device = first.device if first is not None else test_images.device
    device = torch.device(device)
    labels = test_labels.to(device=device, dtype=torch.int64)
    for model in models:
        model.to(device).eval()
    num = len(models)
    correct = torch.zeros(num, dtype=torch.int64, device=device)
    same_arch = (
        all(type(m) is type(models[0]) for m in models)
        and len({tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in models}) == 1
    )
    vmapped = mode == "vmap" or (mode == "auto" and device.type == "cuda")
    if vmapped and same_arch and not _has_batchnorm(models[0]):
        from torch.func import functional_call, vmap

        template, params, buffers = _stack(models)
        template.eval()

        def forward(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(template, (p, b), (x,))

        batched = vmap(forward, in_dims=(0, 0, None))
        chunk = max(1, math.ceil(batch_size / num))
        for start in range(0, test_images.shape[0], chunk):
            x = test_images[start : start + chunk].to(device=device, dtype=torch.float32)
            with _autocast(device, precision):
                out = batched(params, buffers, x)  # (M, b, K)
            correct += (out.argmax(dim=-1) == labels[start : start + chunk]).sum(dim=1)
    else:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for i, model in enumerate(models):
            model.to(memory_format=fmt)
            for start in range(0, test_images.shape[0], batch_size):
                x = test_images[start : start + batch_size].to(device=device, dtype=torch.float32)
                with _autocast(device, precision):
                    out = model(x.contiguous(memory_format=fmt))
                correct[i] += int((out.argmax(dim=-1) == labels[start : start + batch_size]).sum())
            model.to(memory_format=torch.contiguous_format)
    return correct.cpu().to(torch.float64) / test_images.shape[0]


def train_and_test(
    arch: Arch,
    images: Tensor,
    labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    num_classes: int,
    num_models: int,
    protocol: EvalProtocol | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    mode: str = "auto",
    progress: Progress | None = None,
    teacher: Teacher | None = None,
    done: Mapping[int, float] | None = None,
    on_model: Callable[[int, float], None] | None = None,
) -> Tensor:
    """Evaluate a synthetic set: train ``num_models`` fresh nets on it, return their real test accuracies.

    The DC/DSA/DM ``evaluate_synset`` protocol (see :class:`EvalProtocol`), every model trained from its own
    random init and tested after the last epoch; :func:`train_models` then :func:`evaluate_models`. In the
    sequential mode every model is tested as soon as it is trained, so an interrupted evaluation keeps the models
    finished so far (``on_model``) and a resumed one trains only the others (``done``): model ``i`` depends on
    ``seed`` and ``i`` alone, so the accuracies equal an uninterrupted evaluation's.

    Args:
        arch: a ``build_net`` name (e.g. ``"ConvNet"``) or a zero-argument factory of fresh nets.
        images: ``(N, C, H, W)`` float normalized synthetic images (an ``nn.Parameter`` is detached).
        labels: ``(N,)`` int64 labels in ``[0, num_classes)``.
        test_images: ``(T, C, H, W)`` float normalized real test images (same ``C, H, W``).
        test_labels: ``(T,)`` int64 labels.
        num_classes: K.
        num_models: how many models to train and test.
        protocol: an :class:`EvalProtocol` (default: the reference's).
        seed: seed of inits, shuffles and DSA draws; results are deterministic given it.
        device: where to run (default: ``images.device``).
        mode: ``"auto"`` | ``"vmap"`` | ``"loop"`` (see :func:`train_models`).
        progress: ``progress(done, total)`` after every training epoch (see :func:`train_models`).
        teacher: soft labels from a PTM or an ensemble (see :func:`train_models`); ``None``: hard labels.
        done: ``{model index: test accuracy in [0, 1]}`` of models of this same evaluation (same data, seed,
            protocol) finished before an interruption; they are not trained again and their accuracies are
            returned as given.
        on_model: called as ``on_model(i, accuracy)`` once model ``i`` is tested (sequential mode: after every
            model; vmapped: after all), e.g. to save progress.

    Returns:
        ``(num_models,)`` float64 CPU tensor of test accuracies in ``[0, 1]``.

    Raises:
        PtmddError: bad shapes/labels, test images of another shape than the training images, bad
            ``num_models``/``mode``, ``mode="vmap"`` for a net vmap cannot train, a teacher that does not fit, or
            a ``done`` index outside ``[0, num_models)`` or accuracy outside ``[0, 1]``.
    """
    protocol = protocol if protocol is not None else EvalProtocol()
    _check_data(test_images, test_labels, num_classes, "test")
    if isinstance(images, Tensor) and images.dim() == 4 and tuple(test_images.shape[1:]) != tuple(images.shape[1:]):
        raise PtmddError(
            f"test images are {tuple(test_images.shape[1:])} but the synthetic images are "
            f"{tuple(images.shape[1:])}; evaluate on the test split of the dataset that was distilled."
        )
    if not isinstance(num_models, int) or num_models < 1:
        raise PtmddError(f"num_models must be an int >= 1, got {num_models!r}; the reference uses 5 to 20.")
    done = dict(done or {})
    for i, acc in done.items():
        if not (isinstance(i, int) and 0 <= i < num_models and 0.0 <= float(acc) <= 1.0):
            raise PtmddError(
                f"done must map model indices in [0, {num_models}) to accuracies in [0, 1], got {i!r}: {acc!r}; "
                "pass the on_model results of an interrupted evaluation with the same num_models."
            )
    accs = torch.full((num_models,), float("nan"), dtype=torch.float64)
    for i, acc in done.items():
        accs[i] = float(acc)
    groups = _train_groups(
        arch, images, labels, num_classes, num_models, protocol, seed, device, mode, progress, teacher, skip=done
    )
    for indices, models in groups:
        tested = evaluate_models(
            models,
            test_images,
            test_labels,
            precision=protocol.precision,
            batch_size=protocol.test_batch_size,
            mode=mode,
            channels_last=protocol.channels_last,
        )
        for i, acc in zip(indices, tested.tolist(), strict=True):
            accs[i] = acc
            if on_model is not None:
                on_model(i, acc)
    return accs


# -------------------------------------------------------------------------------------- baseline, stats


def random_real_subset(
    images: Tensor, labels: Tensor, ipc: int, num_classes: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The random-real baseline: ``ipc`` real images of every class, drawn without replacement.

    Source: the DC code's ``get_images(c, n)`` (``np.random.permutation(indices_class[c])[:n]``), which also
    initialises synthetic sets from real images; the DC paper's "Random" baseline (Table 1).

    Args:
        images: ``(N, C, H, W)`` real images (any dtype).
        labels: ``(N,)`` int64 labels in ``[0, num_classes)``.
        ipc: images per class (>= 1).
        num_classes: K.
        generator: CPU RNG for the draw (``None``: the global RNG).

    Returns:
        ``(images (K*ipc, C, H, W), labels (K*ipc,) int64)`` sorted by class (``[0]*ipc + [1]*ipc + ...``),
        on ``images``' device.

    Raises:
        PtmddError: bad shapes, ``ipc < 1``, or a class with fewer than ``ipc`` images.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise PtmddError("random_real_subset needs (N, C, H, W) images.")
    _check_data(images.float() if not images.is_floating_point() else images, labels, num_classes, "real")
    if not isinstance(ipc, int) or ipc < 1:
        raise PtmddError(f"ipc must be an int >= 1, got {ipc!r}.")
    labels_cpu = labels.detach().cpu().long()
    picks = []
    for k in range(num_classes):
        idx = torch.nonzero(labels_cpu == k).flatten()
        if idx.numel() < ipc:
            raise PtmddError(f"class {k} has {idx.numel()} images, fewer than ipc={ipc}; lower ipc.")
        picks.append(idx[torch.randperm(idx.numel(), generator=generator)[:ipc]])
    sel = torch.cat(picks)
    out_labels = torch.arange(num_classes, dtype=torch.int64).repeat_interleave(ipc)
    return images[sel.to(images.device)], out_labels.to(labels.device)


def summarize(accs: Tensor | Sequence[float]) -> dict[str, float | int]:
    """``{'mean': ..., 'std': ..., 'n': ...}`` of accuracies; ``std`` is the population std (``ddof=0``).

    Source: the DC/DSA/DM ``main.py`` prints ``np.mean(accs)`` and ``np.std(accs)`` (numpy's default
    ``ddof=0``). Units are those of ``accs`` (fractions in ``[0, 1]`` from :func:`train_and_test`).

    Raises:
        PtmddError: no accuracies.
    """
    t = torch.as_tensor(accs, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise PtmddError("summarize needs at least one accuracy; evaluate at least one model.")
    return {"mean": float(t.mean()), "std": float(t.std(correction=0)), "n": int(t.numel())}
