"""Tiny sweep files and fake finished runs for the studies tests (no ptmdd process needed)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from ptmdd_lightning.studies.spec import load_sweep
from ptmdd_lightning.studies.store import Slot, Study

BASE = {
    "trainer": {
        "max_steps": 100,
        "callbacks": [
            {"class_path": "ptmdd_lightning.callbacks.PretrainPTMPool"},
            {
                "class_path": "ptmdd_lightning.callbacks.SyntheticSetEvaluation",
                "init_args": {"protocol": {"epochs": 300}},
            },
        ],
    },
    "model": {"class_path": "ptmdd_lightning.modules.Distiller", "init_args": {"ipc": 10, "ptms": []}},
    "data": {"class_path": "ptmdd_lightning.data.DistillDataModule", "init_args": {"batch_real": 32}},
}
SWEEP = """
name: tiny
base: base.yaml
seeds: [0, 1]
fixed:
  trainer.max_steps: 5
axes:
  N_m: [1, 4]
overrides:
  model.init_args.ptms:
    - {arch: ConvNet, alpha: 0.1, num_seeds: "${N_m}", epoch: 2, loss: clom}
baselines:
  DM:
    model.init_args.ptms: []
"""


def make_study(folder: Path, text: str = SWEEP, base: dict | None = None, out: Path | None = None, **kwargs) -> Study:
    """A Study of ``text`` (base config ``base``; both files in ``folder``), its output in ``out`` or ``folder/out``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(base or BASE))
    (folder / "sweep.yaml").write_text(text)
    return Study(load_sweep(folder / "sweep.yaml"), out or folder / "out", **kwargs)


def finish(study: Study, slot: Slot, synthetic: list[float], real: list[float] | None, arch: str = "ConvNet") -> Path:
    """Give ``slot`` a finished run folder, as ptmdd leaves it (earlier evaluation rows included)."""
    claim, folder, _ = study.claim(slot)
    claim.release(study)
    step = slot.config["trainer"]["max_steps"]
    rows = [{"step": 1, "arch": arch, "set": "synthetic", "accs": [0.0]}]  # an earlier evaluation: ignored
    rows.append({"step": step, "arch": arch, "set": "synthetic", "accs": synthetic})
    if real is not None:
        rows.append({"step": step, "arch": arch, "set": "random_real", "accs": real})
    (folder / "results.json").write_text(json.dumps(rows))
    return folder


def save_checkpoint(folder: Path, step: int) -> None:
    """A stand-in ``checkpoints/last.ckpt`` at ``step``."""
    (folder / "checkpoints").mkdir(exist_ok=True)
    torch.save({"global_step": step}, folder / "checkpoints" / "last.ckpt")
