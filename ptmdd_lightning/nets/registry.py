"""The registry of DD-standard networks: ``build_net(name, channels, num_classes, image_size)``.

The names are those of the DC/DSA/DM code's ``utils.get_network`` (VICO-UoE/DatasetCondensation), with the
ConvNet defaults of its ``get_default_convnet_setting``: width 128, depth 3, ReLU, instance norm, average
pooling. A ``ConvNet<X>`` name changes one of these settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.nets.base import DDNet, check_positive_int, normalize_image_size
from ptmdd_lightning.nets.classic import MLP, VGG, AlexNet, LeNet
from ptmdd_lightning.nets.convnet import ConvNet
from ptmdd_lightning.nets.resnet import ResNet

__all__ = ["NETS", "available_nets", "build_net", "reinit_"]

NetFactory = Callable[[int, int, tuple[int, int]], DDNet]

#: name -> ``factory(channels, num_classes, image_size) -> DDNet``; insertion order is the listing order.
NETS: dict[str, NetFactory] = {
    "ConvNet": ConvNet,
    **{f"ConvNetD{d}": partial(ConvNet, depth=d) for d in (1, 2, 3, 4)},
    **{f"ConvNetW{w}": partial(ConvNet, width=w) for w in (32, 64, 128, 256)},
    "ConvNetAS": partial(ConvNet, act="sigmoid"),
    "ConvNetAR": partial(ConvNet, act="relu"),
    "ConvNetAL": partial(ConvNet, act="leakyrelu"),
    "ConvNetNN": partial(ConvNet, norm="none"),
    "ConvNetBN": partial(ConvNet, norm="batchnorm"),
    "ConvNetLN": partial(ConvNet, norm="layernorm"),
    "ConvNetIN": partial(ConvNet, norm="instancenorm"),
    "ConvNetGN": partial(ConvNet, norm="groupnorm"),
    "ConvNetNP": partial(ConvNet, pool="none"),
    "ConvNetMP": partial(ConvNet, pool="maxpool"),
    "ConvNetAP": partial(ConvNet, pool="avgpool"),
    "AlexNet": partial(AlexNet, batchnorm=False),
    "AlexNetBN": partial(AlexNet, batchnorm=True),
    "VGG11": partial(VGG, norm="instancenorm"),
    "VGG11BN": partial(VGG, norm="batchnorm"),
    "ResNet18": partial(ResNet, norm="instancenorm"),
    "ResNet18BN": partial(ResNet, norm="batchnorm"),
    "ResNet18BN_AP": partial(ResNet, norm="batchnorm", avgpool_downsample=True),
    "LeNet": LeNet,
    "MLP": MLP,
}

_BY_LOWER = {name.lower(): name for name in NETS}


def available_nets() -> list[str]:
    """The registry names in their canonical spelling (e.g. ``["ConvNet", "ConvNetD1", ..., "MLP"]``).

    Raises:
        Nothing of its own.
    """
    return list(NETS)


def canonical_net_name(name: str) -> str:
    """The canonical spelling of a (case-insensitive) registry name.

    Raises:
        PtmddError: when ``name`` is not a registry name; the message lists the known names.
    """
    key = name.lower() if isinstance(name, str) else None
    if key not in _BY_LOWER:
        raise PtmddError(f"unknown network {name!r}; choose one of: {', '.join(NETS)}.")
    return _BY_LOWER[key]


def build_net(name: str, channels: int, num_classes: int, image_size: int | Sequence[int]) -> DDNet:
    """Build a freshly initialised network by its DD-standard name.

    Args:
        name: a name of :data:`NETS`, case-insensitive (``"convnet"``, ``"ResNet18BN_AP"``, ...).
        channels: input channels ``C`` (1 for MNIST/Fashion-MNIST, 3 for SVHN/CIFAR/Tiny-ImageNet).
        num_classes: number of classes ``K``.
        image_size: ``(H, W)`` of the inputs, or one int for square images.

    Returns:
        the net (``DDNet``), on the CPU, in training mode, float32 parameters drawn from the global torch RNG
        (PyTorch's default init, as the reference); ``net.arch`` is the canonical name.

    Raises:
        PtmddError: for an unknown name (the message lists the known names), bad ``channels``/
            ``num_classes``/``image_size``, or inputs too small for the architecture.
    """
    arch = canonical_net_name(name)
    channels = check_positive_int(channels, "channels")
    num_classes = check_positive_int(num_classes, "num_classes")
    net = NETS[arch](channels, num_classes, normalize_image_size(image_size))
    net.arch = arch
    return net


def _reinit_module_(module: nn.Module, generator: torch.Generator | None) -> None:
    """Re-draw the parameters owned directly by ``module`` exactly as its ``reset_parameters`` does."""
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        # Conv/Linear.reset_parameters: kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        nn.init.kaiming_uniform_(module.weight, a=5**0.5, generator=generator)
        if module.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
            bound = 1 / fan_in**0.5 if fan_in > 0 else 0
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)
    elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
        module.reset_parameters()  # deterministic: running stats, weight=1, bias=0; no RNG used
    elif any(True for _ in module.parameters(recurse=False)):
        if generator is not None or not hasattr(module, "reset_parameters"):
            raise PtmddError(
                f"reinit_ cannot re-draw the parameters of {type(module).__name__}; "
                "use a net from ptmdd_lightning.nets.build_net, or pass generator=None for modules that "
                "define reset_parameters()."
            )
        module.reset_parameters()


def reinit_(net: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Re-initialise every parameter of ``net`` in place, with the distributions of its construction.

    Walks ``net.modules()`` in registration order (which, for the nets here, is their construction order) and
    re-draws conv/linear weights and biases as ``reset_parameters`` does (``U(-1/sqrt(fan_in),
    1/sqrt(fan_in))``, i.e. ``kaiming_uniform_(a=sqrt(5))``), resets norm layers (weight 1, bias 0, batch-norm
    running statistics cleared). So ``torch.manual_seed(s); reinit_(net)`` gives the same weights as
    ``torch.manual_seed(s); build_net(...)``. This lets the Distiller sample a fresh random net at every step
    (DC/DM: "a randomly initialised network per iteration") without building a new module; the tensors keep
    their storage, device, dtype and memory format, so optimiser/compiled references stay valid.

    Args:
        net: the module to re-initialise (any module made of conv/linear/norm layers).
        generator: the RNG to draw from (must live on the parameters' device); ``None``: the global torch RNG.

    Returns:
        ``net`` itself.

    Raises:
        PtmddError: when ``net`` owns a parameter of another module type and ``generator`` is given (or that
            module has no ``reset_parameters``).
    """
    with torch.no_grad():
        for module in net.modules():
            _reinit_module_(module, generator)
    return net
