"""Synthetic sets of short DM, DC and DSA runs, for checking that a change of the speed paths changes no number.

Runs ``ptmdd fit`` in-process (:func:`ptmdd_lightning.main.main`) for 20 steps of DM (IPC 10), DC and DSA (IPC 1)
on Fashion-MNIST at seed 0, without evaluation, and writes each run's synthetic images ``(K * IPC, C, H, W)``
float32 to ``OUT/<method>.pt`` and their SHA-256 to ``OUT/hashes.json``. Arguments after ``--`` go to every
run (e.g. ``--trainer.precision 32-true --model.init_args.backend eager``). Compare two folders with
``--compare A B``: bitwise equality per method, else the largest absolute difference.

    python benchmarks/backend_identity.py OUT [-- ARGS...]
    python benchmarks/backend_identity.py --compare A B
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

RUNS = {
    "dm": ["--model.init_args.method", "dm", "--model.init_args.ipc", "10"],
    "dc": ["--model.init_args.method", "dc", "--model.init_args.ipc", "1"],
    "dsa": ["--model.init_args.method", "dsa", "--model.init_args.ipc", "1"],
}

CONFIG = """seed_everything: 0
trainer:
  max_steps: 20
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
model:
  class_path: ptmdd_lightning.modules.Distiller
  init_args: {init: real}
data:
  class_path: ptmdd_lightning.data.DistillDataModule
  init_args: {dataset: fashion_mnist, batch_real: 256}
"""


def run(out: Path, extra: list[str]) -> None:
    from ptmdd_lightning.main import main

    out.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, args in RUNS.items():
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "c.yaml"
            config.write_text(CONFIG)
            cli = main(["fit", "--config", str(config), *args, *extra, "--trainer.default_root_dir", tmp])
            images = cli.model.synthetic.images.detach().float().contiguous().clone()
        torch.save(images, out / f"{name}.pt")
        hashes[name] = hashlib.sha256(images.numpy().tobytes()).hexdigest()
        print(name, hashes[name], flush=True)
    (out / "hashes.json").write_text(json.dumps(hashes, indent=1) + "\n")


def compare(a: Path, b: Path) -> int:
    bad = 0
    for name in RUNS:
        x, y = torch.load(a / f"{name}.pt"), torch.load(b / f"{name}.pt")
        same = torch.equal(x, y)
        bad += not same
        print(f"{name}: {'bit-identical' if same else f'differ, max |diff| {float((x - y).abs().max()):.3g}'}")
    return 1 if bad else 0


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0] == "--compare":
        sys.exit(compare(Path(argv[1]), Path(argv[2])))
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    run(Path(argv[0]), extra)
