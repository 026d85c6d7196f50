"""The ``ptmdd`` command: LightningCLI over ptmdd's modules and DataModules.

``ptmdd fit --config configs/quickstart.yaml`` (also ``validate``/``test``/``predict``); every Lightning
strategy (``--trainer.strategy ddp --trainer.devices N --trainer.num_nodes M``) works unchanged.

Resume: ``ptmdd fit --config X --ckpt_path last`` continues the newest run of that config. Lightning alone
would look for ``last.ckpt`` in the NEW version folder its logger makes for every run; :class:`PtmddCLI`
instead finds the newest ``<save_dir>/<name>/<version>/checkpoints/last*.ckpt`` of the config's logger, loads
it, and pins the logger to that version so the resumed run writes into the same folder. A run without
``--ckpt_path`` always gets a new version folder. A checkpoint file given by path is checked (exists, not
truncated/corrupted) before anything else reads it; that run goes into a new version folder (a branch, never
an overwrite). See docs/distributed.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import sys
import warnings
import zipfile
from copy import deepcopy
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml
from jsonargparse import ActionYesNo, Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn
from typing_extensions import override

# Imported so that configs may name classes by their short name (class_path: Distiller).
import ptmdd_lightning.callbacks
import ptmdd_lightning.data
import ptmdd_lightning.modules  # noqa: F401
from ptmdd_lightning.checkpoint_io import AtomicCheckpointIO
from ptmdd_lightning.core.evaluate import EvalProtocol
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.fileio import check_archive, remove_stray_temporaries, safe_load
from ptmdd_lightning.layers import layered_args
from ptmdd_lightning.machine import contention_warning, emulated_bf16_warning, trainer_precision
from ptmdd_lightning.nets.forward import keep_freed_memory

#: The model argument the DataModule's :class:`~ptmdd_lightning.data.DatasetInfo` (its ``info``) is linked into at
#: instantiation (never written in YAML).
LINKED = "dataset_info"
#: the eight separate arguments that ``dataset_info`` replaced (checkpoints of earlier versions carry them)
OLD_LINKED = ("num_classes", "channels", "image_size", "mean", "std", "dataset_name", "class_names", "classes")

#: ``last.ckpt`` and the ``last-v<N>.ckpt`` that ModelCheckpoint's version counter may write.
LAST_CKPT = re.compile(r"last(-v\d+)?\.ckpt")
#: ``ckpt_path`` values Lightning resolves itself (no file to check).
SPECIAL_CKPT = ("best", "hpc")
#: Exit status after SIGTERM (128 + 15, as a shell reports a process killed by SIGTERM).
SIGTERM_EXIT = 128 + signal.SIGTERM


def _no_cloud_tip(record: logging.LogRecord) -> bool:
    """``False`` for Lightning's "Tip: ... try installing litlogger" line, printed at every Trainer start.

    ptmdd runs offline and logs to TensorBoard, so that advert is noise in every run's output.
    """
    return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_cloud_tip)


class PtmddArgumentParser(LightningArgumentParser):
    """LightningCLI's parser whose errors print the error first and no usage screen (which buries it).

    Raises:
        Nothing of its own.
    """

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):  # raising is asked for
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        subcommand = parser.prog.split()[-1] if parser.prog else ""
        prog = f"ptmdd {subcommand}" if subcommand in ("fit", "validate", "test", "predict") else "ptmdd"
        sys.stderr.write(f"ptmdd: error: {_moved_protocol_key(message) or message}\n(all options: {prog} --help)\n")
        sys.exit(2)


#: the evaluation settings that moved from flat init_args into ``protocol`` (an EvalProtocol); ``batch_train`` of
#: SyntheticSetEvaluator is ``protocol.batch_size``
_PROTOCOL_KEYS = {f.name: f.name for f in dataclasses.fields(EvalProtocol)} | {"batch_train": "batch_size"}


def _moved_protocol_key(message: str) -> str | None:
    """The message for a flat evaluation key of an older config, or ``None``.

    The message for a flat evaluation key of an older config (e.g. ``epochs: 300`` in the init_args of
    SyntheticSetEvaluation), naming the new key; ``None`` for any other error.
    """
    if "SyntheticSetEvaluat" not in message and "NestedArg(key=" not in message:
        return None
    match = re.search(r"Option '(\w+)' is not accepted|NestedArg\(key='(\w+)'", message)
    key = match and (match.group(1) or match.group(2))
    if not key or key not in _PROTOCOL_KEYS:
        return None
    new = _PROTOCOL_KEYS[key]
    return (
        f"the evaluation setting {key!r} now lives in the evaluation's protocol: in YAML write "
        f"`protocol: {{{new}: ...}}` under the init_args of SyntheticSetEvaluation / SyntheticSetEvaluator "
        f"(on the command line --model.init_args.protocol.{new} or "
        f"--trainer.callbacks.init_args.protocol.{new})."
    )


class PtmddCLI(LightningCLI):
    """LightningCLI that links the DataModule's ``info`` (K, C, (H, W), mean/std, name, classes) into the model.

    It also resolves ``--ckpt_path last`` to the newest ``last.ckpt`` among the config's versioned run
    folders and, for ``fit``, pins the logger's version to that folder (see the module docstring). A
    checkpoint given by path is checked first, so a bad file gives one
    :class:`~ptmdd_lightning.errors.PtmddError`.

    Raises:
        PtmddError: a bad ``--ckpt_path`` file, or a ``PTMDD_PRECISION`` that is no precision
            (:func:`ptmdd_lightning.machine.trainer_precision`).
    """

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--overwrite",
            action=ActionYesNo,
            default=False,
            help="Write into a run folder that already holds another run's config.yaml, checkpoints or results "
            "(a pinned --trainer.logger.init_args.version, or --trainer.logger false). Off: such a run stops "
            "before writing anything.",
        )
        parser.add_argument(
            "--keep_freed_memory",
            action=ActionYesNo,
            default=False,
            help="Opt in to glibc keeping freed memory for reuse (mallopt; process-wide): faster CPU steps, a larger "
            "resident heap (docs/speed.md, lever 15). Recorded in results.json (machine.backend.cpu).",
        )
        parser.link_arguments("data", f"model.init_args.{LINKED}", compute_fn=_dataset_info, apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse; then resolve/check ``ckpt_path`` before LightningCLI reads its hyper-parameters."""
        super().parse_arguments(parser, args)
        self._user_values: dict[str, Any] = {}
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is None or ckpt_path in SPECIAL_CKPT:
            return
        if ckpt_path == "last":
            path, version = find_last_checkpoint(config.get("trainer"), config)
            self._user_values["ckpt_path"] = ckpt_path
            config["ckpt_path"] = str(path)
            if subcommand == "fit" and version is not None:
                self._user_values["trainer.logger"] = deepcopy(config.get("trainer.logger"))
                config["trainer.logger"] = _pinned_logger(config.get("trainer"), version)
            rank_zero_info(f"[ptmdd] --ckpt_path last: resuming from {path}")
        check_checkpoint_file(config.get("ckpt_path"))

    def before_instantiate_classes(self) -> None:
        """Resolve an unset ``trainer.precision`` to this machine's default (:func:`trainer_precision`).

        ``bf16-mixed`` on a GPU with bf16 and on a CPU with AMX-bf16, ``32-true`` elsewhere (without AMX bf16 is
        no faster on a CPU, or emulated and many times slower). The resolved value is what ``config.yaml``
        records. Drop the eight linked dataset fields that a checkpoint of a version before ``dataset_info`` hands
        over as hyper-parameters (:data:`OLD_LINKED`; the link sets ``dataset_info`` from the DataModule). Apply
        ``--keep_freed_memory`` when asked. On the CPU, also warn (with the fix) when other
        processes already keep busy the cores torch's threads will use
        (:func:`~ptmdd_lightning.machine.contention_warning`), and when the run asks for bf16 that the CPU can only
        emulate (:func:`~ptmdd_lightning.machine.emulated_bf16_warning`).
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        _drop_old_linked(config.get("model"))
        if config.get("keep_freed_memory"):
            keep_freed_memory()
        trainer = config.get("trainer")
        if trainer is not None and trainer.get("precision") is None:
            trainer["precision"] = trainer_precision(trainer.get("accelerator"))
        settings = trainer or Namespace()
        accelerator = str(settings.get("accelerator") or "auto")
        on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
        if self.subcommand in ("fit", "validate", "test") and on_cpu and rank_zero_only.rank == 0:
            for warning in (contention_warning(), emulated_bf16_warning(settings.get("precision"))):
                if warning:
                    rank_zero_warn(f"ptmdd: {warning}")

    def after_instantiate_classes(self) -> None:
        """Put the user's ``ckpt_path``/logger back into the config that SaveConfigCallback writes.

        The run folder's ``config.yaml`` then reads ``ckpt_path: last`` (not one file), and re-running it
        never pins a new run to an existing version folder. (The objects were instantiated from the resolved
        values already.) Also note the logger's version folder when it does not exist yet, so that a run failing
        before :class:`GuardedSaveConfig` runs (e.g. in the DataModule's ``setup``, after Lightning has made the
        logger's folder) leaves no folder behind (:func:`remove_failed_start`).
        """
        if self.subcommand is None:
            return
        config = self.config[self.subcommand]
        GuardedSaveConfig.created = _new_version_folder(self.trainer)
        strategy = getattr(self.trainer, "strategy", None)
        if strategy is not None and type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()  # a kill never truncates last.ckpt
        for callback in getattr(self.trainer, "callbacks", []):
            if isinstance(callback, GuardedSaveConfig):
                callback.resuming = "trainer.logger" in getattr(self, "_user_values", {})
                callback.resume_file = config.get("ckpt_path")
                callback.allow_overwrite = bool(config.get("overwrite"))
        for key, value in getattr(self, "_user_values", {}).items():
            config[key] = value
        config["overwrite"] = False  # a rerun of the saved config.yaml must ask again


#: files and folders that make a run folder another run's: its config, checkpoints and results
RUN_FILES = ("config.yaml", "checkpoints", "synthetic_set.pt", "results.json", "results.csv", "results.md")


class GuardedSaveConfig(SaveConfigCallback):
    """LightningCLI's config saver that never writes into another run's folder, and cleans up a failed start.

    A run writes into its log folder only when that folder holds none of :data:`RUN_FILES`, when it resumes
    that folder (``--ckpt_path last``, or ``--ckpt_path`` of a checkpoint inside it with the logger's version
    pinned to it, as ``ptmdd-sweep`` resumes a run), or with ``--overwrite``; otherwise it raises a
    :class:`~ptmdd_lightning.errors.PtmddError` before writing anything (all ranks). The folder it creates is
    remembered in :attr:`created` so that :func:`main` can remove it when the run fails before it wrote a
    checkpoint or a result (:func:`remove_failed_start`).

    Raises:
        PtmddError: (at setup) the log folder holds another run's files, and neither a resume nor
            ``--overwrite`` allows writing there.
    """

    resuming = False
    allow_overwrite = False
    #: the run's ``--ckpt_path`` file (resolved); one inside the logger's folder resumes that folder in place
    resume_file: str | None = None
    #: the logger's version folder that the latest setup in this process began to fill (``None``: none)
    created: Path | None = None

    @override
    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved or not self.save_to_log_dir:
            return super().setup(trainer, pl_module, stage)
        log_dir = Path(trainer.log_dir)  # a collective call: every rank
        taken = sorted(n for n in RUN_FILES if (log_dir / n).exists()) if trainer.is_global_zero else []
        taken = trainer.strategy.broadcast(taken)
        # a checkpoint of this very folder, with the logger pinned to it, continues the run in place
        in_place = self.resume_file is not None and Path(self.resume_file).resolve().is_relative_to(log_dir.resolve())
        if taken and not (self.resuming or in_place or self.allow_overwrite):
            raise PtmddError(
                f"{log_dir} already holds another run ({', '.join(taken)}); this run would overwrite it. Let the "
                "logger pick a new version folder (leave trainer.logger.init_args.version unset), choose another "
                "save_dir/name (or default_root_dir with --trainer.logger false), continue that run with "
                "--ckpt_path last, or replace it with --overwrite."
            )
        # a logger's version folder that holds no run yet (the logger may have made it already): removable
        # after a failed start
        GuardedSaveConfig.created = log_dir if _is_version_folder(trainer, log_dir) and not taken else None
        self.overwrite = True  # checked above
        return super().setup(trainer, pl_module, stage)


def _new_version_folder(trainer: Any) -> Path | None:
    """The first logger's version folder when this run will be the one to create it, else ``None``.

    Read from the logger itself (no collective call; the folder is made by rank 0), on rank 0 only. A folder that
    exists already (a resume, or another run's) is never returned, so it is never removed.

    Raises:
        Nothing of its own: a logger without a ``log_dir`` gives ``None``.
    """
    if trainer.logger is None or rank_zero_only.rank != 0:
        return None
    try:
        folder = Path(trainer.logger.log_dir)
    except (AttributeError, TypeError):
        return None
    return folder if _is_version_folder(trainer, folder) and not folder.exists() else None


def _is_version_folder(trainer: Any, folder: Path) -> bool:
    """Whether ``folder`` is a logger's own folder, never the working directory of a run without a logger."""
    return trainer.logger is not None and folder.resolve() != Path(trainer.default_root_dir).resolve()


def remove_failed_start() -> None:
    """Remove the run folder a failed run created, if it holds nothing but its config and logger files.

    Raises:
        Nothing of its own.
    """
    folder, GuardedSaveConfig.created = GuardedSaveConfig.created, None
    if folder is None or not folder.is_dir():
        return
    keep = [
        p
        for p in folder.iterdir()
        if p.name not in ("config.yaml", "hparams.yaml") and not p.name.startswith("events.out.tfevents.")
    ]
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)


def _pinned_logger(trainer: Namespace, version: int | str) -> Any:
    """The ``trainer.logger`` config with the first logger's ``version`` set (a default logger spelt out)."""
    logger = deepcopy(trainer.get("logger"))
    if logger is None or logger is True:
        return Namespace(
            class_path="lightning.pytorch.loggers.TensorBoardLogger",
            init_args=Namespace(
                save_dir=trainer.get("default_root_dir") or os.getcwd(), name="lightning_logs", version=version
            ),
        )
    first = logger[0] if isinstance(logger, list) else logger
    first.init_args.version = version
    return logger


def _drop_old_linked(model: Any) -> None:
    """Remove :data:`OLD_LINKED` from the ``dict_kwargs`` that LightningCLI built from an older checkpoint."""
    extra = model.get("dict_kwargs") if isinstance(model, Namespace) else None
    if isinstance(extra, dict):
        for name in OLD_LINKED:
            extra.pop(name, None)
        if not extra:
            del model["dict_kwargs"]


def _dataset_info(datamodule: Any) -> Any:
    """The DataModule's ``info`` (:class:`~ptmdd_lightning.data.DatasetInfo`), linked into the model."""
    return datamodule.info


def _logger_folder(trainer: Namespace | None) -> tuple[Path | None, Any]:
    """``(folder of the version folders, pinned version or None)`` of the trainer config's first logger.

    Returns ``(None, None)`` without a logger (checkpoints then go to ``<default_root_dir>/checkpoints``).

    Raises:
        PtmddError: a logger without ``save_dir``/``name`` (e.g. a cloud logger): its run folders are unknown.
    """
    trainer = trainer or Namespace()
    root = Path(trainer.get("default_root_dir") or os.getcwd())
    logger = trainer.get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else False
    if logger is False:
        return None, None
    if logger is None or logger is True:
        return root / "lightning_logs", None
    init = (logger.get("init_args") or Namespace()) if isinstance(logger, Namespace) else Namespace()
    if "save_dir" not in init:
        raise PtmddError(
            "--ckpt_path last needs a logger with save_dir and name (TensorBoardLogger, CSVLogger) to find "
            f"the run folders; {logger.get('class_path', logger)} has none. Pass the checkpoint file "
            "instead: --ckpt_path <run folder>/checkpoints/last.ckpt."
        )
    folder = Path(init.get("save_dir") or root)
    name = init.get("name")
    if name:
        folder = folder / str(name)
    return folder, init.get("version")


#: what makes a run the same run for ``--ckpt_path last``: its seed, its model class, IPC, method and PTM pool
RUN_IDENTITY = (
    "seed_everything",
    "model.class_path",
    "model.init_args.ipc",
    "model.init_args.method",
    "model.init_args.ptms",
    "model.init_args.pool_root",
)


def run_identity(config: Any) -> dict[str, str]:
    """The :data:`RUN_IDENTITY` values of a parsed config (``Namespace``) or a loaded ``config.yaml`` (dict).

    Values are compared as canonical JSON; a key the config lacks reads ``null``.

    Raises:
        Nothing of its own.
    """
    if isinstance(config, Namespace):
        config = config.as_dict()
    identity = {}
    for key in RUN_IDENTITY:
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        identity[key] = json.dumps(value, sort_keys=True, default=str)
    return identity


def _saved_identity(checkpoint: Path) -> dict[str, str] | None:
    """:func:`run_identity` of the ``config.yaml`` in the run folder of ``checkpoint`` (``None``: no such file)."""
    config_file = checkpoint.parent.parent / "config.yaml"
    if not config_file.is_file():
        return None
    try:
        return run_identity(yaml.safe_load(config_file.read_text()) or {})
    except yaml.YAMLError:
        return None


def _global_step(checkpoint: Path) -> int:
    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))
    except Exception:  # noqa: BLE001 -- an unreadable candidate sorts as unfinished; check_checkpoint_file reports
        return -1


def find_last_checkpoint(trainer: Namespace | None, config: Namespace | None = None) -> tuple[Path, int | str | None]:
    """The ``last.ckpt`` of the run that ``--ckpt_path last`` continues, and the logger version of its folder.

    Where ModelCheckpoint writes: its ``dirpath`` when the config sets one (version ``None``: nothing to
    pin); otherwise ``<save_dir>/<name>/<version>/checkpoints`` of the first logger, every version folder (or
    only the pinned ``version``); without a logger ``<default_root_dir>/checkpoints``. Files named
    ``last.ckpt`` or ``last-v<N>.ckpt``.

    With ``config``, only a run whose saved ``config.yaml`` has the same :data:`RUN_IDENTITY` (seed, model
    class, IPC, method, PTM pool) is continued; a checkpoint without a ``config.yaml`` beside its folder
    counts as matching. Among the matches an unfinished one (``global_step`` below ``trainer.max_steps``) wins
    over a finished one, then the newest by modification time.

    Args:
        trainer: the ``trainer`` section of a parsed config.
        config: the whole parsed config of the subcommand (``None``: no matching, the newest file wins).

    Returns:
        ``(path, version)``: ``version`` is an ``int`` for ``version_<int>`` folders, else the folder name.

    Raises:
        PtmddError: no such checkpoint (the message names where it looked), no run with the same identity
            (the message lists the candidates and the ``--ckpt_path`` of each), or a logger without folders.
    """
    trainer = trainer or Namespace()
    dirs: list[Path] = []
    for callback in _as_list(trainer.get("callbacks")):
        class_path = str(callback.get("class_path", "")) if isinstance(callback, Namespace) else ""
        if class_path.endswith("ModelCheckpoint"):
            dirpath = (callback.get("init_args") or Namespace()).get("dirpath")
            if dirpath:
                dirs.append(Path(dirpath))
    pinnable = not dirs
    folder = None
    if not dirs:
        folder, version = _logger_folder(trainer)
        if folder is None:
            dirs = [Path(trainer.get("default_root_dir") or os.getcwd()) / "checkpoints"]
            pinnable = False
        elif version is not None:
            dirs = [folder / (version if isinstance(version, str) else f"version_{version}") / "checkpoints"]
        else:
            dirs = sorted(folder.glob("*/checkpoints"))
    for d in dirs:
        for stray in remove_stray_temporaries(d):
            rank_zero_info(f"[ptmdd] removed {stray}, a partial checkpoint of a killed save")
    found = [p for d in dirs if d.is_dir() for p in d.iterdir() if LAST_CKPT.fullmatch(p.name) and p.is_file()]
    if not found:
        where = ", ".join(str(d) for d in dirs) if dirs else f"{folder}/*/checkpoints"
        raise PtmddError(
            f"--ckpt_path last: no last.ckpt to resume from in {where}. Start a new run without "
            "--ckpt_path (the config needs a ModelCheckpoint with save_last: true), or pass a "
            "checkpoint file: --ckpt_path path/to/file.ckpt."
        )
    candidates = found
    if config is not None:
        wanted = run_identity(config)
        saved = {p: _saved_identity(p) for p in found}
        candidates = [p for p in found if saved[p] is None or saved[p] == wanted]
        if not candidates:
            lines = []
            for p in sorted(found):
                differs = {k.rsplit(".", 1)[-1]: json.loads(v) for k, v in saved[p].items() if v != wanted[k]}
                lines.append(f"  --ckpt_path {p}  (differs in {differs})")
            raise PtmddError(
                "--ckpt_path last: no earlier run has this config's seed, model, IPC, method and PTM pool "
                f"({', '.join(f'{k.rsplit(chr(46), 1)[-1]}={json.loads(v)}' for k, v in wanted.items())}); "
                "the runs found:\n" + "\n".join(lines) + "\nStart a new run without --ckpt_path, or continue one "
                "of them with its --ckpt_path (a branch of it, in a new version folder)."
            )
    max_steps = trainer.get("max_steps")
    if len(candidates) > 1 and max_steps is not None and max_steps >= 0:
        path = min(candidates, key=lambda p: (_global_step(p) >= max_steps, -p.stat().st_mtime))
    else:
        path = max(candidates, key=lambda p: p.stat().st_mtime)
    if not pinnable:
        return path, None
    run = path.parent.parent.name
    match = re.fullmatch(r"version_(\d+)", run)
    return path, int(match.group(1)) if match else run


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Raise a :class:`PtmddError` unless ``path`` is a complete Lightning checkpoint file.

    ``torch.save`` writes a zip archive: a truncated file lacks the zip's central directory, a corrupted one
    fails the CRC-32 of a member (``zipfile.testzip`` reads every member once, without unpickling). A non-zip
    file (the legacy format) is test-loaded with ``torch.load(weights_only=True)`` (no pickle execution). A file
    of another kind, a synthetic-set export or a PTM pool member, is named as such (Lightning would fail with a
    ``KeyError``).

    Raises:
        PtmddError: missing, not a file, truncated or corrupted, or not a training checkpoint; the message names
            the file and the fix.
    """
    path = Path(path)
    fix = (
        "use an intact checkpoint (e.g. last.ckpt of the run folder, or --ckpt_path last), or start a new "
        "run without --ckpt_path"
    )
    if not path.is_file():
        raise PtmddError(f"checkpoint {path} does not exist; {fix}.")
    if zipfile.is_zipfile(path):
        check_archive(path, "checkpoint", fix)
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 -- objects a safe load refuses: Lightning's own load reports them
            return
    else:
        blob = safe_load(path, "checkpoint", fix)  # the legacy (non-zip) format: loaded without pickle execution
    if isinstance(blob, dict) and "pytorch-lightning_version" not in blob:
        if {"images", "labels"} <= blob.keys():
            kind = (
                "a synthetic-set export, not a training checkpoint; evaluate it with ptmdd test --config "
                "configs/evaluate.yaml --model.init_args.path " + str(path) + ", or resume its run from "
                "<run folder>/checkpoints/last.ckpt"
            )
        elif "state_dict" in blob and "arch" in blob:
            kind = (
                "a PTM pool member, not a distillation checkpoint; a pool is given by model.init_args.ptms and "
                "pool_root, and a run resumes from <run folder>/checkpoints/last.ckpt"
            )
        else:
            kind = f"not a Lightning checkpoint (no 'pytorch-lightning_version' key); {fix}"
        raise PtmddError(f"--ckpt_path {path} is {kind}.")


def main(args: ArgsType = None) -> PtmddCLI | None:
    """Run the ``ptmdd`` command line.

    Args:
        args: the arguments (``["fit", "--config", "configs/quickstart.yaml"]``); ``None`` reads
            ``sys.argv``. Config files given one after another (``--config A --config B``) are merged in order
            first (:func:`ptmdd_lightning.layers.layered_args`: a later file's callbacks merge into the same
            classes' entries instead of replacing the list).

    Returns:
        With explicit ``args``, the :class:`PtmddCLI` after its subcommand ran (tests inspect ``cli.trainer``
        and ``cli.model``). ``None`` when reading ``sys.argv``, so that the console script's
        ``sys.exit(main())`` exits with status 0.

    A :class:`~ptmdd_lightning.errors.PtmddError` (a user error) prints ``ptmdd: error: <message>`` and exits
    with status 2 instead of a traceback; a run folder that the failed run created and left without a checkpoint
    or a result is removed. A run never writes into another run's folder (:class:`GuardedSaveConfig`; ``--overwrite``
    allows it). A run stopped by SIGTERM (Lightning finishes the current step; a
    ModelCheckpoint with ``save_on_exception: true`` writes ``last.ckpt``) exits with status 143 and says how
    to resume.

    Raises:
        SystemExit: status 2 with ``ptmdd: error: <message>`` on a user error (a :class:`PtmddError`
            anywhere), 143 after SIGTERM; other errors propagate with their traceback.
    """
    GuardedSaveConfig.created = None
    try:  # config files given one after another merge into one (ptmdd_lightning/layers.py)
        if args is None:
            sys.argv[1:] = layered_args(sys.argv[1:])
        elif isinstance(args, list | tuple):
            args = layered_args(args)
    except PtmddError as err:
        print(f"ptmdd: error: {err}", file=sys.stderr)
        sys.exit(2)
    # GradientMatchingDistiller's training_step is a whole DC/DSA step (manual optimisation): a checkpoint after
    # it is the intended state, which Lightning's ModelCheckpoint warns about for manual optimisation in general
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)
    # Lightning's own use of a torch pytree API that torch deprecated; nothing a ptmdd user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # the DataModule serves validation data for PTM pretraining (Classifier); a distiller has no validation step
    warnings.filterwarnings("ignore", message="You passed in a `val_dataloader` but have no `validation_step`")
    try:
        cli = build_cli(args)
    except SIGTERMException:
        if rank_zero_only.rank == 0:
            print(
                "ptmdd: stopped by SIGTERM after finishing the current step; continue the run with the "
                "same command plus --ckpt_path last.",
                file=sys.stderr,
            )
        sys.exit(SIGTERM_EXIT)
    except Exception as err:
        remove_failed_start()  # a run that failed before writing a checkpoint or a result leaves no folder
        user_error = find_user_error(err)
        if user_error is None:
            raise
        print(f"ptmdd: error: {user_error}", file=sys.stderr)
        sys.exit(2)
    return cli if args is not None else None


def build_cli(args: ArgsType, run: bool = True) -> PtmddCLI:
    """The :class:`PtmddCLI` of the ``ptmdd`` command, built as :func:`main` builds it.

    Args:
        args: the arguments, config layers already merged (:func:`ptmdd_lightning.layers.layered_args`).
        run: run the subcommand (``False``: parse and instantiate only, as tests of the configs do; then ``args``
            carry no subcommand).

    Raises:
        SystemExit: a parse error (printed first by :class:`PtmddArgumentParser`). Errors of instantiation or of the
            run propagate; :func:`main` turns a :class:`PtmddError` among them into one line and status 2.
    """
    return PtmddCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_callback=GuardedSaveConfig,
        parser_class=PtmddArgumentParser,
        run=run,
        args=args,
    )


def find_user_error(err: BaseException) -> PtmddError | None:
    """The :class:`PtmddError` behind ``err``, if any (jsonargparse wraps errors raised in instantiation).

    Raises:
        Nothing of its own.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, PtmddError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
