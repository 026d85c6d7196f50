"""Differentiable Siamese Augmentation (DSA), batched over groups (classes).

Source: Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021, and the
reference code github.com/VICO-UoE/DatasetCondensation ``utils.py`` (``ParamDiffAug``, ``DiffAugment``,
``rand_*``, ``AUGMENT_FNS``). Every formula below is the reference's; only the batching differs:

* The reference augments one class per call. It makes the real and the synthetic images of a class share one
  parameter set by re-seeding the global RNG with the same seed before both calls, and by copying the first
  image's draw to the whole batch (``theta[:] = theta[0]``). Here one call augments all classes together: the
  parameters are sampled once per *group* (:func:`sample_dsa`) and gathered per image (:func:`apply_dsa`).
  :func:`siamese_augment` applies one draw to the real and the synthetic batch alike.
* In the reference's default mode ``aug_mode='S'`` one op of the strategy string is chosen per call. Here it
  is chosen per group (the per-class call of the reference) when augmenting siamese, and once per call
  (for the whole batch) in evaluation mode (``siamese=False``, the reference's ``seed=-1``), where every
  image gets its own parameters.
* ``single_op=False`` is the reference's ``aug_mode='M'``: all ops of the strategy in sequence.
* Two ops are computed in an equivalent cheaper form: ``color`` (brightness, saturation, contrast) as one
  affine map per image, algebraically identical to the three reference formulas in sequence (see
  ``_color``); ``cutout`` as a comparison mask equal to the reference's clamped scatter of zeros. Tests check
  both against literal transcriptions of the reference.

The reference code was written for torch 1.2, whose ``affine_grid``/``grid_sample`` behave as
``align_corners=True`` today; this module passes ``align_corners=True`` explicitly (for square images the two
conventions give the same scale/rotate result; they differ on non-square images).

Randomness comes from ``generator`` when given, else from the global torch RNG (see docs/DESIGN.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ptmdd_lightning.errors import PtmddError

__all__ = [
    "DEFAULT_STRATEGY",
    "DIGITS_STRATEGY",
    "DSA_OPS",
    "DSADraw",
    "DSAParams",
    "apply_dsa",
    "dsa_augment",
    "dsa_strategy_for",
    "parse_strategy",
    "sample_dsa",
    "siamese_augment",
]

#: The ops of the reference's ``AUGMENT_FNS``; ``color`` is brightness, then saturation, then contrast.
DSA_OPS: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
#: The DSA/DM default strategy (CIFAR-10/100, Fashion-MNIST).
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
#: The DSA readme's strategy for the digit datasets (MNIST, SVHN): flip is left out.
DIGITS_STRATEGY = "color_crop_cutout_scale_rotate"


@dataclass(frozen=True)
class DSAParams:
    """Magnitudes of the DSA ops: the reference's ``ParamDiffAug`` defaults (DSA paper, Sec. 4).

    Attributes:
        prob_flip: probability of a horizontal flip (flip along W).
        ratio_scale: scale factors ``sx, sy ~ U[1/ratio_scale, ratio_scale)`` (``> 1``).
        ratio_rotate: rotation angle ``~ U[-ratio_rotate, ratio_rotate)`` in degrees.
        ratio_crop_pad: maximal translation as a fraction of H (rows) and W (columns); the shift is
            ``int(size * ratio + 0.5)`` pixels, the uncovered border is zero.
        ratio_cutout: cutout square side as a fraction of H and W (``int(size * ratio + 0.5)`` pixels).
        brightness: ``x + (U - 0.5) * brightness``.
        saturation: ``(x - mean_c(x)) * (U * saturation) + mean_c(x)`` (mean over channels).
        contrast: ``(x - mean(x)) * (U + contrast) + mean(x)`` (mean over C, H, W of each image).

    Raises:
        Nothing of its own.
    """

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


@dataclass
class DSADraw:
    """One sampled set of DSA parameters for ``G`` groups (returned by :func:`sample_dsa`).

    Attributes:
        ops: the ops of the strategy, in order (``parse_strategy``'s result; repeats allowed).
        choice: ``(G,)`` int64 index into ``ops`` of the one op each group applies (``single_op``), or
            ``None`` to apply all ops in sequence (the reference's ``aug_mode='M'``).
        values: one dict per position of ``ops``, each entry a ``(G,)`` tensor, named after the reference's
            variables: ``color``: ``randb, rands, randc`` float32 ``U[0, 1)``; ``crop``: ``translation_x``
            (rows), ``translation_y`` (columns) int64 pixels; ``cutout``: ``offset_x`` (rows), ``offset_y``
            (columns) int64 pixels (cutout centre); ``flip``: ``randf`` float32 ``U[0, 1)`` (flip iff
            ``randf < prob_flip``); ``scale``: ``sx, sy`` float32 factors; ``rotate``: ``theta`` float32
            radians.

    Raises:
        Nothing of its own.
    """

    ops: tuple[str, ...]
    choice: Tensor | None
    values: tuple[dict[str, Tensor], ...]

    @property
    def num_groups(self) -> int:
        """``G``, the number of parameter sets held."""
        if self.choice is not None:
            return int(self.choice.shape[0])
        for vals in self.values:
            for v in vals.values():
                return int(v.shape[0])
        return 0


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Split a DSA strategy string like ``'color_crop_cutout_flip_scale_rotate'`` into its ops.

    ``'none'``, ``'None'`` and ``''`` give ``()`` (no augmentation), as in the reference's ``DiffAugment``.

    Raises:
        PtmddError: an op is not one of :data:`DSA_OPS`.
    """
    if strategy in ("", "none", "None"):
        return ()
    ops = tuple(strategy.split("_"))
    unknown = [op for op in ops if op not in DSA_OPS]
    if unknown:
        raise PtmddError(
            f"unknown DSA op(s) {unknown} in strategy {strategy!r}; build the strategy from "
            f"{'_'.join(DSA_OPS)!r} joined by '_' (e.g. {DEFAULT_STRATEGY!r}), or use 'none'"
        )
    return ops


def dsa_strategy_for(dataset: str) -> str:
    """The DSA readme's strategy for a dataset.

    The DSA readme's strategy for a dataset: :data:`DIGITS_STRATEGY` (no flip) for MNIST and SVHN,
    :data:`DEFAULT_STRATEGY` otherwise (case-insensitive name).

    Source: the DSA README of VICO-UoE/DatasetCondensation (``--dsa_strategy`` per dataset).

    Raises:
        Nothing of its own.
    """
    return DIGITS_STRATEGY if dataset.lower() in ("mnist", "svhn") else DEFAULT_STRATEGY


def _crop_shift(size: int, ratio: float) -> int:
    return int(size * ratio + 0.5)


def sample_dsa(
    strategy: str | Sequence[str],
    num_groups: int,
    image_size: tuple[int, int],
    params: DSAParams = DSAParams(),
    single_op: bool = True,
    shared_op: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> DSADraw:
    """Sample ``num_groups`` independent DSA parameter sets (the reference's ``rand_*`` draws).

    The draws depend only on ``(strategy, num_groups, image_size, params, single_op, shared_op)`` and the RNG
    state, not on how many images will use them. Order: the op choice, then per op of the strategy (in order)
    its values in the order the reference draws them.

    Args:
        strategy: a strategy string (see :func:`parse_strategy`) or its ops.
        num_groups: ``G >= 1``, the number of parameter sets.
        image_size: ``(H, W)`` of the images the draw is for (the crop and cutout ranges depend on it).
        params: op magnitudes.
        single_op: choose one op per group (reference ``aug_mode='S'``); ``False`` applies all (``'M'``).
        shared_op: with ``single_op``, choose one op for all groups (the reference's per-call choice in
            evaluation, ``seed=-1``).
        generator: RNG to draw from (its device is used for sampling); ``None`` uses the global RNG.
        device: where the returned tensors live (default: the generator's device, else CPU).

    Returns:
        a :class:`DSADraw`.

    Raises:
        PtmddError: unknown op, ``num_groups < 1``.
    """
    ops = parse_strategy(strategy) if isinstance(strategy, str) else parse_strategy("_".join(strategy))
    if num_groups < 1:
        raise PtmddError(f"sample_dsa needs num_groups >= 1, got {num_groups}; pass at least one image")
    h, w = int(image_size[0]), int(image_size[1])
    if generator is not None:
        sdev = generator.device
    else:
        sdev = torch.device(device if device is not None else "cpu")
    odev = torch.device(device) if device is not None else sdev
    g = num_groups

    def rand() -> Tensor:
        return torch.rand(g, generator=generator, device=sdev, dtype=torch.float32)

    def randint(low: int, high: int) -> Tensor:
        return torch.randint(low, high, (g,), generator=generator, device=sdev, dtype=torch.int64)

    choice = None
    if single_op and ops:
        n = 1 if shared_op else g
        choice = torch.randint(0, len(ops), (n,), generator=generator, device=sdev, dtype=torch.int64)
        choice = choice.expand(g).contiguous()

    values: list[dict[str, Tensor]] = []
    for op in ops:
        if op == "color":
            v = {"randb": rand(), "rands": rand(), "randc": rand()}
        elif op == "crop":
            sx, sy = _crop_shift(h, params.ratio_crop_pad), _crop_shift(w, params.ratio_crop_pad)
            v = {"translation_x": randint(-sx, sx + 1), "translation_y": randint(-sy, sy + 1)}
        elif op == "cutout":
            cx, cy = _crop_shift(h, params.ratio_cutout), _crop_shift(w, params.ratio_cutout)
            v = {"offset_x": randint(0, h + (1 - cx % 2)), "offset_y": randint(0, w + (1 - cy % 2))}
        elif op == "flip":
            v = {"randf": rand()}
        elif op == "scale":
            r = params.ratio_scale
            v = {"sx": rand() * (r - 1.0 / r) + 1.0 / r, "sy": rand() * (r - 1.0 / r) + 1.0 / r}
        else:  # rotate
            v = {"theta": (rand() - 0.5) * 2 * params.ratio_rotate / 180 * math.pi}
        values.append({k: t.to(odev) for k, t in v.items()})
    if choice is not None:
        choice = choice.to(odev)
    return DSADraw(ops=ops, choice=choice, values=tuple(values))


# ----------------------------------------------------------------------------------------------------------
# The ops. Each takes x (n, C, H, W) and the per-image values (n,) and returns (n, C, H, W) in x's dtype.


def _col(v: Tensor, x: Tensor) -> Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _color(x: Tensor, v: dict[str, Tensor], p: DSAParams) -> Tensor:
    # rand_brightness, rand_saturation, rand_contrast in sequence:
    #   x1 = x + b                      b = (randb - 0.5) * brightness
    #   x2 = (x1 - mc(x1)) * s + mc(x1)  s = rands * saturation, mc = mean over channels
    #   x3 = (x2 - ma(x2)) * c + ma(x2)  c = randc + contrast, ma = mean over (C, H, W)
    # Since mc(x1) = mc(x) + b and saturation keeps mc, ma(x2) = ma(x) + b, so exactly (up to rounding)
    #   x3 = c*s*x + c*(1 - s)*mc(x) + (1 - c)*ma(x) + b
    # which is evaluated here in 2 passes over x instead of 8 (the same function and gradient).
    b = _col((v["randb"] - 0.5) * p.brightness, x)
    s = _col(v["rands"] * p.saturation, x)
    c = _col(v["randc"] + p.contrast, x)
    mc = x.mean(dim=1, keepdim=True)  # (n, 1, H, W)
    ma = mc.mean(dim=[2, 3], keepdim=True)  # (n, 1, 1, 1) = mean over (C, H, W)
    t = torch.addcmul((1 - c) * ma + b, mc, c * (1 - s))  # (n, 1, H, W)
    return torch.addcmul(t, x, c * s)


def _crop(x: Tensor, v: dict[str, Tensor], p: DSAParams) -> Tensor:
    # rand_crop: out[n, :, i, j] = x_pad[n, :, clamp(i + tx + 1, 0, H + 1), clamp(j + ty + 1, 0, W + 1)]
    # with a one-pixel zero pad, i.e. x[n, :, i + tx, j + ty] and zero outside. One gather over the flat pad.
    n, ch, h, w = x.shape
    dev = x.device
    tx = v["translation_x"].to(dev).view(n, 1, 1)
    ty = v["translation_y"].to(dev).view(n, 1, 1)
    gx = torch.clamp(torch.arange(h, device=dev).view(1, h, 1) + tx + 1, 0, h + 1)
    gy = torch.clamp(torch.arange(w, device=dev).view(1, 1, w) + ty + 1, 0, w + 1)
    idx = (gx * (w + 2) + gy).view(n, 1, h * w).expand(n, ch, h * w)
    x_pad = F.pad(x, [1, 1, 1, 1]).reshape(n, ch, (h + 2) * (w + 2))
    return x_pad.gather(2, idx).view(n, ch, h, w)


def _cutout(x: Tensor, v: dict[str, Tensor], p: DSAParams) -> Tensor:
    # rand_cutout: zero the (cx, cy) square with top-left corner (offset - size // 2), clipped to the image.
    # The reference scatters zeros at clamped indices; since the square always overlaps the image, this equals
    # the clipped square, computed here with comparisons.
    n, _, h, w = x.shape
    dev = x.device
    cx, cy = _crop_shift(h, p.ratio_cutout), _crop_shift(w, p.ratio_cutout)
    x0 = (v["offset_x"].to(dev) - cx // 2).view(n, 1, 1)
    y0 = (v["offset_y"].to(dev) - cy // 2).view(n, 1, 1)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    cut = ((rows >= x0) & (rows < x0 + cx)) & ((cols >= y0) & (cols < y0 + cy))  # (n, H, W)
    return x.masked_fill(cut.unsqueeze(1), 0)


def _flip(x: Tensor, v: dict[str, Tensor], p: DSAParams) -> Tensor:
    # rand_flip: flip along W where randf < prob_flip.
    f = (v["randf"].to(x.device) < p.prob_flip).view(-1, 1, 1, 1)
    return torch.where(f, x.flip(3), x)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    # affine_grid + grid_sample (bilinear, zero padding, align_corners=True as torch 1.2 did), in float32 and
    # outside autocast (autocast would build the grid in bf16).
    with torch.autocast(device_type=x.device.type, enabled=False):
        xs = x if x.dtype in (torch.float32, torch.float64) else x.float()
        grid = F.affine_grid(theta.to(device=x.device, dtype=xs.dtype), list(xs.shape), align_corners=True)
        out = F.grid_sample(xs, grid, align_corners=True)
    return out.to(x.dtype)


def _scale(x: Tensor, v: dict[str, Tensor], p: DSAParams) -> Tensor:
    # rand_scale: theta = [[sx, 0, 0], [0, sy, 0]]
    sx, sy = v["sx"].float(), v["sy"].float()
    z = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, z, z], -1), torch.stack([z, sy, z], -1)], 1)
    return _affine(x, theta)


def _rotate(x: Tensor, v: dict[str, Tensor], p: DSAParams) -> Tensor:
    # rand_rotate: theta = [[cos t, -sin t, 0], [sin t, cos t, 0]]
    t = v["theta"].float()
    c, s, z = torch.cos(t), torch.sin(t), torch.zeros_like(t)
    theta = torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1)], 1)
    return _affine(x, theta)


_NOT_4D = "DSA expects images (N, C, H, W), got shape {shape}; add the batch dimension"

_OP_FNS = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}


def _gather(vals: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    return {k: t.index_select(0, idx.to(t.device)) for k, t in vals.items()}


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def apply_dsa(x: Tensor, draw: DSADraw, group_index: Tensor, params: DSAParams = DSAParams()) -> Tensor:
    """Apply a sampled draw: image ``i`` uses parameter set ``group_index[i]``.

    With ``draw.choice`` set, the images are sorted by their group's op, each op runs once on its contiguous
    chunk (a loop over at most 6 ops, never over groups), and the results are scattered back. Differentiable
    w.r.t. ``x``. Works under autocast and on channels_last input (the output keeps the input's memory
    format).

    Source: DatasetCondensation ``utils.py`` ``DiffAugment`` (Zhao & Bilen, ICML 2021), batched over groups
    (module docstring).

    Args:
        x: ``(N, C, H, W)`` float images (any float dtype).
        draw: from :func:`sample_dsa` for ``image_size == (H, W)``.
        group_index: ``(N,)`` int64 in ``[0, draw.num_groups)``.
        params: the magnitudes the draw was sampled with.

    Returns:
        ``(N, C, H, W)`` in ``x``'s dtype.

    Raises:
        PtmddError: ``x`` is not 4-D or ``group_index`` is not ``(N,)``.
    """
    if x.dim() != 4:
        raise PtmddError(_NOT_4D.format(shape=tuple(x.shape)))
    n = x.shape[0]
    if group_index.shape != (n,):
        raise PtmddError(f"DSA group index must have shape ({n},) like the images, got {tuple(group_index.shape)}")
    if not draw.ops or n == 0:
        return x
    fmt = _memory_format(x)
    gidx = group_index.to(x.device)
    if draw.choice is None:  # all ops in sequence ('M')
        for op, vals in zip(draw.ops, draw.values, strict=True):
            x = _OP_FNS[op](x, _gather(vals, gidx), params)
        return x.contiguous(memory_format=fmt)

    choice = draw.choice.to(x.device).index_select(0, gidx)  # (N,) op position of each image
    counts = torch.bincount(choice, minlength=len(draw.ops)).tolist()
    present = [i for i, c in enumerate(counts) if c > 0]
    if len(present) == 1:
        pos = present[0]
        out = _OP_FNS[draw.ops[pos]](x, _gather(draw.values[pos], gidx), params)
        return out.contiguous(memory_format=fmt)
    perm = torch.argsort(choice, stable=True)
    xs = x.index_select(0, perm).split(counts)
    gs = gidx.index_select(0, perm).split(counts)
    outs = [_OP_FNS[draw.ops[pos]](xs[pos], _gather(draw.values[pos], gs[pos]), params) for pos in present]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n, device=perm.device)
    out = torch.cat(outs, 0).index_select(0, inv)
    return out.contiguous(memory_format=fmt)


def _group_index(groups: Tensor, n: int, device: torch.device) -> tuple[Tensor, int]:
    if groups.shape != (n,):
        raise PtmddError(f"DSA groups must have shape ({n},) (one id per image), got {tuple(groups.shape)}")
    if groups.dtype.is_floating_point or groups.dtype == torch.bool:
        raise PtmddError(f"DSA groups must be integer class ids (int64), got dtype {groups.dtype}")
    uniq, inv = torch.unique(groups.to(device), sorted=True, return_inverse=True)
    return inv, int(uniq.numel())


def dsa_augment(
    x: Tensor,
    strategy: str,
    groups: Tensor | None = None,
    params: DSAParams = DSAParams(),
    siamese: bool = True,
    single_op: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DSA of a batch, all groups in one call (the reference's ``DiffAugment``, batched over classes).

    * ``siamese=True``: every image with the same ``groups`` id gets the same parameters and, with
      ``single_op``, the same op (the reference's per-class seeded call with ``theta[:] = theta[0]``);
      different groups draw independently. ``groups=None`` makes the whole batch one group.
    * ``siamese=False`` (evaluation, the reference's ``seed=-1``): every image gets its own parameters; with
      ``single_op`` one op is chosen for the whole call, as in the reference. ``groups`` must be ``None``.

    Args:
        x: ``(N, C, H, W)`` float images (normalized); any float dtype, channels_last allowed.
        strategy: e.g. ``'color_crop_cutout_flip_scale_rotate'``; ``'none'`` returns ``x`` itself.
        groups: ``(N,)`` int64 group (class) ids, any values.
        params: op magnitudes (:class:`DSAParams`).
        siamese: share parameters within a group (see above).
        single_op: one op per group/call (reference ``aug_mode='S'``, its default) or all ops (``'M'``).
        generator: RNG; ``None`` uses the global torch RNG.

    Returns:
        ``(N, C, H, W)`` augmented images in ``x``'s dtype and memory format; differentiable w.r.t. ``x``.

    Raises:
        PtmddError: unknown op; bad ``groups`` shape/dtype; ``groups`` given with ``siamese=False``.
    """
    ops = parse_strategy(strategy)
    if x.dim() != 4:
        raise PtmddError(_NOT_4D.format(shape=tuple(x.shape)))
    if not ops or x.shape[0] == 0:
        return x
    n = x.shape[0]
    if siamese:
        if groups is None:
            gidx, g = torch.zeros(n, dtype=torch.int64, device=x.device), 1
        else:
            gidx, g = _group_index(groups, n, x.device)
        shared_op = False
    else:
        if groups is not None:
            raise PtmddError(
                "dsa_augment(siamese=False) gives every image its own parameters; pass groups=None, "
                "or siamese=True to share parameters within groups"
            )
        gidx, g, shared_op = torch.arange(n, device=x.device), n, True
    draw = sample_dsa(ops, g, (x.shape[2], x.shape[3]), params, single_op, shared_op, generator, device=x.device)
    return apply_dsa(x, draw, gidx, params)


def siamese_augment(
    real: Tensor,
    real_groups: Tensor,
    syn: Tensor,
    syn_groups: Tensor,
    strategy: str,
    params: DSAParams = DSAParams(),
    single_op: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Siamese DSA: ONE draw per group id, applied to the real and the synthetic images of that group alike.

    This is the reference DC/DSA/DM step's ``DiffAugment(img_real, seed=s)`` and
    ``DiffAugment(img_syn, seed=s)`` pair for every class, batched: the draws are sampled once for the union
    of the group ids of both sides.

    Args:
        real: ``(Nr, C, H, W)`` real images (usually without grad).
        real_groups: ``(Nr,)`` int64 group (class) ids.
        syn: ``(Ns, C, H, W)`` synthetic images (grad flows through).
        syn_groups: ``(Ns,)`` int64 group ids.
        strategy, params, single_op, generator: as in :func:`dsa_augment`.

    Returns:
        ``(real_aug (Nr, C, H, W), syn_aug (Ns, C, H, W))`` in the inputs' dtypes and memory formats.

    Raises:
        PtmddError: unknown op; shapes of ``real`` and ``syn`` differ beyond N; bad group shapes/dtypes.
    """
    ops = parse_strategy(strategy)
    if real.dim() != 4 or syn.dim() != 4 or real.shape[1:] != syn.shape[1:]:
        raise PtmddError(
            f"siamese_augment needs real and synthetic images of one shape (N, C, H, W); got "
            f"{tuple(real.shape)} and {tuple(syn.shape)}; resize/convert them to the same C, H, W"
        )
    if not ops:
        return real, syn
    nr, ns = real.shape[0], syn.shape[0]
    if real_groups.shape != (nr,) or syn_groups.shape != (ns,):
        raise PtmddError(
            f"siamese_augment groups must have shapes ({nr},) and ({ns},) (one id per image), got "
            f"{tuple(real_groups.shape)} and {tuple(syn_groups.shape)}"
        )
    both = torch.cat([real_groups.to(real.device), syn_groups.to(real.device)])
    gidx, g = _group_index(both, nr + ns, real.device)
    size = (real.shape[2], real.shape[3])
    draw = sample_dsa(ops, g, size, params, single_op, False, generator, real.device)
    real_aug = apply_dsa(real, draw, gidx[:nr], params)
    syn_aug = apply_dsa(syn, draw, gidx[nr:].to(syn.device), params)
    return real_aug, syn_aug
