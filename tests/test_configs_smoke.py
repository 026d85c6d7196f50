"""Every config under configs/ runs end to end with ``--trainer.fast_dev_run true`` on a fake Fashion-MNIST.

``ptmdd`` configs (everything outside a ``sweeps/`` folder; a layer such as the CPU budget ``paper/cpu/dm_clom.yaml``
on top of its paper config, :func:`tests.helpers.config_layers`) run through :func:`ptmdd_lightning.main.main` in a
temporary folder: ``data.init_args.root`` points at the ``fake_fashion_root`` fixture (20 training images
per class, so ``batch_real`` and ``cclom_batch_real`` are capped at 16, the only values changed); PTM sources
of other datasets get a fake copy (MNIST has Fashion-MNIST's file format) or are skipped with a reason;
``configs/evaluate.yaml`` runs ``ptmdd test`` on a tiny export. The callbacks shrink evaluation and PTM
pretraining under ``fast_dev_run``. Sweep files (``ptmdd-sweep``) are expanded and every run they would make
is parsed and instantiated (not run). The full-protocol paper configs alone only differ from their CPU-budget
layering by their numbers and pretrain bigger pools (even one batch per epoch is slow here), so they are marked
slow, as are the IPC-10 DC/DSA configs (see ``SLOW``); every family keeps an unmarked config (quickstart, pretrain,
evaluate, distill/dm, paper/X + paper/cpu/X). The default suite still builds every slow config as ``ptmdd fit``
would (parsed, classes instantiated, nothing fitted) and the first and last run of every slow (GPU) sweep, so
that a renamed argument in any shipped config fails CI.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from ptmdd_lightning.core.synthetic import SyntheticSet
from ptmdd_lightning.fileio import atomic_save
from ptmdd_lightning.layers import layered_args, load_layers
from ptmdd_lightning.main import build_cli, main
from ptmdd_lightning.studies.configs import point_config, set_dotted, with_logger
from ptmdd_lightning.studies.spec import expand, load_sweep
from tests.helpers import config_layers, layers_id

REPO = Path(__file__).resolve().parents[1]
CONFIG_ROOT = REPO / "configs"
ALL = sorted(CONFIG_ROOT.rglob("*.yaml"))
RUN_CONFIGS = config_layers(CONFIG_ROOT)
SWEEPS = [p for p in ALL if "sweeps" in p.relative_to(CONFIG_ROOT).parts]


def _rel(path: Path) -> str:
    return str(path.relative_to(CONFIG_ROOT))


#: measured on the 2-core CPU (OMP_NUM_THREADS=1): the full-protocol paper configs pretrain pools of 5 ConvNet-3
#: members x 20 epochs (one batch each under fast_dev_run, 70-145 s); DC/DSA at IPC 10 train the net 50 inner
#: epochs after a step (~35 s).
SLOW = {"distill/dc.yaml", "distill/dsa.yaml"}
#: the full-protocol paper configs, run alone (their CPU layering runs unmarked)
FULL_PROTOCOL = {f"paper/{p.name}" for p in (CONFIG_ROOT / "paper").glob("*.yaml")}


def _param(layers: tuple[Path, ...]):
    name = layers_id(layers, CONFIG_ROOT)
    slow = name in SLOW or name in FULL_PROTOCOL
    return pytest.param(layers, id=name, marks=[pytest.mark.slow] if slow else [])


def _callback(config: dict, name: str) -> dict | None:
    for cb in (config.get("trainer") or {}).get("callbacks") or []:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith(name):
            return cb
    return None


def _fake_mnist(fake_fashion_root: Path, folder: Path) -> Path:
    """MNIST has Fashion-MNIST's idx format and file names: copy the fake files into ``MNIST/raw``."""
    raw = folder / "MNIST" / "raw"
    shutil.copytree(fake_fashion_root / "FashionMNIST" / "raw", raw)
    return folder


def _tiny_export(folder: Path) -> Path:
    s = SyntheticSet(10, 1, 1, (28, 28))
    s.init_noise(torch.Generator().manual_seed(0))
    blob = s.export((0.2861,), (0.3530,), "fashion_mnist", None, config={"classes": None})
    return atomic_save(blob, folder / "synthetic_set.pt")


def test_configs_are_found():
    names = {_rel(p) for p in ALL}
    assert {"quickstart.yaml", "evaluate.yaml", "pretrain/fashion_mnist.yaml"} <= names
    runs = {layers_id(layers, CONFIG_ROOT) for layers in RUN_CONFIGS}
    for family in ("dm_clom", "dc_clom", "dsa_clom", "domain_cclom"):
        assert f"paper/{family}.yaml" in runs and f"paper/{family}.yaml+paper/cpu/{family}.yaml" in runs
    for variant in ("cpu", "gpu"):
        for family in ("methods", "nm", "na", "epoch", "alpha", "domain"):
            assert f"paper/{variant}/sweeps/{family}.yaml" in names


@pytest.mark.parametrize("layers", [_param(p) for p in RUN_CONFIGS])
def test_config_runs_with_fast_dev_run(layers, tmp_path, monkeypatch, fake_fashion_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the throw-away fast_dev_run PTM pools go here
    config = Path(layers_id(layers, CONFIG_ROOT))
    raw = load_layers(layers)  # as `ptmdd fit --config A --config B` merges them
    data_args = raw["data"].setdefault("init_args", {})
    if data_args.get("dataset", "fashion_mnist") != "fashion_mnist":
        pytest.skip(f"{config} distils {data_args['dataset']}, which has no fake data here")
    data_args["root"] = str(fake_fashion_root)
    if "batch_real" in data_args:  # the fake data hold 20 training images per class
        data_args["batch_real"] = min(int(data_args["batch_real"]), 16)
    model_args = raw["model"].setdefault("init_args", {})
    if "cclom_batch_real" in model_args:
        model_args["cclom_batch_real"] = min(int(model_args["cclom_batch_real"]), 16)
    for group in model_args.get("ptms") or []:
        source = str(group.get("source") or "fashion_mnist")
        if source.startswith("mnist"):
            set_dotted(
                raw,
                "trainer.callbacks.PretrainPTMPool.init_args.roots.mnist",
                str(_fake_mnist(fake_fashion_root, tmp_path / "mnist_root")),
            )
        elif not source.startswith("fashion_mnist"):
            pytest.skip(f"{config} needs PTMs pretrained on {source}, which has no fake data here")
    evaluator = str(raw["model"]["class_path"]).endswith("SyntheticSetEvaluator")
    if evaluator:
        model_args["path"] = str(_tiny_export(tmp_path))
    patched = tmp_path / "config.yaml"
    patched.write_text(yaml.safe_dump(raw, sort_keys=False))

    cli = main(["test" if evaluator else "fit", "--config", str(patched), "--trainer.fast_dev_run", "true"])

    assert cli.trainer.state.finished
    assert not list(tmp_path.glob("ptmdd_fast_dev_run_pool_*"))  # the throw-away PTM pools are deleted at teardown
    model = cli.model
    if evaluator:
        assert [r["set"] for r in model.rows][:2] == ["synthetic", "random_real"]
        assert len(model.rows) == 2 * len(model.archs)
    elif hasattr(model, "synthetic"):
        assert torch.isfinite(model.synthetic.images).all()
        if _callback(raw, "SyntheticSetEvaluation") is not None:
            rows = cli.trainer.callbacks[
                [type(c).__name__ for c in cli.trainer.callbacks].index("SyntheticSetEvaluation")
            ].rows
            archs = _callback(raw, "SyntheticSetEvaluation").get("init_args", {}).get("archs", ["ConvNet"])
            assert {r["arch"] for r in rows} == set(archs)


def _sweep_param(path: Path):
    slow = _rel(path).startswith("paper/gpu/")
    return pytest.param(path, id=_rel(path), marks=[pytest.mark.slow] if slow else [])


@pytest.fixture(scope="module")
def cli_parser():
    """One ``ptmdd`` parser for all sweep runs (building it costs ~1 s; parsing a config ~0.2 s)."""
    return build_cli(["--config", str(CONFIG_ROOT / "quickstart.yaml")], run=False).parser


@pytest.mark.parametrize("sweep", [_sweep_param(p) for p in SWEEPS])
def test_sweep_expands_into_valid_configs(sweep, tmp_path, cli_parser):
    """Every run of the sweep (prepare runs, grid points, baselines) is a config ptmdd accepts as set."""
    spec = load_sweep(sweep)
    points = expand(spec)
    assert len(points) >= 2
    assert {(a.name, v.label) for a in spec.axes for v in a.values} == {
        item for p in points for item in p.labels.items()
    }
    for i, point in enumerate([*spec.prepare, *points]):
        config = with_logger(point_config(point, 0), tmp_path / "runs" / point.id / "seed0" / "version_0")
        file = tmp_path / f"run{i}.yaml"
        file.write_text(yaml.safe_dump(config, sort_keys=False))
        built = cli_parser.instantiate_classes(cli_parser.parse_args(["--config", str(file)]))
        if "model.init_args.ptms" in point.overrides:
            groups = point.overrides["model.init_args.ptms"]
            assert [g.arch for g in built.model.ptm_groups] == [g["arch"] for g in groups]
            assert [g.alpha for g in built.model.ptm_groups] == [g["alpha"] for g in groups]
            assert [g.num_seeds for g in built.model.ptm_groups] == [g["num_seeds"] for g in groups]


#: the run configs and sweeps whose full smoke test is marked slow: the default suite (CI) parses them and builds
#: their objects, so that a renamed argument or class in one of them fails there too, not only under ``-m slow``
SLOW_RUNS = [layers for layers in RUN_CONFIGS if layers_id(layers, CONFIG_ROOT) in SLOW | FULL_PROTOCOL]
SLOW_SWEEPS = [p for p in SWEEPS if _rel(p).startswith("paper/gpu/")]


def test_every_config_is_smoke_tested_by_the_default_suite_or_parsed_by_it():
    ids = {layers_id(layers, CONFIG_ROOT) for layers in SLOW_RUNS}
    assert ids == SLOW | FULL_PROTOCOL and len(SLOW_SWEEPS) == 6


@pytest.mark.parametrize("layers", SLOW_RUNS, ids=lambda layers: layers_id(layers, CONFIG_ROOT))
def test_slow_config_parses_and_builds(layers, tmp_path, monkeypatch):
    """``ptmdd fit --config ...`` up to its objects (``main``'s own :func:`build_cli`), without fitting."""
    monkeypatch.chdir(tmp_path)
    args = layered_args([arg for layer in layers for arg in ("--config", str(layer))])
    cli = build_cli(args, run=False)
    raw = load_layers(layers)
    assert type(cli.model).__name__ == str(raw["model"]["class_path"]).rsplit(".", 1)[-1]
    scalars = {k: v for k, v in raw["model"]["init_args"].items() if isinstance(v, (int, float, str, bool))}
    assert scalars and {k: cli.model.hparams[k] for k in scalars} == scalars
    wanted = {str(c["class_path"]).rsplit(".", 1)[-1] for c in raw["trainer"].get("callbacks") or []}
    assert wanted <= {type(c).__name__ for c in cli.trainer.callbacks}
    assert cli.trainer.max_steps == raw["trainer"]["max_steps"]
    assert not list(tmp_path.iterdir())  # building wrote nothing: no data read, no pool, no run folder


@pytest.mark.parametrize("sweep", SLOW_SWEEPS, ids=_rel)
def test_slow_sweep_first_and_last_runs_parse_and_build(sweep, tmp_path, cli_parser):
    """The first and last run of a GPU sweep (its prepare runs, grid points and baselines) build as set."""
    spec = load_sweep(sweep)
    runs = [*spec.prepare, *expand(spec)]
    for i, point in enumerate([runs[0], runs[-1]]):
        config = with_logger(point_config(point, 0), tmp_path / "runs" / point.id / "seed0" / "version_0")
        file = tmp_path / f"run{i}.yaml"
        file.write_text(yaml.safe_dump(config, sort_keys=False))
        built = cli_parser.instantiate_classes(cli_parser.parse_args(["--config", str(file)]))
        if "model.init_args.ptms" in point.overrides:
            assert [g.arch for g in built.model.ptm_groups] == [
                g["arch"] for g in point.overrides["model.init_args.ptms"]
            ]
