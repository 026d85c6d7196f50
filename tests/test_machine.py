"""The machine record of every results file: CPU model and ISA, threads, torch version, precision, fast paths."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ptmdd_lightning import machine
from ptmdd_lightning.core.evaluate import _autocast
from ptmdd_lightning.machine import (
    attempt_kinds,
    attempt_record,
    auto_precision,
    code_record,
    cpu_info,
    kinds_summary,
    machine_record,
    native_bf16_cpu,
    record_fast_path,
    trainer_precision,
)
from ptmdd_lightning.reporting import write_results

ROW = {
    "step": 3,
    "arch": "ConvNet",
    "set": "synthetic",
    "mean": 0.5,
    "std": 0.1,
    "n": 2,
    "accs": [0.4, 0.6],
    "seconds": 1.0,
}


def test_cpu_kind_follows_the_isa_flags(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    cases = {
        "fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16": "amx-bf16",
        "fpu avx2 avx512f avx512_bf16": "avx512-bf16",
        "fpu avx2 avx512f": "avx512",
        "fpu avx2": "avx2",
        "fpu sse2": "other",
    }
    real_open = open
    for flags, kind in cases.items():
        fake.write_text(f"vendor_id\t: AuthenticAMD\nmodel name\t: Test CPU\nflags\t\t: {flags}\n")
        monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k))
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


def test_an_attempt_names_its_step_cpu_kind_and_commit_and_the_kinds_of_a_run_merge_repeats():
    attempt = attempt_record(7, "cpu", "bf16-mixed")
    assert attempt["from_step"] == 7 and attempt["cpu_kind"] == cpu_info()["kind"] and attempt["device"] == "cpu"
    assert attempt["precision"] == "bf16-mixed" and attempt["commit"] == code_record()["commit"]
    assert attempt["started"].endswith("Z") and attempt["threads"] == torch.get_num_threads()
    json.dumps(attempt)
    intel, amd = {"cpu_kind": "amx-bf16"}, {"cpu_kind": "avx512-bf16"}
    assert attempt_kinds({"attempts": [intel, intel, amd, amd, intel]}) == ("amx-bf16", "avx512-bf16", "amx-bf16")
    assert attempt_kinds({"attempts": [{"from_step": 0, "cpu_kind": None}, amd]}) == ("?", "avx512-bf16")
    assert attempt_kinds({"cpu": {"kind": "avx2"}}) == ("avx2",)  # a record of before 2026-12-04: one attempt
    assert attempt_kinds({"cpu": {"kind": "avx2"}, "gpu": "NVIDIA H200"}) == ("cuda",)
    assert attempt_kinds(None) == ("?",) and attempt_kinds({}) == ("?",)


def test_kinds_summary_counts_each_runs_chain_of_kinds():
    intel, amd = {"cpu_kind": "amx-bf16"}, {"cpu_kind": "avx512-bf16"}
    runs = [[intel], [intel, amd], None, [amd, amd], [intel, intel]]
    assert kinds_summary(runs) == "? x1, amx-bf16 x2, amx-bf16 -> avx512-bf16 x1, avx512-bf16 x1"
    assert kinds_summary([]) == ""


def test_write_results_lists_a_resumed_runs_attempts_under_the_table(tmp_path):
    rec = dict(machine_record("cpu", "32"), attempts=[{"from_step": 0, "cpu_kind": None}, attempt_record(40)])
    write_results([ROW], tmp_path, machine=rec)
    assert json.loads((tmp_path / "results.json").read_text())[0]["machine"]["attempts"] == rec["attempts"]
    text = (tmp_path / "results.md").read_text()
    assert f"attempts (resumed runs): from step 0 on unknown; from step 40 on {cpu_info()['kind']}" in text
    write_results([ROW], tmp_path, machine=dict(rec, attempts=rec["attempts"][1:]))  # one attempt: no line
    assert "attempts" not in (tmp_path / "results.md").read_text()


def test_write_results_puts_the_machine_into_json_csv_and_markdown(tmp_path):
    rec = machine_record("cpu", "bf16")
    write_results([ROW], tmp_path, machine=rec)
    rows = json.loads((tmp_path / "results.json").read_text())
    assert rows[0]["machine"] == rec and rows[0]["mean"] == 0.5
    with (tmp_path / "results.csv").open() as fh:
        (line,) = list(csv.DictReader(fh))
    assert line["cpu"] == rec["cpu"]["model"] and int(line["threads"]) == rec["threads"]
    commit = rec["code"]["commit"] + (" (dirty)" if rec["code"]["dirty"] else "")  # this checkout is a git one
    assert line["commit"] == commit and f"ptmdd commit {commit}" in (tmp_path / "results.md").read_text()
    assert line["precision"] == "bf16" and line["accs"] == "0.4000 0.6000"
    assert "precision bf16" in (tmp_path / "results.md").read_text()
    write_results([ROW], tmp_path / ".")  # without a record: the plain table, no machine key
    assert "machine" not in json.loads((tmp_path / "results.json").read_text())[0]


def test_auto_precision_is_bf16_only_on_an_amx_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for kind, native in [
        ("amx-bf16", True),
        ("avx512-bf16", False),
        ("avx512", False),
        ("avx2", False),
        ("other", False),
    ]:
        monkeypatch.setattr(
            machine, "cpu_info", lambda kind=kind: {"model": "x", "vendor": "", "isa": [], "kind": kind}
        )
        assert auto_precision("cpu") == ("bf16" if native else "32")
        assert auto_precision(None) == auto_precision("cpu")
        expected = "bf16-mixed" if native else "32-true"
        assert trainer_precision("cpu") == expected and trainer_precision("auto") == expected
        assert trainer_precision(None) == expected
        # the evaluation's "auto" autocasts exactly where bf16 is native
        with _autocast(torch.device("cpu"), "auto"):
            assert torch.is_autocast_enabled("cpu") == native
    assert trainer_precision("mps") == "32-true"
    assert auto_precision("meta") == "32"


def test_ptmdd_precision_replaces_the_machine_default_and_a_bad_one_is_refused(monkeypatch, tmp_path):
    from ptmdd_lightning.errors import PtmddError
    from ptmdd_lightning.main import PtmddCLI

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(machine, "cpu_info", lambda: {"model": "x", "vendor": "", "isa": [], "kind": "avx512-bf16"})
    assert trainer_precision("cpu") == "32-true"  # an AMD Zen 4 machine's default
    monkeypatch.setenv("PTMDD_PRECISION", "bf16-mixed")  # a campaign distilled in bf16 on AMX machines
    assert trainer_precision("cpu") == "bf16-mixed" and trainer_precision("gpu") == "bf16-mixed"
    monkeypatch.chdir(tmp_path)
    config = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    args = ["--config", config]
    cli = PtmddCLI(subclass_mode_model=True, subclass_mode_data=True, run=False, args=args)
    assert cli.trainer.precision == "bf16-mixed" and cli.config["trainer"]["precision"] == "bf16-mixed"
    cli = PtmddCLI(
        subclass_mode_model=True, subclass_mode_data=True, run=False, args=[*args, "--trainer.precision", "32"]
    )
    assert cli.trainer.precision == "32-true"  # an explicit precision wins
    monkeypatch.setenv("PTMDD_PRECISION", "bf16")
    with pytest.raises(PtmddError, match=r"PTMDD_PRECISION='bf16' is not a Lightning precision.*bf16-mixed"):
        trainer_precision("cpu")


def test_auto_precision_on_a_gpu_follows_its_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert auto_precision("cuda:0") == ("bf16" if supported else "32")
        assert trainer_precision("gpu") == ("bf16-mixed" if supported else "32-true")
        assert trainer_precision("auto") == trainer_precision("cuda")


def test_contention_warning_names_the_share_to_use(monkeypatch):
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    message = machine.contention_warning(threads=2, busy=1.0)
    assert message is not None and "OMP_NUM_THREADS=1" in message and "1.0 of the 2 CPUs" in message
    assert machine.contention_warning(threads=2, busy=0.3) is None  # the threads fit on the idle CPUs
    assert machine.contention_warning(threads=1, busy=2.0) is None  # one thread cannot oversubscribe
    monkeypatch.setattr(machine, "busy_cpus", lambda interval=0.2: None)
    assert machine.contention_warning(threads=2) is None  # load unreadable: no guess
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert "OMP_NUM_THREADS=5" in machine.contention_warning(threads=8, busy=3.2)


def test_emulated_bf16_warning_names_the_fix_only_where_bf16_is_emulated(monkeypatch):
    monkeypatch.setattr(machine, "cpu_info", lambda: {"kind": "avx2"})
    monkeypatch.setattr(machine, "native_bf16_cpu", lambda: False)
    for precision in ("bf16-mixed", "bf16-true"):
        message = machine.emulated_bf16_warning(precision)
        assert message is not None and f"trainer.precision {precision}" in message and "kind avx2" in message
        assert "32-true" in message and "unset PTMDD_PRECISION" in message
    for precision in ("32-true", 32, "16-mixed", None):
        assert machine.emulated_bf16_warning(precision) is None  # nothing emulated
    monkeypatch.setattr(machine, "native_bf16_cpu", lambda: True)
    assert machine.emulated_bf16_warning("bf16-mixed") is None  # AMX or AVX512-BF16: bf16 is native


def test_busy_cpus_sees_a_busy_neighbour():
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat on this OS")
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = machine.busy_cpus(0.5)
    finally:
        neighbour.kill()
        neighbour.wait()
    assert busy is not None and 0.7 <= busy <= len(os.sched_getaffinity(0))


def test_code_record_names_the_checkout_commit_and_nothing_outside_a_checkout(monkeypatch, tmp_path):
    code_record.cache_clear()
    root = Path(machine.__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    status = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    rec = code_record()
    assert rec["commit"] == head.stdout.strip() and len(rec["commit"]) == 40
    assert rec["dirty"] is bool(status.stdout.strip())
    assert machine_record()["code"] == rec
    # a copy of the package outside any git checkout (an unpacked wheel): no commit, no guess
    (tmp_path / "site" / "ptmdd_lightning").mkdir(parents=True)
    monkeypatch.setattr(machine, "__file__", str(tmp_path / "site" / "ptmdd_lightning" / "machine.py"))
    code_record.cache_clear()
    assert code_record()["commit"] is None and code_record()["dirty"] is None
    monkeypatch.undo()
    code_record.cache_clear()
