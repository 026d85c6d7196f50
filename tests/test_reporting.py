"""reporting: the machine record reaches hparams.yaml (TensorBoardLogger writes that file once, before training)."""

from __future__ import annotations

import yaml
from lightning import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from ptmdd_lightning.machine import machine_record
from ptmdd_lightning.reporting import record_machine, run_dir


def test_record_machine_adds_the_record_to_hparams_yaml_and_keeps_the_rest(tmp_path):
    logger = TensorBoardLogger(save_dir=tmp_path, name="run")
    trainer = Trainer(logger=logger, accelerator="cpu", devices=1, enable_progress_bar=False)
    logger.log_hyperparams({"ipc": 10, "backend": "auto"})
    logger.save()
    path = run_dir(trainer) / "hparams.yaml"
    assert "machine" not in yaml.safe_load(path.read_text())
    record = machine_record("cpu", "32-true")
    record_machine(trainer, record)
    written = yaml.safe_load(path.read_text())
    assert written["ipc"] == 10 and written["backend"] == "auto"
    assert written["machine"]["cpu"] == record["cpu"] and written["machine"]["torch"] == str(record["torch"])


def test_record_machine_leaves_a_file_it_cannot_read_alone(tmp_path):
    logger = TensorBoardLogger(save_dir=tmp_path, name="run")
    trainer = Trainer(logger=logger, accelerator="cpu", devices=1, enable_progress_bar=False)
    path = run_dir(trainer) / "hparams.yaml"
    path.write_text("key: !!python/object:builtins.object {}\n")
    record_machine(trainer, machine_record("cpu", "32-true"))
    assert path.read_text() == "key: !!python/object:builtins.object {}\n"
