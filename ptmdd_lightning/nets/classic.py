"""MLP, LeNet, AlexNet(BN) and VGG11(BN) as the dataset-distillation code defines them.

Source: VICO-UoE/DatasetCondensation ``networks.py`` (classes ``MLP``, ``LeNet``, ``AlexNet``,
``AlexNetBN``, ``VGG`` with ``VGG11``/``VGG11BN``), used for the cross-architecture evaluations of DC
(Zhao et al., ICLR 2021, Table 2), DSA and DM. Differences from the reference, none of which changes the
function computed for its 1x28x28 and 3x32x32 inputs:

- the last linear layer is always called ``classifier`` (the reference: ``fc`` / ``fc_3``), so that
  ``forward(x) == classifier(embed(x))`` holds for every net;
- head sizes are computed from the conv/pool arithmetic instead of being hard-coded for 28x28 / 32x32, so
  other sizes (e.g. 64x64) build instead of failing at the first forward;
- VGG's trailing ``AvgPool2d(kernel_size=1, stride=1)`` (an identity that costs a copy) is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.nets.base import DDNet, check_feature_size

__all__ = ["MLP", "VGG", "VGG11_CFG", "AlexNet", "LeNet"]


class MLP(DDNet):
    """Three-layer perceptron: flatten -> Linear(C*H*W, 128) -> ReLU -> Linear(128, 128) -> ReLU -> Linear.

    Source: DC code ``networks.MLP`` (its input size ``28*28*1 if channel == 1 else 32*32*3`` is ``C*H*W`` for
    the two standard shapes; here it is ``C*H*W`` for any shape).

    Shapes: ``forward`` ``(N, C, H, W)`` -> ``(N, K)``; ``embed`` -> ``(N, 128)`` (after the second ReLU).

    Raises:
        PtmddError: for non-positive ``channels``/``num_classes`` or a bad ``image_size``.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int | Sequence[int]) -> None:
        super().__init__(channels, num_classes, image_size)
        height, width = self.image_size
        self.fc_1 = nn.Linear(self.channels * height * width, 128)
        self.fc_2 = nn.Linear(128, 128)
        self.feature_dim = 128
        self.classifier = nn.Linear(128, self.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, 128)``: the second hidden layer after ReLU."""
        out = F.relu(self.fc_1(x.flatten(1)), inplace=True)
        return F.relu(self.fc_2(out), inplace=True)


class LeNet(DDNet):
    """LeNet-5 as in the DC code: two conv5x5+ReLU+MaxPool(2) blocks (6, 16 channels) and three linear layers.

    Source: DC code ``networks.LeNet``: the first conv has ``padding=2 if channels == 1 else 0`` (so 1x28x28
    and 3x32x32 both reach 16x5x5), then ``Linear(16*5*5, 120)`` -> ReLU -> ``Linear(120, 84)`` -> ReLU ->
    ``Linear(84, K)``.

    Shapes: ``forward`` ``(N, C, H, W)`` -> ``(N, K)``; ``embed`` -> ``(N, 84)`` (after the 2nd hidden ReLU).

    Raises:
        PtmddError: for bad ``channels``/``num_classes``/``image_size``, or images too small (< 12x12 for
            3 channels).
    """

    def __init__(self, channels: int, num_classes: int, image_size: int | Sequence[int]) -> None:
        super().__init__(channels, num_classes, image_size)
        padding = 2 if self.channels == 1 else 0
        self.features = nn.Sequential(
            nn.Conv2d(self.channels, 6, kernel_size=5, padding=padding),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        h, w = self.image_size
        h, w = (h + 2 * padding - 4) // 2, (w + 2 * padding - 4) // 2
        check_feature_size("LeNet", h, w, self.image_size, "the first pooling")
        h, w = (h - 4) // 2, (w - 4) // 2
        check_feature_size("LeNet", h, w, self.image_size, "the second pooling")
        self.feature_shape: tuple[int, int, int] = (16, h, w)
        self.fc_1 = nn.Linear(16 * h * w, 120)
        self.fc_2 = nn.Linear(120, 84)
        self.feature_dim = 84
        self.classifier = nn.Linear(84, self.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, 84)``: the second hidden linear layer after ReLU."""
        out = self.features(x).flatten(1)
        out = F.relu(self.fc_1(out), inplace=True)
        return F.relu(self.fc_2(out), inplace=True)


class AlexNet(DDNet):
    """The DC code's small AlexNet (``batchnorm=False``) or ``AlexNetBN`` (``batchnorm=True``).

    Source: DC code ``networks.AlexNet`` / ``AlexNetBN``: conv5x5(128, padding 4 if channels == 1 else 2) ->
    [BN] -> ReLU -> MaxPool(2) -> conv5x5(192, pad 2) -> [BN] -> ReLU -> MaxPool(2) -> conv3x3(256) -> [BN] ->
    ReLU -> conv3x3(192) -> [BN] -> ReLU -> conv3x3(192) -> [BN] -> ReLU -> MaxPool(2) -> Linear(192*h*w, K)
    (``h = w = 4`` for 1x28x28 and 3x32x32 inputs).

    Shapes: ``forward`` ``(N, C, H, W)`` -> ``(N, K)``; ``embed`` -> ``(N, 192*h*w)`` (3072 for 32x32).

    Raises:
        PtmddError: for bad ``channels``/``num_classes``/``image_size`` or images too small (< 8x8).
    """

    def __init__(
        self, channels: int, num_classes: int, image_size: int | Sequence[int], batchnorm: bool = False
    ) -> None:
        super().__init__(channels, num_classes, image_size)
        self.batchnorm = bool(batchnorm)
        padding = 4 if self.channels == 1 else 2
        specs = [  # (out_channels, kernel, padding, pool after)
            (128, 5, padding, True),
            (192, 5, 2, True),
            (256, 3, 1, False),
            (192, 3, 1, False),
            (192, 3, 1, True),
        ]
        layers: list[nn.Module] = []
        in_channels = self.channels
        h, w = self.image_size
        for i, (out_channels, kernel, pad, pool) in enumerate(specs):
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=kernel, padding=pad))
            if self.batchnorm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            h, w = h + 2 * pad - kernel + 1, w + 2 * pad - kernel + 1
            if pool:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                h, w = h // 2, w // 2
            check_feature_size(type(self).__name__, h, w, self.image_size, f"block {i + 1}")
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.feature_shape: tuple[int, int, int] = (192, h, w)
        self.feature_dim = 192 * h * w
        self.classifier = nn.Linear(self.feature_dim, self.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, 192*h*w)``: the flattened last feature map."""
        return self.features(x).flatten(1)


#: the VGG11 configuration of the DC code's ``cfg_vgg`` (ints: conv3x3 widths; "M": MaxPool(2))
VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(DDNet):
    """The DC code's VGG with instance norm (``VGG11``) or batch norm (``VGG11BN``).

    Source: DC code ``networks.VGG._make_layers``: every conv is ``Conv2d(in, v, 3, padding=3 if channels == 1
    and it is the first layer else 1)`` -> norm (``GroupNorm(v, v, affine=True)`` for ``norm="instancenorm"``,
    ``BatchNorm2d(v)`` for ``"batchnorm"``) -> ``ReLU(inplace=True)``; ``"M"`` is ``MaxPool2d(2, 2)``; the
    head is ``Linear(512, K)`` (1x1 final map for 1x28x28 and 3x32x32 inputs; ``512*h*w`` otherwise).

    Shapes: ``forward`` ``(N, C, H, W)`` -> ``(N, K)``; ``embed`` -> ``(N, 512*h*w)`` (512 for 32x32).

    Raises:
        PtmddError: for an unknown ``norm``, bad ``channels``/``num_classes``/``image_size``, or images too
            small for five poolings (< 32x32 with 3 channels, < 28x28 with 1 channel).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int | Sequence[int],
        norm: str = "instancenorm",
        cfg: Sequence[int | str] = VGG11_CFG,
    ) -> None:
        super().__init__(channels, num_classes, image_size)
        if norm not in ("instancenorm", "batchnorm"):
            raise PtmddError(f"unknown VGG norm {norm!r}; choose one of instancenorm, batchnorm.")
        self.norm = norm
        layers: list[nn.Module] = []
        in_channels = self.channels
        h, w = self.image_size
        last = in_channels
        for i, v in enumerate(cfg):
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                h, w = h // 2, w // 2
                check_feature_size(type(self).__name__, h, w, self.image_size, f"layer {i + 1} (max-pool)")
                continue
            assert isinstance(v, int)
            padding = 3 if self.channels == 1 and i == 0 else 1
            layers += [
                nn.Conv2d(in_channels, v, kernel_size=3, padding=padding),
                nn.GroupNorm(v, v, affine=True) if norm == "instancenorm" else nn.BatchNorm2d(v),
                nn.ReLU(inplace=True),
            ]
            h, w = h + 2 * padding - 2, w + 2 * padding - 2
            in_channels = last = v
        self.features = nn.Sequential(*layers)
        self.feature_shape: tuple[int, int, int] = (last, h, w)
        self.feature_dim = last * h * w
        self.classifier = nn.Linear(self.feature_dim, self.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, 512*h*w)``: the flattened last feature map."""
        return self.features(x).flatten(1)
