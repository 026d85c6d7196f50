"""DD objectives, batched over classes: DM (distribution matching) and DC (gradient matching).

Sources:

* DM: Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023, eq. (4); reference code
  github.com/VICO-UoE/DatasetCondensation ``main_DM.py``:
  ``loss += torch.sum((torch.mean(output_real, dim=0) - torch.mean(output_syn, dim=0))**2)`` per class.
* DC: Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021, eq. (9)/(10);
  reference code ``utils.py`` (``distance_wb``, ``match_loss``, ``get_loops``) and ``main.py`` (per-class
  gradients of the CE loss of a randomly initialised net on a real and a synthetic batch, ``match_loss``
  summed over classes, BatchNorm statistics measured on a real batch and then frozen).

The reference loops over classes and runs one small forward/backward per class. Here all classes run
together: DM with one one-hot matmul, DC with ``torch.func.vmap(torch.func.grad(...))`` over a
``(K, B, C, H, W)`` stack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ptmdd_lightning.errors import PtmddError

__all__ = [
    "DC_BN_IMAGES_PER_CLASS",
    "DC_LOOPS",
    "MATCH_METRICS",
    "dc_class_gradients",
    "dc_loss",
    "dc_outer_inner",
    "dm_loss",
    "freeze_batchnorm_stats",
    "match_distance",
    "match_distance_per_class",
]

#: The reference's ``+ 0.000001`` in the cosine denominators of ``distance_wb`` and ``match_loss('cos')``.
_EPS = 0.000001
#: The distances of the reference ``match_loss``: layer-wise per-row cosine ('ours'), 'mse', global 'cos'.
MATCH_METRICS: tuple[str, ...] = ("ours", "mse", "cos")
#: DC's ``get_loops``: ipc -> (outer_loop, inner_loop).
DC_LOOPS: dict[int, tuple[int, int]] = {
    1: (1, 1),
    10: (10, 50),
    20: (20, 25),
    30: (30, 20),
    40: (40, 15),
    50: (50, 10),
}
#: ``forward(x, params) -> logits``: the net's forward with its parameters replaced by ``params`` (``name ->
#: tensor``), e.g. :meth:`ptmdd_lightning.nets.forward.NetForward.forward`; must equal ``functional_call(net, ...)``.
Forward = Callable[[Tensor, Mapping[str, Tensor]], Tensor]
#: ``class_grads(x, y, num_classes) -> {name: (K, *shape)} | None``: per-class CE gradients of (at least) every
#: parameter with 2+ dimensions, differentiable w.r.t. ``x``; see :func:`dc_loss`.
ClassGrads = Callable[[Tensor, Tensor, int], "dict[str, Tensor] | None"]
#: DC ``main.py``'s ``BNSizePC``: real images per class used to measure the BatchNorm statistics.
DC_BN_IMAGES_PER_CLASS = 16


# ----------------------------------------------------------------------------------------------------------
# DM


def _check_labels(name: str, labels: Tensor, n: int) -> None:
    if labels.shape != (n,):
        raise PtmddError(f"{name} must have shape ({n},) (one label per row), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise PtmddError(f"{name} must be integer class indices (int64), got dtype {labels.dtype}")


def _f32(t: Tensor) -> Tensor:
    """``t`` in at least float32 (float64 stays float64; bf16/fp16 are upcast)."""
    return t if t.dtype == torch.float64 else t.float()


def _one_hot_t(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(K, N)`` with ``[k, i] = labels[i] == k`` (labels outside ``[0, K)`` give an all-zero column)."""
    ks = torch.arange(num_classes, device=labels.device)
    return (labels.view(1, -1) == ks.view(-1, 1)).to(dtype)


def _class_means(emb: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    e = _f32(emb)
    oh = _one_hot_t(labels.to(emb.device), num_classes, e.dtype)  # (K, N)
    counts = oh.sum(1)  # (K,)
    sums = oh @ e  # (K, D)
    return sums / counts.clamp(min=1).unsqueeze(1), counts


def dm_loss(
    real_emb: Tensor,
    real_labels: Tensor,
    syn_emb: Tensor,
    syn_labels: Tensor,
    num_classes: int,
    validate: bool = True,
) -> Tensor:
    """DM loss: ``sum_k || mean(real_emb[real_labels == k]) - mean(syn_emb[syn_labels == k]) ||^2``.

    DM paper eq. (4) with the reference's squared L2 (``torch.sum((mean_real - mean_syn)**2)`` summed over
    classes). One batched one-hot matmul, no loop over classes; computed in float32 (float64 inputs stay
    float64) with autocast disabled
    (bf16 embeddings are upcast). ``real_emb`` is detached, as in the reference
    (``embed(img_real).detach()``). Classes absent from both sides contribute 0.

    Args:
        real_emb: ``(Nr, D)`` embeddings of the real images (any float dtype).
        real_labels: ``(Nr,)`` int64 in ``[0, K)``.
        syn_emb: ``(Ns, D)`` embeddings of the synthetic images (grad flows back through them).
        syn_labels: ``(Ns,)`` int64 in ``[0, K)``.
        num_classes: ``K``.
        validate: check labels and class presence (one host sync); the checks below need it.

    Returns:
        scalar float32 tensor (float64 for float64 inputs).

    Raises:
        PtmddError: shapes disagree; labels outside ``[0, K)``; a class present on one side only (its mean on
            the other side is undefined; the reference would produce NaN).
    """
    if real_emb.dim() != 2 or syn_emb.dim() != 2 or real_emb.shape[1] != syn_emb.shape[1]:
        raise PtmddError(
            f"dm_loss needs embeddings (Nr, D) and (Ns, D) with one D, got {tuple(real_emb.shape)} and "
            f"{tuple(syn_emb.shape)}; flatten the features (net.embed gives (N, D))"
        )
    _check_labels("real_labels", real_labels, real_emb.shape[0])
    _check_labels("syn_labels", syn_labels, syn_emb.shape[0])
    with torch.autocast(device_type=syn_emb.device.type, enabled=False):
        mr, cr = _class_means(real_emb.detach(), real_labels, num_classes)
        ms, cs = _class_means(syn_emb, syn_labels.to(syn_emb.device), num_classes)
        if validate:
            nr, ns = real_labels.shape[0], syn_labels.shape[0]
            flags = torch.stack([cr.sum() != nr, cs.sum() != ns, ((cr > 0) != (cs.to(cr.device) > 0)).any()]).tolist()
            if flags[0] or flags[1]:
                raise PtmddError(f"dm_loss labels must lie in [0, {num_classes}); fix num_classes or the labels")
            if flags[2]:
                only_r = torch.nonzero((cr > 0) & (cs == 0)).flatten().tolist()
                only_s = torch.nonzero((cs > 0) & (cr == 0)).flatten().tolist()
                raise PtmddError(
                    f"dm_loss needs every class on both sides; classes only in the real batch: {only_r}, "
                    f"only in the synthetic batch: {only_s}; draw class-balanced real batches covering all "
                    f"classes"
                )
        return ((mr.to(ms.device) - ms) ** 2).sum()


# ----------------------------------------------------------------------------------------------------------
# DC: the match distance


def match_distance_per_class(gw_syn: Sequence[Tensor], gw_real: Sequence[Tensor], metric: str = "ours") -> Tensor:
    """The reference ``match_loss`` for ``K`` classes at once: every tensor has a leading class dimension.

    * ``'ours'`` (``distance_wb`` summed over layers): each layer's gradient ``(K, out, ...)`` is viewed as
      ``(K, out, rest)`` (4-D conv weights ``(out, in*kh*kw)``, 3-D ``(out, a*b)``, 2-D as is); the
      distance is ``sum_rows (1 - <r, s> / (|r| |s| + 1e-6))``. 1-D (bias, norm) and 0-D parameters are
      skipped (0), as in the reference.
    * ``'mse'``: ``sum (gw_syn - gw_real)^2`` over all parameters (1-D included).
    * ``'cos'``: ``1 - <r, s> / (|r| |s| + 1e-6)`` of all parameters concatenated (1-D included).

    Computed in float32 (float64 gradients stay float64), autocast disabled.

    Args:
        gw_syn: per-parameter ``(K, *shape)`` synthetic gradients.
        gw_real: the same for the real gradients (same shapes).
        metric: ``'ours'``, ``'mse'`` or ``'cos'``.

    Returns:
        ``(K,)`` float32 (or float64) distances.

    Raises:
        PtmddError: unknown metric; different numbers of tensors or shapes.
    """
    if metric not in MATCH_METRICS:
        raise PtmddError(f"unknown gradient match metric {metric!r}; use one of {list(MATCH_METRICS)}")
    if len(gw_syn) != len(gw_real) or not gw_real:
        raise PtmddError(
            f"match_distance needs one synthetic and one real gradient per parameter, got {len(gw_syn)} and "
            f"{len(gw_real)}; compute both with the same net"
        )
    for i, (gs, gr) in enumerate(zip(gw_syn, gw_real, strict=True)):
        if gs.shape != gr.shape or gs.dim() < 1:
            raise PtmddError(
                f"gradient {i}: synthetic shape {tuple(gs.shape)} != real shape {tuple(gr.shape)} (both "
                f"need a leading class dimension); compute both with the same net and num_classes"
            )
    k = gw_real[0].shape[0]
    dev = gw_syn[0].device
    with torch.autocast(device_type=dev.type, enabled=False):
        dtype = torch.float64 if any(g.dtype == torch.float64 for g in gw_syn) else torch.float32
        total = torch.zeros(k, dtype=dtype, device=dev)
        if metric == "ours":
            for gs, gr in zip(gw_syn, gw_real, strict=True):
                if gr.dim() <= 2:  # 0-D or 1-D parameter: 'do nothing' in distance_wb -> 0
                    continue
                s = gs.to(dtype).reshape(k, gs.shape[1], -1)
                r = gr.to(device=dev, dtype=dtype).reshape(k, gr.shape[1], -1)
                cos = (r * s).sum(-1) / (r.norm(dim=-1) * s.norm(dim=-1) + _EPS)
                total = total + (1 - cos).sum(-1)
            return total
        if metric == "mse":
            for gs, gr in zip(gw_syn, gw_real, strict=True):
                d = gs.to(dtype) - gr.to(device=dev, dtype=dtype)
                total = total + (d**2).reshape(k, -1).sum(-1)
            return total
        dot = torch.zeros_like(total)
        nr2 = torch.zeros_like(total)
        ns2 = torch.zeros_like(total)
        for gs, gr in zip(gw_syn, gw_real, strict=True):
            s = gs.to(dtype).reshape(k, -1)
            r = gr.to(device=dev, dtype=dtype).reshape(k, -1)
            dot = dot + (r * s).sum(-1)
            nr2 = nr2 + (r * r).sum(-1)
            ns2 = ns2 + (s * s).sum(-1)
        return 1 - dot / (nr2.sqrt() * ns2.sqrt() + _EPS)


def match_distance(gw_syn: Sequence[Tensor], gw_real: Sequence[Tensor], metric: str = "ours") -> Tensor:
    """DC's gradient distance for one class: the reference ``match_loss(gw_syn, gw_real)``.

    See :func:`match_distance_per_class` for the metrics; here the tensors have the parameters' own shapes
    (conv ``(out, in, kh, kw)``, linear ``(out, in)``, bias ``(out,)``).

    Args:
        gw_syn: per-parameter synthetic gradients.
        gw_real: per-parameter real gradients (same shapes).
        metric: ``'ours'`` (default, the DC paper's layer-wise distance), ``'mse'`` or ``'cos'``.

    Returns:
        scalar float32 tensor.

    Raises:
        PtmddError: unknown metric; different numbers of tensors or shapes.
    """
    syn1 = [g.unsqueeze(0) for g in gw_syn]
    real1 = [g.unsqueeze(0) for g in gw_real]
    return match_distance_per_class(syn1, real1, metric)[0]


# ----------------------------------------------------------------------------------------------------------
# DC: per-class gradients


def _batchnorms(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm_stats(net: nn.Module, real_images: Tensor) -> bool:
    """Measure BatchNorm statistics on a real batch, then freeze them (DC ``main.py``, every outer step).

    As the reference: if the net has BatchNorm layers, ``net.train()``, one forward of ``real_images`` (the
    reference uses :data:`DC_BN_IMAGES_PER_CLASS` = 16 random real images per class) to update the running
    mean/var (momentum update), then every BatchNorm module is put in eval mode. The forward runs without
    grad. Nets without BatchNorm are left untouched.

    Args:
        net: any ``nn.Module``.
        real_images: ``(N, C, H, W)`` real images.

    Returns:
        whether the net has BatchNorm layers.

    Raises:
        Nothing of its own.
    """
    bns = _batchnorms(net)
    if not bns:
        return False
    net.train()
    with torch.no_grad():
        net(real_images)
    for m in bns:
        m.eval()
    return True


def _check_bn_frozen(net: nn.Module) -> None:
    if any(m.training for m in _batchnorms(net)):
        raise PtmddError(
            "DC gradient matching needs frozen BatchNorm statistics (as the DC reference does); call "
            "freeze_batchnorm_stats(net, real_images) before dc_loss/dc_class_gradients, or use a net "
            "without BatchNorm"
        )


def _class_counts(y: Tensor, num_classes: int, name: str) -> list[int]:
    if y.numel():
        lo, hi = torch.stack([y.min(), y.max()]).tolist()
        if lo < 0 or hi >= num_classes:
            raise PtmddError(f"{name} must lie in [0, {num_classes}); fix num_classes or the labels")
    return torch.bincount(y, minlength=num_classes).tolist()


def _dc_grads(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    counts: list[int],
    params: Mapping[str, Tensor] | None,
    create_graph: bool,
    batched: bool | None,
    forward: Forward | None = None,
) -> list[Tensor]:
    k = len(counts)
    if batched is None:
        batched = create_graph
    if create_graph:
        forward = None  # a compiled forward has no double backward: the graph side always uses the module
    if params is None:
        params = {name: p.detach() for name, p in net.named_parameters()}
    params = dict(params)
    buffers = dict(net.named_buffers())
    if not create_graph:
        x = x.detach()
    ctx = contextlib.nullcontext() if create_graph else torch.no_grad()
    with ctx:
        if batched and forward is None:
            out = _dc_grads_vmap(net, x, y, counts, params, buffers)
        else:
            out = _dc_grads_loop(net, x, y, k, params, buffers, create_graph, forward)
    if not create_graph:
        out = [g.detach() for g in out]
    return out


def _dc_grads_vmap(
    net: nn.Module, x: Tensor, y: Tensor, counts: list[int], params: dict[str, Tensor], buffers: dict
) -> list[Tensor]:
    k, n = len(counts), x.shape[0]
    dev = x.device
    bmax = max(counts)
    order = torch.argsort(y.to(dev), stable=True)
    equal = all(c == bmax for c in counts)
    if equal:
        xk = x.index_select(0, order).view(k, bmax, *x.shape[1:])
        wk = torch.full((k, bmax), 1.0 / bmax, device=dev)
    else:  # pad each class to bmax with zero images of weight 0
        cnt = torch.tensor(counts, device=dev)
        start = torch.cumsum(cnt, 0) - cnt
        b = torch.arange(bmax, device=dev)
        valid = b.view(1, -1) < cnt.view(-1, 1)  # (K, bmax)
        pos = (start.view(-1, 1) + b.view(1, -1)).clamp(max=max(n - 1, 0))
        idx = torch.where(valid, order[pos], torch.full_like(pos, n))
        x_ext = torch.cat([x, x.new_zeros((1, *x.shape[1:]))], 0)
        xk = x_ext.index_select(0, idx.flatten()).view(k, bmax, *x.shape[1:])
        wk = valid.to(torch.float64) / cnt.clamp(min=1).to(torch.float64).view(-1, 1)
    classes = torch.arange(k, device=dev)

    def class_loss(p: dict[str, Tensor], xb: Tensor, wb: Tensor, c: Tensor) -> Tensor:
        logits = functional_call(net, (p, buffers), (xb,))
        ce = F.cross_entropy(_f32(logits), c.expand(xb.shape[0]), reduction="none")
        return ce.mean() if equal else (ce * wb.to(ce.dtype)).sum()

    g = vmap(grad(class_loss), in_dims=(None, 0, 0, 0), randomness="different")(params, xk, wk, classes)
    return [g[name] for name in params]


def _dc_grads_loop(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    k: int,
    params: dict[str, Tensor],
    buffers: dict,
    create_graph: bool,
    forward: Forward | None = None,
) -> list[Tensor]:
    leaves = {n: (p if p.requires_grad else p.detach().requires_grad_(True)) for n, p in params.items()}
    per_class: list[tuple[Tensor, ...]] = []
    with torch.enable_grad():
        for c in range(k):
            idx = torch.nonzero(y.to(x.device) == c).flatten()
            if idx.numel() == 0:
                per_class.append(tuple(torch.zeros_like(p) for p in leaves.values()))
                continue
            xc = x.index_select(0, idx)
            if forward is not None:
                logits = forward(xc, leaves)
            else:
                logits = functional_call(net, (leaves, buffers), (xc,))
            loss = F.cross_entropy(_f32(logits), torch.full_like(idx, c))
            per_class.append(torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph))
    return [torch.stack([pc[i] for pc in per_class]) for i in range(len(leaves))]


def dc_class_gradients(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    num_classes: int,
    params: Mapping[str, Tensor] | None = None,
    create_graph: bool = True,
    batched: bool | None = None,
) -> list[Tensor]:
    """Per-class gradients of the mean cross-entropy of ``net`` on the images of each class (DC ``main.py``).

    For class ``k``: ``d/dθ CE(net_θ(x[y == k]), k)`` (mean over the class's images), for every parameter, all
    classes in one ``vmap(grad(...))`` over a ``(K, B, C, H, W)`` stack (classes with fewer images are padded
    with weight-0 zero images). With ``create_graph=True`` the result is differentiable w.r.t. ``x`` (the
    synthetic side: the reference's ``torch.autograd.grad(..., create_graph=True)``); with ``False`` it is
    computed without an outer graph and detached (the real side). A class without images gets zero gradients.

    Works with any ``nn.Module`` whose forward gives ``(N, K)`` logits and that ``torch.func`` can vmap
    (no in-place buffer updates); BatchNorm layers must be frozen first (:func:`freeze_batchnorm_stats`).
    ``batched=False`` runs the reference's per-class loop instead (also for nets ``vmap`` cannot handle).

    Speed (``batched=None``, the default, picks per side): on a CPU with ConvNet-3, ``vmap`` beats the loop when the
    graph is kept (the synthetic side), but not without it (the real side: the batched conv weight-gradient is a
    grouped conv, and all classes' activations are alive at once; docs/speed.md, lever 6). So ``None`` means
    ``vmap`` iff ``create_graph``.

    Args:
        net: the network; its buffers are used as they are.
        x: ``(N, C, H, W)`` images (or whatever ``net`` takes, batch first).
        y: ``(N,)`` int64 labels in ``[0, K)``.
        num_classes: ``K``.
        params: ``name -> tensor`` to differentiate w.r.t. (default: all of ``net.named_parameters()``,
            detached, so that no gradient reaches the net's parameters).
        create_graph: keep the graph to ``x`` (synthetic images) or detach (real images).
        batched: ``True``: ``vmap`` over classes; ``False``: a Python loop over classes; ``None``
            (default): ``vmap`` iff ``create_graph``.

    Returns:
        one ``(K, *param.shape)`` tensor per parameter, in ``params`` order.

    Raises:
        PtmddError: labels outside ``[0, K)``; a BatchNorm layer in training mode.
    """
    _check_labels("y", y, x.shape[0])
    _check_bn_frozen(net)
    counts = _class_counts(y, num_classes, "y")
    return _dc_grads(net, x, y, counts, params, create_graph, batched)


def dc_loss(
    net: nn.Module,
    real: Tensor,
    real_labels: Tensor,
    syn: Tensor,
    syn_labels: Tensor,
    num_classes: int,
    metric: str = "ours",
    batched: bool | None = None,
    forward: Forward | None = None,
    syn_class_grads: ClassGrads | None = None,
) -> Tensor:
    """DC gradient-matching loss: ``sum_k match_distance(gw_syn_k, gw_real_k)`` (DC ``main.py``'s ``loss``).

    ``gw_real_k`` (detached) and ``gw_syn_k`` (differentiable w.r.t. ``syn``) are the per-class gradients of
    :func:`dc_class_gradients` w.r.t. all parameters of ``net``; the gradient of the loss reaches ``syn``
    only, not the net's parameters. Apply DSA (``siamese_augment``) to ``real``/``syn`` before, and freeze
    BatchNorm statistics with :func:`freeze_batchnorm_stats` first, as the reference does.

    Args:
        net: the (randomly initialised, being trained in the inner loop) network, logits ``(N, K)``.
        real: ``(Nr, C, H, W)`` real images.
        real_labels: ``(Nr,)`` int64.
        syn: ``(Ns, C, H, W)`` synthetic images.
        syn_labels: ``(Ns,)`` int64.
        num_classes: ``K``.
        metric: ``'ours'`` (default), ``'mse'`` or ``'cos'`` (see :func:`match_distance_per_class`).
        batched: see :func:`dc_class_gradients`; the default ``None`` batches the synthetic side with
            ``vmap`` and loops over classes on the real side (the faster choice measured on CPU).
        forward: optional faster forward for the real side's per-class loop, ``forward(x, params) ->
            logits`` equal to ``functional_call(net, (params, buffers), (x,))`` (e.g. the compiled
            :meth:`ptmdd_lightning.nets.forward.NetForward.forward`); ``None`` uses ``functional_call``. It is not
            used for the synthetic side, which needs a double backward (see ``syn_class_grads``).
        syn_class_grads: optional faster synthetic side: ``syn_class_grads(syn, syn_labels, K)`` returns the
            per-class gradients ``{name: (K, *shape)}`` of EVERY parameter of ``net`` (differentiable w.r.t.
            ``syn``, as :func:`dc_class_gradients` with ``create_graph=True``), or ``None`` to fall back (e.g.
            :meth:`ptmdd_lightning.nets.forward.NetForward.class_grads`, compiled on the CPU).

    Returns:
        scalar float32 tensor.

    Raises:
        PtmddError: labels outside ``[0, K)``; a class missing from the real or the synthetic batch; unknown
            metric; BatchNorm in training mode; ``syn_class_grads`` missing a parameter.
    """
    if metric not in MATCH_METRICS:
        raise PtmddError(f"unknown gradient match metric {metric!r}; use one of {list(MATCH_METRICS)}")
    _check_labels("real_labels", real_labels, real.shape[0])
    _check_labels("syn_labels", syn_labels, syn.shape[0])
    _check_bn_frozen(net)
    rc = _class_counts(real_labels, num_classes, "real_labels")
    sc = _class_counts(syn_labels, num_classes, "syn_labels")
    missing = [c for c in range(num_classes) if rc[c] == 0 or sc[c] == 0]
    if missing:
        raise PtmddError(
            f"dc_loss needs real and synthetic images of every class; classes {missing} are missing; draw "
            f"class-balanced real batches and keep images of every class in the synthetic set"
        )
    names = [n for n, _ in net.named_parameters()]
    gs = syn_class_grads(syn, syn_labels, num_classes) if syn_class_grads is not None else None
    gw_real = _dc_grads(net, real, real_labels, rc, None, False, batched, forward)
    if gs is not None:
        absent = [n for n in names if n not in gs]
        if absent:
            raise PtmddError(
                f"syn_class_grads returned no gradient for {absent}; it must return every parameter "
                "of net (or None to use the generic path)"
            )
        gw_syn = [gs[n] for n in names]
    else:
        gw_syn = _dc_grads(net, syn, syn_labels, sc, None, True, batched)
    return match_distance_per_class(gw_syn, gw_real, metric).sum()


def dc_outer_inner(ipc: int) -> tuple[int, int]:
    """DC's ``get_loops(ipc)``: the outer and inner loop lengths of an IPC.

    DC's ``get_loops(ipc)``: ``(outer_loop, inner_loop)`` = 1 -> (1, 1), 10 -> (10, 50), 20 -> (20, 25),
    30 -> (30, 20), 40 -> (40, 15), 50 -> (50, 10).

    Raises:
        PtmddError: any other ``ipc`` (the reference exits there too); set the loops explicitly instead.
    """
    if ipc not in DC_LOOPS:
        raise PtmddError(
            f"DC defines (outer_loop, inner_loop) only for ipc in {sorted(DC_LOOPS)} (reference get_loops); "
            f"for ipc={ipc} set outer_loop and inner_loop explicitly"
        )
    return DC_LOOPS[ipc]
