"""``ptmdd-sweep``: sweep files, point expansion, config merging, collection, plots, a tiny real sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.sweep import (
    collect,
    expand,
    load_sweep,
    main,
    merge_configs,
    plot_summary,
    point_config,
    run_dir_of,
    run_sweep,
    set_dotted,
    write_summary,
)

REPO = Path(__file__).resolve().parents[1]
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
    config = point_config(expand(spec)[2], seed=1, run_root=tmp_path / "runs")
    assert config["seed_everything"] == 1 and config["data"]["init_args"]["seed"] == 1
    assert config["data"]["init_args"]["batch_real"] == 32  # untouched base value
    assert config["trainer"]["max_steps"] == 5
    evaluation = config["trainer"]["callbacks"][1]
    assert evaluation["init_args"]["protocol"]["epochs"] == 2  # addressed by class name inside the list
    assert config["trainer"]["callbacks"][0] == BASE["trainer"]["callbacks"][0]
    logger = config["trainer"]["logger"]
    assert logger["init_args"] == {"save_dir": str(tmp_path / "runs"), "name": "N_m=4__epoch=2", "version": 1}
    assert BASE["trainer"]["max_steps"] == 100  # the base dict was not modified


def test_set_dotted_and_merge_configs():
    config = {"a": {"b": 1, "l": [{"class_path": "x.Y", "init_args": {"k": 1}}, 5]}}
    set_dotted(config, "a.l.Y.init_args.k", 2)
    set_dotted(config, "a.l.1", 6)
    set_dotted(config, "a.new.deep", [1])
    assert config == {"a": {"b": 1, "l": [{"class_path": "x.Y", "init_args": {"k": 2}}, 6], "new": {"deep": [1]}}}
    with pytest.raises(PtmddError, match="no item 'Z'"):
        set_dotted(config, "a.l.Z.init_args.k", 1)
    with pytest.raises(PtmddError, match="is a value"):
        set_dotted(config, "a.b.c", 1)
    merged = merge_configs({"x": {"y": 1, "z": [1, 2]}, "w": 0}, {"x": {"z": [3]}, "v": 1})
    assert merged == {"x": {"y": 1, "z": [3]}, "w": 0, "v": 1}  # mappings merge, lists are replaced


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s + "\nbogus: 1\n", "unknown sweep keys"),
        (lambda s: s.replace("x: N_m", "x: alpha"), "is not an axis"),
        (lambda s: s.replace('"${N_m}"', '"${N_a}"'), "no axis 'N_a'"),
        (lambda s: s.replace("base: base.yaml", "base: nowhere.yaml"), "does not exist"),
        (lambda s: s.replace("N_m: [1, 4]", "N_m: []"), "non-empty list"),
    ],
)
def test_bad_sweep_files_are_user_errors(tmp_path, edit, message):
    with pytest.raises(PtmddError, match=message):
        load_sweep(_write_sweep(tmp_path, edit(SWEEP)))


def _fake_run(out: Path, point, seed: int, synthetic: list[float], real: list[float] | None, arch="ConvNet"):
    folder = run_dir_of(out, point, seed)
    folder.mkdir(parents=True)
    rows = [{"step": 1, "arch": arch, "set": "synthetic", "accs": [0.0]}]  # an earlier evaluation: ignored
    rows.append({"step": 5, "arch": arch, "set": "synthetic", "accs": synthetic})
    if real is not None:
        rows.append({"step": 5, "arch": arch, "set": "random_real", "accs": real})
    (folder / "results.json").write_text(json.dumps(rows))
    (folder / "sweep_done.json").write_text("{}")


def test_collect_pools_the_seeds_and_writes_table_and_plot(tmp_path):
    spec = load_sweep(_write_sweep(tmp_path))
    points = expand(spec)
    out = tmp_path / "out"
    _fake_run(out, points[0], 0, [0.5, 0.7], [0.4, 0.4])
    _fake_run(out, points[0], 1, [0.6], [0.4, 0.4])
    _fake_run(out, points[2], 0, [0.8], None)  # evaluated without the random-real subset
    _fake_run(out, points[4], 0, [0.55, 0.45], [0.4, 0.4])
    unfinished = run_dir_of(out, points[1], 0)
    unfinished.mkdir(parents=True)
    (unfinished / "results.json").write_text(
        json.dumps([{"step": 1, "arch": "ConvNet", "set": "synthetic", "accs": [0.9]}])
    )  # no sweep_done.json: left out
    rows = collect(spec, out)
    assert [r["point"] for r in rows] == ["N_m=1__epoch=2", "N_m=4__epoch=2", "baseline=DM_no_PTM"]
    first = rows[0]
    assert first["n"] == 3 and first["runs"] == 2
    assert first["synthetic_mean"] == pytest.approx(0.6)
    assert first["synthetic_std"] == pytest.approx(math.sqrt((0.01 + 0.01 + 0.0) / 3))  # population std
    assert first["gain_vs_random"] == pytest.approx(0.2)
    assert first["gain_vs_baseline"] == pytest.approx(0.1) and first["baseline"] == "DM (no PTM)"
    assert first["x"] == 1 and first["series"] == "epoch=2"
    assert rows[1]["random_real_mean"] == pytest.approx(0.4)  # the sweep's shared random-real result
    assert rows[1]["gain_vs_random"] == pytest.approx(0.4)
    assert rows[2]["gain_vs_baseline"] is None  # the reference itself
    files = write_summary(spec, rows, out)
    md = files[0].read_text()
    assert "| point | 1 | 2 | ConvNet | 60.00 ± 8.16 | 40.00 ± 0.00 | +20.00 | +10.00 | 2 / 3 |" in md
    assert "| DM (no PTM) |" in md
    assert json.loads(files[2].read_text())["rows"][1]["synthetic_mean"] == pytest.approx(0.8)
    assert "synthetic_mean" in files[1].read_text().splitlines()[0]
    png = plot_summary(spec, rows, out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_categorical_axis_plots_grouped_bars(tmp_path):
    text = SWEEP.replace("N_m: [1, 4]", "N_m: [few, many]").replace('"${N_m}"', "1").replace("x: N_m", "x: N_m")
    spec = load_sweep(_write_sweep(tmp_path, text))
    out = tmp_path / "out"
    for i, point in enumerate(expand(spec)):
        _fake_run(out, point, 0, [0.5 + 0.05 * i], None, arch="AlexNet")
    rows = collect(spec, out)
    assert rows[0]["random_real_mean"] is None and rows[0]["gain_vs_random"] is None
    assert plot_summary(spec, rows, out).is_file()


def test_tiny_sweep_runs_collects_and_resumes(tmp_path, monkeypatch, fake_fashion_root):
    """Two grid points and a baseline through ptmdd itself (tiny nets and data), then reruns skip them."""
    monkeypatch.chdir(tmp_path)
    base = yaml.safe_load((REPO / "configs" / "paper" / "cpu" / "dm_clom.yaml").read_text())
    text = f"""
name: tiny
base: base.yaml
fixed:
  data.init_args.root: {fake_fashion_root}
  data.init_args.batch_real: 4
  trainer.max_steps: 2
  model.init_args.net_arch: ConvNetW32
  model.init_args.pool_root: {tmp_path / "pool"}
  trainer.callbacks.SyntheticSetEvaluation.init_args: {{archs: [ConvNetW32], num_models: 2, protocol: {{epochs: 1}}}}
  trainer.callbacks.ModelCheckpoint.init_args.every_n_train_steps: 1
axes:
  N_m: [1, 2]
overrides:
  model.init_args.ptms:
    - {{arch: ConvNetW32, alpha: 0.1, num_seeds: "${{N_m}}", epoch: 1, loss: clom}}
baselines:
  DM:
    model.init_args.ptms: []
"""
    sweep = _write_sweep(tmp_path, text, base)
    out = tmp_path / "sweep_out"
    assert main(["--sweep", str(sweep), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())["rows"]
    assert [(r["point"], r["arch"], r["n"]) for r in summary] == [
        ("N_m=1", "ConvNetW32", 2),
        ("N_m=2", "ConvNetW32", 2),
        ("baseline=DM", "ConvNetW32", 2),
    ]
    assert all(r["random_real_mean"] is not None for r in summary)
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert "N_m" in (out / "summary.md").read_text()
    assert sorted(p.name for p in (tmp_path / "pool" / "fashion_mnist" / "ConvNetW32").iterdir()) == [
        "seed0",
        "seed1",
    ]
    run = out / "runs" / "N_m=2" / "version_0"
    assert (run / "synthetic_set.pt").is_file() and (run / "config.yaml").is_file()
    records = run_sweep(load_sweep(sweep), out, log=lambda *_: None)
    assert [r["status"] for r in records] == ["skipped"] * 3  # resume: nothing runs again
    records = run_sweep(load_sweep(sweep), out, extra=["--trainer.max_steps", "3"], dry_run=True, log=lambda *_: None)
    assert [r["status"] for r in records] == ["dry-run"] * 3  # changed arguments: would rerun
