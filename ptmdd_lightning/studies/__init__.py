"""Studies: a sweep file's grid of ``ptmdd`` runs, run by an existing engine, safe side by side, collected with pandas.

- :mod:`~ptmdd_lightning.studies.spec`: the sweep-file format, its validation and its expansion into points;
- :mod:`~ptmdd_lightning.studies.configs`: a run's merged config and its signature;
- :mod:`~ptmdd_lightning.studies.store`: the study folder (version folders, atomic claims, when a run is done);
- :mod:`~ptmdd_lightning.studies.execute`: the engines (local processes, SLURM through submitit);
- :mod:`~ptmdd_lightning.studies.collect`: the long-format table, the summary and the plot;
- :mod:`~ptmdd_lightning.studies.cli`: ``ptmdd-sweep``.
"""

from ptmdd_lightning.studies.collect import collect, format_summary, long_table, plot_summary, write_summary
from ptmdd_lightning.studies.configs import merge_layers, point_config, set_dotted, signature
from ptmdd_lightning.studies.execute import StudyArgs, load_study, run_local, run_slot, submit_slurm
from ptmdd_lightning.studies.spec import Axis, AxisValue, Point, SweepSpec, expand, load_sweep, substitute
from ptmdd_lightning.studies.store import Slot, Study, run_complete

__all__ = [
    "Axis",
    "AxisValue",
    "Point",
    "Slot",
    "Study",
    "StudyArgs",
    "SweepSpec",
    "collect",
    "expand",
    "format_summary",
    "load_study",
    "load_sweep",
    "long_table",
    "merge_layers",
    "plot_summary",
    "point_config",
    "run_complete",
    "run_local",
    "run_slot",
    "set_dotted",
    "signature",
    "submit_slurm",
    "substitute",
    "write_summary",
]
