"""Layered configs: ``ptmdd fit --config configs/paper/dm_clom.yaml --config configs/paper/cpu/dm_clom.yaml``.

Config files given one after another are merged in order into one config before LightningCLI parses it
(:func:`layered_args`); a study's list of base files is merged by the same rule (:func:`merge_layers`):

- mappings merge key by key (a later file sets only the keys it names);
- a list of ``class_path`` entries (``trainer.callbacks``) merges item by item: an entry of the later file whose
  class (its ``class_path``, or just the class name) is already in the list is merged into that entry (so a budget
  file sets ``num_models`` of ``SyntheticSetEvaluation`` without repeating the callback list); an entry of a new
  class is appended;
- anything else, lists included (e.g. ``model.init_args.ptms``), is replaced.

jsonargparse alone replaces a list given again by a later ``--config``; that would drop every callback the later
file does not repeat. The merged config is what the run folder's ``config.yaml`` records.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ptmdd_lightning.errors import PtmddError

__all__ = ["layered_args", "load_layers", "merge_layers"]

#: the option names of a config file on the ``ptmdd`` command line
CONFIG_OPTIONS = ("--config", "-c")


def _class_name(item: Any) -> str | None:
    """The class name (last part of ``class_path``) of a list entry, ``None`` for anything else."""
    if isinstance(item, dict) and isinstance(item.get("class_path"), str):
        return item["class_path"].rsplit(".", 1)[-1]
    return None


def _is_class_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_class_name(v) for v in value)


def merge_layers(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base`` by the rules of this module (neither argument changes).

    Args:
        base, update: parsed YAML mappings of ``ptmdd`` configs.

    Returns:
        The merged mapping. A merged ``class_path`` entry keeps the longer (fully qualified) ``class_path``.

    Raises:
        Nothing of its own.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            out[key] = merge_layers(old, value)
        elif _is_class_list(value) and _is_class_list(old):
            merged = list(old)
            for item in value:
                names = [_class_name(o) for o in merged]
                name = _class_name(item)
                if name in names:
                    i = names.index(name)
                    path = max(merged[i]["class_path"], item["class_path"], key=len)
                    merged[i] = {**merge_layers(merged[i], item), "class_path": path}
                else:
                    merged.append(copy.deepcopy(item))
            out[key] = merged
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_layers(paths: Sequence[str | Path]) -> dict[str, Any]:
    """The config files ``paths`` read and merged in order (:func:`merge_layers`).

    Raises:
        PtmddError: a missing file, invalid YAML, or a file that is not a mapping.
    """
    config: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise PtmddError(f"config file {path} does not exist; check the path given to --config.")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise PtmddError(f"{path} is not valid YAML ({err}); fix the file.") from err
        if loaded is None:
            continue
        if not isinstance(loaded, dict):
            raise PtmddError(f"{path} is not a ptmdd config (a YAML mapping of trainer/model/data/...).")
        config = merge_layers(config, loaded)
    return config


def _config_file(args: list[str], i: int) -> tuple[str, int] | None:
    """``(file, tokens used)`` when ``args[i]`` starts a config-file option, else ``None``."""
    arg = args[i]
    if arg in CONFIG_OPTIONS and i + 1 < len(args):
        return args[i + 1], 2
    for option in CONFIG_OPTIONS:
        if arg.startswith(option + "="):
            return arg[len(option) + 1 :], 1
    return None


def layered_args(args: Sequence[str]) -> list[str]:
    """``args`` with every run of two or more consecutive ``--config FILE`` options replaced by one merged config.

    The merged config is passed as a YAML string (``--config '<yaml>'``), which LightningCLI parses as it parses a
    file. A lone ``--config``, a ``--config`` given a YAML string instead of a file, and all other arguments stay
    as they are; so do config files separated by other options (jsonargparse then applies them in order, and a
    later one replaces lists).

    Raises:
        PtmddError: see :func:`load_layers`.
    """
    args = list(args)
    out: list[str] = []
    i = 0
    while i < len(args):
        files: list[str] = []
        j = i
        while j < len(args):
            found = _config_file(args, j)
            if found is None or not Path(found[0]).is_file():
                break
            files.append(found[0])
            j += found[1]
        if len(files) >= 2:
            out += ["--config", yaml.safe_dump(load_layers(files), sort_keys=False)]
            i = j
        elif files:
            out += args[i:j]
            i = j
        else:
            out.append(args[i])
            i += 1
    return out
