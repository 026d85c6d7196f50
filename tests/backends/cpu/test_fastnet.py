"""The fast paths give the same results as the plain ones: backends/cpu/fastnet.py (channels-last fused ConvNet,
compiled, chunked) and dc_loss with a fast real-side forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ptmdd_lightning.backends.cpu.fastnet import (
    MIN_COMPILE_STEPS,
    FastNet,
    _convnet_embed,
    _convnet_forward,
    _flat_params,
    can_compile,
    compile_choice,
    convnet_features_cl,
    convnet_supported,
)
from ptmdd_lightning.core.objectives import dc_loss
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.nets import build_net, reinit_

SUPPORTED = [
    "ConvNet",
    "ConvNetD1",
    "ConvNetD2",
    "ConvNetW32",
    "ConvNetNN",
    "ConvNetAS",
    "ConvNetAL",
    "ConvNetMP",
    "ConvNetNP",
]


def _functional(net, x, kind="embed"):
    """The uncompiled channels-last formulation of ``net`` (what FastNet compiles)."""
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    pads = tuple(int(c.padding[0]) for c in convs)
    gn = next((m for m in net.features if isinstance(m, nn.GroupNorm)), None)
    eps = gn.eps if gn is not None else 0.0
    params = _flat_params(net)
    if kind == "embed":
        return _convnet_embed(x, params[:-2], pads, net.norm, net.act, net.pool, eps)
    return _convnet_forward(x, params, pads, net.norm, net.act, net.pool, eps)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("name", SUPPORTED)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_channels_last_formulation_equals_the_module_in_fp32(name, shape):
    torch.manual_seed(0)
    net = build_net(name, shape[0], 10, shape[1:])
    assert convnet_supported(net)
    x = torch.randn(5, *shape)
    emb, logits = _functional(net, x, "embed"), _functional(net, x, "forward")
    assert emb.shape == (5, net.feature_dim) and logits.shape == (5, 10)
    torch.testing.assert_close(emb, net.embed(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, net(x), rtol=1e-4, atol=1e-5)
    assert convnet_features_cl(
        x,
        _flat_params(net)[:-2],
        [3 if shape[0] == 1 else 1] + [1] * (net.depth - 1),
        net.norm,
        net.act,
        net.pool,
        1e-5,
    ).shape == (5, *net.feature_shape[1:], net.feature_shape[0])


def test_gradients_equal_the_module_for_a_smooth_net():
    """Sigmoid ConvNet (no ReLU kinks), float64: input and parameter gradients agree to rounding (conv biases in
    front of an instance norm have a zero gradient; there both are rounding noise, hence the absolute tolerance)."""
    torch.manual_seed(1)
    net = build_net("ConvNetAS", 1, 10, (28, 28)).double()
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 10, dtype=torch.float64)
    ps = list(net.parameters())
    g_fast = torch.autograd.grad((_functional(net, x, "forward") * w).sum(), [x, *ps])
    g_ref = torch.autograd.grad((net(x) * w).sum(), [x, *ps])
    scale = max(float(b.abs().max()) for b in g_ref)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * scale)


def test_gradients_close_to_the_module_for_convnet3():
    """ConvNet-3 (ReLU): gradients agree in the L2 sense (a kink flipped by rounding moves single entries)."""
    torch.manual_seed(2)
    net = build_net("ConvNet", 1, 10, (28, 28))
    x = torch.randn(6, 1, 28, 28, requires_grad=True)
    w = torch.randn(6, 10)
    ps = [net.features[0].weight, net.features[4].weight, net.features[8].weight, net.classifier.weight]
    g_fast = torch.autograd.grad((_functional(net, x, "forward") * w).sum(), [x, *ps])
    g_ref = torch.autograd.grad((net(x) * w).sum(), [x, *ps])
    for a, b in zip(g_fast, g_ref, strict=True):
        assert _rel(a, b) < 1e-3


def test_bf16_autocast_stays_within_bf16_precision():
    torch.manual_seed(3)
    net = build_net("ConvNet", 1, 10, (28, 28))
    x = torch.randn(8, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, ref = _functional(net, x, "embed"), net.embed(x)
    assert fast.dtype == torch.bfloat16
    assert _rel(fast.float(), net.embed(x)) < 2e-2 and _rel(ref.float(), net.embed(x)) < 2e-2


def test_unsupported_nets_use_the_module_itself():
    torch.manual_seed(4)
    for name in ("ConvNetBN", "ConvNetLN", "AlexNet", "MLP"):
        net = build_net(name, 1, 10, (28, 28)).eval()
        fast = FastNet(net, compile=True)
        assert not convnet_supported(net) or name == "ConvNet"
        assert not fast.compiled
        x = torch.randn(3, 1, 28, 28)
        torch.testing.assert_close(fast.forward(x), net(x))
        torch.testing.assert_close(fast.embed(x), net.embed(x))


def test_chunks_give_the_same_result_and_never_split_batchnorm_in_training():
    torch.manual_seed(5)
    net = build_net("ConvNet", 1, 10, (28, 28))
    x = torch.randn(10, 1, 28, 28)
    fast = FastNet(net, compile=False, chunk=3, kernels=False)
    assert [p.shape[0] for p in fast.chunks(x, fast.chunk)] == [3, 3, 3, 1]
    torch.testing.assert_close(fast.embed(x), net.embed(x), rtol=1e-5, atol=1e-6)
    bn = build_net("ConvNetBN", 1, 10, (28, 28)).train()
    fast_bn = FastNet(bn, compile=False, chunk=3)
    assert len(fast_bn.chunks(x, fast_bn.chunk)) == 1  # batch statistics: the batch is never split
    bn.eval()
    assert len(fast_bn.chunks(x, fast_bn.chunk)) == 4


def test_params_override_is_functional_call():
    torch.manual_seed(6)
    net = build_net("ConvNetD1", 1, 10, (28, 28))
    other = {n: torch.randn_like(p) for n, p in net.named_parameters()}
    x = torch.randn(3, 1, 28, 28)
    ref = torch.func.functional_call(net, other, (x,))
    torch.testing.assert_close(FastNet(net, compile=False, kernels=False).forward(x, other), ref)
    torch.testing.assert_close(
        _convnet_forward(x, _flat_params(net, other), (3,), "instancenorm", "relu", "avgpool", 1e-5),
        ref,
        rtol=1e-4,
        atol=1e-5,
    )


def test_compile_choice(monkeypatch):
    monkeypatch.delenv("PTMDD_COMPILE", raising=False)
    assert compile_choice(1) is False and compile_choice(MIN_COMPILE_STEPS - 1) is False
    assert compile_choice(MIN_COMPILE_STEPS) is None and compile_choice(None) is None
    monkeypatch.setenv("PTMDD_COMPILE", "1")
    assert compile_choice(1) is True
    monkeypatch.setenv("PTMDD_COMPILE", "off")
    assert compile_choice(10_000) is False
    net = build_net("ConvNet", 1, 10, (28, 28))
    assert FastNet(net, compile=None).compiled == can_compile()  # CPU: compiled iff a C++ compiler exists
    assert not FastNet(net, compile=False).compiled


def _dc_loss_plain_and_fast(
    net, k, real_per_class, syn_per_class, fast, synthetic_side=True, dtype=torch.float32, **loss_kwargs
):
    """``dc_loss`` and its gradient w.r.t. the synthetic images, plain and through ``fast`` (its forward on the real
    side and, with ``synthetic_side``, its ``class_grads`` on the synthetic side), on random 28x28 images."""
    real = torch.randn(k * real_per_class, 1, 28, 28, dtype=dtype)
    rl = torch.arange(k).repeat_interleave(real_per_class)
    syn = torch.randn(k * syn_per_class, 1, 28, 28, dtype=dtype, requires_grad=True)
    sl = torch.arange(k).repeat_interleave(syn_per_class)
    ref = dc_loss(net, real, rl, syn, sl, k, **loss_kwargs)
    (g_ref,) = torch.autograd.grad(ref, syn)
    extra = {"syn_class_grads": fast.class_grads} if synthetic_side else {}
    out = dc_loss(net, real, rl, syn, sl, k, forward=fast.forward, **extra, **loss_kwargs)
    (g_out,) = torch.autograd.grad(out, syn)
    return ref, g_ref, out, g_out


def test_dc_loss_with_a_fast_real_forward_equals_the_plain_one():
    torch.manual_seed(7)
    net = build_net("ConvNetD2", 1, 4, (28, 28))
    fast = FastNet(net, compile=False, chunk=3)
    ref, g_ref, out, g_out = _dc_loss_plain_and_fast(net, 4, 4, 2, fast, synthetic_side=False)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # fp32 rounding of the real side's gradients (another conv algorithm on the kernel path) is amplified by the
    # cosine distances: on an AVX2-only AMD EPYC the image gradient differs by 1.6e-4 of its largest entry (1e-4
    # norm-wise), on the AMX CPU by less than 1e-4. A wrong real side differs by O(1).
    scale = g_ref.abs().max()
    torch.testing.assert_close(g_out, g_ref, rtol=0, atol=float(1e-3 * scale))
    assert float((g_out - g_ref).norm() / g_ref.norm()) < 1e-3


@pytest.mark.slow
@pytest.mark.skipif(not can_compile(), reason="torch.compile needs a C++ compiler on the CPU")
def test_compiled_fast_net_matches_the_module_and_sees_reinit_in_place():
    torch.manual_seed(8)
    net = build_net("ConvNet", 1, 10, (28, 28))
    fast = FastNet(net, compile=True, chunk=4)
    assert fast.compiled
    x = torch.randn(6, 1, 28, 28, requires_grad=True)
    e = fast.embed(x)
    torch.testing.assert_close(e, net.embed(x), rtol=1e-4, atol=1e-5)
    (g,) = torch.autograd.grad(e.square().sum(), x)
    (g_ref,) = torch.autograd.grad(net.embed(x).square().sum(), x)
    assert _rel(g, g_ref) < 1e-3
    with torch.no_grad():
        before = fast.forward(x)
        reinit_(net, generator=torch.Generator().manual_seed(9))  # in place: the compiled path must see it
        after = fast.forward(x)
    assert fast.compiled and not torch.allclose(before, after)
    torch.testing.assert_close(after, net(x), rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert _rel(fast.embed(x).float(), net.embed(x).float()) < 2e-2


@pytest.mark.parametrize("name", ["ConvNet", "ConvNetD2", "ConvNetNN", "ConvNetAS"])
def test_per_class_gradients_equal_dc_class_gradients(name):
    from ptmdd_lightning.core.objectives import dc_class_gradients

    torch.manual_seed(10)
    net = build_net(name, 1, 3, (28, 28)).double()
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    y = torch.arange(3).repeat_interleave(2)
    grads = FastNet(net, compile=False).class_grads(x, y, 3)
    ref = dict(zip([n for n, _ in net.named_parameters()], dc_class_gradients(net, x, y, 3), strict=True))
    assert set(grads) == set(ref)
    for n, g in grads.items():
        assert g.shape == ref[n].shape
        torch.testing.assert_close(g, ref[n], rtol=1e-7, atol=1e-10 * float(ref[n].detach().abs().max()) + 1e-15)
    # differentiable w.r.t. the images, like the create_graph gradients
    w = {n: torch.randn_like(g) for n, g in grads.items()}
    (gx,) = torch.autograd.grad(sum((g * w[n]).sum() for n, g in grads.items()), x)
    (gx_ref,) = torch.autograd.grad(sum((ref[n] * w[n]).sum() for n in grads), x)
    assert _rel(gx, gx_ref) < 1e-9
    assert all(p.grad is None for p in net.parameters())  # the net's parameters get nothing


def test_per_class_gradients_refuse_unsorted_or_unequal_classes():
    net = build_net("ConvNetD1", 1, 3, (28, 28))
    fast = FastNet(net, compile=False)
    x = torch.randn(6, 1, 28, 28)
    assert fast.class_grads(x, torch.tensor([0, 1, 0, 1, 2, 2]), 3) is None
    assert fast.class_grads(x[:5], torch.tensor([0, 0, 1, 1, 2]), 3) is None
    assert (
        FastNet(build_net("ConvNetBN", 1, 3, (28, 28)), compile=False).class_grads(
            x, torch.arange(3).repeat_interleave(2), 3
        )
        is None
    )


@pytest.mark.parametrize("metric", ["ours", "mse", "cos"])
def test_dc_loss_with_the_fast_synthetic_side_equals_the_plain_one(metric):
    torch.manual_seed(11)
    net = build_net("ConvNetD2", 1, 4, (28, 28)).double()
    fast = FastNet(net, compile=False)
    ref, g_ref, out, g_out = _dc_loss_plain_and_fast(net, 4, 4, 3, fast, dtype=torch.float64, metric=metric)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert _rel(g_out, g_ref) < 1e-8


def test_dc_loss_refuses_synthetic_gradients_that_miss_a_parameter():
    net = build_net("ConvNetD1", 1, 2, (28, 28))
    real, rl = torch.randn(4, 1, 28, 28), torch.arange(2).repeat_interleave(2)
    syn = torch.randn(2, 1, 28, 28, requires_grad=True)

    def partial(x, y, k):
        return {"classifier.weight": torch.zeros(k, *net.classifier.weight.shape)}

    with pytest.raises(PtmddError, match="no gradient for"):
        dc_loss(net, real, rl, syn, torch.arange(2), 2, syn_class_grads=partial)


@pytest.mark.slow
@pytest.mark.skipif(not can_compile(), reason="torch.compile needs a C++ compiler on the CPU")
def test_compiled_synthetic_side_matches_the_module():
    torch.manual_seed(12)
    net = build_net("ConvNetD2", 1, 3, (28, 28))
    fast = FastNet(net, compile=True)
    ref, g_ref, out, g_out = _dc_loss_plain_and_fast(net, 3, 4, 2, fast)
    assert fast.compiled
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert _rel(g_out, g_ref) < 1e-3
