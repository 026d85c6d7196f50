"""ConvNet: the standard network of dataset distillation (DC, DSA, DM, MTT, and the PTM-guidance paper).

Source: VICO-UoE/DatasetCondensation ``networks.py`` (class ``ConvNet``) and ``utils.get_network`` /
``get_default_convnet_setting`` (width 128, depth 3, ReLU, instance norm, average pooling); Zhao et al.,
"Dataset Condensation with Gradient Matching", ICLR 2021, Sec. 4 / appendix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.nets.base import DDNet, check_feature_size, check_positive_int

__all__ = ["CONVNET_ACTS", "CONVNET_NORMS", "CONVNET_POOLS", "ConvNet"]

#: allowed ``norm`` values (the DC code's ``net_norm``)
CONVNET_NORMS: tuple[str, ...] = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
#: allowed ``act`` values (the DC code's ``net_act``)
CONVNET_ACTS: tuple[str, ...] = ("relu", "sigmoid", "leakyrelu")
#: allowed ``pool`` values (the DC code's ``net_pooling``, whose spellings ``avgpooling``/``maxpooling`` are
#: accepted as aliases)
CONVNET_POOLS: tuple[str, ...] = ("avgpool", "maxpool", "none")
_POOL_ALIASES = {"avgpooling": "avgpool", "maxpooling": "maxpool"}


def _choice(value: object, allowed: tuple[str, ...], what: str, aliases: dict[str, str] | None = None) -> str:
    """Return the canonical lower-case spelling of option ``value`` or raise a :class:`PtmddError`."""
    if isinstance(value, str):
        key = value.lower()
        key = (aliases or {}).get(key, key)
        if key in allowed:
            return key
    raise PtmddError(f"unknown ConvNet {what} {value!r}; choose one of {', '.join(allowed)}.")


def _make_norm(norm: str, channels: int, height: int, width: int) -> nn.Module:
    """The DC code's ``ConvNet._get_normlayer`` for a ``(channels, height, width)`` feature map."""
    if norm == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels, affine=True)
    if norm == "layernorm":
        return nn.LayerNorm([channels, height, width], elementwise_affine=True)
    # "groupnorm"; "none" never reaches here
    return nn.GroupNorm(4, channels, affine=True)


def _make_act(act: str, inplace: bool) -> nn.Module:
    """The DC code's ``ConvNet._get_activation``."""
    if act == "relu":
        return nn.ReLU(inplace=inplace)
    if act == "sigmoid":
        return nn.Sigmoid()
    return nn.LeakyReLU(negative_slope=0.01)


class ConvNet(DDNet):
    """``depth`` blocks of conv3x3 -> norm -> act -> pool, then a linear classifier.

    Exactly the DC/DSA/DM code's ``ConvNet`` (VICO-UoE/DatasetCondensation ``networks.py``):

    - block ``d``: ``Conv2d(in, width, 3, padding=3 if channels == 1 and d == 0 else 1)`` (with bias),
      then the norm, the activation and the pooling layer;
    - norms: ``instancenorm`` = ``GroupNorm(width, width, affine=True)``; ``batchnorm`` = ``BatchNorm2d``;
      ``layernorm`` = ``LayerNorm([width, h, w], elementwise_affine=True)`` over the block's conv output;
      ``groupnorm`` = ``GroupNorm(4, width, affine=True)``; ``none``;
    - activations: ``relu`` (``ReLU(inplace=True)``), ``sigmoid``, ``leakyrelu`` (slope 0.01);
    - pooling: ``avgpool`` = ``AvgPool2d(2, 2)``, ``maxpool`` = ``MaxPool2d(2, 2)``, ``none``;
    - classifier: ``Linear(width * h * w, num_classes)`` on the flattened last feature map.

    The padding 3 of the first conv for 1-channel inputs turns 28x28 (MNIST, Fashion-MNIST) into 32x32, so
    ConvNet-3 ends in a 128x4x4 feature map (``feature_dim`` 2048) for both 1x28x28 and 3x32x32 inputs.
    The reference computes the head size by assuming 28 -> 32; here the feature-map size is computed exactly
    from the conv/pool arithmetic, which gives the reference's numbers for 1x28x28 and Cx32x32 inputs and the
    correct ones for other sizes (e.g. 3x64x64 Tiny-ImageNet, where ConvNetD4 is standard).

    Args:
        channels: input channels ``C``.
        num_classes: number of classes ``K``.
        image_size: ``(H, W)`` of the inputs (one int for square images).
        width: conv channels (128 in the reference); must be divisible by 4 for ``groupnorm``.
        depth: number of conv blocks (3 in the reference).
        norm: one of :data:`CONVNET_NORMS` (case-insensitive).
        act: one of :data:`CONVNET_ACTS` (case-insensitive).
        pool: one of :data:`CONVNET_POOLS` (case-insensitive; ``avgpooling``/``maxpooling`` also accepted).
        inplace: ReLU in place, as the reference (saves one activation-sized buffer per block). It works
            under ``torch.func.vmap`` / ``functional_call`` and autograd, because it only overwrites the
            output of the norm (or conv) layer, never an input; pass ``False`` only for hooks that need the
            pre-activation.

    Shapes:
        ``forward``: ``(N, C, H, W)`` float -> ``(N, K)`` logits; ``embed``: ``(N, C, H, W)`` ->
        ``(N, width * h * w)``. Works with ``channels_last`` inputs and under autocast.

    Raises:
        PtmddError: for an unknown ``norm``/``act``/``pool``, a non-positive ``width``/``depth``/
            ``channels``/``num_classes``, ``groupnorm`` with ``width % 4 != 0``, or an ``image_size`` too
            small for ``depth``.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int | Sequence[int],
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
        act: str = "relu",
        pool: str = "avgpool",
        inplace: bool = True,
    ) -> None:
        super().__init__(channels, num_classes, image_size)
        self.width = check_positive_int(width, "width")
        self.depth = check_positive_int(depth, "depth")
        self.norm = _choice(norm, CONVNET_NORMS, "norm")
        self.act = _choice(act, CONVNET_ACTS, "act")
        self.pool = _choice(pool, CONVNET_POOLS, "pool", _POOL_ALIASES)
        if self.norm == "groupnorm" and self.width % 4:
            raise PtmddError(f"ConvNet groupnorm uses 4 groups: pass a width divisible by 4, got {width}.")

        layers: list[nn.Module] = []
        in_channels = self.channels
        height, width_px = self.image_size
        for d in range(self.depth):
            padding = 3 if self.channels == 1 and d == 0 else 1
            layers.append(nn.Conv2d(in_channels, self.width, kernel_size=3, padding=padding))
            height, width_px = height + 2 * padding - 2, width_px + 2 * padding - 2
            check_feature_size("ConvNet", height, width_px, self.image_size, f"conv {d + 1}")
            if self.norm != "none":
                layers.append(_make_norm(self.norm, self.width, height, width_px))
            layers.append(_make_act(self.act, inplace))
            if self.pool != "none":
                layers.append(nn.AvgPool2d(2, 2) if self.pool == "avgpool" else nn.MaxPool2d(2, 2))
                height, width_px = height // 2, width_px // 2
                check_feature_size("ConvNet", height, width_px, self.image_size, f"pooling {d + 1}")
            in_channels = self.width
        self.features = nn.Sequential(*layers)
        self.feature_shape: tuple[int, int, int] = (self.width, height, width_px)
        self.feature_dim = self.width * height * width_px
        self.classifier = nn.Linear(self.feature_dim, self.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened last feature map ``(N, width*h*w)`` of images ``(N, C, H, W)`` (NCHW flatten order)."""
        return self.features(x).flatten(1)
