"""DD-standard networks (pure ``torch.nn``; no Lightning).

``build_net(name, channels, num_classes, image_size)`` builds any net of :data:`NETS` by its DC/DSA/DM name
(case-insensitive); every net is a :class:`DDNet` with ``forward(x) -> (N, K)`` logits, ``embed(x) -> (N, D)``
features (the input of the last linear layer ``classifier``), ``feature_dim == D`` and the metadata ``arch``,
``channels``, ``num_classes``, ``image_size``. ``reinit_(net, generator)`` re-draws a net's weights in place.

Source: VICO-UoE/DatasetCondensation ``networks.py`` and ``utils.get_network``.
"""

from ptmdd_lightning.nets.base import DDNet
from ptmdd_lightning.nets.classic import MLP, VGG, AlexNet, LeNet
from ptmdd_lightning.nets.convnet import CONVNET_ACTS, CONVNET_NORMS, CONVNET_POOLS, ConvNet
from ptmdd_lightning.nets.registry import NETS, available_nets, build_net, canonical_net_name, reinit_
from ptmdd_lightning.nets.resnet import BasicBlock, ResNet

__all__ = [
    "CONVNET_ACTS",
    "CONVNET_NORMS",
    "CONVNET_POOLS",
    "MLP",
    "NETS",
    "VGG",
    "AlexNet",
    "BasicBlock",
    "ConvNet",
    "DDNet",
    "LeNet",
    "ResNet",
    "available_nets",
    "build_net",
    "canonical_net_name",
    "reinit_",
]
