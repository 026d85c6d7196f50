"""Sweep files (studies.spec) and a run's merged config (studies.configs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.studies.configs import merge_layers, point_config, set_dotted, signature, with_logger
from ptmdd_lightning.studies.spec import expand, load_sweep
from tests.studies.fakes import BASE

REPO = Path(__file__).resolve().parents[1]
SWEEP = """
name: tiny
title: tiny sweep
base: base.yaml
seeds: [0, 1]
fixed:
  trainer.max_steps: 5
  trainer.callbacks.SyntheticSetEvaluation.init_args.protocol.epochs: 2
axes:
  N_m: [1, 4]
  epoch:
    - 2
    - {label: late, value: 10, overrides: {model.init_args.ipc: 1}}
x: N_m
overrides:
  model.init_args.ptms:
    - {arch: ConvNet, alpha: 0.1, num_seeds: "${N_m}", epoch: "${epoch}", loss: clom}
  trainer.logger.init_args.name: "nm${N_m}_e${epoch}"
baselines:
  DM (no PTM):
    model.init_args.ptms: []
"""


def _write_sweep(folder: Path, text: str = SWEEP, base: dict | None = None) -> Path:
    (folder / "base.yaml").write_text(yaml.safe_dump(base or BASE))
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path


def test_expand_makes_the_grid_then_the_baselines_with_typed_placeholders(tmp_path):
    spec = load_sweep(_write_sweep(tmp_path))
    points = expand(spec)
    assert [p.id for p in points] == [
        "N_m=1__epoch=2",
        "N_m=1__epoch=late",
        "N_m=4__epoch=2",
        "N_m=4__epoch=late",
        "baseline=DM_no_PTM",
    ]
    late = points[3]
    assert late.values == {"N_m": 4, "epoch": 10} and late.labels == {"N_m": "4", "epoch": "late"}
    group = late.overrides["model.init_args.ptms"][0]
    assert group["num_seeds"] == 4 and isinstance(group["num_seeds"], int)  # "${N_m}" -> the int itself
    assert group["epoch"] == 10
    assert late.overrides["trainer.logger.init_args.name"] == "nm4_e10"  # inside a string: textual
    assert late.overrides["model.init_args.ipc"] == 1  # the axis value's own overrides
    assert "model.init_args.ipc" not in points[0].overrides
    assert points[0].overrides["trainer.max_steps"] == 5  # fixed
    baseline = points[-1]
    assert baseline.kind == "baseline" and baseline.overrides["model.init_args.ptms"] == []
    assert baseline.overrides["trainer.max_steps"] == 5


def test_point_config_merges_base_overrides_seed_and_logger(tmp_path):
    spec = load_sweep(_write_sweep(tmp_path))
    config = with_logger(point_config(expand(spec)[2], seed=1), tmp_path / "runs" / "N_m=4__epoch=2" / "seed1" / "v0")
    assert config["seed_everything"] == 1 and config["data"]["init_args"]["seed"] == 1
    assert config["data"]["init_args"]["batch_real"] == 32  # untouched base value
    assert config["trainer"]["max_steps"] == 5
    evaluation = config["trainer"]["callbacks"][1]
    assert evaluation["init_args"]["protocol"]["epochs"] == 2  # addressed by class name inside the list
    assert config["trainer"]["callbacks"][0] == BASE["trainer"]["callbacks"][0]
    logger = config["trainer"]["logger"]
    assert logger["init_args"] == {
        "save_dir": str(tmp_path / "runs" / "N_m=4__epoch=2"),
        "name": "seed1",
        "version": "v0",
    }
    assert BASE["trainer"]["max_steps"] == 100  # the base dict was not modified


def test_set_dotted_and_merge_layers():
    config = {"a": {"b": 1, "l": [{"class_path": "x.Y", "init_args": {"k": 1}}, 5]}}
    set_dotted(config, "a.l.Y.init_args.k", 2)
    set_dotted(config, "a.l.1", 6)
    set_dotted(config, "a.new.deep", [1])
    assert config == {"a": {"b": 1, "l": [{"class_path": "x.Y", "init_args": {"k": 2}}, 6], "new": {"deep": [1]}}}
    with pytest.raises(PtmddError, match="no item 'Z'"):
        set_dotted(config, "a.l.Z.init_args.k", 1)
    with pytest.raises(PtmddError, match="is a value"):
        set_dotted(config, "a.b.c", 1)
    merged = merge_layers({"x": {"y": 1, "z": [1, 2]}, "w": 0}, {"x": {"z": [3]}, "v": 1})
    assert merged == {"x": {"y": 1, "z": [3]}, "w": 0, "v": 1}  # mappings merge, lists are replaced


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s + "\nbogus: 1\n", "unknown sweep keys"),
        (lambda s: s.replace("x: N_m", "x: alpha"), "is not an axis"),
        (lambda s: s.replace('"${N_m}"', '"${N_a}"'), "no axis 'N_a'"),
        (lambda s: s.replace("base: base.yaml", "base: nowhere.yaml"), "does not exist"),
        (lambda s: s.replace("N_m: [1, 4]", "N_m: []"), "non-empty list"),
        (lambda s: s + "\nslurm: {partition: gpu, gpu: 1}\n", "unknown slurm keys .'gpu'.; known keys: partition"),
        (lambda s: s.replace("N_m: [1, 4]", "seed: [1, 4]").replace("x: N_m", "x: seed"), "reserved"),
    ],
)
def test_bad_sweep_files_are_user_errors(tmp_path, edit, message):
    with pytest.raises(PtmddError, match=message):
        load_sweep(_write_sweep(tmp_path, edit(SWEEP)))


def test_signature_ignores_the_logger_and_sees_settings_subcommand_and_extra_args(tmp_path):
    spec = load_sweep(_write_sweep(tmp_path))
    config = point_config(expand(spec)[0], seed=0)
    sig = signature(config, "fit", [])
    assert signature(with_logger(config, tmp_path / "a" / "b" / "c"), "fit", []) == sig
    changed = merge_layers(config, {"trainer": {"max_steps": 6}})
    assert signature(changed, "fit", []) != sig
    assert signature(config, "fit", ["--trainer.max_steps", "6"]) != sig
    assert signature(config, "test", []) != sig
    assert signature(point_config(expand(spec)[0], seed=1), "fit", []) != sig  # the seed is a setting


def test_the_slurm_section_is_parsed(tmp_path):
    text = SWEEP + "\nslurm: {partition: gpu, gpus_per_task: 1, time_min: 90, additional: {exclude: node7}}\n"
    spec = load_sweep(_write_sweep(tmp_path, text))
    assert spec.slurm == {"partition": "gpu", "gpus_per_task": 1, "time_min": 90, "additional": {"exclude": "node7"}}
