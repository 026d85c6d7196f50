"""Checkpoint writes that a kill cannot truncate, for every Lightning checkpoint of a ``ptmdd`` run.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lies in the
system's temporary folder; when that folder is on another filesystem (``/dev/shm``, node-local scratch on a
cluster) the final move is a copy, and a SIGKILL during it truncates the only ``last.ckpt``. Here the file is
written next to its target and renamed (:func:`ptmdd_lightning.fileio.atomic_save`).
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from ptmdd_lightning.fileio import atomic_save

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic: temporary file in the same folder, fsync, rename.

    Remote paths (``s3://...``) and ``storage_options`` go to Lightning's own implementation.

    Raises:
        Nothing of its own.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)
        return None
