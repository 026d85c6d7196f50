"""Export of the synthetic set (``.pt`` + PNG grid) and TensorBoard image grids."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchvision.utils import make_grid, save_image
from typing_extensions import override

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.fileio import atomic_save
from ptmdd_lightning.reporting import run_dir


def training_complete(trainer: Trainer) -> bool:
    """Whether the trainer's step or epoch budget is spent (``max_steps``, else ``max_epochs``).

    Raises:
        Nothing of its own.
    """
    if trainer.max_steps is not None and trainer.max_steps >= 0:
        return trainer.global_step >= trainer.max_steps
    return trainer.max_epochs is not None and trainer.max_epochs >= 0 and trainer.current_epoch >= trainer.max_epochs


class EndOfTrainingWork(Callback):
    """Base of the callbacks whose work runs at the end of training (evaluation, export).

    Lightning calls ``on_train_end`` only when the fit loop ran: a run resumed (``--ckpt_path last``) from a
    checkpoint written at the final step, e.g. one killed during the final evaluation, skips the loop, and the
    evaluation and export would silently never happen. Here ``on_fit_end`` runs :meth:`end_of_training` when
    training is complete but this fit did not run it yet. Subclasses implement :meth:`end_of_training`.

    Raises:
        NotImplementedError: :meth:`end_of_training` of a subclass that does not implement it.
    """

    _ran_this_fit = False

    @override
    def end_of_training(self, trainer: Trainer, pl_module: LightningModule) -> None:
        raise NotImplementedError

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._ran_this_fit = False

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._ran_this_fit = True
        self.end_of_training(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._ran_this_fit and training_complete(trainer):
            rank_zero_info(
                f"[ptmdd] training was already complete at step {trainer.global_step}: running the "
                f"missing end-of-training work of {type(self).__name__}"
            )
            self._ran_this_fit = True
            self.end_of_training(trainer, pl_module)


def synthetic_grid(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...], ipc: int) -> Tensor:
    """A de-normalised image grid with one row per class.

    Args:
        images: ``(K * IPC, C, H, W)`` normalised, class-sorted.
        mean, std: per-channel normalisation of the dataset.
        ipc: images per class (the row length).

    Returns:
        ``(3, H_grid, W_grid)`` float32 in ``[0, 1]`` (torchvision ``make_grid``).

    Raises:
        Nothing of its own.
    """
    x = images.detach().float().cpu()
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    x = (x * s + m).clamp(0, 1)
    return make_grid(x, nrow=ipc, padding=2, pad_value=1.0)


def log_synthetic_grid(trainer: Trainer, pl_module: LightningModule) -> Tensor:
    """Add the synthetic-set grid to TensorBoard (tag ``synthetic/images``) at the current step; return the grid.

    Raises:
        Nothing of its own.
    """
    info = pl_module.dataset_info
    grid = synthetic_grid(pl_module.synthetic.images, info.mean, info.std, pl_module.hparams.ipc)
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("synthetic/images", grid, global_step=trainer.global_step)
    return grid


class SyntheticSetExport(EndOfTrainingWork):
    """Write the synthetic set to the run folder at the end of training (and every ``every_n_steps``).

    Files (atomic writes), next to the ``config.yaml`` that LightningCLI saves:
    - ``synthetic_set.pt``: ``{"images": float32 (K*IPC, C, H, W) normalised, "labels": int64 (K*IPC,), "mean", "std",
      "dataset", "ipc", "num_classes", "class_names", "config"}``. One line loads it back as a dataset::

          ds = torch.utils.data.TensorDataset(*(torch.load("synthetic_set.pt")[k] for k in ("images", "labels")))

    - ``synthetic_set.png``: the de-normalised grid, one row per class.

    A run resumed from its final checkpoint (training complete, export missing) exports in ``on_fit_end``
    (:class:`EndOfTrainingWork`).

    Args:
        every_n_steps: also export every N optimisation steps (``None``: only at the end).
        filename: the base name of both files.

    Raises:
        PtmddError: the synthetic images hold NaN or inf (the distillation diverged); nothing is written.
    """

    def __init__(self, every_n_steps: int | None = None, filename: str = "synthetic_set") -> None:
        self.every_n_steps = every_n_steps
        self.filename = filename
        self.last_path: Path | None = None

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.export(trainer, pl_module)

    @override
    def end_of_training(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.export(trainer, pl_module)

    def export(self, trainer: Trainer, pl_module: LightningModule) -> Path | None:
        """Write ``<run>/<filename>.pt`` and ``.png`` on global rank 0; return the ``.pt`` path."""
        if not trainer.is_global_zero:
            return None
        folder = run_dir(trainer)
        blob = pl_module.export()
        if not torch.isfinite(blob["images"]).all():
            raise PtmddError(
                f"the synthetic images hold non-finite values (NaN/inf) at step {trainer.global_step}; nothing "
                "exported. The distillation diverged: lower lr_img or the PTM alpha and distil again."
            )
        config_file = folder / "config.yaml"
        if config_file.is_file():
            blob["config_yaml"] = config_file.read_text()
        blob["global_step"] = trainer.global_step
        path = atomic_save(blob, folder / f"{self.filename}.pt")
        info = pl_module.dataset_info
        grid = synthetic_grid(blob["images"], info.mean, info.std, pl_module.hparams.ipc)
        png = folder / f"{self.filename}.png"
        tmp = folder / f".{self.filename}.tmp.png"
        save_image(grid, tmp)
        tmp.replace(png)
        self.last_path = path
        rank_zero_info(f"[ptmdd] exported the synthetic set to {path} and {png}")
        return path
