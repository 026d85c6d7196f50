"""The ``ptmdd`` command: help, every shipped config instantiates and runs with fast_dev_run, user errors."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from ptmdd_lightning.layers import layered_args
from ptmdd_lightning.machine import trainer_precision
from ptmdd_lightning.main import PtmddCLI, main
from tests.helpers import config_layers, layers_id

REPO = Path(__file__).resolve().parents[1]
# every ptmdd config, a layer on top of its base; sweep files (configs/**/sweeps/) are ptmdd-sweep input, tested in
# tests/studies/
CONFIGS = config_layers(REPO / "configs")


def _ids(layers: tuple[Path, ...]) -> str:
    return layers_id(layers, REPO / "configs")


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "fit" in out and "test" in out


def test_python_dash_m_works():
    proc = subprocess.run(
        [sys.executable, "-m", "ptmdd_lightning", "fit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "--model" in proc.stdout and "--data" in proc.stdout


@pytest.mark.parametrize("layers", CONFIGS, ids=_ids)
def test_every_config_instantiates(layers, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = PtmddCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        run=False,
        args=layered_args([a for path in layers for a in ("--config", str(path))]),
    )
    data, model = cli.datamodule, cli.model
    assert model.dataset_info == data.info  # linked, not duplicated
    assert model.hparams.dataset_info["num_classes"] == data.num_classes  # plain values in hparams.yaml
    assert "num_classes" not in model.hparams and "mean" not in model.hparams
    # no shipped config pins the precision: this machine's default (bf16 only on AMX/bf16 GPUs), in config.yaml
    assert cli.trainer.precision == trainer_precision("cpu")
    assert cli.config["trainer"]["precision"] == trainer_precision("cpu")


def test_an_explicit_precision_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = PtmddCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        run=False,
        args=["--config", str(REPO / "configs" / "quickstart.yaml"), "--trainer.precision", "bf16-true"],
    )
    assert cli.trainer.precision == "bf16-true"


def test_a_pinned_bf16_on_a_cpu_without_native_bf16_warns_with_the_fix(tmp_path, monkeypatch, capsys):
    import ptmdd_lightning.machine as machine

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(machine, "native_bf16_cpu", lambda: False)
    with pytest.warns(UserWarning, match="without native bf16") as record:  # before the bad ipc stops the run
        _quickstart_fails(capsys, "--trainer.precision", "bf16-mixed", "--model.init_args.ipc", "0")
    assert any("set it to 32-true" in str(w.message) for w in record)
    monkeypatch.setattr(machine, "native_bf16_cpu", lambda: True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _quickstart_fails(capsys, "--trainer.precision", "bf16-mixed", "--model.init_args.ipc", "0")
    assert not any("without native bf16" in str(w.message) for w in caught)


def _quickstart_fails(capsys, *extra: str) -> str:
    """Run ``ptmdd fit`` on the quickstart config with ``extra`` arguments; assert exit 2; return stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), *extra])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_user_error_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = _quickstart_fails(capsys, "--model.init_args.ipc", "0")
    assert "ipc must be >= 1" in err and "Traceback" not in err


def test_a_bad_option_value_prints_the_error_first_and_no_usage_screen(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = _quickstart_fails(capsys, "--model.init_args.init", "dmx")
    assert err.startswith("ptmdd: error:") and "usage:" not in err
    lines = err.splitlines()
    assert len(lines) <= 15 and any("Got value: dmx" in line for line in lines)
    assert "ptmdd fit --help" in lines[-1]


def test_an_old_flat_evaluation_key_names_its_new_place_in_the_protocol(tmp_path, monkeypatch, capsys):
    """Configs written before the evaluation protocol was nested (``epochs: 200`` in the callback's init_args)
    fail with one message naming ``protocol.epochs``; the nested form is accepted."""
    import yaml

    monkeypatch.chdir(tmp_path)
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    evaluation = next(c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("SyntheticSetEvaluation"))
    evaluation["init_args"].pop("protocol")
    evaluation["init_args"]["epochs"] = 200
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(old)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ptmdd: error: the evaluation setting 'epochs' now lives in the evaluation's protocol")
    assert "protocol: {epochs: ...}" in err and len(err.splitlines()) == 2


def test_lightnings_cloud_logging_tip_is_not_printed():
    import logging

    import ptmdd_lightning.main  # noqa: F401  (installs the filter)

    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")

    def record(msg: str) -> logging.LogRecord:
        return log.makeRecord(log.name, logging.INFO, __file__, 0, msg, None, None)

    assert not log.filter(record("💡 Tip: For seamless cloud logging ... try installing [litlogger](https://...)"))
    assert log.filter(record("GPU available: False, used: False"))  # Lightning's other lines still show


def test_lightnings_notices_that_no_user_can_act_on_are_filtered(capsys):
    import warnings

    with warnings.catch_warnings():
        warnings.resetwarnings()  # not pytest's own filters (pyproject.toml), which ignore the same two messages
        warnings.simplefilter("always")
        with pytest.raises(SystemExit):
            main(["fit", "--no_such_option", "1"])
        capsys.readouterr()
        for message in (
            "You passed in a `val_dataloader` but have no `validation_step`. Skipping val loop.",
            "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead.",
        ):
            with warnings.catch_warnings(record=True) as seen:
                warnings.warn(message, UserWarning, stacklevel=1)
            assert not seen, message
        with warnings.catch_warnings(record=True) as seen:
            warnings.warn("a warning of ptmdd's own", UserWarning, stacklevel=1)
        assert seen
