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

import os
import re
import signal
import sys
import zipfile
from copy import deepcopy
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

# Imported so that configs may name classes by their short name (class_path: Distiller).
import ptmdd_lightning.callbacks  # noqa: F401
import ptmdd_lightning.data  # noqa: F401
import ptmdd_lightning.modules  # noqa: F401
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.fileio import check_archive, safe_load

#: DataModule attributes linked into the model at instantiation (never repeated in YAML).
LINKED = ("num_classes", "channels", "image_size", "mean", "std", "dataset_name", "class_names", "classes")

#: ``last.ckpt`` and the ``last-v<N>.ckpt`` that ModelCheckpoint's version counter may write.
LAST_CKPT = re.compile(r"last(-v\d+)?\.ckpt")
#: ``ckpt_path`` values Lightning resolves itself (no file to check).
SPECIAL_CKPT = ("best", "hpc")
#: Exit status after SIGTERM (128 + 15, as a shell reports a process killed by SIGTERM).
SIGTERM_EXIT = 128 + signal.SIGTERM


class PtmddCLI(LightningCLI):
    """LightningCLI that links the DataModule's derived values (K, C, (H, W), mean/std, name) into the model.

    It also resolves ``--ckpt_path last`` to the newest ``last.ckpt`` among the config's versioned run
    folders and, for ``fit``, pins the logger's version to that folder (see the module docstring). A
    checkpoint given by path is checked first, so a bad file gives one
    :class:`~ptmdd_lightning.errors.PtmddError`.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in LINKED:
            parser.link_arguments("data", f"model.init_args.{name}", compute_fn=_getter(name),
                                  apply_on="instantiate")

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
            path, version = find_last_checkpoint(config.get("trainer"))
            self._user_values["ckpt_path"] = ckpt_path
            config["ckpt_path"] = str(path)
            if subcommand == "fit" and version is not None:
                self._user_values["trainer.logger"] = deepcopy(config.get("trainer.logger"))
                config["trainer.logger"] = _pinned_logger(config.get("trainer"), version)
            rank_zero_info(f"[ptmdd] --ckpt_path last: resuming from {path}")
        check_checkpoint_file(config.get("ckpt_path"))

    def after_instantiate_classes(self) -> None:
        """Put the user's ``ckpt_path``/logger back into the config that SaveConfigCallback writes.

        The run folder's ``config.yaml`` then reads ``ckpt_path: last`` (not one file), and re-running it
        never pins a new run to an existing version folder. (The objects were instantiated from the resolved
        values already.)
        """
        if self.subcommand is None:
            return
        for key, value in getattr(self, "_user_values", {}).items():
            self.config[self.subcommand][key] = value


def _pinned_logger(trainer: Namespace, version: int | str) -> Any:
    """The ``trainer.logger`` config with the first logger's ``version`` set (a default logger spelt out)."""
    logger = deepcopy(trainer.get("logger"))
    if logger is None or logger is True:
        return Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger",
                         init_args=Namespace(save_dir=trainer.get("default_root_dir") or os.getcwd(),
                                             name="lightning_logs", version=version))
    first = logger[0] if isinstance(logger, list) else logger
    first.init_args.version = version
    return logger


def _getter(name: str):
    def get(datamodule):
        value = getattr(datamodule, name)
        return list(value) if isinstance(value, tuple) else value

    get.__name__ = f"datamodule_{name}"
    return get


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
            "instead: --ckpt_path <run folder>/checkpoints/last.ckpt.")
    folder = Path(init.get("save_dir") or root)
    name = init.get("name")
    if name:
        folder = folder / str(name)
    return folder, init.get("version")


def find_last_checkpoint(trainer: Namespace | None) -> tuple[Path, int | str | None]:
    """The newest ``last.ckpt`` of the runs a trainer config writes, and the logger version of its folder.

    Where ModelCheckpoint writes: its ``dirpath`` when the config sets one (version ``None``: nothing to
    pin); otherwise ``<save_dir>/<name>/<version>/checkpoints`` of the first logger, every version folder (or
    only the pinned ``version``); without a logger ``<default_root_dir>/checkpoints``. Files named
    ``last.ckpt`` or ``last-v<N>.ckpt``; the newest by modification time wins.

    Args:
        trainer: the ``trainer`` section of a parsed config.

    Returns:
        ``(path, version)``: ``version`` is an ``int`` for ``version_<int>`` folders, else the folder name.

    Raises:
        PtmddError: no such checkpoint (the message names where it looked), or a logger without folders.
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
    found = [p for d in dirs if d.is_dir() for p in d.iterdir()
             if LAST_CKPT.fullmatch(p.name) and p.is_file()]
    if not found:
        where = ", ".join(str(d) for d in dirs) if dirs else f"{folder}/*/checkpoints"
        raise PtmddError(f"--ckpt_path last: no last.ckpt to resume from in {where}. Start a new run without "
                         "--ckpt_path (the config needs a ModelCheckpoint with save_last: true), or pass a "
                         "checkpoint file: --ckpt_path path/to/file.ckpt.")
    path = max(found, key=lambda p: p.stat().st_mtime)
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
    """Raise a :class:`PtmddError` unless ``path`` is a complete checkpoint file.

    ``torch.save`` writes a zip archive: a truncated file lacks the zip's central directory, a corrupted one
    fails the CRC-32 of a member (``zipfile.testzip`` reads every member once, without unpickling). A non-zip
    file (the legacy format) is test-loaded with ``torch.load(weights_only=True)`` (no pickle execution).

    Raises:
        PtmddError: missing, not a file, truncated or corrupted; the message names the file and the fix.
    """
    path = Path(path)
    fix = ("use an intact checkpoint (e.g. last.ckpt of the run folder, or --ckpt_path last), or start a new "
           "run without --ckpt_path")
    if not path.is_file():
        raise PtmddError(f"checkpoint {path} does not exist; {fix}.")
    if zipfile.is_zipfile(path):
        check_archive(path, "checkpoint", fix)
        return
    safe_load(path, "checkpoint", fix)  # the legacy (non-zip) format: test-loaded without pickle execution


def main(args: ArgsType = None) -> PtmddCLI | None:
    """Run the ``ptmdd`` command line.

    Args:
        args: the arguments (``["fit", "--config", "configs/quickstart.yaml"]``); ``None`` reads
            ``sys.argv``.

    Returns:
        With explicit ``args``, the :class:`PtmddCLI` after its subcommand ran (tests inspect ``cli.trainer``
        and ``cli.model``). ``None`` when reading ``sys.argv``, so that the console script's
        ``sys.exit(main())`` exits with status 0.

    A :class:`~ptmdd_lightning.errors.PtmddError` (a user error) prints ``ptmdd: error: <message>`` and exits
    with status 2 instead of a traceback. A run stopped by SIGTERM (Lightning finishes the current step; a
    ModelCheckpoint with ``save_on_exception: true`` writes ``last.ckpt``) exits with status 143 and says how
    to resume.
    """
    try:
        cli = PtmddCLI(
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except SIGTERMException:
        if rank_zero_only.rank == 0:
            print("ptmdd: stopped by SIGTERM after finishing the current step; continue the run with the "
                  "same command plus --ckpt_path last.", file=sys.stderr)
        sys.exit(SIGTERM_EXIT)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None:
            raise
        print(f"ptmdd: error: {user_error}", file=sys.stderr)
        sys.exit(2)
    return cli if args is not None else None


def find_user_error(err: BaseException) -> PtmddError | None:
    """The :class:`PtmddError` behind ``err``, if any (jsonargparse wraps errors raised in instantiation)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, PtmddError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
