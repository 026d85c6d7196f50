"""Tests of ptmdd_lightning.core.objectives (DM, DC): hand-computed values and a literal per-class-loop
transcription of the reference DC code (VICO-UoE/DatasetCondensation main.py / utils.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ptmdd_lightning.core.objectives import (
    DC_LOOPS,
    dc_class_gradients,
    dc_loss,
    dc_outer_inner,
    dm_loss,
    freeze_batchnorm_stats,
    match_distance,
    match_distance_per_class,
)
from ptmdd_lightning.errors import PtmddError

# ---------------------------------------------------------------- DM


def dm_inputs(dtype=torch.float32):
    # K = 3, D = 2; class 2 absent on both sides.
    # real: class 0 mean (2, 3), class 1 (0, 0)
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]], dtype=dtype)
    rl = torch.tensor([0, 0, 1])
    syn = torch.tensor([[2.0, 2.0], [1.0, -1.0], [3.0, 1.0]], dtype=dtype)  # class 0 (2, 2); class 1 (2, 0)
    sl = torch.tensor([0, 1, 1])
    return real, rl, syn, sl


def test_dm_loss_hand_value_and_gradient():
    real, rl, syn, sl = dm_inputs()
    real.requires_grad_(True)
    syn.requires_grad_(True)
    loss = dm_loss(real, rl, syn, sl, num_classes=3)
    # class 0: |(2,3) - (2,2)|^2 = 1; class 1: |(0,0) - (2,0)|^2 = 4; class 2 absent: 0
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(5.0)
    loss.backward()
    # d/d syn_i = 2 (mean_syn_k - mean_real_k) / n_syn_k
    assert torch.allclose(syn.grad, torch.tensor([[0.0, -2.0], [2.0, 0.0], [2.0, 0.0]]))
    assert real.grad is None  # real embeddings are detached, as in the reference
    assert dm_loss(*dm_inputs(), num_classes=5).item() == pytest.approx(5.0)


def test_dm_loss_float32_from_bf16_and_under_autocast():
    real, rl, syn, sl = dm_inputs(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dm_loss(real, rl, syn, sl, 3)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(5.0)


def test_dm_loss_equals_per_class_reference_loop():
    g = torch.Generator().manual_seed(0)
    k, d = 4, 7
    rl = torch.randint(0, k, (50,), generator=g)
    rl[:k] = torch.arange(k)
    sl = torch.arange(k).repeat_interleave(3)[torch.randperm(3 * k, generator=g)]
    real, syn = torch.randn(50, d, generator=g), torch.randn(3 * k, d, generator=g)
    ref = sum(torch.sum((real[rl == c].mean(0) - syn[sl == c].mean(0)) ** 2) for c in range(k))
    assert torch.allclose(dm_loss(real, rl, syn, sl, k), ref, atol=1e-5)


def test_dm_loss_errors():
    real, rl, syn, sl = dm_inputs()
    with pytest.raises(PtmddError, match="only in the synthetic batch: \\[2\\]"):
        dm_loss(real, rl, syn, torch.tensor([0, 1, 2]), 3)
    with pytest.raises(PtmddError, match="only in the real batch: \\[2\\]"):
        dm_loss(real, torch.tensor([0, 2, 1]), syn, sl, 3)
    with pytest.raises(PtmddError, match="\\[0, 1\\)"):
        dm_loss(real, rl, syn, sl, 1)
    with pytest.raises(PtmddError):
        dm_loss(real, rl, syn[:, :1], sl, 3)
    with pytest.raises(PtmddError):
        dm_loss(real, rl.float(), syn, sl, 3)


# ---------------------------------------------------------------- match distance


def reference_distance_wb(gwr, gws):
    """Literal utils.distance_wb."""
    shape = gwr.shape
    if len(shape) == 4:
        gwr = gwr.reshape(shape[0], shape[1] * shape[2] * shape[3])
        gws = gws.reshape(shape[0], shape[1] * shape[2] * shape[3])
    elif len(shape) == 3:
        gwr = gwr.reshape(shape[0], shape[1] * shape[2])
        gws = gws.reshape(shape[0], shape[1] * shape[2])
    elif len(shape) == 1:
        return torch.tensor(0, dtype=torch.float)
    return torch.sum(1 - torch.sum(gwr * gws, dim=-1) / (torch.norm(gwr, dim=-1) * torch.norm(gws, dim=-1) + 0.000001))


def reference_match_loss(gw_syn, gw_real, metric):
    """Literal utils.match_loss."""
    if metric == "ours":
        dis = torch.tensor(0.0, dtype=gw_real[0].dtype)
        for gwr, gws in zip(gw_real, gw_syn, strict=True):
            dis = dis + reference_distance_wb(gwr, gws)
        return dis
    r = torch.cat([g.reshape(-1) for g in gw_real])
    s = torch.cat([g.reshape(-1) for g in gw_syn])
    if metric == "mse":
        return torch.sum((s - r) ** 2)
    return 1 - torch.sum(r * s, dim=-1) / (torch.norm(r, dim=-1) * torch.norm(s, dim=-1) + 0.000001)


def test_match_distance_hand_values():
    # linear (2, 2): rows (1,0)|(1,0) -> 1 - 1/(1 + 1e-6); (0,1)|(1,1) -> 1 - 1/(sqrt(2) + 1e-6)
    lin_r = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    lin_s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # conv (2, 1, 1, 2): rows (1,0)|(2,0) -> 1 - 2/(2 + 1e-6); (0,2)|(3,0) -> 1
    conv_r = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 2.0]]]])
    conv_s = torch.tensor([[[[2.0, 0.0]]], [[[3.0, 0.0]]]])
    # bias (2,): skipped by 'ours'
    b_r = torch.tensor([1.0, -1.0])
    b_s = torch.tensor([3.0, 5.0])
    expected = (1 - 1 / 1.000001) + (1 - 1 / (math.sqrt(2) + 1e-6)) + (1 - 2 / 2.000001) + 1.0
    d = match_distance([lin_s, conv_s, b_s], [lin_r, conv_r, b_r])
    assert d.dtype == torch.float32 and d.item() == pytest.approx(expected, rel=1e-6)
    assert match_distance([b_s], [b_r]).item() == 0.0
    # mse over everything: lin 1 + conv (1 + 9 + 4) + bias (4 + 36) = 55
    assert match_distance([lin_s, conv_s, b_s], [lin_r, conv_r, b_r], "mse").item() == pytest.approx(55.0)
    # cos over everything: <r,s> = 2 (lin) + 2 (conv) + (3 - 5) (bias) = 2; |r|^2 = 2 + 5 + 2 = 9;
    # |s|^2 = 3 + 13 + 34 = 50 -> 1 - 2 / (3 sqrt(50) + 1e-6)
    cos = match_distance([lin_s, conv_s, b_s], [lin_r, conv_r, b_r], "cos").item()
    assert cos == pytest.approx(1 - 2 / (3 * math.sqrt(50) + 1e-6), rel=1e-6)


@pytest.mark.parametrize("metric", ["ours", "mse", "cos"])
def test_match_distance_equals_reference(metric):
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 3, 3), (4,), (4, 2, 5), (6, 8), (6,)]
    gs = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    gr = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    assert torch.allclose(match_distance(gs, gr, metric), reference_match_loss(gs, gr, metric), atol=1e-12)
    # per-class form: stack 3 classes
    gs3 = [torch.stack([t, 2 * t, -t]) for t in gs]
    gr3 = [torch.stack([t, t, t]) for t in gr]
    per = match_distance_per_class(gs3, gr3, metric)
    ref = [reference_match_loss([t[c] for t in gs3], [t[c] for t in gr3], metric) for c in range(3)]
    assert torch.allclose(per, torch.stack(ref), atol=1e-12)


def test_match_distance_errors():
    a = [torch.zeros(2, 2)]
    with pytest.raises(PtmddError, match="metric"):
        match_distance(a, a, "l1")
    with pytest.raises(PtmddError):
        match_distance(a, a + a)
    with pytest.raises(PtmddError):
        match_distance([torch.zeros(2, 3)], a)


# ---------------------------------------------------------------- DC


def tiny_convnet(k=3, norm="instance", seed=0):
    """ConvNet-like: conv3x3 -> norm -> ReLU -> avgpool, twice, then linear; 1x8x8 input."""
    torch.manual_seed(seed)

    def nrm(c):
        return nn.GroupNorm(c, c, affine=True) if norm == "instance" else nn.BatchNorm2d(c)

    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nrm(4),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nrm(4),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, k),
    )
    return net.double()


def reference_dc_loss(net, real, rl, syn, sl, k, metric="ours"):
    """The reference main.py inner step: per class, gw_real (detached) and gw_syn (create_graph=True)."""
    params = list(net.parameters())
    loss = torch.tensor(0.0, dtype=torch.float64)
    for c in range(k):
        img_real, img_syn = real[rl == c], syn[sl == c]
        loss_real = F.cross_entropy(net(img_real), torch.full((img_real.shape[0],), c))
        gw_real = [g.detach().clone() for g in torch.autograd.grad(loss_real, params)]
        loss_syn = F.cross_entropy(net(img_syn), torch.full((img_syn.shape[0],), c))
        gw_syn = torch.autograd.grad(loss_syn, params, create_graph=True)
        loss = loss + reference_match_loss(gw_syn, gw_real, metric)
    return loss


def dc_data(k=3, nr=5, ns=2, counts=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    rl = (
        torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
        if counts
        else torch.arange(k).repeat_interleave(nr)
    )
    rl = rl[torch.randperm(rl.numel(), generator=g)]  # unsorted labels
    sl = torch.arange(k).repeat_interleave(ns)
    real = torch.randn(rl.numel(), 1, 8, 8, generator=g, dtype=torch.float64)
    syn = torch.randn(sl.numel(), 1, 8, 8, generator=g, dtype=torch.float64)
    return real, rl, syn, sl


def check_against_reference(net, real, rl, syn, sl, k, metric, batched=None):
    syn_a = syn.clone().requires_grad_(True)
    loss = dc_loss(net, real, rl, syn_a, sl, k, metric=metric, batched=batched)
    (grad_a,) = torch.autograd.grad(loss, syn_a)
    syn_b = syn.clone().requires_grad_(True)
    ref = reference_dc_loss(net, real, rl, syn_b, sl, k, metric)
    (grad_b,) = torch.autograd.grad(ref, syn_b)
    assert torch.allclose(loss, ref, rtol=1e-9, atol=1e-10)
    assert grad_b.abs().max() > 0
    assert torch.allclose(grad_a, grad_b, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("metric", ["ours", "mse", "cos"])
@pytest.mark.parametrize("batched", [True, None])
def test_dc_loss_batched_equals_reference_loop(metric, batched):
    net = tiny_convnet()
    check_against_reference(net, *dc_data(), 3, metric, batched=batched)


def test_dc_loss_unequal_class_counts_and_loop_fallback():
    net = tiny_convnet()
    data = dc_data(counts=[5, 3, 4])
    check_against_reference(net, *data, 3, "ours", batched=True)  # padded vmap
    check_against_reference(net, *data, 3, "ours", batched=False)


def test_dc_loss_batchnorm_frozen_equals_reference():
    net = tiny_convnet(norm="batch")
    real, rl, syn, sl = dc_data()
    before = net[1].running_mean.clone()
    with pytest.raises(PtmddError, match="freeze_batchnorm_stats"):
        dc_loss(net, real, rl, syn, sl, 3)
    assert freeze_batchnorm_stats(net, real) is True
    assert not torch.equal(net[1].running_mean, before)  # statistics measured on the real batch
    assert not net[1].training and not net[5].training and net.training and net[0].training
    check_against_reference(net, real, rl, syn, sl, 3, "ours", batched=True)
    plain = tiny_convnet()
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    assert freeze_batchnorm_stats(plain, real) is False
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in state.items())


def test_dc_class_gradients_shapes_graph_and_no_param_grads():
    net = tiny_convnet()
    real, rl, syn, sl = dc_data()
    syn.requires_grad_(True)
    gr = dc_class_gradients(net, real, rl, 3, create_graph=False, batched=True)
    gs = dc_class_gradients(net, syn, sl, 3, batched=True)
    params = list(net.parameters())
    assert [tuple(g.shape) for g in gr] == [(3, *p.shape) for p in params]
    assert all(g.grad_fn is None and not g.requires_grad for g in gr)
    assert all(g.requires_grad for g in gs)
    loop = dc_class_gradients(net, syn, sl, 3, batched=False)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(gs, loop, strict=True))
    # class 1's gradient is the gradient of the mean CE over class 1's images
    x1 = syn.detach()[sl == 1]
    ref = torch.autograd.grad(F.cross_entropy(net(x1), torch.ones(x1.shape[0], dtype=torch.long)), params)
    assert all(torch.allclose(g[1], r, atol=1e-12) for g, r in zip(gs, ref, strict=True))
    dc_loss(net, real, rl, syn, sl, 3).backward()
    assert syn.grad is not None and all(p.grad is None for p in params)


def test_dc_errors_and_loops():
    net = tiny_convnet()
    real, rl, syn, sl = dc_data()
    with pytest.raises(PtmddError, match="classes \\[2\\]"):
        dc_loss(net, real, rl, syn[sl < 2], sl[sl < 2], 3)
    with pytest.raises(PtmddError, match="\\[0, 2\\)"):
        dc_class_gradients(net, real, rl, 2)
    with pytest.raises(PtmddError, match="metric"):
        dc_loss(net, real, rl, syn, sl, 3, metric="l2")
    assert DC_LOOPS == {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
    assert dc_outer_inner(10) == (10, 50) and dc_outer_inner(1) == (1, 1) and dc_outer_inner(50) == (50, 10)
    with pytest.raises(PtmddError, match="ipc=100"):
        dc_outer_inner(100)


def test_dc_loss_float32_under_bf16_autocast():
    net = tiny_convnet().float()
    real, rl, syn, sl = (t.float() if t.is_floating_point() else t for t in dc_data())
    syn.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dc_loss(net, real, rl, syn, sl, 3, batched=True)
    ref = reference_dc_loss(net, real, rl, syn.detach(), sl, 3)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.item(), rel=0.1)
    loss.backward()
    assert torch.isfinite(syn.grad).all() and syn.grad.abs().sum() > 0
