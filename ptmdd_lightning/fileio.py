"""Safe loading of user-supplied files (PTM pool members, synthetic-set exports, checkpoints).

DD researchers share PTM pools and synthetic sets. ``torch.load(..., weights_only=False)`` unpickles arbitrary
Python objects, so a shared file could run code on load. Every ptmdd file is read here with
``weights_only=True`` (tensors, dicts, lists, tuples, strings, numbers, ``None`` only), after a CRC-32 check of
every member of the zip archive that ``torch.save`` writes (torch's own reader does not check it: a file with
flipped bytes would otherwise load silently with wrong weights).

Files written by older ptmdd versions whose metadata held Python objects (the export's ``config`` with
``PTMGroup`` dataclasses) are refused with the one-line conversion, which the user runs only for files they
trust: ``python -m ptmdd_lightning.fileio convert FILE`` (it keeps ``FILE.bak``).

Pure Python + torch; never imports Lightning.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ptmdd_lightning.errors import PtmddError

__all__ = [
    "TMP_NAME",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "check_archive",
    "convert_legacy",
    "plain",
    "remove_stray_temporaries",
    "safe_load",
]


def check_archive(path: str | os.PathLike, what: str, fix: str) -> None:
    """Raise :class:`PtmddError` if the zip archive at ``path`` is truncated or a member fails its CRC-32.

    A file that is not a zip archive (torch's legacy format) passes; :func:`safe_load` then reads it.

    Raises:
        PtmddError: naming ``what`` (e.g. ``"PTM checkpoint"``), the file and ``fix``.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as err:
        raise PtmddError(f"{what} {path} is truncated or corrupted ({type(err).__name__}: {err}); {fix}.") from err
    if bad is not None:
        raise PtmddError(f"{what} {path} is corrupted (member {bad} fails its CRC check); {fix}.")


def safe_load(path: str | os.PathLike, what: str, fix: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` after :func:`check_archive`.

    Args:
        path: the file.
        what: what the file is, for messages (``"PTM checkpoint"``, ``"synthetic set file"``, ``"checkpoint"``).
        fix: what to do about a truncated or corrupted file.

    Returns:
        the loaded object (tensors on the CPU).

    Raises:
        PtmddError: missing file; truncated or corrupted (CRC); or holding Python objects that a safe load refuses
            (the message gives the conversion command for a trusted file written by an older ptmdd).
    """
    path = Path(path)
    if not path.is_file():
        raise PtmddError(f"{what} {path} does not exist; {fix}.")
    check_archive(path, what, fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # not an object but garbage: the weights-only unpickler gave up
            raise PtmddError(f"{what} {path} is truncated or corrupted ({type(err).__name__}); {fix}.") from err
        raise PtmddError(
            f"{what} {path} holds Python objects that ptmdd does not unpickle (a shared file could run code on "
            f"load: {_global_named(err)}). If you wrote it with an older ptmdd and trust it, convert it "
            f"once: python -m ptmdd_lightning.fileio convert {path}"
        ) from err
    except Exception as err:
        raise PtmddError(f"{what} {path} is truncated or corrupted ({type(err).__name__}: {err}); {fix}.") from err


def _global_named(err: Exception) -> str:
    """The line naming the refused GLOBAL of torch's weights-only refusal."""
    line = next((ln for ln in str(err).splitlines() if "GLOBAL" in ln), str(err).splitlines()[0])
    return line.strip()[:200]


def plain(obj: Any, *, lists: bool = False) -> Any:
    """``obj`` as plain containers that a ``weights_only=True`` load (or, with ``lists``, ``yaml.safe_load``) accepts.

    ``obj`` with dataclasses turned into dicts, recursively (dicts, lists, tuples), so that a
    ``weights_only=True`` load accepts it. Mapping subclasses (e.g. Lightning's ``AttributeDict``) become dicts,
    paths strings. With ``lists=True`` tuples become lists too (PyYAML writes a tuple as a ``!!python/tuple`` tag,
    which ``yaml.safe_load`` refuses).

    Raises:
        Nothing of its own.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: plain(v, lists=lists) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: plain(v, lists=lists) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        items = [plain(v, lists=lists) for v in obj]
        return tuple(items) if type(obj) is tuple and not lists else items
    if isinstance(obj, Path):
        return str(obj)
    return obj


#: the temporary file of :func:`atomic_write` for ``path``: ``.<name>.tmp<pid>`` in the same folder
TMP_NAME = re.compile(r"\.(?P<name>.+)\.tmp(?P<pid>\d+)")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Write ``path`` atomically (temporary file, fsync, rename).

    Write ``path`` atomically: ``write(fileobj)`` on ``.<name>.tmp<pid>`` in the same folder, fsync,
    ``os.replace``. ptmdd's one atomic writer (checkpoints, exports, PTM members, results, the data cache).

    The temporary file sits next to the target, so the rename never crosses filesystems (a temporary folder
    on ``/dev/shm`` or node-local scratch would turn it into a copy that a kill can truncate). The previous
    ``path`` stays intact until the new file is complete and on disk; a killed writer leaves at most a stray
    temporary file (:func:`remove_stray_temporaries` removes it), never a truncated ``path``.

    Args:
        path: the target file; its folder is created.
        write: writes the content to the binary file object it is given.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OSError: the folder is not writable or the disk is full (the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:
        pass  # a filesystem without directory fsync
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`.

    Raises:
        OSError: the folder is not writable or the disk is full (the temporary file is removed).
    """
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) to ``path`` through :func:`atomic_write`.

    Raises:
        Nothing of its own.
    """
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def remove_stray_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` in ``folder`` whose writer process is gone.

    Returns:
        the removed files (none when ``folder`` does not exist).

    Raises:
        Nothing of its own.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        match = TMP_NAME.fullmatch(p.name)
        if match is None or not p.is_file():
            continue
        pid = int(match.group("pid"))
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()  # this process writes nothing while it cleans up
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def convert_legacy(path: str | os.PathLike) -> Path:
    """Rewrite a TRUSTED file of an older ptmdd so that :func:`safe_load` reads it.

    Rewrite a TRUSTED file of an older ptmdd so that :func:`safe_load` reads it; the original is kept as
    ``<path>.bak``. This unpickles the file (``weights_only=False``): run it only on files you trust.

    Raises:
        PtmddError: the file is missing, or ``<path>.bak`` already exists (nothing is overwritten).
    """
    path = Path(path)
    backup = path.with_name(path.name + ".bak")
    if not path.is_file():
        raise PtmddError(f"{path} does not exist.")
    if backup.exists():
        raise PtmddError(f"{backup} already exists; move it away first (nothing is overwritten).")
    blob = plain(torch.load(path, map_location="cpu", weights_only=False))
    shutil.copy2(path, backup)
    return atomic_save(blob, path)


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "convert":
        print("usage: python -m ptmdd_lightning.fileio convert FILE   (only for files you trust)", file=sys.stderr)
        return 2
    try:
        out = convert_legacy(argv[1])
    except PtmddError as err:
        print(f"ptmdd: error: {err}", file=sys.stderr)
        return 2
    print(f"converted {out} (original kept as {out}.bak)")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
