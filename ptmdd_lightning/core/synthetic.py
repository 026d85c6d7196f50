"""The synthetic set: IPC learnable images per class.

Source: the synthetic set ``S = {(s_i, y_i)}`` of DC (Zhao et al., ICLR 2021, Sec. 2) and DM (Zhao & Bilen, WACV 2023,
Sec. 3); labels are fixed and class-sorted, images are optimised.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.fileio import plain, safe_load

#: Keys of an exported synthetic-set file (see :meth:`SyntheticSet.export`).
EXPORT_KEYS = ("images", "labels", "mean", "std", "dataset", "ipc", "num_classes", "class_names", "config")


class SyntheticSet(nn.Module):
    """``K * IPC`` synthetic images as one ``nn.Parameter``, with their fixed class labels.

    Source: the synthetic set of DC (Zhao et al., ICLR 2021, Sec. 2) and DM (Zhao & Bilen, WACV 2023, Sec. 3); the
    reference ``image_syn`` tensor with ``label_syn`` in class order.

    Args:
        num_classes: K, the number of classes (int >= 1).
        ipc: images per class (int >= 1).
        channels: C.
        image_size: ``(H, W)`` in pixels.

    Attributes:
        images: ``nn.Parameter`` of shape ``(K * IPC, C, H, W)``, float32, normalised with the dataset's mean/std.
        labels: int64 buffer ``(K * IPC,)``, class-sorted: ``[0] * IPC + [1] * IPC + ...``.

    Raises:
        PtmddError: if ``ipc < 1`` or ``num_classes < 1``.
    """

    def __init__(self, num_classes: int, ipc: int, channels: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        if ipc < 1:
            raise PtmddError(f"ipc must be >= 1 (images per class), got {ipc}; set model.init_args.ipc to 1, 10 or 50.")
        if num_classes < 1:
            raise PtmddError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.ipc = int(ipc)
        h, w = image_size
        self.images = nn.Parameter(torch.zeros(num_classes * ipc, channels, h, w))
        self.register_buffer("labels", torch.arange(num_classes).repeat_interleave(ipc), persistent=True)

    @torch.no_grad()
    def init_noise(self, generator: torch.Generator | None = None) -> None:
        """Initialise the images from a standard normal (in normalised units), as DC's ``init='noise'``."""
        self.images.copy_(torch.randn(self.images.shape, generator=generator, device="cpu").to(self.images))

    @torch.no_grad()
    def init_real(
        self,
        sample_real: Callable[[int, torch.Generator | None], tuple[Tensor, Tensor]],
        generator: torch.Generator | None = None,
    ) -> None:
        """Initialise the images with real samples, IPC per class (DC/DM ``init='real'``).

        Args:
            sample_real: ``f(n_per_class, generator) -> (images (K*n, C, H, W), labels (K*n,))``, class-sorted, such as
                :meth:`ptmdd_lightning.data.RealDataModule.sample_real`.
            generator: the RNG for the draw.

        Raises:
            PtmddError: if the sampled images are not class-sorted with IPC per class or have another shape.
        """
        images, labels = sample_real(self.ipc, generator)
        if images.shape != self.images.shape or not torch.equal(labels.cpu(), self.labels.cpu()):
            raise PtmddError(
                f"real initialisation returned images {tuple(images.shape)} with labels that are not class-sorted "
                f"IPC={self.ipc} per class; expected {tuple(self.images.shape)}. Check data.classes and model.ipc."
            )
        self.images.copy_(images.to(self.images))

    def export(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        dataset: str,
        class_names: list[str] | None = None,
        config: Any = None,
    ) -> dict[str, Any]:
        """The synthetic set as a plain dict for ``torch.save``.

        Returns:
            ``{"images": float32 (K*IPC, C, H, W) normalised (CPU), "labels": int64 (K*IPC,), "mean", "std",
            "dataset", "ipc", "num_classes", "class_names", "config"}``. Load it back as a dataset with
            ``TensorDataset(*[torch.load(p)[k] for k in ("images", "labels")])``.
        """
        return {
            "images": self.images.detach().float().cpu().clone(),
            "labels": self.labels.detach().cpu().clone(),
            "mean": tuple(float(m) for m in mean),
            "std": tuple(float(s) for s in std),
            "dataset": dataset,
            "ipc": self.ipc,
            "num_classes": self.num_classes,
            "class_names": list(class_names) if class_names is not None else None,
            "config": plain(config),  # dicts only: a weights_only load refuses dataclasses
        }


def load_synthetic_set(path: str | os.PathLike) -> dict[str, Any]:
    """Load a file written by the export callback.

    Source: ptmdd's own export format (:meth:`SyntheticSet.export`, safe loading: ``ptmdd_lightning/fileio.py``).

    Returns:
        The dict of :meth:`SyntheticSet.export`: ``images`` float32 ``(N, C, H, W)`` normalised, ``labels`` int64
        ``(N,)``, and the metadata.

    Raises:
        PtmddError: if the file is missing, truncated/corrupted, or lacks the keys of an export.
    """
    path = Path(path)
    if not path.is_file():
        raise PtmddError(
            f"synthetic set file {path} does not exist; point to the synthetic_set.pt of a distillation "
            "run (lightning_logs/<run>/version_<n>/synthetic_set.pt)."
        )
    # no pickle execution, CRC-checked (a shared export is user-supplied input; ptmdd_lightning/fileio.py)
    blob = safe_load(path, "synthetic set file", "re-export it from the run's checkpoint or rerun the distillation")
    missing = [k for k in ("images", "labels", "mean", "std", "dataset") if not isinstance(blob, dict) or k not in blob]
    if missing:
        raise PtmddError(f"{path} is not a ptmdd synthetic-set export (missing keys {missing}).")
    return blob
