"""Bad input gives one clear ``ptmdd: error: <message>`` (exit status 2, no traceback), never a crash deep in
training.

Each case asserts the message: missing data, mismatching / missing / corrupted PTM checkpoints, a corrupted
``--ckpt_path``, and settings refused when the config is instantiated (before any Trainer or folder exists).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ptmdd_lightning.data.datasets as datasets
from ptmdd_lightning.core.guidance import PTMGroup, load_ptm
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.main import check_checkpoint_file, main
from ptmdd_lightning.modules import Distiller
from tests.test_resume import tiny_config, write_ptm

GROUP = {"arch": "ConvNetW32", "alpha": 0.1, "num_seeds": 1, "epoch": 1, "loss": "clom"}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")


def _fails(capsys, args: list[str]) -> str:
    """Run ``main(args)``; assert exit status 2, a one-message error without traceback, and no new run folder left
    behind (a failed start removes the version folder its logger began); return stderr."""
    before = {p for p in Path.cwd().rglob("version_*") if p.is_dir()}
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    left = {p for p in Path.cwd().rglob("version_*") if p.is_dir()} - before
    assert not left, f"a failed start left {sorted(map(str, left))}"
    return err


def _fit(config: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(config), "--trainer.max_steps", "1", *extra]


def _member(pool: Path, arch: str = "ConvNetW32", seed: int = 0, epoch: int = 1) -> Path:
    return pool / "fashion_mnist" / arch / f"seed{seed}" / f"epoch{epoch}.pt"


# ------------------------------------------------------------------------------------------ missing data
def test_missing_dataset_root(tmp_path, capsys):
    config = tiny_config(tmp_path / "c.yaml", tmp_path / "empty_root")
    err = _fails(capsys, _fit(config))
    assert "ptmdd: error:" in err and "apt-get install -y dataset-fashion-mnist" in err and "data.root" in err
    assert str(tmp_path / "empty_root") in err


def test_missing_debian_fashion_mnist_without_root(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not_installed")
    config = tiny_config(tmp_path / "c.yaml", tmp_path)
    err = _fails(capsys, _fit(config, "--data.init_args.root", "null"))
    assert "Fashion-MNIST not found" in err and "apt-get install -y dataset-fashion-mnist" in err
    assert "data.root" in err


# ------------------------------------------------------------------------------------------ PTM checkpoints
def test_missing_pool_member_names_the_folder_and_the_pretraining_command(tmp_path, capsys, fake_fashion_root):
    pool = tmp_path / "pool"
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, ptm_pool=pool)
    err = _fails(capsys, _fit(config))
    assert f"PTM pool member missing: {_member(pool)}" in err
    assert f"pool folder {pool}" in err
    assert "ptmdd fit --config " in err and "configs/pretrain/fashion_mnist.yaml" in err
    assert "--model.init_args.arch ConvNetW32 --seed_everything 0" in err and "PretrainPTMPool" in err
    assert f"--trainer.callbacks.init_args.pool_root {pool}" in err  # run as printed: tests/test_resume.py


def test_ptm_weights_that_do_not_fit_their_architecture(tmp_path, capsys, fake_fashion_root):
    pool = tmp_path / "pool"
    path = write_ptm(_member(pool))
    blob = torch.load(path, weights_only=False)
    other = write_ptm(tmp_path / "other.pt", arch="ConvNetW64")
    blob["state_dict"] = torch.load(other, weights_only=False)["state_dict"]  # W64 weights, W32 label
    torch.save(blob, path)
    err = _fails(capsys, _fit(tiny_config(tmp_path / "c.yaml", fake_fashion_root, ptm_pool=pool)))
    assert f"PTM checkpoint {path} does not match architecture ConvNetW32" in err


def test_ptm_of_another_class_count_refused_for_clom(tmp_path, capsys, fake_fashion_root):
    pool = tmp_path / "pool"
    path = write_ptm(_member(pool), num_classes=5)
    err = _fails(capsys, _fit(tiny_config(tmp_path / "c.yaml", fake_fashion_root, ptm_pool=pool)))
    assert f"{path} has 5 classes and the target has 10" in err and "loss: cclom" in err


def test_ptm_file_of_another_architecture_than_its_group(tmp_path, fake_fashion_root):
    from ptmdd_lightning.core.guidance import PTMPool

    pool = tmp_path / "pool"
    path = write_ptm(_member(pool, arch="ConvNetW32"), arch="ConvNetD1")  # ConvNetD1 in the W32 folder
    with pytest.raises(PtmddError, match="ConvNetD1") as info:
        PTMPool([PTMGroup(**GROUP)], pool, "fashion_mnist", 10, (0.2861,), (0.3530,))
    assert str(path) in str(info.value) and "ConvNetW32" in str(info.value)


@pytest.mark.parametrize(("channels", "image_size"), [(3, (28, 28)), (1, (32, 32))], ids=["channels", "image_size"])
def test_ptm_of_another_channel_count_or_image_size_for_the_same_dataset(
    tmp_path, capsys, fake_fashion_root, channels, image_size
):
    pool = tmp_path / "pool"
    path = write_ptm(_member(pool), channels=channels, image_size=image_size)
    err = _fails(capsys, _fit(tiny_config(tmp_path / "c.yaml", fake_fashion_root, ptm_pool=pool)))
    assert str(path) in err
    assert ("channels" if channels != 1 else "image size") in err


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupted_ptm_checkpoint(tmp_path, capsys, fake_fashion_root, damage):
    pool = tmp_path / "pool"
    path = write_ptm(_member(pool))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a checkpoint" * 64)
    with pytest.raises(PtmddError, match="truncated or corrupted"):
        load_ptm(path)
    err = _fails(capsys, _fit(tiny_config(tmp_path / "c.yaml", fake_fashion_root, ptm_pool=pool)))
    assert f"PTM checkpoint {path} is truncated or corrupted" in err and "pretrain that member again" in err


# ------------------------------------------------------------------------------------------ --ckpt_path
def _checkpoint_like(path: Path) -> Path:
    torch.save(
        {
            "state_dict": {"w": torch.arange(16384, dtype=torch.float32)},
            "global_step": 3,
            "pytorch-lightning_version": "2.6.0",
        },
        path,
    )
    return path


@pytest.mark.parametrize("damage", ["missing", "truncated", "flipped_byte", "garbage"])
def test_bad_ckpt_path_file(tmp_path, capsys, fake_fashion_root, damage):
    path = _checkpoint_like(tmp_path / "last.ckpt")
    check_checkpoint_file(path)  # intact: no error
    data = bytearray(path.read_bytes())
    if damage == "missing":
        path.unlink()
        expected = "does not exist"
    elif damage == "truncated":
        path.write_bytes(bytes(data[: len(data) * 2 // 3]))
        expected = "truncated or corrupted"
    elif damage == "flipped_byte":
        start = bytes(data).index(b"\x00\x00\x80\x3f")  # the float 1.0 in the tensor's data
        data[start + 3] ^= 0xFF
        path.write_bytes(bytes(data))
        expected = "fails its CRC check"
    else:
        path.write_bytes(b"\x00garbage" * 100)
        expected = "truncated or corrupted"
    with pytest.raises(PtmddError, match=expected):
        check_checkpoint_file(path)
    err = _fails(capsys, _fit(tiny_config(tmp_path / "c.yaml", fake_fashion_root), "--ckpt_path", str(path)))
    assert f"checkpoint {path}" in err and expected in err and "--ckpt_path last" in err


def test_truncated_last_checkpoint_on_resume(tmp_path, capsys, fake_fashion_root):
    last = tmp_path / "logs" / "run" / "version_0" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    data = _checkpoint_like(last).read_bytes()
    last.write_bytes(data[:100])
    err = _fails(capsys, _fit(tiny_config(tmp_path / "c.yaml", fake_fashion_root), "--ckpt_path", "last"))
    assert f"checkpoint {Path('logs/run/version_0/checkpoints/last.ckpt')} is truncated or corrupted" in err


def test_checkpoint_of_another_synthetic_set_shape():
    model = Distiller(ipc=2, net_arch="ConvNetW32")
    checkpoint = {
        "state_dict": {"synthetic.images": torch.zeros(10, 1, 28, 28)},
        "hyper_parameters": {"dataset_name": "fashion_mnist", "ipc": 1},
    }
    with pytest.raises(
        PtmddError,
        match=r"holds \(10, 1, 28, 28\) synthetic images .* ipc 1\) but this run "
        r"makes \(20, 1, 28, 28\)",
    ):
        model.on_load_checkpoint(checkpoint)


# ------------------------------------------------------------------------------------------ config values
@pytest.mark.parametrize(
    ("args", "model", "expected"),
    [
        (["--model.init_args.ipc", "0"], {}, "ipc must be >= 1"),
        (["--data.init_args.batch_real", "0"], {}, "data.batch_real (real images per class per step) must be >= 1"),
        ([], {"ptms": [{**GROUP, "alpha": -0.5}]}, "PTM alpha must be >= 0, got -0.5"),
        (["--model.init_args.net_arch", "ConvNetXL"], {}, "unknown network 'ConvNetXL'"),
        ([], {"ptms": [{**GROUP, "arch": "ResNet99"}]}, "unknown network 'ResNet99'"),
        (["--data.init_args.dataset", "imagenet_21k"], {}, "unknown dataset 'imagenet_21k'"),
        (
            [],
            {"ptms": [{**GROUP, "loss": "cclom"}], "cclom_batch_real": 0},
            "cclom_batch_real and cclom_batch_size must be >= 1 (CCLoM needs a real batch)",
        ),
        ([], {"ptms": [{**GROUP, "source": "mnist"}]}, "CLoM needs PTMs of the target label space (fashion_mnist)"),
    ],
    ids=["ipc", "batch_real", "alpha", "net_arch", "ptm_arch", "dataset", "cclom_batch_real", "clom_label_space"],
)
def test_bad_settings_are_refused_before_training(tmp_path, capsys, fake_fashion_root, args, model, expected):
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, **model)
    err = _fails(capsys, ["fit", "--config", str(config), *args])
    assert f"ptmdd: error: {expected}" in err
    assert not (tmp_path / "logs").exists()  # refused at instantiation: no Trainer, no run folder


def test_unknown_method_is_refused_by_the_parser(tmp_path, capsys, fake_fashion_root):
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root)
    err = _fails(capsys, ["fit", "--config", str(config), "--model.init_args.method", "kip"])
    assert "method" in err and "kip" in err and "'dm'" in err
    assert not (tmp_path / "logs").exists()
