"""Progress bars of the evaluation and of PTM pool pretraining, and the evaluation's prompt stop on SIGTERM."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset

from ptmdd_lightning.progress import EvaluationProgress, PoolProgressBar


def _trainer(**kw) -> SimpleNamespace:
    return SimpleNamespace(
        **{"progress_bar_callback": object(), "is_global_zero": True, "received_sigterm": False, **kw}
    )


def test_evaluation_progress_shows_model_k_of_k_and_the_epochs():
    with EvaluationProgress("eval ConvNet synthetic", 2, _trainer()) as progress:
        progress(1, 6)
        assert progress.bar.n == 1 and progress.bar.total == 6 and "model 1/2" in str(progress.bar)
        progress(4, 6)
        assert progress.bar.n == 4 and "model 2/2" in str(progress.bar)
        assert "eval ConvNet synthetic" in str(progress.bar)
    assert progress.bar is None  # closed on exit


def test_evaluation_progress_draws_nothing_without_a_bar_or_off_rank_zero():
    for trainer in (None, _trainer(progress_bar_callback=None), _trainer(is_global_zero=False)):
        progress = EvaluationProgress("eval", 1, trainer)
        progress(1, 2)
        assert progress.bar is None


def test_sigterm_stops_the_evaluation_at_the_next_epoch():
    trainer = _trainer()
    progress = EvaluationProgress("eval", 2, trainer)
    progress(1, 6)
    trainer.received_sigterm = True
    with pytest.raises(SIGTERMException):
        progress(2, 6)
    assert progress.bar is None
    # also without a progress bar: the check does not depend on the display
    with pytest.raises(SIGTERMException):
        EvaluationProgress("eval", 2, _trainer(progress_bar_callback=None, received_sigterm=True))(1, 6)


class _Tiny(LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.lin(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_pool_progress_bar_names_the_member_and_its_epoch(capsys):
    loader = DataLoader(TensorDataset(torch.randn(8, 2), torch.randint(0, 2, (8,))), batch_size=4)
    trainer = Trainer(
        max_epochs=2,
        callbacks=[PoolProgressBar("PTM 2/3 fashion_mnist/ConvNetW32/seed1")],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(_Tiny(), train_dataloaders=loader)
    captured = capsys.readouterr()
    shown = captured.out + captured.err  # Lightning's tqdm bars write to stdout
    assert "PTM 2/3 fashion_mnist/ConvNetW32/seed1 epoch 1/2" in shown
    assert "PTM 2/3 fashion_mnist/ConvNetW32/seed1 epoch 2/2" in shown
