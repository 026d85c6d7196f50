"""Common base of the DD-standard networks and the argument checks they share.

Every net of :mod:`ptmdd_lightning.nets` is a :class:`DDNet`: ``embed(x)`` maps images
``(N, C, H, W)`` to features ``(N, D)`` (the input of the last linear layer, ``D == feature_dim``),
``forward(x) == classifier(embed(x))`` gives logits ``(N, K)``. The metadata ``arch``, ``channels``,
``num_classes`` and ``image_size`` lets a checkpoint be validated against the run that loads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from typing_extensions import override

from ptmdd_lightning.errors import PtmddError

__all__ = ["DDNet", "check_feature_size", "check_positive_int", "normalize_image_size"]


def check_positive_int(value: object, what: str) -> int:
    """Return ``value`` as an ``int`` if it is a positive integer.

    Args:
        value: the value to check (``bool`` is rejected even though it subclasses ``int``).
        what: the argument's name, used in the error message.

    Raises:
        PtmddError: when ``value`` is not an integer ``>= 1``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PtmddError(f"{what} must be a positive integer, got {value!r}; pass an int >= 1.")
    return int(value)


def normalize_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """Return ``image_size`` as an ``(H, W)`` tuple of positive ints.

    Args:
        image_size: ``(H, W)`` (tuple, list or ``torch.Size``) or one int for square images.

    Raises:
        PtmddError: when it is neither a positive int nor a pair of positive ints.
    """
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = check_positive_int(image_size, "image_size")
        return (size, size)
    if isinstance(image_size, Sequence) and not isinstance(image_size, str) and len(image_size) == 2:
        return (
            check_positive_int(image_size[0], "image_size[0] (height)"),
            check_positive_int(image_size[1], "image_size[1] (width)"),
        )
    raise PtmddError(f"image_size must be (H, W) or one int, got {image_size!r}; pass e.g. (32, 32).")


def check_feature_size(arch: str, height: int, width: int, image_size: tuple[int, int], stage: str) -> None:
    """Raise a :class:`PtmddError` when an input shrinks to nothing inside a net.

    Args:
        arch: the net's name, for the message.
        height, width: the spatial size (pixels) reached at ``stage``.
        image_size: the ``(H, W)`` input size the net was built for.
        stage: where in the net the size was reached, for the message.

    Raises:
        PtmddError: when ``height < 1`` or ``width < 1``.
    """
    if height < 1 or width < 1:
        raise PtmddError(
            f"{arch} cannot take {image_size[0]}x{image_size[1]} inputs: the feature map becomes "
            f"{height}x{width} at {stage}; use larger images (e.g. 32x32) or a shallower net "
            "(e.g. ConvNetD1)."
        )


class DDNet(nn.Module):
    """Base class of every network in :mod:`ptmdd_lightning.nets`.

    Subclasses build ``self.classifier`` (the last ``nn.Linear``, input size ``feature_dim``) and implement
    :meth:`embed`. :meth:`forward` is ``classifier(embed(x))``.

    Attributes:
        arch: the registry name (set by :func:`ptmdd_lightning.nets.build_net`; the class name otherwise).
        channels: input channels ``C``.
        num_classes: number of classes ``K``.
        image_size: ``(H, W)`` of the inputs the net was built for.
        feature_dim: ``D``, the length of one embedding.

    Raises:
        PtmddError: channels or num_classes not an integer >= 1, or a bad image size.
        NotImplementedError: :meth:`embed` of a subclass that does not define it.
    """

    classifier: nn.Linear
    feature_dim: int

    def __init__(self, channels: int, num_classes: int, image_size: int | Sequence[int]) -> None:
        super().__init__()
        self.arch: str = type(self).__name__
        self.channels: int = check_positive_int(channels, "channels")
        self.num_classes: int = check_positive_int(num_classes, "num_classes")
        self.image_size: tuple[int, int] = normalize_image_size(image_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(N, D)`` of images ``x`` ``(N, C, H, W)``: the input of the last linear layer."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K)`` of images ``x`` ``(N, C, H, W)``; equals ``classifier(embed(x))``."""
        return self.classifier(self.embed(x))

    @override
    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, channels={self.channels}, num_classes={self.num_classes}, "
            f"image_size={self.image_size}, feature_dim={self.feature_dim}"
        )
