"""PTMCheckpoint's pretraining time: summed over a member's resumes through the Lightning checkpoint."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import ptmdd_lightning.callbacks.ptm as ptm
from ptmdd_lightning.callbacks import PTMCheckpoint


def test_pretrain_seconds_continue_from_the_checkpoint_after_a_resume(monkeypatch):
    clock = iter([10.0, 25.5, 1000.0, 1004.0])  # first process: trains 15.5 s; resumed process: 4 s more
    monkeypatch.setattr(ptm.time, "perf_counter", lambda: next(clock))
    trainer = SimpleNamespace(current_epoch=3)  # on_train_start saves nothing: epoch 0 is not asked for
    first = PTMCheckpoint(epochs=[150])
    first.on_train_start(trainer, None)
    saved = first.state_dict()  # what ModelCheckpoint writes into last.ckpt
    assert saved == {"pretrain_seconds": pytest.approx(15.5)}

    resumed = PTMCheckpoint(epochs=[150])
    resumed.load_state_dict(saved)
    resumed.on_train_start(trainer, None)
    assert resumed._elapsed() == pytest.approx(19.5)  # what the member file records, not the 4 s since the resume
    # a checkpoint from before this state existed resumes from 0
    older = PTMCheckpoint(epochs=[150])
    older.load_state_dict({})
    assert older._elapsed() == 0.0
