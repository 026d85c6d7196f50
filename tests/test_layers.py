"""Layered configs (ptmdd_lightning/layers.py): ``ptmdd fit --config A --config B`` merges B into A."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.layers import layered_args, load_layers, merge_layers
from ptmdd_lightning.main import main

REPO = Path(__file__).resolve().parents[1]
EVAL = "ptmdd_lightning.callbacks.SyntheticSetEvaluation"
CKPT = "lightning.pytorch.callbacks.ModelCheckpoint"

BASE = {
    "trainer": {
        "max_steps": 20000,
        "callbacks": [
            {"class_path": EVAL, "init_args": {"archs": ["ConvNet", "AlexNet"], "num_models": 20}},
            {"class_path": CKPT, "init_args": {"save_last": True, "every_n_train_steps": 1000}},
        ],
    },
    "model": {"class_path": "DMDistiller", "init_args": {"ipc": 10, "ptms": [{"arch": "ConvNet", "epoch": 20}]}},
}


def test_a_later_layer_sets_only_what_it_names_and_merges_callbacks_by_class():
    update = {
        "trainer": {
            "max_steps": 200,
            "callbacks": [
                {"class_path": "SyntheticSetEvaluation", "init_args": {"num_models": 3}},  # the short class name
                {"class_path": "ptmdd_lightning.callbacks.SyntheticSetExport"},  # a new class: appended
            ],
        },
        "model": {"init_args": {"ptms": [{"arch": "ConvNetW32", "epoch": 2}]}},
    }
    before = copy.deepcopy(BASE)
    merged = merge_layers(BASE, update)
    assert BASE == before  # neither argument changes
    assert merged["trainer"]["max_steps"] == 200
    assert merged["trainer"]["callbacks"] == [
        {"class_path": EVAL, "init_args": {"archs": ["ConvNet", "AlexNet"], "num_models": 3}},
        {"class_path": CKPT, "init_args": {"save_last": True, "every_n_train_steps": 1000}},
        {"class_path": "ptmdd_lightning.callbacks.SyntheticSetExport"},
    ]
    assert merged["model"] == {
        "class_path": "DMDistiller",
        "init_args": {"ipc": 10, "ptms": [{"arch": "ConvNetW32", "epoch": 2}]},
    }


def test_consecutive_config_files_become_one_merged_config(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(BASE))
    b.write_text(yaml.safe_dump({"trainer": {"max_steps": 7}}))
    args = layered_args(["fit", "--config", str(a), f"--config={b}", "--trainer.max_steps", "9"])
    assert args[:2] == ["fit", "--config"] and args[3:] == ["--trainer.max_steps", "9"]
    assert yaml.safe_load(args[2]) == merge_layers(BASE, {"trainer": {"max_steps": 7}})
    alone = ["fit", "--config", str(a), "--trainer.max_steps", "9", "--config", str(b)]
    assert layered_args(alone) == alone  # one file, or files apart: jsonargparse's own order
    assert layered_args(["fit", "-c", str(a), "-c", "missing.yaml"]) == ["fit", "-c", str(a), "-c", "missing.yaml"]
    b.write_text("- a list\n")
    with pytest.raises(PtmddError, match="not a ptmdd config"):
        load_layers([a, b])


def test_the_cpu_budget_layered_on_the_paper_config_keeps_its_callbacks(capsys):
    paper, cpu = REPO / "configs/paper/dm_clom.yaml", REPO / "configs/paper/cpu/dm_clom.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(paper), "--config", str(cpu), "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args") or {} for c in config["trainer"]["callbacks"]}
    assert set(callbacks) == {"PretrainPTMPool", "SyntheticSetEvaluation", "SyntheticSetExport", "ModelCheckpoint"}
    assert callbacks["SyntheticSetEvaluation"]["num_models"] == 3  # the budget's
    assert callbacks["SyntheticSetEvaluation"]["protocol"]["precision"] == "32"  # the paper config's, kept
    assert callbacks["ModelCheckpoint"]["every_n_train_steps"] == 50 and callbacks["ModelCheckpoint"]["save_last"]
    assert config["trainer"]["max_steps"] == 200 and config["data"]["init_args"]["batch_real"] == 32
    assert config["model"]["init_args"]["ptms"][0]["arch"] == "ConvNetW32"
