"""The hand-written CPU kernels of ConvNet-3 (backends/cpu/kernels.py) compute the same function as the tensor
formulation and the module: values and gradients on tiny tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptmdd_lightning.backends.cpu import kernels as cpu_kernels
from ptmdd_lightning.backends.cpu.fastnet import FastNet, convnet_kernels_ok, first_block_kernel
from ptmdd_lightning.nets import ConvNet, build_net


@pytest.fixture(autouse=True)
def _built():
    """Skip where the kernels do not build (checked when a test runs: collecting the tests builds nothing)."""
    if not cpu_kernels.available():
        pytest.skip(f"the CPU kernels are not available: {cpu_kernels.status().reason}")


def _reference(cols, a, b):
    """``1/4 sum_{2x2} relu(B + A^T cols)`` written with einsum, channels-last output."""
    n, h, w, _ = cols.shape
    z = torch.einsum("nhwk,nkc->nhwc", cols, a) + b[:, None, None, :]
    return torch.relu(z).reshape(n, h // 2, 2, w // 2, 2, -1).mean((2, 4))


@pytest.mark.parametrize("k", [9, 27, 5])  # the two specialised sizes and the generic loop
def test_pooled_relu_affine_equals_the_reference_and_its_gradients(k):
    torch.manual_seed(0)
    cols = torch.randn(3, 6, 4, k, dtype=torch.float64, requires_grad=True)
    a = torch.randn(3, k, 32, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 32, dtype=torch.float64, requires_grad=True)
    ref = _reference(cols, a, b)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (cols, a, b), g)
    c32, a32, b32 = (t.detach().float().requires_grad_(True) for t in (cols, a, b))
    out = cpu_kernels.pooled_relu_affine(c32, a32, b32)
    assert out.shape == (3, 3, 2, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(out, (c32, a32, b32), g.float()), ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # bfloat16 output: the float32 result rounded once; the gradient it receives may be bfloat16 too
    out16 = cpu_kernels.pooled_relu_affine(c32, a32, b32, torch.bfloat16)
    assert out16.dtype == torch.bfloat16
    assert torch.equal(out16, out.detach().bfloat16())
    g16 = g.bfloat16()
    got16 = torch.autograd.grad(out16, (a32, b32), g16)
    want16 = torch.autograd.grad(_reference(cols, a, b), (a, b), g16.double())
    for got, want in zip(got16, want16, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_pooled_relu_affine_skips_the_image_gradient_when_not_needed():
    cols = torch.randn(2, 4, 4, 9)
    a = torch.randn(2, 9, 16, requires_grad=True)
    out = cpu_kernels.pooled_relu_affine(cols, a, torch.zeros(2, 16))
    (ga,) = torch.autograd.grad(out.sum(), a)
    assert ga.shape == a.shape and cols.grad is None


def test_pooled_relu_affine_refuses_bad_shapes():
    with pytest.raises(ValueError, match="even H, W"):
        cpu_kernels.pooled_relu_affine(torch.randn(1, 5, 4, 9), torch.randn(1, 9, 16), torch.randn(1, 16))
    with pytest.raises(ValueError, match="multiple of 16"):
        cpu_kernels.pooled_relu_affine(torch.randn(1, 4, 4, 9), torch.randn(1, 9, 12), torch.randn(1, 12))
    with pytest.raises(ValueError, match="float32"):
        cpu_kernels.pooled_relu_affine(
            torch.randn(1, 4, 4, 9, dtype=torch.float64), torch.randn(1, 9, 16), torch.randn(1, 16)
        )
    with pytest.raises(ValueError, match="K <= 64"):
        cpu_kernels.pooled_relu_affine(torch.randn(1, 4, 4, 65), torch.randn(1, 65, 16), torch.randn(1, 16))


def _norm_relu_pool_reference(z, gamma, beta, eps):
    """GroupNorm(C, C) -> ReLU -> AvgPool2d(2) of the module, on channels-last maps."""
    y = F.group_norm(z.permute(0, 3, 1, 2), z.shape[-1], gamma, beta, eps)
    return F.avg_pool2d(torch.relu(y), 2).permute(0, 2, 3, 1)


@pytest.mark.parametrize("shape", [(3, 8, 8, 32), (2, 7, 5, 16), (1, 2, 2, 16)])  # even, odd (dropped row/col), tiny
def test_instance_norm_relu_pool_equals_the_module_layers_and_their_gradients(shape):
    torch.manual_seed(3)
    z = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    gamma = torch.empty(shape[-1], dtype=torch.float64).uniform_(0.5, 1.5).requires_grad_(True)
    beta = torch.empty(shape[-1], dtype=torch.float64).uniform_(-0.5, 0.5).requires_grad_(True)
    ref = _norm_relu_pool_reference(z, gamma, beta, 1e-5)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (z, gamma, beta), g)
    z32, g32, b32 = (t.detach().float().requires_grad_(True) for t in (z, gamma, beta))
    out = cpu_kernels.instance_norm_relu_pool(z32, g32, b32, 1e-5)
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(out, (z32, g32, b32), g.float()), ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_instance_norm_relu_pool_in_bfloat16_rounds_the_float32_result():
    torch.manual_seed(4)
    z = torch.randn(2, 6, 6, 16).bfloat16().requires_grad_(True)
    gamma, beta = torch.ones(16), torch.zeros(16)
    out = cpu_kernels.instance_norm_relu_pool(z, gamma, beta, 1e-5)
    z32 = z.detach().float().requires_grad_(True)
    ref = _norm_relu_pool_reference(z32, gamma, beta, 1e-5)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.detach().bfloat16())
    g = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, z, g)
    (want,) = torch.autograd.grad(ref, z32, g.float())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.bfloat16().float(), rtol=1e-2, atol=1e-3)


def test_instance_norm_relu_pool_refuses_bad_shapes():
    with pytest.raises(ValueError, match="multiple of 16"):
        cpu_kernels.instance_norm_relu_pool(torch.randn(1, 4, 4, 12), torch.ones(12), torch.zeros(12), 1e-5)
    with pytest.raises(ValueError, match="H, W >= 2"):
        cpu_kernels.instance_norm_relu_pool(torch.randn(1, 1, 4, 16), torch.ones(16), torch.zeros(16), 1e-5)
    with pytest.raises(ValueError, match="float32/bfloat16"):
        cpu_kernels.instance_norm_relu_pool(
            torch.randn(1, 4, 4, 16, dtype=torch.float64), torch.ones(16), torch.zeros(16), 1e-5
        )


@pytest.mark.parametrize(("channels", "size"), [(1, (28, 28)), (3, (32, 32))])
def test_first_block_kernel_equals_the_module_block(channels, size):
    torch.manual_seed(1)
    net = build_net("ConvNetW32", channels, 4, size)
    with torch.no_grad():  # a non-trivial affine norm
        net.features[1].weight.uniform_(0.5, 1.5)
        net.features[1].bias.uniform_(-0.3, 0.3)
    assert convnet_kernels_ok(net, size)
    x = torch.randn(5, channels, *size)
    conv, norm = net.features[0], net.features[1]
    block = net.features[:4]
    ref = block(x).permute(0, 2, 3, 1)
    g = torch.randn_like(ref)
    params = [conv.weight, conv.bias, norm.weight, norm.bias]
    ref_grads = torch.autograd.grad(ref, params, g)
    out = first_block_kernel(x, *params, int(conv.padding[0]), norm.eps)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(out, params, g)
    for i in (0, 2, 3):  # conv weight, norm weight and bias
        scale = float(ref_grads[i].abs().max())
        torch.testing.assert_close(grads[i], ref_grads[i], rtol=1e-3, atol=1e-4 * max(scale, 1e-6))
    # the conv bias cancels in the norm: exactly 0 here, round-off (tiny next to the weight's) in the module
    assert float(grads[1].abs().max()) == 0.0
    assert float(ref_grads[1].abs().max()) < 1e-3 * float(ref_grads[0].abs().max())


def test_first_block_kernel_applies_only_to_convnet3_blocks():
    assert not convnet_kernels_ok(build_net("ConvNetNN", 1, 4, (28, 28)), (28, 28))  # no norm
    assert not convnet_kernels_ok(build_net("ConvNetMP", 1, 4, (28, 28)), (28, 28))  # max pooling
    assert not convnet_kernels_ok(build_net("ConvNetAS", 1, 4, (28, 28)), (28, 28))  # sigmoid
    assert not convnet_kernels_ok(build_net("ConvNetBN", 1, 4, (28, 28)), (28, 28))  # batch norm
    assert not convnet_kernels_ok(build_net("ConvNet", 1, 4, (27, 27)), (27, 27))  # odd conv output
    assert not convnet_kernels_ok(ConvNet(1, 4, width=40, image_size=(28, 28)), (28, 28))  # width % 16
    assert convnet_kernels_ok(ConvNet(1, 4, (28, 28), depth=5), (28, 28))


def test_fast_net_trains_through_the_kernels_like_the_module():
    torch.manual_seed(2)
    net = build_net("ConvNetW32", 1, 4, (28, 28))
    fast = FastNet(net, compile=False)  # the kernel path needs no compiler
    assert fast.kernels and not fast.compiled
    x, y = torch.randn(8, 1, 28, 28), torch.arange(4).repeat(2)
    ref = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    got = torch.autograd.grad(F.cross_entropy(fast(x), y), list(net.parameters()))
    scale = max(float(r.abs().max()) for r in ref)  # conv biases cancel in the norm: ~0 in both, compare absolutely
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5 * scale)
    # functional parameters (DC's real side passes detached copies) go through the kernels too
    other = {n: p.detach() * 1.5 for n, p in net.named_parameters()}
    torch.testing.assert_close(
        fast.forward(x, other), torch.func.functional_call(net, other, (x,)), rtol=1e-4, atol=1e-5
    )


def test_fast_net_kernels_under_bf16_autocast_match_the_module():
    torch.manual_seed(5)
    net = build_net("ConvNetW32", 1, 4, (28, 28))
    fast = FastNet(net, compile=False)
    x, y = torch.randn(8, 1, 28, 28), torch.arange(4).repeat(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_logits, ref_logits = fast(x), net(x)
        got = torch.autograd.grad(F.cross_entropy(got_logits.float(), y), list(net.parameters()))
        ref = torch.autograd.grad(F.cross_entropy(ref_logits.float(), y), list(net.parameters()))
    assert got_logits.dtype == ref_logits.dtype == torch.bfloat16
    torch.testing.assert_close(got_logits.float(), ref_logits.float(), rtol=0.05, atol=0.05)
    for g, r in zip(got, ref, strict=True):  # bf16 noise: compare the gradient directions
        if r.dim() > 1:
            assert F.cosine_similarity(g.flatten(), r.flatten(), dim=0) > 0.98


def test_kernels_are_off_when_asked_or_for_image_gradients_and_on_without_grad():
    net = build_net("ConvNetW32", 1, 4, (28, 28))
    assert not FastNet(net, kernels=False).kernels
    fast = FastNet(net, compile=False)
    x = torch.randn(2, 1, 28, 28)
    assert fast._use_kernel(x)
    assert not fast._use_kernel(x.requires_grad_(True))  # DM / DC synthetic side: the image needs a gradient
    with torch.no_grad():  # DM's real side: the kernels, without the ReLU masks
        assert fast._use_kernel(x.detach())
        torch.testing.assert_close(fast(x.detach()), net(x.detach()), rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not fast._use_kernel(x.detach())  # the kernels take float32 or bf16 maps only


@pytest.fixture
def needs_amx():
    if not cpu_kernels.amx_available():
        pytest.skip("the weight-gradient kernel needs AMX")


def _conv_grads_f64(x, g):
    """Weight and bias gradients of ``conv2d(x, w, b, padding=1)`` in float64 (x, g channels last)."""
    co, ci = g.shape[-1], x.shape[-1]
    _, dw, db = torch.ops.aten.convolution_backward(
        g.permute(0, 3, 1, 2).double(),
        x.permute(0, 3, 1, 2).double(),
        torch.zeros(co, ci, 3, 3, dtype=torch.float64),
        [co],
        [1, 1],
        [1, 1],
        [1, 1],
        False,
        [0, 0],
        1,
        [False, True, True],
    )
    return dw, db


@pytest.mark.usefixtures("needs_amx")
@pytest.mark.parametrize(
    "shape", [(5, 8, 8, 32, 64), (3, 7, 5, 64, 32), (1, 1, 1, 32, 32), (2, 3, 17, 96, 32), (5, 14, 14, 32, 32)]
)
def test_conv3x3_weight_grad_equals_the_float64_gradient(shape):
    # even and odd maps, a single pixel (only the centre tap sees it), a wide thin map, and a grid of 1140
    # positions: three chunks of 512 whose boundaries fall inside images (each chunk reads its neighbour's last
    # position for the odd taps), split over the threads
    n, h, w, ci, co = shape
    torch.manual_seed(0)
    x, g = torch.randn(n, h, w, ci).bfloat16(), torch.randn(n, h, w, co).bfloat16()
    dw, db = cpu_kernels.conv3x3_weight_grad(x, g)
    want_w, want_b = _conv_grads_f64(x, g)
    assert dw.shape == (co, ci, 3, 3) and dw.dtype == db.dtype == torch.float32
    # bf16 inputs are exact in float32 products; only the float32 summation order differs
    torch.testing.assert_close(dw.double(), want_w, rtol=1e-5, atol=1e-5 * float(want_w.abs().max()))
    torch.testing.assert_close(db.double(), want_b, rtol=1e-5, atol=1e-5 * float(want_b.abs().max()))
    if h == w == 1:
        assert torch.count_nonzero(dw[:, :, [0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 0, 2, 0, 1, 2]]) == 0


def test_conv3x3_weight_grad_refuses_bad_input():
    with pytest.raises(ValueError, match="multiples of 32"):
        cpu_kernels.conv3x3_weight_grad(torch.randn(1, 4, 4, 16).bfloat16(), torch.randn(1, 4, 4, 32).bfloat16())
    with pytest.raises(ValueError, match="bfloat16"):
        cpu_kernels.conv3x3_weight_grad(torch.randn(1, 4, 4, 32), torch.randn(1, 4, 4, 32))
    with pytest.raises(ValueError, match="gout"):
        cpu_kernels.conv3x3_weight_grad(torch.randn(1, 4, 4, 32).bfloat16(), torch.randn(1, 4, 5, 32).bfloat16())


@pytest.mark.usefixtures("needs_amx")
def test_channels_last_conv3x3_is_the_bf16_conv_with_float32_weight_gradients():
    torch.manual_seed(1)
    x = torch.randn(4, 6, 6, 32).bfloat16().requires_grad_(True)
    w = torch.randn(64, 32, 3, 3, requires_grad=True)
    b = torch.randn(64, requires_grad=True)
    z = cpu_kernels.channels_last_conv3x3(x, w, b)
    ref = F.conv2d(x.detach().permute(0, 3, 1, 2), w.detach().bfloat16(), b.detach().bfloat16(), padding=1)
    assert z.shape == (4, 6, 6, 64) and z.dtype == torch.bfloat16 and z.is_contiguous()
    assert torch.equal(z, ref.permute(0, 2, 3, 1))  # oneDNN's forward itself
    g = torch.randn_like(z)
    gx, gw, gb = torch.autograd.grad(z, (x, w, b), g)
    want_x = torch.ops.aten.convolution_backward(
        g.permute(0, 3, 1, 2),
        x.detach().permute(0, 3, 1, 2),
        w.detach().bfloat16(),
        [64],
        [1, 1],
        [1, 1],
        [1, 1],
        False,
        [0, 0],
        1,
        [True, False, False],
    )[0]
    assert torch.equal(gx, want_x.permute(0, 2, 3, 1))
    want_w, want_b = _conv_grads_f64(x.detach(), g)
    assert gw.dtype == torch.float32 and gb.dtype == torch.float32
    torch.testing.assert_close(gw.double(), want_w, rtol=1e-5, atol=1e-5 * float(want_w.abs().max()))
    torch.testing.assert_close(gb.double(), want_b, rtol=1e-5, atol=1e-5 * float(want_b.abs().max()))
    # only the weights train (DC inner loop, evaluation): no input gradient is computed
    (gw2,) = torch.autograd.grad(cpu_kernels.channels_last_conv3x3(x.detach(), w, b), (w,), g)
    torch.testing.assert_close(gw2, gw)
    with pytest.raises(ValueError, match="multiples of 32"):
        cpu_kernels.channels_last_conv3x3(
            torch.randn(1, 4, 4, 16).bfloat16(), torch.randn(32, 16, 3, 3), torch.randn(32)
        )


def test_conv3x3_shapes_ok_is_what_the_weight_gradient_takes():
    x, w, b = torch.randn(2, 4, 4, 32).bfloat16(), torch.randn(64, 32, 3, 3), torch.randn(64)
    assert cpu_kernels.conv3x3_shapes_ok(x, w, b)
    assert not cpu_kernels.conv3x3_shapes_ok(x, w, b, padding=2)  # the kernel pads by 1
    assert not cpu_kernels.conv3x3_shapes_ok(x.float(), w, b)  # bf16 maps only (the autocast path)
    assert not cpu_kernels.conv3x3_shapes_ok(x, torch.randn(2048, 32, 3, 3), torch.randn(2048))  # Co > 1024
    assert not cpu_kernels.conv3x3_shapes_ok(x, torch.randn(48, 32, 3, 3), torch.randn(48))  # Co not 32k
    assert not cpu_kernels.conv3x3_shapes_ok(x, torch.randn(64, 32, 5, 5), b)  # 3x3 only
    with pytest.raises(ValueError, match="at most 1024"):
        cpu_kernels.channels_last_conv3x3(x, torch.randn(2048, 32, 3, 3), torch.randn(2048))


@pytest.mark.usefixtures("needs_amx")
def test_bf16_kernel_path_takes_the_amx_weight_gradient(monkeypatch):
    # ConvNetW32 under bf16 autocast: its two later convolutions go through channels_last_conv3x3, and the
    # gradients equal those of the path with oneDNN's weight gradient (PTMDD_AMX=0) to bf16 noise
    torch.manual_seed(3)
    net = build_net("ConvNetW32", 1, 4, (28, 28))
    fast = FastNet(net, compile=False)
    x, y = torch.randn(8, 1, 28, 28), torch.arange(4).repeat(2)
    calls = []
    real = cpu_kernels.channels_last_conv3x3
    monkeypatch.setattr(cpu_kernels, "channels_last_conv3x3", lambda *a: calls.append(a[0].shape) or real(*a))

    def grads():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.autograd.grad(F.cross_entropy(fast(x).float(), y), list(net.parameters()))

    got = grads()
    assert calls == [(8, 16, 16, 32), (8, 8, 8, 32)]
    monkeypatch.setattr(cpu_kernels, "amx_available", lambda: False)
    ref = grads()
    assert len(calls) == 2
    for g, r in zip(got, ref, strict=True):
        if r.dim() > 1:
            assert F.cosine_similarity(g.flatten(), r.flatten(), dim=0) > 0.99


def test_amx_is_off_when_asked(monkeypatch):
    cpu_kernels.amx_available.cache_clear()
    monkeypatch.setenv("PTMDD_AMX", "0")
    try:
        assert not cpu_kernels.amx_available()
        with pytest.raises(RuntimeError, match="AMX"):
            cpu_kernels.conv3x3_weight_grad(torch.randn(1, 2, 2, 32).bfloat16(), torch.randn(1, 2, 2, 32).bfloat16())
    finally:
        cpu_kernels.amx_available.cache_clear()


# ---- the custom ops: torch.library.opcheck (schema, autograd registration, fake tensors, AOT dispatch) ----
def test_pooled_relu_affine_op_passes_opcheck():
    gen = torch.Generator().manual_seed(0)
    cols = torch.randn(2, 4, 6, 9, generator=gen, requires_grad=True)
    a = torch.randn(2, 9, 16, generator=gen, requires_grad=True)
    b = torch.randn(2, 16, generator=gen, requires_grad=True)
    for bf16_out in (False, True):
        torch.library.opcheck(torch.ops.ptmdd.pooled_relu_affine.default, (cols, a, b, bf16_out, True))
    torch.library.opcheck(
        torch.ops.ptmdd.pooled_relu_affine.default, (cols.detach(), a.detach(), b.detach(), False, False)
    )


def test_instance_norm_relu_pool_op_passes_opcheck():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 6, 4, 16, generator=gen, requires_grad=True)
    gamma = torch.randn(16, generator=gen, requires_grad=True)
    beta = torch.randn(16, generator=gen, requires_grad=True)
    torch.library.opcheck(torch.ops.ptmdd.instance_norm_relu_pool.default, (z, gamma, beta, 1e-5))
    zb = z.detach().bfloat16().requires_grad_()
    torch.library.opcheck(torch.ops.ptmdd.instance_norm_relu_pool.default, (zb, gamma, beta, 1e-5))


@pytest.mark.usefixtures("needs_amx")
def test_conv3x3_weight_grad_op_passes_opcheck():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 4, 32, generator=gen).bfloat16()
    g = torch.randn(2, 5, 4, 64, generator=gen).bfloat16()
    torch.library.opcheck(torch.ops.ptmdd.conv3x3_weight_grad.default, (x, g))


def test_the_ops_are_registered_with_their_autograd_formulas():
    """The autograd formula registered for an op is what its Python wrapper differentiates: a gradient through the
    raw op equals one through the wrapper."""
    gen = torch.Generator().manual_seed(1)
    cols = torch.randn(1, 4, 4, 9, generator=gen, requires_grad=True)
    a = torch.randn(1, 9, 16, generator=gen, requires_grad=True)
    b = torch.randn(1, 16, generator=gen, requires_grad=True)
    out, _mask = torch.ops.ptmdd.pooled_relu_affine(cols, a, b, False, True)
    g_op = torch.autograd.grad(out.square().sum(), (cols, a, b))
    g_wrapper = torch.autograd.grad(cpu_kernels.pooled_relu_affine(cols, a, b).square().sum(), (cols, a, b))
    for x, y in zip(g_op, g_wrapper, strict=True):
        assert torch.equal(x, y)


def test_torchs_cuda_home_notice_is_not_shown_for_the_cpu_build():
    import logging

    import ptmdd_lightning.backends.cpu.kernels  # noqa: F401  (registers the filter)

    log = logging.getLogger("torch.utils.cpp_extension")
    notice = log.makeRecord(
        log.name, logging.WARNING, __file__, 0, "No CUDA runtime is found, using CUDA_HOME='%s'", ("/usr/local",), None
    )
    other = log.makeRecord(log.name, logging.WARNING, __file__, 0, "Error building extension", None, None)
    assert not log.filter(notice) and log.filter(other)
