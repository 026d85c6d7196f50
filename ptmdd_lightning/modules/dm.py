"""DMDistiller: distribution matching with PTM guidance.

DMDistiller: distribution matching (Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023,
Eq. 4) with PTM guidance (Lu et al. 2023).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ptmdd_lightning.core.objectives import dm_loss
from ptmdd_lightning.modules.base import DistillerBase
from ptmdd_lightning.seeding import mix_seed

__all__ = ["DMDistiller"]


class DMDistiller(DistillerBase):
    """DM: match class-wise mean embeddings of real and synthetic images, plus CLoM/CCLoM.

    DM: match the class-wise mean embeddings of real and synthetic images under a freshly initialised
    ``net_arch`` (a new random net every step; DC/DSA/DM ``main_DM.py``), plus CLoM/CCLoM.

    Every argument is :class:`~ptmdd_lightning.modules.base.DistillerBase`'s (``ipc``, ``init``, ``lr_img``
    (default 1.0), ``dsa_strategy``, ``ptms``, ``backend``, ...). Batches as the base.

    Raises:
        PtmddError: as :class:`~ptmdd_lightning.modules.base.DistillerBase`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    @property
    def method(self) -> str:
        """``"dm"``."""
        return "dm"

    def base_loss(self, real_raw: Tensor, real: Tensor, real_labels: Tensor, syn: Tensor, syn_labels: Tensor) -> Tensor:
        """The DM loss on a fresh random net (Zhao & Bilen 2023, Eq. 4).

        DM (Zhao & Bilen 2023, Eq. 4): ``sum_k ||mean(embed(real_k)) - mean(embed(syn_k))||^2`` on a fresh
        random net; the real side without gradient. Scalar float32.
        """
        net = self._fresh_net(mix_seed(self._seed, self.global_rank, self.global_step, 0xE1), trainable=False)
        fast = self._fast(net)  # same function as net.embed, faster (the backend; nets/forward.py)
        with torch.no_grad():
            emb_real = fast.embed(real)
        emb_syn = fast.embed(syn)
        return dm_loss(emb_real, real_labels, emb_syn, syn_labels, self.dataset_info.num_classes)
