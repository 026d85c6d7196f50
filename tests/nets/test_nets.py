"""Tests of ptmdd_lightning.nets: registry, reference shapes, reinit_, autocast, channels_last, vmap."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.nets import NETS, ConvNet, ResNet, available_nets, build_net, reinit_

NAMES = [
    "ConvNet", "ConvNetD1", "ConvNetD2", "ConvNetD3", "ConvNetD4",
    "ConvNetW32", "ConvNetW64", "ConvNetW128", "ConvNetW256",
    "ConvNetAS", "ConvNetAR", "ConvNetAL",
    "ConvNetNN", "ConvNetBN", "ConvNetLN", "ConvNetIN", "ConvNetGN",
    "ConvNetNP", "ConvNetMP", "ConvNetAP",
    "AlexNet", "AlexNetBN", "VGG11", "VGG11BN", "ResNet18", "ResNet18BN", "ResNet18BN_AP", "LeNet", "MLP",
]  # fmt: skip
SHAPES = [(1, 28, 28), (3, 32, 32)]


def _first_conv(net: nn.Module) -> nn.Conv2d:
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d))


def test_registry_lists_exactly_the_design_names():
    assert available_nets() == NAMES
    assert list(NETS) == NAMES


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NAMES)
def test_every_net_builds_and_gives_logits_and_embeddings(name, shape):
    torch.manual_seed(0)
    net = build_net(name, shape[0], 10, shape[1:]).eval()
    assert net.arch == name
    assert (net.channels, net.num_classes, net.image_size) == (shape[0], 10, tuple(shape[1:]))
    assert isinstance(net.feature_dim, int)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        logits, emb = net(x), net.embed(x)
        assert logits.shape == (2, 10) and logits.dtype == torch.float32
        assert emb.shape == (2, net.feature_dim)
        assert net.classifier.in_features == net.feature_dim
        assert torch.equal(logits, net.classifier(emb))  # forward == classifier(embed)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("name", "shape", "dim"),
    [
        ("ConvNet", (1, 28, 28), 2048),
        ("ConvNet", (3, 32, 32), 2048),
        ("ConvNetD4", (3, 64, 64), 2048),  # Tiny-ImageNet standard
        ("ConvNet", (3, 64, 64), 8192),
        ("ConvNetD1", (1, 28, 28), 128 * 16 * 16),
        ("ConvNetNP", (3, 32, 32), 128 * 32 * 32),
        ("ConvNetW32", (3, 32, 32), 32 * 4 * 4),
        ("AlexNet", (1, 28, 28), 192 * 4 * 4),
        ("AlexNetBN", (3, 32, 32), 192 * 4 * 4),
        ("VGG11", (1, 28, 28), 512),
        ("VGG11BN", (3, 32, 32), 512),
        ("ResNet18", (1, 28, 28), 512),
        ("ResNet18BN", (3, 32, 32), 512),
        ("ResNet18BN_AP", (1, 28, 28), 512 * 3 * 3),  # the reference's "3*3 if channel == 1"
        ("ResNet18BN_AP", (3, 32, 32), 512 * 4 * 4),
        ("LeNet", (1, 28, 28), 84),
        ("MLP", (3, 32, 32), 128),
    ],
)
def test_feature_dims_match_the_reference_heads(name, shape, dim):
    assert build_net(name, shape[0], 10, shape[1:]).feature_dim == dim


def test_bigger_nets_do_not_crash_on_64x64():
    for name in ("ConvNetD4", "AlexNet", "VGG11", "ResNet18", "ResNet18BN_AP", "LeNet", "MLP"):
        net = build_net(name, 3, 200, (64, 64)).eval()
        with torch.no_grad():
            assert net(torch.randn(1, 3, 64, 64)).shape == (1, 200)


def test_convnet3_on_28x28_pads_the_first_conv_by_3():
    net = build_net("ConvNet", 1, 10, (28, 28))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.padding for c in convs] == [(3, 3), (1, 1), (1, 1)]
    assert net.feature_dim == 2048 and net.feature_shape == (128, 4, 4)
    assert _first_conv(build_net("ConvNet", 3, 10, (32, 32))).padding == (1, 1)
    assert _first_conv(build_net("VGG11", 1, 10, (28, 28))).padding == (3, 3)
    assert _first_conv(build_net("AlexNet", 1, 10, (28, 28))).padding == (4, 4)
    assert _first_conv(build_net("LeNet", 1, 10, (28, 28))).padding == (2, 2)
    # layer norm of the 1x28x28 ConvNet normalises the padded 32x32 conv output (reference: 28 -> 32)
    ln = next(m for m in build_net("ConvNetLN", 1, 10, (28, 28)).modules() if isinstance(m, nn.LayerNorm))
    assert ln.normalized_shape == (128, 32, 32) and ln.elementwise_affine


def test_convnet_layers_are_the_reference_ones():
    net = build_net("ConvNet", 3, 10, (32, 32))
    kinds = [type(m) for m in net.features]
    assert kinds == [nn.Conv2d, nn.GroupNorm, nn.ReLU, nn.AvgPool2d] * 3
    gn = net.features[1]
    assert gn.num_groups == gn.num_channels == 128 and gn.affine  # instance norm as GroupNorm(C, C)
    assert net.features[2].inplace
    assert build_net("ConvNetGN", 3, 10, 32).features[1].num_groups == 4
    assert isinstance(build_net("ConvNetBN", 3, 10, 32).features[1], nn.BatchNorm2d)
    assert [type(m) for m in build_net("ConvNetNN", 3, 10, 32).features[:3]] == [
        nn.Conv2d,
        nn.ReLU,
        nn.AvgPool2d,
    ]
    assert isinstance(build_net("ConvNetMP", 3, 10, 32).features[3], nn.MaxPool2d)
    assert isinstance(build_net("ConvNetAS", 3, 10, 32).features[2], nn.Sigmoid)
    leaky = build_net("ConvNetAL", 3, 10, 32).features[2]
    assert isinstance(leaky, nn.LeakyReLU) and leaky.negative_slope == 0.01
    assert len(build_net("ConvNetNP", 3, 10, 32).features) == 9


def test_convnet3_parameter_count_is_hand_computed():
    # conv(3->128, 3x3) + bias, GroupNorm affine (2*128), 2x [conv(128->128) + norm], Linear(128*4*4, 10)
    expected = (3 * 128 * 9 + 128) + 256 + 2 * (128 * 128 * 9 + 128 + 256) + (2048 * 10 + 10)
    assert expected == 320010
    assert sum(p.numel() for p in build_net("ConvNet", 3, 10, (32, 32)).parameters()) == expected
    # reference totals of the CIFAR ResNet18 / VGG11 (kuangliu/pytorch-cifar, on which the DC code is based)
    assert sum(p.numel() for p in build_net("ResNet18BN", 3, 10, 32).parameters()) == 11_173_962
    assert sum(p.numel() for p in build_net("VGG11BN", 3, 10, 32).parameters()) == 9_231_114


def test_convnet_padding3_and_avgpool_by_hand():
    # one 1x4x4 image, one conv whose only non-zero tap is the centre (=1): with padding 3 the conv output is
    # the image zero-padded by 2 on each side (8x8); ReLU, then 2x2 average pooling gives 4x4.
    net = ConvNet(1, 2, (4, 4), width=1, depth=1, norm="none", act="relu", pool="avgpool")
    assert net.feature_dim == 16
    with torch.no_grad():
        conv = net.features[0]
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.bias.zero_()
    img = torch.tensor([[1.0, -2.0, 3.0, 4.0], [5.0, 6.0, -7.0, 8.0], [0.0, 1.0, 2.0, 3.0], [4.0, -5.0, 6.0, 7.0]])
    padded = F.pad(img.clamp(min=0), (2, 2, 2, 2))
    expected = padded.view(4, 2, 4, 2).mean(dim=(1, 3)).flatten()
    # e.g. the top-left window holds only zeros of the padding; the second row's window (rows 2-3, cols 2-3)
    # holds relu(1), relu(-2), relu(5), relu(6) -> (1 + 0 + 5 + 6) / 4 = 3
    assert expected[0] == 0 and expected[5] == 3.0
    with torch.no_grad():
        assert torch.equal(net.embed(img.view(1, 1, 4, 4))[0], expected)


def test_names_are_case_insensitive_and_sizes_can_be_ints():
    net = build_net("resnet18bn_ap", 3, 10, 32)
    assert net.arch == "ResNet18BN_AP" and net.image_size == (32, 32)
    assert build_net("CONVNET", 1, 10, [28, 28]).image_size == (28, 28)


def test_unknown_names_and_bad_arguments_raise_ptmdd_error():
    with pytest.raises(PtmddError, match=r"ConvNetD4.*ResNet18BN_AP"):
        build_net("ResNet50", 3, 10, (32, 32))
    with pytest.raises(PtmddError, match="positive integer"):
        build_net("ConvNet", 0, 10, (32, 32))
    with pytest.raises(PtmddError, match="num_classes"):
        build_net("ConvNet", 3, -1, (32, 32))
    with pytest.raises(PtmddError, match="image_size"):
        build_net("ConvNet", 3, 10, (32, 32, 3))
    with pytest.raises(PtmddError, match="cannot take 8x8"):
        build_net("VGG11", 3, 10, (8, 8))
    with pytest.raises(PtmddError, match="cannot take 16x16"):
        build_net("ResNet18", 3, 10, (16, 16))


def test_bad_convnet_options_raise_ptmdd_error_listing_the_choices():
    with pytest.raises(PtmddError, match="instancenorm, batchnorm, layernorm, groupnorm, none"):
        ConvNet(3, 10, (32, 32), norm="weightnorm")
    with pytest.raises(PtmddError, match="relu, sigmoid, leakyrelu"):
        ConvNet(3, 10, (32, 32), act="gelu")
    with pytest.raises(PtmddError, match="avgpool, maxpool, none"):
        ConvNet(3, 10, (32, 32), pool="lppool")
    with pytest.raises(PtmddError, match="divisible by 4"):
        ConvNet(3, 10, (32, 32), width=30, norm="groupnorm")
    with pytest.raises(PtmddError, match="depth"):
        ConvNet(3, 10, (32, 32), depth=0)
    with pytest.raises(PtmddError, match="cannot take 4x4"):
        ConvNet(3, 10, (4, 4), depth=3)
    # the reference's spellings and any case are accepted
    assert ConvNet(3, 10, 32, pool="maxpooling", norm="BatchNorm").pool == "maxpool"


def test_reinit_redraws_weights_like_construction_and_is_reproducible():
    torch.manual_seed(123)
    fresh = build_net("ConvNetBN", 3, 10, (32, 32))
    torch.manual_seed(7)
    net = build_net("ConvNetBN", 3, 10, (32, 32))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():  # make the norm layers and BN statistics differ from their initial values
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(3.0)
                m.running_mean.fill_(5.0)
    ptrs = [p.data_ptr() for p in net.parameters()]

    torch.manual_seed(123)
    assert reinit_(net) is net
    after = net.state_dict()
    # == construction with the same seed
    assert all(torch.equal(after[k], v) for k, v in fresh.state_dict().items())
    assert not torch.equal(after["features.0.weight"], before["features.0.weight"])
    assert torch.equal(after["features.1.running_mean"], torch.zeros(128))
    assert torch.equal(after["features.1.weight"], torch.ones(128))
    assert [p.data_ptr() for p in net.parameters()] == ptrs  # in place: same storage

    # with a generator: reproducible, independent of the global RNG, different for another seed
    reinit_(net, torch.Generator().manual_seed(5))
    w5 = net.classifier.weight.clone()
    torch.manual_seed(999)
    reinit_(net, torch.Generator().manual_seed(5))
    assert torch.equal(net.classifier.weight, w5)
    reinit_(net, torch.Generator().manual_seed(6))
    assert not torch.equal(net.classifier.weight, w5)
    # distribution of reset_parameters: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1 / 2048**0.5
    assert net.classifier.weight.abs().max() <= bound and net.classifier.weight.abs().max() > 0.9 * bound


def test_reinit_rejects_unknown_parametrised_modules_with_a_generator():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

    with pytest.raises(PtmddError, match="reinit_"):
        reinit_(nn.Sequential(nn.Linear(2, 2), Odd()), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["ConvNet", "ConvNetLN", "ResNet18", "ResNet18BN_AP"])
def test_bf16_autocast_works_and_tracks_fp32(name):
    torch.manual_seed(0)
    net = build_net(name, 3, 10, (32, 32)).eval()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    with torch.no_grad():
        ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        emb = net.embed(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 10) and emb.shape == (2, net.feature_dim)
    assert torch.isfinite(out).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.1
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# every ConvNet variant, and one of each other family (the BN/IN twins share their code paths)
@pytest.mark.parametrize(
    "name",
    [n for n in NAMES if n.startswith("ConvNet")] + ["AlexNetBN", "VGG11", "ResNet18", "ResNet18BN_AP", "LeNet", "MLP"],
)
def test_channels_last_inputs_give_the_same_outputs(name):
    torch.manual_seed(0)
    net = build_net(name, 3, 10, (32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = net.embed(x)
        out = net.embed(x.contiguous(memory_format=torch.channels_last))
        net_cl = net.to(memory_format=torch.channels_last)
        out_cl = net_cl.embed(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-5)


_VMAP_NETS = {
    "ConvNet": lambda: build_net("ConvNet", 1, 10, (28, 28)),
    "ConvNetBN": lambda: build_net("ConvNetBN", 1, 10, (28, 28)),
    # the ResNet18BN_AP blocks (in-place residual add, avg-pool downsampling, BN), 1 block per stage: fast
    "ResNetBN_AP-1111": lambda: ResNet(1, 10, (16, 16), "batchnorm", avgpool_downsample=True, num_blocks=(1,) * 4),
}


@pytest.mark.parametrize("name", list(_VMAP_NETS))
def test_vmap_over_stacked_parameters_matches_the_single_nets(name):
    # float64: the batched kernels reduce in another order, and the instance-norm backward amplifies float32
    # rounding (~1e-3 relative); in float64 both paths must agree to rounding.
    torch.manual_seed(0)
    nets = [_VMAP_NETS[name]().double() for _ in range(2)]
    params, buffers = stack_module_state(nets)
    base = _VMAP_NETS[name]().double().to("meta")
    size = nets[0].image_size
    x = torch.randn(3, 1, *size, requires_grad=True, dtype=torch.float64)

    def run(p, b, images):
        return functional_call(base, (p, b), (images,))

    out = vmap(run, in_dims=(0, 0, None))(params, buffers, x)
    ref = torch.stack([n(x) for n in nets])
    assert out.shape == (2, 3, 10)
    torch.testing.assert_close(out, ref)
    (grad,) = torch.autograd.grad(out.sum(), x)
    (grad_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(grad, grad_ref)


def test_convnet_gradients_reach_the_input_with_inplace_relu():
    torch.manual_seed(0)
    net = build_net("ConvNet", 1, 10, (28, 28))
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    net.embed(x).pow(2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    ref = ConvNet(1, 10, (28, 28), inplace=False)
    ref.load_state_dict(net.state_dict())
    ref.embed(x2).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("name", ["ConvNetLN", "AlexNetBN", "VGG11", "ResNet18BN_AP", "LeNet", "MLP"])
def test_reinit_with_a_seed_equals_a_fresh_build_with_that_seed(name):
    torch.manual_seed(1)
    fresh = build_net(name, 1, 10, (28, 28))
    torch.manual_seed(2)
    net = build_net(name, 1, 10, (28, 28))
    assert not torch.equal(net.classifier.weight, fresh.classifier.weight)
    torch.manual_seed(1)
    reinit_(net)
    for (k, a), b in zip(net.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
