"""``ptmdd-sweep``: run a grid of ``ptmdd`` runs (a paper study), collect the results into a table and a plot.

    ptmdd-sweep --sweep configs/paper/cpu/sweeps/nm.yaml           # run (or resume) every point, then collect
    ptmdd-sweep --sweep configs/paper/cpu/sweeps/nm.yaml --dry-run # print the points, write their configs
    ptmdd-sweep --sweep configs/paper/cpu/sweeps/nm.yaml -- --data.init_args.root /data  # extra ptmdd args
    ptmdd-sweep --sweep configs/paper/cpu/sweeps/nm.yaml --set trainer.max_steps=50       # a fixed override

A sweep file (YAML) names a base ``ptmdd`` config and the grid of overrides::

    name: nm_cpu                        # output folder lightning_logs/sweeps/<name> (``--out`` overrides)
    title: "DM + CLoM: N_m x PTM epoch" # plot title
    base: ../dm_clom.yaml               # a config or a list, relative to this file (dicts merge, lists not)
    subcommand: fit                     # default fit
    seeds: [0]                          # each point runs once per seed (seed_everything, data.init_args.seed)
    fixed:                              # dotted keys set for every point and baseline
      trainer.max_steps: 300
      trainer.callbacks.SyntheticSetEvaluation.init_args.protocol.epochs: 200   # a list item by its class name
    axes:                               # the grid: the cartesian product of the axes, in order
      N_m: [1, 2, 4]
      epoch: [1, 2]
    x: N_m                              # the plot's x axis (default: the first axis); other axes are series
    plot_archs: [ConvNet]               # the evaluation architectures to plot (default: all)
    overrides:                          # set for every point; "${axis}" is replaced by the point's value
      model.init_args.ptms:
        - {arch: ConvNet, alpha: 100.0, num_seeds: "${N_m}", epoch: "${epoch}", loss: clom}
    baselines:                          # extra runs drawn as horizontal lines (fixed + these overrides only)
      DM (no PTM):
        model.init_args.ptms: []
    prepare:                            # optional runs before every point (not collected), e.g. a PTM pool
      pool:                             # whose members keep several checkpoint epochs of ONE training run
        base: ../../../pretrain/fashion_mnist.yaml
        seeds: [0, 1]                   # here: the member seeds
        overrides: {trainer.max_epochs: 8}
        creates: ptm_pool/fashion_mnist/ConvNet/seed${seed}/epoch8.pt   # skip the run when these files exist

An axis value is a scalar or a mapping ``{label: ..., value: ..., overrides: {...}, base: ...}``:
``overrides`` are set for that value only (after the template), ``base`` replaces the base config(s) (e.g. one
axis over DC/DSA/DM). A string that is exactly ``"${axis}"`` becomes the value itself (an int stays an int);
``${axis}`` inside a longer string is replaced textually.

Every point (and seed) runs in its own versioned log folder ``<out>/runs/<point>/version_<seed>`` (its merged
config is ``sweep_point.yaml`` there), in this process through :func:`ptmdd_lightning.main.main`
(``--subprocess``: one ``python -m ptmdd_lightning`` per run). A finished run leaves ``sweep_done.json``; a
rerun skips it when its config is unchanged (resume), resumes an interrupted run from its
``checkpoints/last.ckpt``, and reruns a point whose config changed. Finally the ``results.json`` of every run
(written by :class:`ptmdd_lightning.callbacks.SyntheticSetEvaluation`) are collected into
``<out>/summary.{md,csv,json}`` and ``<out>/summary.png``: accuracy vs the x axis with error bars (std over
all evaluation models of all seeds), one line per series, the baselines and the random-real subset as
horizontal lines, one panel per evaluation architecture.
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.main import main as ptmdd_main

__all__ = [
    "Axis",
    "AxisValue",
    "Point",
    "SweepSpec",
    "collect",
    "expand",
    "load_sweep",
    "main",
    "merge_configs",
    "plot_summary",
    "point_config",
    "run_sweep",
    "set_dotted",
    "write_summary",
]

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DONE = "sweep_done.json"
#: the columns of a summary row, which axis names must not shadow
#: the columns of a summary row, in CSV order (the sweep's axis names go after "name")
_ROW_FIELDS = (
    "kind",
    "point",
    "name",
    "x",
    "series",
    "arch",
    "synthetic_mean",
    "synthetic_std",
    "n",
    "runs",
    "random_real_mean",
    "random_real_std",
    "gain_vs_random",
    "gain_vs_baseline",
    "baseline",
)
_ROW_KEYS = frozenset(_ROW_FIELDS)
_POINT_CONFIG = "sweep_point.yaml"


# ---------------------------------------------------------------------------------------------- the spec
@dataclass
class AxisValue:
    """One value of a sweep axis.

    Attributes:
        label: how the value is shown (table, legend, folder name).
        value: what ``"${axis}"`` placeholders become (default: the label's scalar).
        overrides: dotted-key overrides of this value only (applied after the template).
        base: config files replacing the sweep's base for this value (``None``: keep it).
    """

    label: str
    value: Any
    overrides: dict[str, Any] = field(default_factory=dict)
    base: list[Path] | None = None


@dataclass
class Axis:
    """A named sweep axis and its values, in order."""

    name: str
    values: list[AxisValue]

    @property
    def numeric(self) -> bool:
        """Whether every value is an int or float (not bool): the plot then uses a numeric x axis."""
        return all(isinstance(v.value, int | float) and not isinstance(v.value, bool) for v in self.values)


@dataclass
class Point:
    """One run configuration of a sweep (without the seed).

    Attributes:
        id: folder-safe identifier, e.g. ``N_m=2__epoch=1`` or ``baseline=DM_no_PTM``.
        kind: ``"point"`` (a grid point) or ``"baseline"``.
        name: the display name (the baseline's name; the axis labels for a point).
        labels: ``{axis: label}`` (empty for a baseline).
        values: ``{axis: value}`` (empty for a baseline).
        base: the config files, merged in order.
        overrides: the dotted-key overrides (fixed, then template, then the axis values').
    """

    id: str
    kind: str
    name: str
    labels: dict[str, str]
    values: dict[str, Any]
    base: list[Path]
    overrides: dict[str, Any]
    seeds: list[int] | None = None
    subcommand: str | None = None
    creates: list[str] = field(default_factory=list)


@dataclass
class SweepSpec:
    """A parsed sweep file (see the module docstring for the format)."""

    path: Path
    name: str
    title: str
    base: list[Path]
    subcommand: str
    seeds: list[int]
    fixed: dict[str, Any]
    axes: list[Axis]
    x: str | None
    overrides: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    plot_archs: list[str] | None
    description: str = ""
    prepare: list[Point] = field(default_factory=list)


def _as_paths(value: Any, folder: Path, what: str) -> list[Path]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise PtmddError(f"{what} must be a config path or a list of them, got {value!r}.")
    paths = [(folder / v).resolve() if not Path(v).is_absolute() else Path(v) for v in items]
    for p in paths:
        if not p.is_file():
            raise PtmddError(f"{what}: config {p} does not exist; paths are relative to the sweep file.")
    return paths


def _label(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _dotted(mapping: Any, what: str) -> dict[str, Any]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict) or not all(isinstance(k, str) for k in mapping):
        raise PtmddError(f"{what} must be a mapping of dotted keys (e.g. trainer.max_steps: 300), got {mapping!r}.")
    return dict(mapping)


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Parse and validate a sweep file.

    Raises:
        PtmddError: a missing file or base config, an unknown key, an empty axis, an ``x`` that is not an
            axis, or a placeholder naming no axis.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise PtmddError(f"sweep file {path} does not exist; see configs/paper/cpu/sweeps/ for examples.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PtmddError(f"sweep file {path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict) or "base" not in raw:
        raise PtmddError(f"{path} is not a sweep file: it needs at least `base:` (a ptmdd config) and `axes:`.")
    known = {
        "name",
        "title",
        "description",
        "base",
        "subcommand",
        "seeds",
        "fixed",
        "axes",
        "x",
        "overrides",
        "baselines",
        "plot_archs",
        "prepare",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PtmddError(f"{path}: unknown sweep keys {unknown}; known keys are {sorted(known)}.")
    folder = path.parent
    base = _as_paths(raw["base"], folder, f"{path.name}: base")
    axes: list[Axis] = []
    for name, values in (raw.get("axes") or {}).items():
        if not isinstance(values, list) or not values:
            raise PtmddError(f"{path.name}: axis {name!r} needs a non-empty list of values.")
        parsed = []
        for v in values:
            if isinstance(v, dict):
                if "label" not in v and "value" not in v:
                    raise PtmddError(f"{path.name}: a mapping value of axis {name!r} needs `label` or `value`.")
                value = v.get("value", v.get("label"))
                vbase = _as_paths(v["base"], folder, f"{path.name}: axis {name}") if v.get("base") else None
                parsed.append(
                    AxisValue(
                        label=_label(v.get("label", value)),
                        value=value,
                        overrides=_dotted(v.get("overrides"), f"axis {name} overrides"),
                        base=vbase,
                    )
                )
            else:
                parsed.append(AxisValue(label=_label(v), value=v))
        if str(name) in _ROW_KEYS:
            raise PtmddError(f"{path.name}: axis name {name!r} is reserved for the summary table; rename it.")
        labels = [p.label for p in parsed]
        if len(set(labels)) != len(labels):
            raise PtmddError(f"{path.name}: axis {name!r} has repeated labels {labels}.")
        axes.append(Axis(str(name), parsed))
    x = raw.get("x")
    if x is not None and x not in [a.name for a in axes]:
        raise PtmddError(f"{path.name}: x: {x!r} is not an axis ({[a.name for a in axes]}).")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise PtmddError(f"{path.name}: seeds must be a non-empty list of ints, got {seeds!r}.")
    baselines = raw.get("baselines") or {}
    if not isinstance(baselines, dict):
        raise PtmddError(f"{path.name}: baselines must map a name to its overrides.")
    spec = SweepSpec(
        path=path,
        name=str(raw.get("name") or path.stem),
        title=str(raw.get("title") or raw.get("name") or path.stem),
        base=base,
        subcommand=str(raw.get("subcommand", "fit")),
        seeds=[int(s) for s in seeds],
        fixed=_dotted(raw.get("fixed"), "fixed"),
        axes=axes,
        x=x,
        overrides=_dotted(raw.get("overrides"), "overrides"),
        baselines={str(k): _dotted(v, f"baseline {k}") for k, v in baselines.items()},
        plot_archs=raw.get("plot_archs"),
        description=str(raw.get("description") or ""),
    )
    spec.prepare = _parse_prepare(raw.get("prepare"), path)
    if not axes and not spec.baselines:
        raise PtmddError(f"{path.name}: a sweep needs `axes:` (or at least one baseline).")
    names = {a.name for a in axes}
    for key, value in spec.overrides.items():
        for ph in _placeholders(value):
            if ph not in names:
                raise PtmddError(f"{path.name}: override {key} uses ${{{ph}}} but there is no axis {ph!r}.")
    return spec


def _parse_prepare(raw: Any, path: Path) -> list[Point]:
    """The ``prepare:`` runs: ``{name: {base, seeds, overrides, subcommand}}``, run before every point."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise PtmddError(f"{path.name}: prepare must map a name to {{base, seeds, overrides}}.")
    runs = []
    for name, entry in raw.items():
        if not isinstance(entry, dict) or "base" not in entry:
            raise PtmddError(f"{path.name}: prepare run {name!r} needs `base:` (a ptmdd config).")
        unknown = sorted(set(entry) - {"base", "seeds", "overrides", "subcommand", "creates"})
        if unknown:
            raise PtmddError(f"{path.name}: prepare run {name!r} has unknown keys {unknown}.")
        seeds = entry.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise PtmddError(f"{path.name}: prepare run {name!r}: seeds must be a non-empty list of ints.")
        creates = entry.get("creates") or []
        creates = [creates] if isinstance(creates, str) else [str(c) for c in creates]
        runs.append(
            Point(
                f"prepare={_safe(str(name))}",
                "prepare",
                str(name),
                {},
                {},
                _as_paths(entry["base"], path.parent, f"{path.name}: prepare {name}"),
                _dotted(entry.get("overrides"), f"prepare {name} overrides"),
                [int(s) for s in seeds],
                str(entry.get("subcommand", "fit")),
                creates,
            )
        )
    return runs


def _placeholders(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(_PLACEHOLDER.findall(value))
    if isinstance(value, dict):
        return set().union(*(_placeholders(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_placeholders(v) for v in value)) if value else set()
    return set()


def substitute(value: Any, values: dict[str, Any]) -> Any:
    """Replace ``"${axis}"`` placeholders in a nested value (a deep copy is returned).

    A string that is exactly ``"${axis}"`` becomes ``values[axis]`` itself (type kept); a placeholder inside a
    longer string is replaced by ``str(values[axis])``.
    """
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole:
            return copy.deepcopy(values[whole.group(1)])
        return _PLACEHOLDER.sub(lambda m: _label(values[m.group(1)]), value)
    if isinstance(value, dict):
        return {k: substitute(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, values) for v in value]
    return copy.deepcopy(value)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_") or "x"


def expand(spec: SweepSpec) -> list[Point]:
    """All runs of a sweep: the grid points (product of the axes, first axis slowest), then the baselines."""
    points: list[Point] = []
    for combo in itertools.product(*(a.values for a in spec.axes)) if spec.axes else []:
        values = {a.name: v.value for a, v in zip(spec.axes, combo, strict=True)}
        labels = {a.name: v.label for a, v in zip(spec.axes, combo, strict=True)}
        overrides = dict(spec.fixed)
        overrides.update(substitute(spec.overrides, values))
        base = spec.base
        for v in combo:
            overrides.update(substitute(v.overrides, values))
            if v.base is not None:
                base = v.base
        pid = "__".join(_safe(f"{k}={lab}") for k, lab in labels.items())
        points.append(
            Point(
                pid,
                "point",
                ", ".join(f"{k}={lab}" for k, lab in labels.items()),
                labels,
                values,
                list(base),
                overrides,
            )
        )
    for name, extra in spec.baselines.items():
        overrides = dict(spec.fixed)
        overrides.update(copy.deepcopy(extra))
        points.append(Point(f"baseline={_safe(name)}", "baseline", name, {}, {}, list(spec.base), overrides))
    ids = [p.id for p in points]
    if len(set(ids)) != len(ids):
        raise PtmddError(f"{spec.path.name}: two runs map to the same folder name ({ids}); use distinct labels.")
    return points


# ---------------------------------------------------------------------------------------------- configs
def merge_configs(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


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


def point_config(point: Point, seed: int, run_root: Path) -> dict[str, Any]:
    """The merged ``ptmdd`` config of one run: base files, overrides, seed and its own TensorBoard folder."""
    config: dict[str, Any] = {}
    for path in point.base:
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise PtmddError(f"{path} is not a ptmdd config (a YAML mapping).")
        config = merge_configs(config, loaded)
    for key, value in point.overrides.items():
        set_dotted(config, key, value)
    config["seed_everything"] = int(seed)
    if isinstance(config.get("data"), dict):
        set_dotted(config, "data.init_args.seed", int(seed))
    set_dotted(
        config,
        "trainer.logger",
        {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(run_root), "name": point.id, "version": int(seed)},
        },
    )
    return config


# ---------------------------------------------------------------------------------------------- running
def run_dir_of(out: Path, point: Point, seed: int) -> Path:
    """The log folder of ``point`` at ``seed``: ``<out>/runs/<point.id>/version_<seed>``."""
    return out / "runs" / point.id / f"version_{seed}"


def _run_inprocess(args: list[str]) -> tuple[bool, str]:
    import gc

    try:
        cli = ptmdd_main(args)
        del cli
        return True, ""
    except SystemExit as err:
        return err.code in (0, None), f"exit status {err.code}"
    except Exception as err:  # noqa: BLE001 - one failed point must not stop the sweep
        return False, f"{type(err).__name__}: {err}"
    finally:
        gc.collect()


def _run_subprocess(args: list[str]) -> tuple[bool, str]:
    proc = subprocess.run([sys.executable, "-m", "ptmdd_lightning", *args], check=False)
    return proc.returncode == 0, f"exit status {proc.returncode}"


def _signature(marker: Path) -> Any:
    """The ``signature`` stored in a ``sweep_done.json``/``sweep_started.json`` marker, or ``None``."""
    try:
        return json.loads(marker.read_text()).get("signature")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def run_sweep(
    spec: SweepSpec,
    out: Path,
    extra: list[str] | None = None,
    dry_run: bool = False,
    use_subprocess: bool = False,
    fail_fast: bool = False,
    seeds: list[int] | None = None,
    log=print,
) -> list[dict[str, Any]]:
    """Run every point of ``spec`` for every seed (skipping finished ones) into ``out``.

    Args:
        spec: the parsed sweep.
        out: the sweep's output folder (runs go to ``out/runs``).
        extra: extra ``ptmdd`` arguments appended to every run (e.g. ``["--data.init_args.root", "/data"]``).
        dry_run: only write the merged configs and print the commands.
        use_subprocess: run each point with ``python -m ptmdd_lightning`` instead of in this process.
        fail_fast: stop at the first failed run (otherwise the sweep goes on and reports the failures).
        seeds: replace the sweep's seeds.
        log: where progress lines go.

    Returns:
        One ``{"point", "seed", "status", "seconds", "dir"}`` record per run; ``status`` is ``done`` (ran
        now), ``skipped`` (finished before), ``failed`` or ``dry-run``.
    """
    extra = list(extra or [])
    out = out.resolve()
    run_root = out / "runs"
    records: list[dict[str, Any]] = []

    def record(point: Point, seed: int, status: str, folder: Path, seconds: float = 0.0, **more: Any) -> None:
        records.append(
            {
                "point": point.id,
                "seed": seed,
                "status": status,
                "seconds": seconds,
                "dir": str(folder),
                **more,
            }
        )

    for point in [*spec.prepare, *expand(spec)]:
        subcommand = point.subcommand or spec.subcommand
        for seed in point.seeds or seeds or spec.seeds:
            folder = run_dir_of(out, point, seed)
            text = yaml.safe_dump(point_config(point, seed, run_root), sort_keys=False)
            signature = {"config": text, "extra": extra, "subcommand": subcommand}
            done = folder / _DONE
            made = [Path(substitute(c, {"seed": seed})) for c in point.creates]
            if made and all(m.is_file() for m in made):
                log(
                    f"[ptmdd-sweep] {point.id} seed {seed}: its outputs exist ({made[0]}"
                    f"{', ...' if len(made) > 1 else ''}), skipped"
                )
                record(point, seed, "skipped", folder)
                continue
            if done.is_file():
                if _signature(done) == signature:
                    log(f"[ptmdd-sweep] {point.id} seed {seed}: finished before, skipped")
                    record(point, seed, "skipped", folder)
                    continue
                log(
                    f"[ptmdd-sweep] {point.id} seed {seed}: its config changed since it ran; rerunning it "
                    f"from scratch in {folder}"
                )
                if not dry_run:
                    shutil.rmtree(folder)
            args = [subcommand, "--config", str(folder / _POINT_CONFIG)]
            started = folder / "sweep_started.json"
            last = folder / "checkpoints" / "last.ckpt"
            if subcommand == "fit" and last.is_file() and started.is_file():
                if _signature(started) == signature:
                    args += ["--ckpt_path", str(last)]
                    log(f"[ptmdd-sweep] {point.id} seed {seed}: resuming from {last}")
                elif not dry_run:
                    shutil.rmtree(folder)
            args += extra
            folder.mkdir(parents=True, exist_ok=True)
            (folder / _POINT_CONFIG).write_text(text)
            log(f"[ptmdd-sweep] {point.id} seed {seed}: ptmdd {' '.join(args)}")
            if dry_run:
                record(point, seed, "dry-run", folder)
                continue
            started.write_text(json.dumps({"signature": signature}))
            t0 = time.perf_counter()
            ok, why = (_run_subprocess if use_subprocess else _run_inprocess)(args)
            seconds = round(time.perf_counter() - t0, 1)
            if ok:
                done.write_text(
                    json.dumps(
                        {"signature": signature, "seconds": seconds, "point": point.id, "seed": seed},
                        indent=1,
                    )
                )
                log(f"[ptmdd-sweep] {point.id} seed {seed}: done in {seconds:.0f} s")
                record(point, seed, "done", folder, seconds)
            else:
                log(f"[ptmdd-sweep] {point.id} seed {seed}: FAILED ({why}) after {seconds:.0f} s")
                record(point, seed, "failed", folder, seconds, error=why)
                if fail_fast:
                    return records
    return records


# ---------------------------------------------------------------------------------------------- collecting
def _final_rows(results: Path) -> list[dict[str, Any]]:
    rows = json.loads(results.read_text())
    if not rows:
        return []
    last = max(int(r["step"]) for r in rows)
    return [r for r in rows if int(r["step"]) == last]


def _pool(accs: list[float]) -> tuple[float, float]:
    n = len(accs)
    mean = sum(accs) / n
    return mean, math.sqrt(sum((a - mean) ** 2 for a in accs) / n)


def collect(spec: SweepSpec, out: Path, seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """Collect the final ``results.json`` rows of every finished run into one summary row per point and arch.

    Accuracies of all seeds of a point are pooled: ``*_mean``/``*_std`` are the mean and population std over
    every evaluation model of every seed (fractions in ``[0, 1]``). Runs without ``sweep_done.json`` are left
    out.

    Returns:
        Rows ``{"kind", "point", "name", <axis>: label ..., "x", "series", "arch", "synthetic_mean",
        "synthetic_std", "n", "runs", "random_real_mean", "random_real_std", "gain_vs_random",
        "gain_vs_baseline", "baseline"}`` in sweep order (``gain_vs_baseline``: against the first baseline;
        ``None`` without one and for that baseline itself). A run evaluated without the random-real subset
        (its ``baseline: false``) gets the sweep's random-real result of the same architecture when all runs
        that have one agree (the same IPC and evaluation seed give the same subset and models).
    """
    out = out.resolve()
    x_axis = spec.x or (spec.axes[0].name if spec.axes else None)
    rows: list[dict[str, Any]] = []
    for point in expand(spec):
        per_arch: dict[str, dict[str, list[float]]] = {}
        runs = 0
        for seed in seeds or spec.seeds:
            folder = run_dir_of(out, point, seed)
            results = folder / "results.json"
            if not (folder / _DONE).is_file() or not results.is_file():
                continue
            runs += 1
            for r in _final_rows(results):
                per_arch.setdefault(r["arch"], {}).setdefault(r["set"], []).extend(float(a) for a in r["accs"])
        for arch, sets in per_arch.items():
            if "synthetic" not in sets:
                continue
            m, s = _pool(sets["synthetic"])
            row: dict[str, Any] = {"kind": point.kind, "point": point.id, "name": point.name}
            row.update({a.name: point.labels.get(a.name, "") for a in spec.axes})
            row.update(
                {
                    "x": point.values.get(x_axis) if x_axis else None,
                    "series": ", ".join(f"{k}={v}" for k, v in point.labels.items() if k != x_axis),
                    "arch": arch,
                    "synthetic_mean": m,
                    "synthetic_std": s,
                    "n": len(sets["synthetic"]),
                    "runs": runs,
                    "random_real_mean": None,
                    "random_real_std": None,
                    "gain_vs_random": None,
                    "gain_vs_baseline": None,
                    "baseline": None,
                }
            )
            if sets.get("random_real"):
                rm, rs = _pool(sets["random_real"])
                row.update(random_real_mean=rm, random_real_std=rs, gain_vs_random=m - rm)
            rows.append(row)
    for arch in {r["arch"] for r in rows}:
        # runs that skip the random-real evaluation (baseline: false) share the sweep's one when it is unique
        shared = {
            (r["random_real_mean"], r["random_real_std"])
            for r in rows
            if r["arch"] == arch and r["random_real_mean"] is not None
        }
        if len(shared) == 1:
            rm, rs = shared.pop()
            for r in rows:
                if r["arch"] == arch and r["random_real_mean"] is None:
                    r.update(random_real_mean=rm, random_real_std=rs, gain_vs_random=r["synthetic_mean"] - rm)
    first_baseline = next(iter(spec.baselines), None)
    if first_baseline is not None:
        for row in rows:
            ref = next(
                (
                    r
                    for r in rows
                    if r["kind"] == "baseline" and r["name"] == first_baseline and r["arch"] == row["arch"]
                ),
                None,
            )
            if ref is not None and ref is not row:
                row["gain_vs_baseline"] = row["synthetic_mean"] - ref["synthetic_mean"]
                row["baseline"] = first_baseline
    return rows


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "–"  # noqa: RUF001 - the typographic dash of an empty table cell
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _gain(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.2f}"  # noqa: RUF001 - empty cell


def format_summary(spec: SweepSpec, rows: list[dict[str, Any]]) -> str:
    """The Markdown summary table (accuracies in %)."""
    axes = [a.name for a in spec.axes]
    base = next(iter(spec.baselines), None)
    head = ["run", *axes, "arch", "distilled acc. (%)", "random real (%)", "gain vs random"]
    if base is not None:
        head.append(f"gain vs {base}")
    head.append("runs / models")
    lines = [
        f"## {spec.title}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if h in ("run", "arch", *axes) else "---:" for h in head) + "|",
    ]
    for r in rows:
        cells = [
            r["name"] if r["kind"] == "baseline" else "point",
            *(r.get(a, "") for a in axes),
            r["arch"],
            _pct(r["synthetic_mean"], r["synthetic_std"]),
            _pct(r["random_real_mean"], r["random_real_std"]),
            _gain(r["gain_vs_random"]),
        ]
        if base is not None:
            cells.append(_gain(r["gain_vs_baseline"]))
        cells.append(f"{r['runs']} / {r['n']}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def write_summary(spec: SweepSpec, rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write ``summary.md``, ``summary.csv`` and ``summary.json`` into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / "summary.md"
    md.write_text(format_summary(spec, rows) + "\n")
    js = out / "summary.json"
    js.write_text(
        json.dumps(
            {
                "sweep": str(spec.path),
                "title": spec.title,
                "x": spec.x or (spec.axes[0].name if spec.axes else None),
                "rows": rows,
            },
            indent=1,
            default=str,
        )
    )
    cs = out / "summary.csv"
    fields = [*_ROW_FIELDS[:3], *[a.name for a in spec.axes], *_ROW_FIELDS[3:]]
    with cs.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return [md, cs, js]


def plot_summary(spec: SweepSpec, rows: list[dict[str, Any]], out: Path) -> Path | None:
    """Plot accuracy (%) against the x axis, one panel per evaluation architecture; return the PNG path.

    A numeric x axis draws one line with error bars (the pooled std) per series (the other axes' values), on a
    log scale when the values span a factor of 20 or more; a categorical one draws grouped bars. Baselines are
    solid horizontal lines with a +-std band; the random-real subset is a dashed grey line when all points
    share it. ``None`` when there is nothing to plot yet.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return None
    archs = [a for a in (spec.plot_archs or []) if any(r["arch"] == a for r in rows)]
    archs = archs or list(dict.fromkeys(r["arch"] for r in rows))
    x_axis = spec.x or (spec.axes[0].name if spec.axes else None)
    axis = next((a for a in spec.axes if a.name == x_axis), None)
    cols = min(len(archs), 2)
    nrows = math.ceil(len(archs) / cols)
    fig, axs = plt.subplots(nrows, cols, figsize=(6.2 * cols, 4.2 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, arch in zip(axs.flat, archs, strict=False):
        pts = [r for r in rows if r["arch"] == arch and r["kind"] == "point"]
        series = list(dict.fromkeys(r["series"] for r in pts))
        if axis is not None and pts:
            if axis.numeric:
                for i, s in enumerate(series):
                    sr = sorted((r for r in pts if r["series"] == s), key=lambda r: r["x"])
                    ax.errorbar(
                        [r["x"] for r in sr],
                        [100 * r["synthetic_mean"] for r in sr],
                        yerr=[100 * r["synthetic_std"] for r in sr],
                        marker="o",
                        capsize=4,
                        color=colors[i % len(colors)],
                        label=s or "distilled",
                    )
                xs = [v.value for v in axis.values]
                if min(xs) > 0 and max(xs) / min(xs) >= 20:
                    ax.set_xscale("log")
                ax.set_xticks(xs)
                ax.set_xticklabels([v.label for v in axis.values])
            else:
                labels = [v.label for v in axis.values]
                width = 0.8 / max(len(series), 1)
                for i, s in enumerate(series):
                    by_label = {r[x_axis]: r for r in pts if r["series"] == s}
                    pos = [j + (i - (len(series) - 1) / 2) * width for j, lab in enumerate(labels) if lab in by_label]
                    sel = [by_label[lab] for lab in labels if lab in by_label]
                    ax.bar(
                        pos,
                        [100 * r["synthetic_mean"] for r in sel],
                        width=width * 0.95,
                        yerr=[100 * r["synthetic_std"] for r in sel],
                        capsize=4,
                        color=colors[i % len(colors)],
                        label=s or "distilled",
                    )
                ax.set_xticks(range(len(labels)))
                ax.set_xticklabels(labels)
            ax.set_xlabel(x_axis)
        for j, b in enumerate(r for r in rows if r["arch"] == arch and r["kind"] == "baseline"):
            color = colors[(len(series) + j) % len(colors)]
            lo, hi = (
                100 * (b["synthetic_mean"] - b["synthetic_std"]),
                100 * (b["synthetic_mean"] + b["synthetic_std"]),
            )
            ax.axhspan(lo, hi, color=color, alpha=0.12)
            ax.axhline(100 * b["synthetic_mean"], color=color, lw=1.6, label=f"{b['name']} (baseline)")
        real = [r["random_real_mean"] for r in rows if r["arch"] == arch and r["random_real_mean"] is not None]
        if real and max(real) - min(real) < 1e-9:
            ax.axhline(100 * real[0], color="grey", ls="--", lw=1.2, label="random real subset")
        ax.set_title(f"{spec.title} — {arch}", fontsize=10)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axs.flat)[len(archs) :]:
        ax.axis("off")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    png = out / "summary.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """The ``ptmdd-sweep`` argument parser."""
    p = argparse.ArgumentParser(
        prog="ptmdd-sweep",
        description="Run every point of a ptmdd sweep file (resuming finished ones), then collect the "
        "results into <out>/summary.{md,csv,json,png}. Arguments after `--` go to every ptmdd run.",
    )
    p.add_argument("--sweep", required=True, help="the sweep file, e.g. configs/paper/cpu/sweeps/nm.yaml")
    p.add_argument("--out", default=None, help="output folder (default lightning_logs/sweeps/<name>)")
    p.add_argument("--dry-run", action="store_true", help="write the merged configs and print the runs only")
    p.add_argument("--collect-only", action="store_true", help="do not run anything, only collect and plot")
    p.add_argument("--subprocess", action="store_true", help="run each point as `python -m ptmdd_lightning`")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="replace the sweep's seeds")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="add a fixed override to every run (VALUE is YAML), e.g. "
        "--set trainer.callbacks.PretrainPTMPool.init_args.roots.mnist=/data",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ptmdd-sweep``; returns the exit status (1 when a run failed, 2 for a user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    try:
        spec = load_sweep(args.sweep)
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise PtmddError(f"--set needs KEY=VALUE, got {item!r}.")
            spec.fixed[key] = yaml.safe_load(value)
        out = Path(args.out) if args.out else Path("lightning_logs") / "sweeps" / spec.name
        records = []
        if not args.collect_only:
            records = run_sweep(
                spec,
                out,
                extra=extra,
                dry_run=args.dry_run,
                use_subprocess=args.subprocess,
                fail_fast=args.fail_fast,
                seeds=args.seeds,
            )
        if args.dry_run:
            return 0
        rows = collect(spec, out, seeds=args.seeds)
        files = write_summary(spec, rows, out)
        png = plot_summary(spec, rows, out)
    except PtmddError as err:
        print(f"ptmdd-sweep: error: {err}", file=sys.stderr)
        return 2
    print(format_summary(spec, rows))
    print(f"[ptmdd-sweep] wrote {', '.join(str(f) for f in files)}" + (f" and {png}" if png else ""))
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        print(
            f"[ptmdd-sweep] {len(failed)} run(s) failed: "
            + ", ".join(f"{r['point']} (seed {r['seed']})" for r in failed),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
