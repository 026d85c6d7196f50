"""Tests of ptmdd_lightning.core.augment (DSA), against hand computations and literal transcriptions of the
reference DSA code (VICO-UoE/DatasetCondensation utils.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ptmdd_lightning.core.augment import (
    DEFAULT_STRATEGY,
    DIGITS_STRATEGY,
    DSA_OPS,
    DSADraw,
    DSAParams,
    apply_dsa,
    dsa_augment,
    dsa_strategy_for,
    parse_strategy,
    sample_dsa,
    siamese_augment,
)
from ptmdd_lightning.errors import PtmddError

P = DSAParams()


def one(op: str, **vals: list) -> DSADraw:
    """A hand-made draw of one op for len(values) groups."""
    tensors = {}
    for k, v in vals.items():
        dtype = torch.int64 if isinstance(v[0], int) else torch.float32
        tensors[k] = torch.tensor(v, dtype=dtype)
    return DSADraw(ops=(op,), choice=torch.zeros(len(next(iter(vals.values()))), dtype=torch.int64), values=(tensors,))


def ids(n: int) -> torch.Tensor:
    return torch.arange(n)


# ---------------------------------------------------------------- strategy parsing and params


def test_parse_strategy_and_defaults():
    assert parse_strategy(DEFAULT_STRATEGY) == ("color", "crop", "cutout", "flip", "scale", "rotate")
    assert set(DSA_OPS) == set(parse_strategy(DEFAULT_STRATEGY))
    assert parse_strategy("crop_scale_rotate") == ("crop", "scale", "rotate")
    for none in ("none", "None", ""):
        assert parse_strategy(none) == ()
    with pytest.raises(PtmddError, match="blur"):
        parse_strategy("color_blur")
    with pytest.raises(PtmddError):
        dsa_augment(torch.zeros(1, 1, 4, 4), "Crop")
    x = torch.randn(2, 1, 4, 4)
    assert dsa_augment(x, "none") is x
    assert dsa_strategy_for("MNIST") == DIGITS_STRATEGY and "flip" not in DIGITS_STRATEGY
    assert dsa_strategy_for("svhn") == DIGITS_STRATEGY
    assert dsa_strategy_for("FashionMNIST") == DEFAULT_STRATEGY
    # the reference ParamDiffAug defaults
    assert (P.prob_flip, P.ratio_scale, P.ratio_rotate, P.ratio_crop_pad, P.ratio_cutout) == (
        0.5,
        1.2,
        15.0,
        0.125,
        0.5,
    )
    assert (P.brightness, P.saturation, P.contrast) == (1.0, 2.0, 0.5)


# ---------------------------------------------------------------- each op by hand


def test_flip_exact():
    x = torch.arange(12.0).view(2, 1, 2, 3)
    out = apply_dsa(x, one("flip", randf=[0.3, 0.7]), ids(2))  # flip iff randf < 0.5
    assert torch.equal(out[0], x[0].flip(-1))
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[0, 0], torch.tensor([[2.0, 1, 0], [5, 4, 3]]))


def test_color_exact_hand_numbers():
    # x: C=2, H=1, W=2. randb=0.75 -> +0.25; rands=0.25 -> s=0.5; randc=0.25 -> c=0.75.
    # x1 = [[1.25, 3.25], [5.25, 7.25]]; channel means (3.25, 5.25) -> x2 = [[2.25, 4.25], [4.25, 6.25]];
    # mean(x2) = 4.25 -> x3 = (x2 - 4.25) * 0.75 + 4.25 = [[2.75, 4.25], [4.25, 5.75]].
    x = torch.tensor([[[[1.0, 3.0]], [[5.0, 7.0]]]])
    out = apply_dsa(x, one("color", randb=[0.75], rands=[0.25], randc=[0.25]), ids(1))
    assert torch.allclose(out, torch.tensor([[[[2.75, 4.25]], [[4.25, 5.75]]]]), atol=1e-6)
    # identity draw: brightness 0 (randb 0.5), saturation 1 (rands 0.5), contrast 1 (randc 0.5)
    out = apply_dsa(x, one("color", randb=[0.5], rands=[0.5], randc=[0.5]), ids(1))
    assert torch.allclose(out, x, atol=1e-6)


def reference_color(x, randb, rands, randc, p=P):
    """Literal rand_brightness, rand_saturation, rand_contrast of the reference (per-image draws)."""
    randb, rands, randc = (r.view(-1, 1, 1, 1) for r in (randb, rands, randc))
    x = x + (randb - 0.5) * p.brightness
    x_mean = x.mean(dim=1, keepdim=True)
    x = (x - x_mean) * (rands * p.saturation) + x_mean
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - x_mean) * (randc + p.contrast) + x_mean


@pytest.mark.parametrize("channels", [1, 3])
def test_color_matches_reference_sequence(channels):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, channels, 5, 4, generator=g)
    rb, rs, rc = (torch.rand(6, generator=g) for _ in range(3))
    out = apply_dsa(x, one("color", randb=rb.tolist(), rands=rs.tolist(), randc=rc.tolist()), ids(6))
    assert torch.allclose(out, reference_color(x, rb, rs, rc), atol=1e-5)


def test_crop_exact_hand_numbers():
    x = torch.arange(9.0).view(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    out = apply_dsa(x, one("crop", translation_x=[1], translation_y=[-1]), ids(1))
    # out[i, j] = x[i + 1, j - 1], zero outside
    assert torch.equal(out[0, 0], torch.tensor([[0.0, 3, 4], [0, 6, 7], [0, 0, 0]]))


def reference_crop(x, tx, ty):
    """Literal rand_crop (pad 1, clamp, index)."""
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0)), torch.arange(x.size(2)), torch.arange(x.size(3)), indexing="ij"
    )
    grid_x = torch.clamp(grid_x + tx.view(-1, 1, 1) + 1, 0, x.size(2) + 1)
    grid_y = torch.clamp(grid_y + ty.view(-1, 1, 1) + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)


def test_crop_matches_reference_all_shifts():
    h, w = 8, 6
    sx, sy = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    pairs = [(a, b) for a in range(-sx, sx + 1) for b in range(-sy, sy + 1)]
    tx = torch.tensor([a for a, _ in pairs])
    ty = torch.tensor([b for _, b in pairs])
    x = torch.randn(len(pairs), 2, h, w)
    out = apply_dsa(x, one("crop", translation_x=tx.tolist(), translation_y=ty.tolist()), ids(len(pairs)))
    assert torch.equal(out, reference_crop(x, tx, ty))


def test_cutout_exact_hand_numbers():
    x = torch.ones(1, 2, 4, 4)
    # size int(4 * 0.5 + 0.5) = 2; centre (1, 3) -> rows [0, 2), columns [2, 4) are zeroed
    out = apply_dsa(x, one("cutout", offset_x=[1], offset_y=[3]), ids(1))
    mask = torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(out, mask.expand(1, 2, 4, 4))


def reference_cutout(x, ox, oy, ratio=0.5):
    """Literal rand_cutout (clamped scatter of zeros)."""
    cs = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    n = x.size(0)
    gb, gx, gy = torch.meshgrid(torch.arange(n), torch.arange(cs[0]), torch.arange(cs[1]), indexing="ij")
    gx = torch.clamp(gx + ox.view(-1, 1, 1) - cs[0] // 2, min=0, max=x.size(2) - 1)
    gy = torch.clamp(gy + oy.view(-1, 1, 1) - cs[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


@pytest.mark.parametrize("hw", [(4, 4), (5, 7), (28, 28), (3, 2)])
def test_cutout_matches_reference_all_offsets(hw):
    h, w = hw
    cx, cy = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    pairs = [(a, b) for a in range(h + (1 - cx % 2)) for b in range(w + (1 - cy % 2))]  # the sampled range
    ox = torch.tensor([a for a, _ in pairs])
    oy = torch.tensor([b for _, b in pairs])
    x = torch.randn(len(pairs), 1, h, w)
    out = apply_dsa(x, one("cutout", offset_x=ox.tolist(), offset_y=oy.tolist()), ids(len(pairs)))
    assert torch.equal(out, reference_cutout(x, ox, oy))


def test_scale_exact_align_corners_true():
    # x[i, j] = 10 i + j is linear, so bilinear sampling is exact. Output pixel (i, j) samples input row
    # sy * (i - 1) + 1, column sx * (j - 1) + 1 (3x3 image, normalized coords -1, 0, 1).
    i = torch.arange(3.0).view(3, 1)
    j = torch.arange(3.0).view(1, 3)
    x = (10 * i + j).view(1, 1, 3, 3)
    out = apply_dsa(x, one("scale", sx=[0.5], sy=[0.8]), ids(1))
    expected = 10 * (0.8 * (i - 1) + 1) + (0.5 * (j - 1) + 1)
    assert torch.allclose(out[0, 0], expected, atol=1e-5)
    # scale 1 is the identity
    y = torch.randn(2, 3, 5, 6)
    assert torch.allclose(apply_dsa(y, one("scale", sx=[1.0, 1.0], sy=[1.0, 1.0]), ids(2)), y, atol=1e-5)


def test_rotate_exact():
    x = torch.randn(2, 2, 5, 5)
    # theta = [[cos, -sin], [sin, cos]]: +90 degrees is torch.rot90 over (H, W), i.e. out[r, c] = x[c, W-1-r]
    out = apply_dsa(x, one("rotate", theta=[math.pi / 2, 0.0]), ids(2))
    assert torch.allclose(out[0], torch.rot90(x[0], 1, dims=(1, 2)), atol=1e-5)
    assert torch.allclose(out[1], x[1], atol=1e-5)
    assert torch.allclose(out[0, 0, 0, 0], x[0, 0, 0, 4], atol=1e-5)


def test_rotate_non_square_uses_align_corners_true():
    # For square images both align_corners conventions agree; on a 3x5 image a +90 degree rotation with
    # align_corners=True maps output (i, j) to input row 1 + (j - 2) / 2, column 2 - 2 (i - 1) (pixel scales
    # (H - 1) / 2 and (W - 1) / 2), all inside the image, so bilinear sampling of x[i, j] = 10 i + j is exact.
    i = torch.arange(3.0).view(3, 1)
    j = torch.arange(5.0).view(1, 5)
    x = (10 * i + j).view(1, 1, 3, 5)
    out = apply_dsa(x, one("rotate", theta=[math.pi / 2]), ids(1))
    expected = 10 * (1 + (j - 2) / 2) + (2 - 2 * (i - 1))
    assert torch.allclose(out[0, 0], expected, atol=1e-4)


def test_sample_ranges_follow_reference():
    g = torch.Generator().manual_seed(1)
    d = sample_dsa(DEFAULT_STRATEGY, 4000, (28, 28), generator=g)
    v = dict(zip(d.ops, d.values, strict=True))
    r = P.ratio_scale
    for k in ("sx", "sy"):
        assert v["scale"][k].min() >= 1 / r and v["scale"][k].max() < r
        assert v["scale"][k].min() < 1 / r + 0.01 and v["scale"][k].max() > r - 0.01
    th = v["rotate"]["theta"] * 180 / math.pi
    assert th.abs().max() <= 15.0 and th.abs().max() > 14.9
    s = int(28 * 0.125 + 0.5)  # 4
    assert v["crop"]["translation_x"].min() == -s and v["crop"]["translation_x"].max() == s
    assert v["cutout"]["offset_x"].min() == 0 and v["cutout"]["offset_x"].max() == 28  # size 14 is even -> +1
    assert d.choice is not None and set(d.choice.tolist()) == set(range(6))
    for key in ("randb", "rands", "randc"):
        assert 0 <= v["color"][key].min() and v["color"][key].max() < 1


# ---------------------------------------------------------------- siamese / batched semantics


def test_siamese_same_params_within_group_and_real_syn():
    g = torch.Generator().manual_seed(0)
    k, nr, ns = 6, 5, 2
    base = torch.randn(k, 1, 3, 8, 8, generator=g)
    real = base.expand(k, nr, 3, 8, 8).reshape(k * nr, 3, 8, 8)  # all images of a class identical
    syn = base.expand(k, ns, 3, 8, 8).reshape(k * ns, 3, 8, 8)
    rl = torch.arange(k).repeat_interleave(nr)
    sl = torch.arange(k).repeat_interleave(ns)
    for strategy in (DEFAULT_STRATEGY, "color"):
        ra, sa = siamese_augment(real, rl, syn, sl, strategy, generator=g)
        ra, sa = ra.view(k, nr, 3, 8, 8), sa.view(k, ns, 3, 8, 8)
        assert torch.equal(ra, ra[:, :1].expand_as(ra))  # one parameter set per group
        assert torch.equal(sa, ra[:, :ns])  # real and synthetic share it
    # with 'color' every group draws its own continuous parameters -> groups differ
    for a in range(k):
        for b in range(a + 1, k):
            assert not torch.allclose(ra[a, 0], ra[b, 0])


def test_siamese_arbitrary_group_ids_and_order():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 6, 6, generator=g).expand(7, 1, 6, 6)
    groups = torch.tensor([9, 2, 9, 5, 2, 9, 5])
    out = dsa_augment(x, "color", groups=groups, generator=g)
    for gid in (2, 5, 9):
        sel = out[groups == gid]
        assert torch.equal(sel, sel[:1].expand_as(sel))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[0], out[3])


def test_groups_none_is_one_group_and_eval_mode_is_per_image():
    x = torch.randn(1, 2, 6, 6).expand(5, 2, 6, 6)
    out = dsa_augment(x, DEFAULT_STRATEGY, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, out[:1].expand_as(out))
    out = dsa_augment(x, "color", siamese=False, generator=torch.Generator().manual_seed(0))
    assert all(not torch.allclose(out[0], out[i]) for i in range(1, 5))
    with pytest.raises(PtmddError, match="groups=None"):
        dsa_augment(x, "color", groups=torch.zeros(5, dtype=torch.int64), siamese=False)
    # evaluation: one op per call (shared), per-group ops otherwise
    d = sample_dsa(DEFAULT_STRATEGY, 500, (6, 6), shared_op=True, generator=torch.Generator().manual_seed(0))
    assert d.choice is not None and len(set(d.choice.tolist())) == 1
    d = sample_dsa(DEFAULT_STRATEGY, 500, (6, 6), generator=torch.Generator().manual_seed(0))
    assert len(set(d.choice.tolist())) == 6


def test_batched_apply_equals_per_group_apply():
    g = torch.Generator().manual_seed(5)
    n, k = 40, 8
    x = torch.randn(n, 3, 9, 9, generator=g)
    groups = torch.randint(0, k, (n,), generator=g)
    draw = sample_dsa(DEFAULT_STRATEGY, k, (9, 9), generator=g)
    out = apply_dsa(x, draw, groups)
    for c in range(k):
        sel = groups == c
        if sel.any():
            assert torch.allclose(out[sel], apply_dsa(x[sel], draw, groups[sel]), atol=1e-6)


def test_multi_op_mode_applies_all_ops_in_sequence():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 8, 8, generator=g)
    draw = sample_dsa(DEFAULT_STRATEGY, 3, (8, 8), single_op=False, generator=g)
    assert draw.choice is None
    expected = x
    for op, vals in zip(draw.ops, draw.values, strict=True):
        single = DSADraw(ops=(op,), choice=torch.zeros(3, dtype=torch.int64), values=(vals,))
        expected = apply_dsa(expected, single, ids(3))
    assert torch.allclose(apply_dsa(x, draw, ids(3)), expected, atol=1e-6)


def test_bad_inputs():
    with pytest.raises(PtmddError):
        dsa_augment(torch.zeros(4, 4), "color")
    with pytest.raises(PtmddError):
        dsa_augment(torch.zeros(2, 1, 4, 4), "color", groups=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(PtmddError):
        dsa_augment(torch.zeros(2, 1, 4, 4), "color", groups=torch.zeros(2))
    with pytest.raises(PtmddError):
        siamese_augment(torch.zeros(2, 1, 4, 4), ids(2), torch.zeros(2, 1, 5, 4), ids(2), "color")


# ---------------------------------------------------------------- gradients, determinism, dtypes


def test_gradients_reach_every_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, 8, 8, generator=g, requires_grad=True)
    groups = torch.arange(6).repeat_interleave(4)
    w = torch.randn(24, 3, 8, 8, generator=g)
    (dsa_augment(x, DEFAULT_STRATEGY, groups=groups, generator=g) * w).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad.abs().sum(dim=(1, 2, 3)) > 0).all()


@pytest.mark.parametrize("op", DSA_OPS)
def test_gradcheck_each_op(op):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)
    draw = sample_dsa(op, 3, (5, 5), generator=g)
    assert torch.autograd.gradcheck(lambda t: apply_dsa(t, draw, ids(3)), (x,))


def test_deterministic_given_generator_or_seed():
    x = torch.randn(12, 3, 8, 8)
    groups = torch.arange(4).repeat_interleave(3)
    a = dsa_augment(x, DEFAULT_STRATEGY, groups, generator=torch.Generator().manual_seed(7))
    b = dsa_augment(x, DEFAULT_STRATEGY, groups, generator=torch.Generator().manual_seed(7))
    c = dsa_augment(x, DEFAULT_STRATEGY, groups, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = dsa_augment(x, DEFAULT_STRATEGY, groups)
    torch.manual_seed(3)
    e = dsa_augment(x, DEFAULT_STRATEGY, groups)
    assert torch.equal(d, e)


def test_bf16_autocast_and_channels_last():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 8, generator=g)
    groups = torch.arange(4).repeat_interleave(4)
    ref = dsa_augment(x, DEFAULT_STRATEGY, groups, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dsa_augment(x, DEFAULT_STRATEGY, groups, generator=torch.Generator().manual_seed(1))
        gen = torch.Generator().manual_seed(1)
        out16 = dsa_augment(x.bfloat16(), DEFAULT_STRATEGY, groups, generator=gen)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-5)
    assert out16.dtype == torch.bfloat16 and torch.allclose(out16.float(), ref, atol=0.1)
    xc = x.contiguous(memory_format=torch.channels_last)
    outc = dsa_augment(xc, DEFAULT_STRATEGY, groups, generator=torch.Generator().manual_seed(1))
    assert outc.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(outc, ref, atol=1e-6)
