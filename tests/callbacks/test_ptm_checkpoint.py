"""PTMCheckpoint's pretraining time and attempts: kept over a member's resumes through the Lightning checkpoint."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import ptmdd_lightning.callbacks.ptm as ptm
from ptmdd_lightning.callbacks import PTMCheckpoint
from ptmdd_lightning.machine import cpu_info


def _trainer(step: int, epoch: int) -> SimpleNamespace:
    """What on_train_start reads of a Trainer (epoch 0 is not asked for below, so nothing is saved)."""
    return SimpleNamespace(global_step=step, current_epoch=epoch, precision="bf16-mixed")


_MODULE = SimpleNamespace(device=torch.device("cpu"))


def test_pretrain_seconds_continue_from_the_checkpoint_after_a_resume(monkeypatch):
    clock = iter([10.0, 25.5, 1000.0, 1004.0])  # first process: trains 15.5 s; resumed process: 4 s more
    monkeypatch.setattr(ptm.time, "perf_counter", lambda: next(clock))
    first = PTMCheckpoint(epochs=[150])
    first.on_train_start(_trainer(0, 0), _MODULE)
    saved = first.state_dict()  # what ModelCheckpoint writes into last.ckpt
    assert saved["pretrain_seconds"] == pytest.approx(15.5)

    resumed = PTMCheckpoint(epochs=[150])
    resumed.load_state_dict(saved)
    resumed.on_train_start(_trainer(705, 3), _MODULE)
    assert resumed._elapsed() == pytest.approx(19.5)  # what the member file records, not the 4 s since the resume
    # a checkpoint from before this state existed resumes from 0
    older = PTMCheckpoint(epochs=[150])
    older.load_state_dict({})
    assert older._elapsed() == 0.0


def test_each_start_and_resume_is_an_attempt_with_its_cpu_kind_and_step(monkeypatch):
    first = PTMCheckpoint(epochs=[150])
    first.on_train_start(_trainer(0, 0), _MODULE)
    saved = first.state_dict()
    assert [(a["from_step"], a["from_epoch"]) for a in saved["attempts"]] == [(0, 0)]
    assert saved["attempts"][0]["cpu_kind"] == cpu_info()["kind"] and saved["attempts"][0]["precision"] == "bf16-mixed"

    resumed = PTMCheckpoint(epochs=[150])
    resumed.load_state_dict(saved)
    resumed.on_train_start(_trainer(705, 3), _MODULE)  # resumed after 3 epochs of 235 steps
    assert [(a["from_step"], a["from_epoch"]) for a in resumed.attempts] == [(0, 0), (705, 3)]
    assert resumed.attempts[0] == saved["attempts"][0]  # the first attempt comes back as it was written

    # a resume from a checkpoint of a ptmdd that kept no attempts: the start is unknown, not this machine
    older = PTMCheckpoint(epochs=[150])
    older.load_state_dict({"pretrain_seconds": 60.0})
    older.on_train_start(_trainer(705, 3), _MODULE)
    assert older.attempts[0] == {"from_step": 0, "from_epoch": 0, "cpu_kind": None}
    assert older.attempts[1]["from_step"] == 705 and older.attempts[1]["cpu_kind"] == cpu_info()["kind"]
