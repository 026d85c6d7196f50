"""Progress you can see in the long silent phases: the evaluation's model training and PTM pool pretraining.

:class:`EvaluationProgress` is the ``progress(done, total)`` hook of :func:`ptmdd_lightning.core.evaluate.
train_and_test` as a tqdm bar ("model k/K", epochs, elapsed and remaining time); it also stops the evaluation
promptly on SIGTERM (Lightning only looks at its SIGTERM flag between training steps, and an evaluation at the end
of training can take hours). :class:`PoolProgressBar` is Lightning's own bar with the member's name and epoch
count, for the nested pretraining ``Trainer`` of :class:`~ptmdd_lightning.callbacks.PretrainPTMPool`.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tqdm import tqdm
from typing_extensions import override

__all__ = ["EvaluationProgress", "PoolProgressBar", "shows_progress"]


def shows_progress(trainer: Trainer | None) -> bool:
    """Whether ``trainer`` shows a progress bar on this rank (``enable_progress_bar`` and global rank 0).

    Raises:
        Nothing of its own.
    """
    return trainer is not None and trainer.progress_bar_callback is not None and trainer.is_global_zero


class EvaluationProgress:
    """A ``progress(done, total)`` hook: a tqdm bar over model-epochs, and a prompt stop on SIGTERM.

    Args:
        label: what is evaluated, e.g. ``"eval ConvNet synthetic"``.
        num_models: K, for the "model k/K" of the bar.
        trainer: its ``received_sigterm`` flag (set by Lightning's SIGTERM handler) stops the evaluation; its
            progress-bar setting decides whether a bar is drawn (``None``: no bar, no SIGTERM check).

    Raises (when called):
        SIGTERMException: the trainer received SIGTERM; Lightning then runs its exception hooks (a
            ``ModelCheckpoint(save_on_exception=True)`` writes ``last.ckpt``) and ``ptmdd`` exits with 143.
    """

    def __init__(self, label: str, num_models: int, trainer: Trainer | None = None) -> None:
        self.label, self.num_models, self.trainer = label, num_models, trainer
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` epochs of the current model (the ``progress`` hook of the evaluation)."""
        if self.trainer is not None and getattr(self.trainer, "received_sigterm", False):
            self.close()
            raise SIGTERMException()
        if not shows_progress(self.trainer):
            return
        if self.bar is None:
            self.bar = tqdm(
                total=total,
                desc=self.label,
                unit="epoch",
                dynamic_ncols=True,
                leave=False,
                file=sys.stdout,
                mininterval=0.5,
            )
        per_model = max(1, total // max(1, self.num_models))
        model = min(self.num_models, (done - 1) // per_model + 1)
        self.bar.set_postfix_str(f"model {model}/{self.num_models}", refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        """Remove the bar (idempotent)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> EvaluationProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PoolProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar for one pool member's pretraining: ``PTM k/K <member> epoch e/E``, batches, times.

    Args:
        label: the member, e.g. ``"PTM 2/4 fashion_mnist/ConvNetW32/seed1"``.

    Raises:
        Nothing of its own.
    """

    def __init__(self, label: str) -> None:
        super().__init__(leave=False)
        self.label = label

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.train_progress_bar.set_description(f"{self.label} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")
