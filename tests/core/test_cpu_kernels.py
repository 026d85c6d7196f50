"""The hand-written CPU kernel of the ConvNet first block (nets/cpu_kernels.py) computes the same function as the
tensor formulation and the module: values and gradients on tiny tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptmdd_lightning.nets import ConvNet, build_net, cpu_kernels
from ptmdd_lightning.nets.fast import FastNet, first_block_kernel, first_block_kernel_ok

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="the CPU kernel needs a C++ compiler")


def _reference(cols, a, b):
    """``1/4 sum_{2x2} relu(B + A^T cols)`` written with einsum, channels-last output."""
    n, _, h, w = cols.shape
    z = torch.einsum("nkhw,nkc->nhwc", cols, a) + b[:, None, None, :]
    return torch.relu(z).reshape(n, h // 2, 2, w // 2, 2, -1).mean((2, 4))


@pytest.mark.parametrize("k", [9, 27, 5])  # the two specialised sizes and the generic loop
def test_pooled_relu_affine_equals_the_reference_and_its_gradients(k):
    torch.manual_seed(0)
    cols = torch.randn(3, k, 6, 4, dtype=torch.float64, requires_grad=True)
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


def test_pooled_relu_affine_skips_the_image_gradient_when_not_needed():
    cols = torch.randn(2, 9, 4, 4)
    a = torch.randn(2, 9, 16, requires_grad=True)
    out = cpu_kernels.pooled_relu_affine(cols, a, torch.zeros(2, 16))
    (ga,) = torch.autograd.grad(out.sum(), a)
    assert ga.shape == a.shape and cols.grad is None


def test_pooled_relu_affine_refuses_bad_shapes():
    with pytest.raises(ValueError, match="even H, W"):
        cpu_kernels.pooled_relu_affine(torch.randn(1, 9, 5, 4), torch.randn(1, 9, 16), torch.randn(1, 16))
    with pytest.raises(ValueError, match="multiple of 16"):
        cpu_kernels.pooled_relu_affine(torch.randn(1, 9, 4, 4), torch.randn(1, 9, 12), torch.randn(1, 12))
    with pytest.raises(ValueError, match="float32"):
        cpu_kernels.pooled_relu_affine(torch.randn(1, 9, 4, 4, dtype=torch.float64), torch.randn(1, 9, 16),
                                       torch.randn(1, 16))


@pytest.mark.parametrize(("channels", "size"), [(1, (28, 28)), (3, (32, 32))])
def test_first_block_kernel_equals_the_module_block(channels, size):
    torch.manual_seed(1)
    net = build_net("ConvNetW32", channels, 4, size)
    with torch.no_grad():  # a non-trivial affine norm
        net.features[1].weight.uniform_(0.5, 1.5)
        net.features[1].bias.uniform_(-0.3, 0.3)
    assert first_block_kernel_ok(net, size)
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
    assert not first_block_kernel_ok(build_net("ConvNetNN", 1, 4, (28, 28)), (28, 28))  # no norm
    assert not first_block_kernel_ok(build_net("ConvNetMP", 1, 4, (28, 28)), (28, 28))  # max pooling
    assert not first_block_kernel_ok(build_net("ConvNetAS", 1, 4, (28, 28)), (28, 28))  # sigmoid
    assert not first_block_kernel_ok(build_net("ConvNetBN", 1, 4, (28, 28)), (28, 28))  # batch norm
    assert not first_block_kernel_ok(build_net("ConvNet", 1, 4, (27, 27)), (27, 27))  # odd conv output
    assert not first_block_kernel_ok(ConvNet(1, 4, width=40, image_size=(28, 28)), (28, 28))  # width % 16


@pytest.mark.slow
def test_fast_net_trains_through_the_kernel_like_the_module():
    torch.manual_seed(2)
    net = build_net("ConvNetW32", 1, 4, (28, 28))
    fast = FastNet(net, compile=True)
    assert fast.kernel_first
    x, y = torch.randn(8, 1, 28, 28), torch.arange(4).repeat(2)
    ref = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    got = torch.autograd.grad(F.cross_entropy(fast(x), y), list(net.parameters()))
    scale = max(float(r.abs().max()) for r in ref)  # conv biases cancel in the norm: ~0 in both, compare absolutely
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5 * scale)
