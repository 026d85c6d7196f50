"""The study folder: version folders per settings, atomic claims and dead owners, when a run is done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.studies.store import Study, run_complete
from tests.studies.fakes import BASE, SWEEP, finish, make_study, save_checkpoint

WITH_CHECKPOINT_AND_EXPORT = {
    **BASE,
    "trainer": {
        **BASE["trainer"],
        "callbacks": [
            *BASE["trainer"]["callbacks"],
            {"class_path": "ptmdd_lightning.callbacks.SyntheticSetExport"},
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
        ],
    },
}


def test_a_run_is_done_only_with_every_final_row_its_final_checkpoint_and_its_export(tmp_path):
    study = make_study(tmp_path, base=WITH_CHECKPOINT_AND_EXPORT)
    slot = study.slots()[0]
    claim, folder, why = study.claim(slot)
    claim.release(study)
    assert why == "claimed" and folder.name == "version_0"
    config = slot.config
    rows = [{"step": 5, "arch": "ConvNet", "set": "synthetic", "accs": [0.5]}]
    (folder / "results.json").write_text(json.dumps(rows))
    save_checkpoint(folder, 5)
    (folder / "synthetic_set.pt").write_bytes(b"x")
    assert not run_complete(folder, config)  # killed during the final evaluation: the random-real row is missing
    rows.append({"step": 5, "arch": "ConvNet", "set": "random_real", "accs": [0.4]})
    (folder / "results.json").write_text(json.dumps(rows))
    assert run_complete(folder, config) and study.state(slot) == "done"
    save_checkpoint(folder, 4)
    assert not run_complete(folder, config)  # the checkpoint is not at the final step
    save_checkpoint(folder, 5)
    (folder / "synthetic_set.pt").unlink()
    assert not run_complete(folder, config)  # the export is missing
    (folder / "synthetic_set.pt").write_bytes(b"x")
    (folder / "results.json").write_text(json.dumps([dict(r, step=3) for r in rows]))
    assert not run_complete(folder, config)  # rows of an intermediate evaluation only


def test_changed_settings_make_a_new_version_and_keep_the_old_one(tmp_path):
    study = make_study(tmp_path)
    slot = study.slots()[0]
    old = finish(study, slot, [0.5], [0.4])
    assert study.state(slot) == "done"
    changed = Study(study.spec, study.out, extra=["--trainer.max_steps", "6"])
    new_slot = changed.slots()[0]
    assert changed.state(new_slot) == "pending" and changed.folder(new_slot) is None
    claim, folder, _ = changed.claim(new_slot)
    claim.release(changed)
    assert folder.name == "version_1" and (old / "results.json").is_file()
    assert changed.stale_versions() == [old]  # what --clean would delete, and nothing else
    assert study.folder(slot) == old and study.state(slot) == "done"  # the old settings still find their run


def test_a_claim_is_exclusive_while_its_owner_lives_and_taken_over_when_it_died(tmp_path):
    study = make_study(tmp_path)
    slot = study.slots()[0]
    claim, folder, why = study.claim(slot)
    assert why == "claimed" and study.state(slot) == "running"
    assert study.claim(slot)[0] is None and study.claim(slot)[2] == "running"  # no second owner
    claim.release(study)
    assert not (folder / "claim.json").exists() and study.state(slot) == "pending"
    # a claim of a process that has exited (same host): its pid is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"token": "x", "host": os.uname().nodename, "pid": int(dead.stdout), "pid_start": "1"}
    (folder / "claim.json").write_text(json.dumps(record))
    assert study.owner(folder) is None
    claim, _, why = study.claim(slot)
    assert why == "taken over"
    claim.release(study)
    # a claim made on another host lives while its heartbeat is younger than the lease
    (folder / "claim.json").write_text(json.dumps({"token": "y", "host": "node-elsewhere", "pid": 1}))
    assert study.owner(folder) is not None and study.state(slot) == "running"
    stale = time.time() - 2 * study.lease_s
    os.utime(folder / "claim.json", (stale, stale))
    assert study.owner(folder) is None and study.claim(slot)[2] == "taken over"


def test_an_attempt_resumes_its_checkpoint_or_moves_the_earlier_files_aside(tmp_path):
    study = make_study(tmp_path, extra=["--trainer.fast_dev_run", "true"])
    slot = study.slots()[0]
    claim, folder, _ = study.claim(slot)
    claim.release(study)
    (folder / "config.yaml").write_text("a killed attempt")
    args = study.prepare_attempt(slot, folder)
    assert args == ["fit", "--config", str(folder / "sweep_point.yaml"), "--trainer.fast_dev_run", "true"]
    assert (folder / "attempt_1" / "config.yaml").read_text() == "a killed attempt"  # kept, not overwritten
    assert not (folder / "config.yaml").exists()
    save_checkpoint(folder, 2)
    args = study.prepare_attempt(slot, folder)
    assert args[3:5] == ["--ckpt_path", str(folder / "checkpoints" / "last.ckpt")]
    assert study.finish_attempt(slot, folder, 143, 1.0) == "stopped"
    assert study.finish_attempt(slot, folder, 1, 1.0) == "failed" and study.state(slot) == "failed"


def test_select_by_point_and_shard(tmp_path):
    study = make_study(tmp_path)
    keys = [s.key for s in study.slots()]
    assert keys == [
        "N_m=1@seed0",
        "N_m=1@seed1",
        "N_m=4@seed0",
        "N_m=4@seed1",
        "baseline=DM@seed0",
        "baseline=DM@seed1",
    ]
    assert [s.key for s in study.select(["N_m=4"])] == ["N_m=4@seed0", "N_m=4@seed1"]
    assert [s.key for s in study.select(["baseline=DM@seed1"])] == ["baseline=DM@seed1"]
    shards = [[s.key for s in study.select(shard=(k, 4))] for k in range(4)]
    assert sorted(k for shard in shards for k in shard) == sorted(keys) and shards[1] == [
        "N_m=1@seed1",
        "baseline=DM@seed1",
    ]
    # with --point, the shards share the selected runs: two processes, three runs, every run once
    both = [[s.key for s in study.select(["N_m=4", "baseline=DM@seed1"], (k, 2))] for k in range(2)]
    assert both == [["N_m=4@seed0", "baseline=DM@seed1"], ["N_m=4@seed1"]]
    with pytest.raises(PtmddError, match="names no run of this study; its points are: N_m=1, N_m=4, baseline=DM"):
        study.select(["N_m=2"])
    with pytest.raises(PtmddError, match="0 <= k < N"):
        study.select(shard=(4, 4))


def test_a_sibling_studys_identical_done_run_is_adopted_and_nothing_else(tmp_path):
    first = make_study(tmp_path / "a", out=tmp_path / "sweeps" / "first")
    other_sweep = SWEEP.replace("name: tiny", "name: other").replace("N_m: [1, 4]", "N_m: [1, 2]")
    second = make_study(tmp_path / "b", text=other_sweep, out=tmp_path / "sweeps" / "second")
    by_key = {s.key: s for s in first.slots()}
    done = finish(first, by_key["N_m=1@seed0"], [0.5, 0.7], [0.4])
    finish(first, by_key["N_m=4@seed0"], [0.6], [0.4])  # no identical run in the second study
    claim, _, _ = first.claim(by_key["baseline=DM@seed0"])  # running, not done: never adopted
    claim.release(first)
    siblings = second.sibling_runs()
    assert set(siblings) == {by_key[k].signature for k in ("N_m=1@seed0", "N_m=4@seed0", "baseline=DM@seed0")}
    adopted = {s.key: second.adopt(s, siblings) for s in second.slots()}
    assert [k for k, f in adopted.items() if f is not None] == ["N_m=1@seed0"]
    copy = adopted["N_m=1@seed0"]
    assert copy.parents[3] == second.out and json.loads((copy / "results.json").read_text()) == json.loads(
        (done / "results.json").read_text()
    )
    record = json.loads((copy / "sweep_point.json").read_text())
    assert record["adopted_from"] == str(done) and record["signature"] == by_key["N_m=1@seed0"].signature
    logger = yaml.safe_load((copy / "sweep_point.yaml").read_text())["trainer"]["logger"]["init_args"]
    assert Path(logger["save_dir"], logger["name"], logger["version"]) == copy  # its logger writes into the copy
    states = {s.key: second.state(s) for s in second.slots()}
    assert states["N_m=1@seed0"] == "done" and states["baseline=DM@seed0"] == "pending"
    assert second.adopt(second.slots()[0]) is None  # adopted once: the run has its folder now
    assert sorted(p.name for p in copy.parent.iterdir()) == ["version_0"]  # no staging folder left


def test_a_run_whose_attempts_left_no_checkpoint_adopts_an_identical_done_run_but_one_with_a_checkpoint_resumes(
    tmp_path,
):
    """The findings campaign's case: epoch 150 of the epoch study had failed at once (no data) before the identical
    run of the N_m study finished; it was run again instead of copied (2026-12-05)."""
    first = make_study(tmp_path / "a", out=tmp_path / "sweeps" / "first")
    second = make_study(tmp_path / "b", out=tmp_path / "sweeps" / "second")
    for slot in first.slots()[:3]:
        finish(first, slot, [0.5], [0.4])
    failed, started, running = second.slots()[:3]
    for slot in (failed, started, running):
        claim, folder, _ = second.claim(slot)
        assert second.finish_attempt(slot, folder, 2, 1.0) == "failed"
        claim.release(second)
    save_checkpoint(second.folder(started), 3)  # it got as far as step 3: its own study continues it
    claim, _, _ = second.claim(running)  # a live owner runs it now
    old = second.folder(failed)
    copy = second.adopt(failed)
    assert copy is not None and copy.name == "version_1" and second.folder(failed) == copy
    assert second.state(failed) == "done" and (old / "sweep_failed.json").is_file()  # the failed attempt is kept
    assert second.adopt(started) is None and second.state(started) == "failed"
    assert second.adopt(running) is None and second.state(running) == "running"
    claim.release(second)
    assert second.adopt(failed) is None  # done now: adopted once


def test_status_puts_every_run_folder_in_one_column_however_long_the_run_names(tmp_path, capsys):
    from ptmdd_lightning.studies.cli import _print_status

    long_name = "CCLoM other-domain, alpha 1000, real batch, augmented view"  # a run key of 60+ characters
    study = make_study(tmp_path, SWEEP.replace("  DM:\n", f"  {long_name}:\n"))
    slots = study.slots()
    finish(study, slots[0], [0.5], None)
    _print_status(study, slots)
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split(maxsplit=1)[1] for line in lines[:-1]]  # name and folder, after the state
    assert any(len(slot.key) > 60 for slot in slots) and len(rows) == len(slots)
    assert len({len(row) - len(row.split()[-1]) for row in rows}) == 1  # every folder starts in the same column
    assert lines[0].endswith(" runs/N_m=1/seed0/version_0") and lines[1].endswith(" -")  # a folder, or none yet
    assert lines[-1].endswith(f" pending ({len(slots)} runs)")
