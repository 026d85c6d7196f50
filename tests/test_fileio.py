"""Shared files never run code on load, and corrupted ones are refused (issue "Nothing executed, nothing lost", 1)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ptmdd_lightning.core.guidance import load_ptm
from ptmdd_lightning.core.synthetic import SyntheticSet, load_synthetic_set
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.fileio import convert_legacy, plain, safe_load
from ptmdd_lightning.main import check_checkpoint_file
from tests.test_resume import write_ptm


class Payload:
    """Unpickling this runs ``touch <marker>``: what a malicious shared file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclasses.dataclass
class OldGroup:
    """Stands in for the PTMGroup dataclass an older export held in its config."""

    arch: str = "ConvNet"
    alpha: float = 1.0


def _export(path: Path, config=None) -> Path:
    blob = SyntheticSet(10, 1, 1, (28, 28)).export((0.5,), (0.5,), "fashion_mnist", config=config)
    torch.save(blob, path)
    return path


def _flip(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 3  # inside the tensor data, far from the zip directory
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["ptm", "export", "checkpoint"])
def test_a_pickled_payload_is_refused_and_never_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / f"{kind}.pt"
    if kind == "ptm":
        write_ptm(path, evil=Payload(marker))
        load = lambda: load_ptm(path)  # noqa: E731
    elif kind == "export":
        blob = SyntheticSet(10, 1, 1, (28, 28)).export((0.5,), (0.5,), "fashion_mnist")
        torch.save({**blob, "config": Payload(marker)}, path)
        load = lambda: load_synthetic_set(path)  # noqa: E731
    else:
        torch.save({"state_dict": {}, "x": Payload(marker)}, path, _use_new_zipfile_serialization=False)
        load = lambda: check_checkpoint_file(path)  # noqa: E731
    with pytest.raises(PtmddError, match=r"does not unpickle|convert"):
        load()
    assert not marker.exists()  # the payload never ran


@pytest.mark.parametrize("kind", ["ptm", "export"])
def test_flipped_bytes_fail_the_crc_check(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "ptm":
        write_ptm(path)
        load = lambda: load_ptm(path)  # noqa: E731
    else:
        _export(path)
        load = lambda: load_synthetic_set(path)  # noqa: E731
    load()  # intact: loads
    _flip(path)
    with pytest.raises(PtmddError, match=r"CRC|corrupted"):
        load()


def test_new_exports_load_safely_and_old_ones_convert_in_one_line(tmp_path):
    new = _export(tmp_path / "new.pt", config={"ptms": [OldGroup()], "image_size": (28, 28)})
    blob = load_synthetic_set(new)  # dataclasses were written as dicts
    assert blob["config"]["ptms"] == [{"arch": "ConvNet", "alpha": 1.0}]
    old = tmp_path / "old.pt"
    blob = SyntheticSet(10, 1, 1, (28, 28)).export((0.5,), (0.5,), "fashion_mnist")
    torch.save({**blob, "config": {"ptms": [OldGroup()]}}, old)  # what an older ptmdd wrote
    with pytest.raises(PtmddError) as info:
        load_synthetic_set(old)
    command = str(info.value).rsplit(": ", 1)[1]
    assert command == f"python -m ptmdd_lightning.fileio convert {old}"
    proc = subprocess.run(
        [sys.executable, "-m", "ptmdd_lightning.fileio", "convert", str(old)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    assert load_synthetic_set(old)["config"]["ptms"] == [{"arch": "ConvNet", "alpha": 1.0}]
    assert (tmp_path / "old.pt.bak").is_file()
    with pytest.raises(PtmddError, match="already exists"):
        convert_legacy(old)  # never overwrites the backup


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(PtmddError, match="does not exist; rerun"):
        safe_load(tmp_path / "nope.pt", "thing", "rerun")


def test_plain_turns_dataclasses_into_dicts_and_with_lists_tuples_into_lists():
    @dataclasses.dataclass
    class Info:
        name: str
        size: tuple[int, int]
        where: Path

    value = {"info": Info("toy", (8, 8), Path("/tmp/x")), "pair": (1, [2, (3,)])}
    assert plain(value) == {"info": {"name": "toy", "size": (8, 8), "where": "/tmp/x"}, "pair": (1, [2, (3,)])}
    as_lists = plain(value, lists=True)
    assert as_lists == {"info": {"name": "toy", "size": [8, 8], "where": "/tmp/x"}, "pair": [1, [2, [3]]]}
    assert yaml.safe_load(yaml.dump(as_lists)) == as_lists  # no !!python/tuple tag left
