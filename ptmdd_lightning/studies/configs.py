"""The merged ``ptmdd`` config of one study run, and its signature.

A run's config is its point's base files merged in order (:func:`ptmdd_lightning.layers.merge_layers`, the rule
of ``ptmdd --config A --config B``), then its dotted overrides
(:func:`set_dotted`, which addresses a list item by its class name), then the seed and the run's own logger folder.
The signature is a SHA-256 over the config without the logger, the subcommand and the extra command-line
arguments: a run whose signature changed is a new run (a new version folder), never the old one continued.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.layers import merge_layers
from ptmdd_lightning.studies.spec import Point

__all__ = ["merge_layers", "point_config", "set_dotted", "signature", "with_logger"]


def _find_class(items: list[Any], name: str) -> int | None:
    for i, item in enumerate(items):
        if isinstance(item, dict):
            cp = str(item.get("class_path", ""))
            if cp == name or cp.rsplit(".", 1)[-1] == name:
                return i
    return None


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """Set ``config[a][b][c] = value`` for ``key = "a.b.c"`` in place, creating mappings as needed.

    Inside a list (e.g. ``trainer.callbacks``) a part is an int index or the class name of an item
    (``trainer.callbacks.SyntheticSetEvaluation.init_args.protocol.epochs``).

    Raises:
        PtmddError: a part that addresses no list item, or a part below a scalar (a missing or null part
            becomes a mapping).
    """
    parts = key.split(".")
    node: Any = config
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = int(part) if part.lstrip("-").isdigit() else _find_class(node, part)
            if idx is None or not -len(node) <= idx < len(node):
                raise PtmddError(
                    f"override {key}: no item {part!r} in the list at {'.'.join(parts[:i])}; "
                    "name a list item by its index or its class name."
                )
            if last:
                node[idx] = copy.deepcopy(value)
                return
            node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = copy.deepcopy(value)
                return
            if node.get(part) is None:
                node[part] = {}
            elif not isinstance(node[part], dict | list):
                raise PtmddError(f"override {key}: {'.'.join(parts[: i + 1])} is a value, not a mapping.")
            node = node[part]
        else:
            raise PtmddError(f"override {key}: {'.'.join(parts[:i])} is a value, not a mapping.")


def point_config(point: Point, seed: int) -> dict[str, Any]:
    """The merged ``ptmdd`` config of ``point`` at ``seed``, without its logger folder (see :func:`with_logger`).

    Base files merged in order, then the point's overrides, then ``seed_everything`` and ``data.init_args.seed``.

    Raises:
        PtmddError: a base file that is not a YAML mapping, or an override that addresses nothing.
    """
    config: dict[str, Any] = {}
    for path in point.base:
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise PtmddError(f"{path} is not a ptmdd config (a YAML mapping).")
        config = merge_layers(config, loaded)
    for key, value in point.overrides.items():
        set_dotted(config, key, value)
    config["seed_everything"] = int(seed)
    if isinstance(config.get("data"), dict):
        set_dotted(config, "data.init_args.seed", int(seed))
    return config


def with_logger(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A copy of ``config`` whose TensorBoard logger writes exactly into ``folder`` (``<save_dir>/<name>/<version>``).

    Raises:
        PtmddError: ``folder`` has no parent to serve as the logger's ``save_dir``.
    """
    folder = Path(folder)
    if folder.parent == folder:
        raise PtmddError(f"a run folder needs a parent folder, got {folder}.")
    out = copy.deepcopy(config)
    set_dotted(
        out,
        "trainer.logger",
        {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(folder.parent.parent), "name": folder.parent.name, "version": folder.name},
        },
    )
    return out


def signature(config: dict[str, Any], subcommand: str, extra: list[str]) -> str:
    """SHA-256 (hex) of a run's settings: its config without the logger, its subcommand and extra arguments.

    Raises:
        Nothing of its own.
    """
    settings = copy.deepcopy(config)
    if isinstance(settings.get("trainer"), dict):
        settings["trainer"].pop("logger", None)
    text = json.dumps({"config": settings, "subcommand": subcommand, "extra": list(extra)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
