"""The quickstart pipeline end to end on tiny data: pool pretraining, DM + CLoM, evaluation, export, TensorBoard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from ptmdd_lightning.main import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_quickstart(tmp_path, fake_fashion_root, monkeypatch):
    """configs/quickstart.yaml with evaluation shrunk to 2 models x 2 epochs, run in a private folder."""
    monkeypatch.chdir(tmp_path)
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("SyntheticSetEvaluation"):
            cb["init_args"].update(num_models=2, protocol={**cb["init_args"].get("protocol", {}), "epochs": 2})
    path = tmp_path / "quickstart_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [
        "fit",
        "--config",
        str(path),
        "--data.init_args.root",
        str(fake_fashion_root),
        "--data.init_args.batch_real",
        "8",
        "--trainer.max_steps",
        "3",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
    ]


def test_quickstart_writes_results_export_and_tensorboard(tiny_quickstart, tmp_path):
    cli = main(tiny_quickstart)
    run = Path(cli.trainer.log_dir)
    assert run.parent.name == "quickstart" and run.name.startswith("version_")

    # the PTM pool was pretrained (N_m = 2) into the pool folder
    assert sorted(p.parent.name for p in (tmp_path / "ptm_pool").rglob("epoch1.pt")) == ["seed0", "seed1"]

    # results: the synthetic set and the random-real baseline, same protocol, same run
    rows = json.loads((run / "results.json").read_text())
    assert {r["set"] for r in rows} == {"synthetic", "random_real"}
    assert all(r["n"] == 2 and 0.0 <= r["mean"] <= 1.0 for r in rows)
    assert "| ConvNet | synthetic |" in (run / "results.md").read_text()
    # the machine and the code path on record (issue "Green on every machine")
    from ptmdd_lightning.machine import cpu_info

    machine = rows[0]["machine"]
    assert machine["cpu"] == cpu_info() and machine["threads"] == torch.get_num_threads()
    assert machine["torch"] == torch.__version__
    from ptmdd_lightning.machine import auto_precision, trainer_precision

    # the precision that ran, "auto" resolved on this machine (bf16 only where native)
    assert machine["precision"] == (f"distillation {trainer_precision('cpu')}, evaluation {auto_precision('cpu')}")
    assert machine["fast_paths"] and set(machine["fast_paths"]) <= {"cpu_kernels", "amx", "compile", "eager"}
    # the backend asked for and its state (kernels built or why not, AMX, compile, allocator) on record
    backend = machine["backend"]
    asked = os.environ.get("PTMDD_BACKEND") or "auto"  # the config's, unless the environment overrides it
    assert asked in backend["requested"] and backend["ran"] == machine["fast_paths"]  # (process-wide record)
    assert set(backend["cpu"]) == {"kernels", "kernels_reason", "amx", "compile_possible", "keep_freed_memory"}
    assert (backend["cpu"]["kernels"] is True) == ("cpu_kernels" in backend["ran"])
    assert f"{machine['threads']} threads" in (run / "results.md").read_text()
    # the same record in hparams.yaml, beside the config's own backend choice (issue "The house")
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["machine"]["cpu"] == machine["cpu"] and hparams["machine"]["backend"] == backend
    assert hparams["backend"] == "auto" and hparams["ipc"] == 10

    # the export round-trips into a TensorDataset, equal to the model's images, with its metadata
    blob = torch.load(run / "synthetic_set.pt", weights_only=False)
    ds = torch.utils.data.TensorDataset(*(torch.load(run / "synthetic_set.pt")[k] for k in ("images", "labels")))
    assert len(ds) == 100 and ds[0][0].shape == (1, 28, 28)
    assert torch.equal(blob["images"], cli.model.synthetic.images.detach().float().cpu())
    assert torch.equal(blob["labels"], torch.arange(10).repeat_interleave(10))
    assert blob["dataset"] == "fashion_mnist" and blob["ipc"] == 10 and len(blob["mean"]) == 1
    assert "model:" in blob["config_yaml"]
    assert (run / "synthetic_set.png").stat().st_size > 0 and (run / "config.yaml").is_file()

    # TensorBoard: every loss term, the accuracies and the image grid
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"train/loss_dm", "train/loss_clom", "train/loss", "eval/ConvNet/acc", "eval/ConvNet/baseline_acc"}
    assert expected <= scalars
    assert "synthetic/images" in events.Tags()["images"]


def test_second_run_reuses_the_pool_and_gets_a_new_folder(tiny_quickstart, tmp_path):
    first = main(tiny_quickstart)
    pool_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "ptm_pool").rglob("*.pt")}
    second = main(tiny_quickstart)
    assert Path(first.trainer.log_dir) != Path(second.trainer.log_dir)  # nothing overwritten
    assert (Path(first.trainer.log_dir) / "synthetic_set.pt").is_file()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ptm_pool").rglob("*.pt")} == pool_files  # reused


def test_evaluation_rows_survive_a_resume(tiny_quickstart, tmp_path):
    """SyntheticSetEvaluation keeps its rows in the checkpoint: a resumed run's results list the earlier steps."""
    config = Path(tiny_quickstart[2])
    cfg = yaml.safe_load(config.read_text())
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith(("SyntheticSetEvaluation", "ModelCheckpoint")):
            key = "every_n_steps" if cb["class_path"].endswith("SyntheticSetEvaluation") else "every_n_train_steps"
            cb["init_args"][key] = 2
    config.write_text(yaml.safe_dump(cfg))
    first = main(tiny_quickstart)
    run = Path(first.trainer.log_dir)
    assert {r["step"] for r in json.loads((run / "results.json").read_text())} == {2, 3}
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    saved = next(v for k, v in last["callbacks"].items() if "SyntheticSetEvaluation" in k)
    assert 2 in {r["step"] for r in saved["rows"]}

    resumed = main([*tiny_quickstart, "--trainer.max_steps", "5", "--ckpt_path", "last"])
    assert Path(resumed.trainer.log_dir) == run
    rows = json.loads((run / "results.json").read_text())
    assert {r["step"] for r in rows} >= {2, 4, 5}  # step 2 was evaluated before the resume
    assert {r["set"] for r in rows if r["step"] == 2} == {"synthetic", "random_real"}
