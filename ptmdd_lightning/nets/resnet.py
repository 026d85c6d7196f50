"""ResNet18 variants of the dataset-distillation code.

ResNet18 variants of the dataset-distillation code: ``ResNet18`` (instance norm), ``ResNet18BN``,
``ResNet18BN_AP`` (strided convs replaced by stride-1 convs + 2x2 average pooling).

Source: VICO-UoE/DatasetCondensation ``networks.py`` (``BasicBlock``, ``ResNet``, ``BasicBlock_AP``,
``ResNet_AP``, ``ResNet18``, ``ResNet18BN``, ``ResNet18BN_AP``), itself the CIFAR ResNet of
kuangliu/pytorch-cifar with GroupNorm(C, C) as instance norm. Differences from the reference, none of which
changes the function computed for its 1x28x28 and 3x32x32 inputs: the head size is computed from the input
size (``512*h*w`` instead of the hard-coded 512 / ``512*3*3`` / ``512*4*4``), so 64x64 inputs build;
``ResNet_AP``'s final ``avg_pool2d(kernel_size=1)`` (an identity) is left out; the residual add and the ReLUs
run in place on fresh intermediate tensors (never on the block input).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.nets.base import DDNet, check_feature_size

__all__ = ["RESNET_NORMS", "BasicBlock", "ResNet"]

#: allowed ``norm`` values of :class:`ResNet`
RESNET_NORMS: tuple[str, ...] = ("instancenorm", "batchnorm")


def _norm(norm: str, channels: int) -> nn.Module:
    """Instance norm as ``GroupNorm(C, C, affine=True)`` or ``BatchNorm2d(C)`` (the DC code's choice)."""
    return nn.GroupNorm(channels, channels, affine=True) if norm == "instancenorm" else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus the shortcut, then ReLU.

    With ``avgpool_downsample=False`` (the DC code's ``BasicBlock``) the first conv and the 1x1 shortcut conv
    have stride ``stride``. With ``True`` (``BasicBlock_AP``) both convs have stride 1 and downsampling is a
    2x2 average pooling after the first ReLU and after the 1x1 shortcut conv (before its norm).

    Shapes: ``(N, in_planes, H, W)`` -> ``(N, planes, H', W')``, ``H' = ceil(H/2)`` (strided) or
    ``floor(H/2)`` (avg-pool) when ``stride == 2``, else ``H``.

    Raises:
        Nothing of its own.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        norm: str = "instancenorm",
        avgpool_downsample: bool = False,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.avgpool_downsample = avgpool_downsample
        conv_stride = 1 if avgpool_downsample else stride
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=conv_stride, padding=1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = _norm(norm, planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            shortcut: list[nn.Module] = [nn.Conv2d(in_planes, planes, kernel_size=1, stride=conv_stride, bias=False)]
            if avgpool_downsample:
                shortcut.append(nn.AvgPool2d(kernel_size=2, stride=2))
            shortcut.append(_norm(norm, planes))
            self.shortcut = nn.Sequential(*shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_planes, H, W)`` -> ``(N, planes, H', W')`` (see the class docstring)."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        if self.avgpool_downsample and self.stride != 1:
            out = F.avg_pool2d(out, kernel_size=2, stride=2)
        out = self.bn2(self.conv2(out))
        out = out.add_(self.shortcut(x))
        return F.relu(out, inplace=True)


class ResNet(DDNet):
    """ResNet18 of the DC code (``[2, 2, 2, 2]`` basic blocks, widths 64-128-256-512).

    ``conv3x3(C, 64, stride 1, no bias)`` -> norm -> ReLU -> 4 stages (stride 1, 2, 2, 2) -> pooling ->
    flatten -> ``Linear(512*h*w, K)``.

    - ``avgpool_downsample=False`` (``ResNet18``/``ResNet18BN``): strided convs, then
      ``avg_pool2d(kernel 4)``; a 4x4 final map (28x28 or 32x32 input) becomes 1x1, so ``feature_dim`` is 512.
    - ``avgpool_downsample=True`` (``ResNet18BN_AP``): stride-1 convs + 2x2 average pooling, no final pooling;
      ``feature_dim`` is ``512*4*4 = 8192`` for 32x32 and ``512*3*3 = 4608`` for 28x28 (as the reference).

    Args:
        channels, num_classes, image_size: input channels ``C``, classes ``K``, input ``(H, W)``.
        norm: ``"instancenorm"`` (``GroupNorm(C, C, affine=True)``) or ``"batchnorm"``.
        avgpool_downsample: the ``_AP`` variant.
        num_blocks: blocks per stage (``(2, 2, 2, 2)`` = ResNet18).

    Shapes: ``forward`` ``(N, C, H, W)`` -> ``(N, K)``; ``embed`` -> ``(N, feature_dim)``.

    Raises:
        PtmddError: for an unknown ``norm``, bad ``channels``/``num_classes``/``image_size``, or images too
            small (the strided variant needs a final map of at least 4x4, i.e. inputs of at least 25x25).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int | Sequence[int],
        norm: str = "instancenorm",
        avgpool_downsample: bool = False,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
    ) -> None:
        super().__init__(channels, num_classes, image_size)
        if norm not in RESNET_NORMS:
            raise PtmddError(f"unknown ResNet norm {norm!r}; choose one of {', '.join(RESNET_NORMS)}.")
        self.norm = norm
        self.avgpool_downsample = bool(avgpool_downsample)
        self.conv1 = nn.Conv2d(self.channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = _norm(norm, 64)
        in_planes = 64
        h, w = self.image_size
        stages = []
        for i, (planes, first_stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2), strict=True)):
            blocks = []
            for b in range(num_blocks[i]):
                stride = first_stride if b == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, norm, self.avgpool_downsample))
                in_planes = planes
                if stride == 2:
                    h, w = (h // 2, w // 2) if self.avgpool_downsample else ((h + 1) // 2, (w + 1) // 2)
            check_feature_size(type(self).__name__, h, w, self.image_size, f"stage {i + 1}")
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        if not self.avgpool_downsample:  # the reference's F.avg_pool2d(out, 4)
            h, w = h // 4, w // 4
            check_feature_size(type(self).__name__, h, w, self.image_size, "the final 4x4 average pooling")
        self.feature_shape: tuple[int, int, int] = (512, h, w)
        self.feature_dim = 512 * h * w
        self.classifier = nn.Linear(self.feature_dim, self.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, feature_dim)``: the flattened pooled output of the last stage."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if not self.avgpool_downsample:
            out = F.avg_pool2d(out, 4)
        return out.flatten(1)
