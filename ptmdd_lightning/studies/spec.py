"""Sweep files: parsing, validation and expansion into points (the ``studies`` layer's first step).

A sweep file (YAML) names a base ``ptmdd`` config and the grid of overrides::

    name: nm_cpu                        # output folder lightning_logs/sweeps/<name> (``--out`` overrides)
    title: "DM + CLoM: N_m x PTM epoch" # plot title
    base: ../dm_clom.yaml               # a config or a list (layered: ptmdd_lightning/layers.py), relative to this file
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
        creates: ptm_pool/fashion_mnist/ConvNet/seed${seed}/epoch8.pt   # done when these files exist
    slurm:                              # defaults of ``--executor slurm`` (the command line overrides them)
      partition: gpu
      gpus_per_task: 1
      cpus_per_task: 8
      time_min: 120
      array_parallelism: 16

An axis value is a scalar or a mapping ``{label: ..., value: ..., overrides: {...}, base: ...}``:
``overrides`` are set for that value only (after the template), ``base`` replaces the base config(s) (e.g. one
axis over DC/DSA/DM). A string that is exactly ``"${axis}"`` becomes the value itself (an int stays an int);
``${axis}`` inside a longer string is replaced textually.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ptmdd_lightning.errors import PtmddError

__all__ = [
    "RESERVED",
    "SLURM_KEYS",
    "SUMMARY_FIELDS",
    "Axis",
    "AxisValue",
    "Point",
    "SweepSpec",
    "check_slurm",
    "expand",
    "load_sweep",
    "substitute",
]

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: the columns of a summary row (``studies.collect``), in CSV order (the sweep's axis names go after "name")
SUMMARY_FIELDS = (
    "kind",
    "point",
    "name",
    "x",
    "series",
    "arch",
    "labels",
    "synthetic_mean",
    "synthetic_std",
    "n",
    "runs",
    "random_real_mean",
    "random_real_std",
    "gain_vs_random",
    "gain_vs_baseline",
    "baseline",
    "paired_gain",
    "paired_ci95",
    "paired_seeds",
)
#: column names axis names must not shadow: the summary's and the long table's own
RESERVED = frozenset((*SUMMARY_FIELDS, "set", "seed", "model", "acc"))
#: the ``slurm:`` keys of a sweep file (and ``--slurm KEY=VALUE``), with their meaning
SLURM_KEYS = {
    "partition": "SLURM partition (--partition)",
    "gpus_per_task": "GPUs of each point (--gpus-per-task)",
    "cpus_per_task": "CPU cores of each point (--cpus-per-task)",
    "mem_gb": "memory of each point in GB (--mem)",
    "time_min": "wall-time limit of each point in minutes (--time)",
    "array_parallelism": "points running at once (the %N of --array)",
    "account": "SLURM account (--account)",
    "qos": "quality of service (--qos)",
    "constraint": "node features (--constraint)",
    "additional": "any other sbatch options as a mapping, e.g. {exclude: node7}",
}


# ---------------------------------------------------------------------------------------------- the spec
@dataclass
class AxisValue:
    """One value of a sweep axis.

    Attributes:
        label: how the value is shown (table, legend, folder name).
        value: what ``"${axis}"`` placeholders become (default: the label's scalar).
        overrides: dotted-key overrides of this value only (applied after the template).
        base: config files replacing the sweep's base for this value (``None``: keep it).

    Raises:
        Nothing of its own.
    """

    label: str
    value: Any
    overrides: dict[str, Any] = field(default_factory=dict)
    base: list[Path] | None = None


@dataclass
class Axis:
    """A named sweep axis and its values, in order.

    Raises:
        Nothing of its own.
    """

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
        seeds: the seeds of this run (a ``prepare`` run's member seeds); ``None``: the sweep's.
        subcommand: the ``ptmdd`` subcommand; ``None``: the sweep's.
        creates: files (``${seed}`` substituted) whose existence means this run is done (``prepare`` runs).

    Raises:
        Nothing of its own.
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
    """A parsed sweep file (see the module docstring for the format).

    Raises:
        Nothing of its own.
    """

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
    slurm: dict[str, Any] = field(default_factory=dict)


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
        "slurm",
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
        if str(name) in RESERVED:
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
    spec.slurm = check_slurm(raw.get("slurm") or {}, path.name)
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

    Raises:
        Nothing of its own.
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
    """All runs of a sweep: the grid points (product of the axes, first axis slowest), then the baselines.

    Raises:
        PtmddError: two runs map to the same folder name (labels that are not distinct).
    """
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


def check_slurm(params: Any, where: str) -> dict[str, Any]:
    """Validate SLURM parameters (the ``slurm:`` section or ``--slurm KEY=VALUE``) against :data:`SLURM_KEYS`.

    Raises:
        PtmddError: not a mapping, an unknown key (the message lists the known ones), or ``additional`` that is
            not a mapping.
    """
    if not isinstance(params, dict):
        raise PtmddError(f"{where}: slurm must be a mapping such as {{partition: gpu, time_min: 120}}.")
    unknown = sorted(set(params) - set(SLURM_KEYS))
    if unknown:
        known = ", ".join(f"{k} ({v})" for k, v in SLURM_KEYS.items())
        raise PtmddError(f"{where}: unknown slurm keys {unknown}; known keys: {known}.")
    if "additional" in params and not isinstance(params["additional"], dict):
        raise PtmddError(f"{where}: slurm.additional must map sbatch option names to values.")
    return dict(params)
