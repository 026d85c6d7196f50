"""Classifier: trains one DD-standard net on real data (PTM pretraining and the full-data baseline)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from ptmdd_lightning.core.guidance import PTMRecipe
from ptmdd_lightning.data.datasets import DatasetInfo, as_dataset_info
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.machine import machine_record
from ptmdd_lightning.nets import build_net
from ptmdd_lightning.nets.forward import BackendName, net_forward, resolve_backend
from ptmdd_lightning.reporting import record_machine, set_plain_hparam


class Classifier(LightningModule):
    """Train ``arch`` on real images with SGD and cross-entropy; test accuracy on the real test set.

    Used to pretrain the PTM pool (with :class:`ptmdd_lightning.callbacks.PTMCheckpoint` saving chosen epochs) and to
    measure the whole-dataset upper bound. The recipe follows the DC/DM code's network training (SGD, momentum 0.9,
    weight decay 5e-4, lr 0.01, lr x 0.1 at half the epochs).

    Args:
        arch: net name (see :func:`ptmdd_lightning.nets.build_net`).
        dataset_info: the real data's :class:`~ptmdd_lightning.data.DatasetInfo`, linked from the DataModule's
            ``info``; never set it in YAML (``None``: Fashion-MNIST; a dict of its fields is accepted).
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        lr_decay_at: fraction of ``trainer.max_epochs`` at which lr is multiplied by 0.1 (``None``: constant lr).
        recipe: a PTM pretraining recipe (:class:`~ptmdd_lightning.core.guidance.PTMRecipe`, e.g. the authors':
            lr 0.01, momentum 0.9, weight decay 5e-3, lr x 0.1 at epochs 50 and 100 of 150); when given, its
            lr, momentum, weight decay and milestones replace ``lr``, ``momentum``, ``weight_decay`` and
            ``lr_decay_at``, and :class:`~ptmdd_lightning.callbacks.PTMCheckpoint` records it in the member files.
        backend: how the net trains (:mod:`ptmdd_lightning.nets.forward`; ``"auto"``: ConvNet-3 through ptmdd's
            CPU kernels on a CPU, never compiled; ``"eager"``: the module). ``PTMDD_BACKEND`` overrides it.

    Batches: ``(images (B, C, H, W) float32 normalised, labels (B,) int64)``.

    Raises:
        PtmddError: bad hyper-parameters (lr <= 0, momentum outside [0, 1), weight_decay < 0), an unknown arch or
            backend.
    """

    def __init__(
        self,
        arch: str = "ConvNet",
        dataset_info: DatasetInfo | None = None,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_decay_at: float | None = 0.5,
        recipe: PTMRecipe | None = None,
        backend: BackendName = "auto",
    ) -> None:
        super().__init__()
        resolve_backend(backend)  # an unknown name fails here, before anything runs
        info = self.dataset_info = as_dataset_info(dataset_info)
        num_classes = info.num_classes
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise PtmddError(
                f"Classifier needs lr > 0, 0 <= momentum < 1, weight_decay >= 0; got lr={lr}, "
                f"momentum={momentum}, weight_decay={weight_decay}."
            )
        if isinstance(recipe, dict):
            recipe = PTMRecipe(**recipe)
        if recipe is not None:
            recipe.validate()
        self.recipe = recipe
        self.save_hyperparameters()
        set_plain_hparam(self, "dataset_info", info)  # plain values in hparams.yaml, checkpoints
        if recipe is not None:  # a PTMRecipe object would make last.ckpt unloadable with weights_only=True
            set_plain_hparam(self, "recipe", recipe)
        self.net = build_net(arch, info.channels, num_classes, info.image_size)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self._aux: dict = {}  # plain objects (the fast training view), never saved

    def train_forward(self, x: Tensor) -> Tensor:
        """The training forward through the run's ``backend``.

        The training forward through the run's ``backend`` (:func:`ptmdd_lightning.nets.forward.net_forward`,
        never compiled here): with ``auto`` on a CPU, ConvNet-3 runs through ptmdd's C++ kernels (the same function;
        docs/speed.md, lever 14), any other net (or device) is the module itself. Logits ``(N, K)``.
        """
        fast = self._aux.get("fast")
        if fast is None or fast.net is not self.net or next(self.net.parameters()).device != x.device:
            fast = net_forward(self.net, self.hparams.get("backend", "auto"), compile=False)
            self._aux["fast"] = fast
        return fast(x) if fast.kernels else self.net(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, K)`` for images ``(N, C, H, W)``."""
        return self.net(x)

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.train_forward(x)
        loss = F.cross_entropy(logits.float(), y)
        acc = (logits.argmax(1) == y).float().mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", acc, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val/acc", self.val_acc, prog_bar=True)

    @override
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test/acc", self.test_acc)

    def on_train_end(self) -> None:
        """Record the machine and the speed paths that ran.

        :func:`ptmdd_lightning.machine.machine_record` goes to the logger's hyper-parameters and to the run folder's
        ``hparams.yaml`` (:func:`ptmdd_lightning.reporting.record_machine`).
        """
        record_machine(self.trainer, machine_record(self.device, str(self.trainer.precision)))

    @override
    def configure_optimizers(self):
        if self.recipe is not None:  # DDInterpreter 19a4767 train_original_models.py: SGD + MultiStepLR per epoch
            r = self.recipe
            opt = torch.optim.SGD(self.net.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(r.milestones), gamma=r.gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        opt = torch.optim.SGD(
            self.net.parameters(),
            lr=self.hparams.lr,
            momentum=self.hparams.momentum,
            weight_decay=self.hparams.weight_decay,
        )
        max_epochs = self.trainer.max_epochs if self.trainer is not None else None
        if self.hparams.lr_decay_at is None or not max_epochs or max_epochs < 0:
            return opt
        milestone = max(1, int(max_epochs * self.hparams.lr_decay_at))
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[milestone], gamma=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
