"""benchmarks/bench.py never overwrites an earlier result of the same day."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    spec = importlib.util.spec_from_file_location("ptmdd_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_free_stem_picks_the_first_unused_name(tmp_path):
    bench = _bench()
    assert bench.free_stem(tmp_path, "cpu-2026-11-22") == "cpu-2026-11-22"
    (tmp_path / "cpu-2026-11-22.md").write_text("first run")
    assert bench.free_stem(tmp_path, "cpu-2026-11-22") == "cpu-2026-11-22-b"
    (tmp_path / "cpu-2026-11-22-b.json").write_text("{}")
    assert bench.free_stem(tmp_path, "cpu-2026-11-22") == "cpu-2026-11-22-c"
    assert (tmp_path / "cpu-2026-11-22.md").read_text() == "first run"
