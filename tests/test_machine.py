"""The machine record of every results file: CPU model and ISA, threads, torch version, precision, fast paths."""

from __future__ import annotations

import csv
import json

import torch

from ptmdd_lightning import machine
from ptmdd_lightning.callbacks.evaluate import write_results
from ptmdd_lightning.machine import cpu_info, machine_record, native_bf16_cpu, record_fast_path

ROW = {"step": 3, "arch": "ConvNet", "set": "synthetic", "mean": 0.5, "std": 0.1, "n": 2, "accs": [0.4, 0.6],
       "seconds": 1.0}


def test_cpu_kind_follows_the_isa_flags(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    cases = {"fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16": "amx-bf16",
             "fpu avx2 avx512f avx512_bf16": "avx512-bf16", "fpu avx2 avx512f": "avx512", "fpu avx2": "avx2",
             "fpu sse2": "other"}
    real_open = open
    for flags, kind in cases.items():
        fake.write_text(f"vendor_id\t: AuthenticAMD\nmodel name\t: Test CPU\nflags\t\t: {flags}\n")
        monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p,
                                                                         *a, **k))
        cpu_info.cache_clear()
        info = cpu_info()
        assert info["kind"] == kind and info["model"] == "Test CPU" and info["vendor"] == "AuthenticAMD"
        assert set(info["isa"]) == set(flags.split()) - {"fpu", "sse2"}
        assert native_bf16_cpu() == (kind in ("amx-bf16", "avx512-bf16"))
    monkeypatch.undo()
    cpu_info.cache_clear()


def test_machine_record_names_threads_torch_precision_and_the_paths_that_ran(monkeypatch):
    monkeypatch.setattr(machine, "_PATHS_RAN", {})
    record_fast_path("eager")
    record_fast_path("cpu_kernels")
    record_fast_path("eager")
    rec = machine_record("cpu", "32")
    assert rec["fast_paths"] == ["cpu_kernels", "eager"]
    assert rec["threads"] == torch.get_num_threads() and rec["torch"] == torch.__version__
    assert rec["precision"] == "32" and rec["device"] == "cpu" and rec["gpu"] is None
    json.dumps(rec)  # JSON-ready


def test_write_results_puts_the_machine_into_json_csv_and_markdown(tmp_path):
    rec = machine_record("cpu", "bf16")
    write_results([ROW], tmp_path, machine=rec)
    rows = json.loads((tmp_path / "results.json").read_text())
    assert rows[0]["machine"] == rec and rows[0]["mean"] == 0.5
    with (tmp_path / "results.csv").open() as fh:
        (line,) = list(csv.DictReader(fh))
    assert line["cpu"] == rec["cpu"]["model"] and int(line["threads"]) == rec["threads"]
    assert line["precision"] == "bf16" and line["accs"] == "0.4000 0.6000"
    assert "precision bf16" in (tmp_path / "results.md").read_text()
    write_results([ROW], tmp_path / ".")  # without a record: the plain table, no machine key
    assert "machine" not in json.loads((tmp_path / "results.json").read_text())[0]
