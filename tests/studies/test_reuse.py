"""``ptmdd-sweep`` copies a sibling study's identical finished runs instead of repeating them (``--no-reuse`` not)."""

from __future__ import annotations

import json

from ptmdd_lightning.studies import cli
from tests.studies.fakes import SWEEP, finish, make_study


def _finished_sibling_and_second_sweep(tmp_path):
    first = make_study(tmp_path / "a", out=tmp_path / "sweeps" / "first")
    for i, slot in enumerate(first.slots()):
        finish(first, slot, [0.5 + 0.01 * i, 0.6], [0.4, 0.41])
    second = make_study(tmp_path / "b", text=SWEEP.replace("name: tiny", "name: second"))
    return second.spec, tmp_path / "b" / "sweep.yaml", tmp_path / "sweeps" / "second"


def _engine_stub(monkeypatch) -> list[list[str]]:
    """Replace the local engine: record the runs' states when it is called, run nothing."""
    started: list[list[str]] = []

    def engine(study, slots, **_):
        started.append([study.state(s) for s in slots])
        return {s.key: study.state(s) for s in slots}

    monkeypatch.setattr(cli, "run_local", engine)
    return started


def test_every_run_identical_to_a_finished_sibling_is_copied_and_nothing_runs(tmp_path, monkeypatch, capsys):
    _, sweep, out = _finished_sibling_and_second_sweep(tmp_path)
    started = _engine_stub(monkeypatch)
    assert cli.main(["--sweep", str(sweep), "--out", str(out)]) == 0
    assert started == [["done"] * 6]  # 2 points + the baseline, 2 seeds: all copied before the engine starts
    printed = capsys.readouterr().out
    assert printed.count("copied, not rerun") == 6
    rows = {row["point"]: row for row in json.loads((out / "summary.json").read_text())["rows"]}
    assert set(rows) == {"N_m=1", "N_m=4", "baseline=DM"}
    assert abs(rows["N_m=1"]["synthetic_mean"] - (0.50 + 0.60 + 0.51 + 0.60) / 4) < 1e-9  # the sibling's accuracies


def test_no_reuse_leaves_every_run_to_the_engine(tmp_path, monkeypatch):
    _, sweep, out = _finished_sibling_and_second_sweep(tmp_path)
    started = _engine_stub(monkeypatch)
    cli.main(["--sweep", str(sweep), "--out", str(out), "--no-reuse"])
    assert started == [["pending"] * 6] and not list(out.glob("runs/*/seed*/version_*"))
