"""Small builders shared by the tests (tiny data is made on the fly)."""

from __future__ import annotations

from pathlib import Path

import yaml

from ptmdd_lightning.data import DATASETS, DatasetInfo


def toy_info(num_classes: int = 3, channels: int = 1, image_size: tuple[int, int] = (8, 8), **kw) -> DatasetInfo:
    """A :class:`DatasetInfo` of a made-up dataset ``toy``: K classes, ``(C, H, W)`` images, mean 0.5, std 0.25."""
    fields = dict(
        name="toy",
        channels=channels,
        image_size=image_size,
        num_classes=num_classes,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        class_names=tuple(f"c{k}" for k in range(num_classes)),
    )
    return DatasetInfo(**(fields | kw))


def fmnist_info(classes: list[int] | None = None) -> DatasetInfo:
    """Fashion-MNIST's registry entry, or the view of a class subset."""
    return DATASETS["fashion_mnist"].subset(classes)


def config_layers(config_root: Path) -> list[tuple[Path, ...]]:
    """Every runnable ``ptmdd`` config under ``config_root`` as its files, in the order they are given to ``--config``.

    A file without ``model.class_path`` is a layer (e.g. the CPU budget ``paper/cpu/dm_clom.yaml``) and runs on top of
    the config of the same name one folder up (``paper/dm_clom.yaml``); every other file runs alone. Sweep files
    (``sweeps/``) are ``ptmdd-sweep`` input, not listed.

    Raises:
        AssertionError: a layer without its base config.
    """
    runs: list[tuple[Path, ...]] = []
    for path in sorted(config_root.rglob("*.yaml")):
        if "sweeps" in path.relative_to(config_root).parts:
            continue
        raw = yaml.safe_load(path.read_text()) or {}
        if (raw.get("model") or {}).get("class_path"):
            runs.append((path,))
        else:
            base = path.parent.parent / path.name
            assert base.is_file(), f"{path} is a layer (no model.class_path) without its base config {base}"
            runs.append((base, path))
    return runs


def layers_id(layers: tuple[Path, ...], config_root: Path) -> str:
    """``paper/dm_clom.yaml+paper/cpu/dm_clom.yaml``: the test id of a layered config."""
    return "+".join(str(p.relative_to(config_root)) for p in layers)


def resumable_checkpoint(every_n_train_steps: int = 1) -> dict:
    """The ``ModelCheckpoint`` entry of a resumable test run: ``last.ckpt`` every N steps and on SIGTERM."""
    return {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "save_last": True,
            "save_top_k": 0,
            "every_n_train_steps": every_n_train_steps,
            "enable_version_counter": False,
            "save_on_exception": True,
        },
    }
