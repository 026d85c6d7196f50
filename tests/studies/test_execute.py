"""Studies end to end on tiny data: every run a real ``ptmdd`` process, claimed, resumable, safe side by side.

Each ``ptmdd`` process here costs ~10 s of one CPU core (start-up included), so the studies are the smallest that
show the behaviour: one or two points, one seed, 2 distillation steps, one evaluation model of one epoch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from ptmdd_lightning.core.guidance import member_path
from ptmdd_lightning.studies.cli import main
from ptmdd_lightning.studies.execute import SIGTERM_EXIT
from tests.helpers import resumable_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _base(data_root: Path, pool: Path, stall: dict | None = None) -> dict:
    """DM + CLoM on tiny Fashion-MNIST: IPC 1, ConvNetW32, 2 steps, last.ckpt every step, 1 model x 1 epoch."""
    callbacks = [
        {"class_path": "ptmdd_lightning.callbacks.PretrainPTMPool"},
        resumable_checkpoint(1),
        *([stall] if stall else []),
        {
            "class_path": "ptmdd_lightning.callbacks.SyntheticSetEvaluation",
            "init_args": {"archs": ["ConvNetW32"], "num_models": 1, "protocol": {"epochs": 1, "precision": "32"}},
        },
        {"class_path": "ptmdd_lightning.callbacks.SyntheticSetExport"},
    ]
    return {
        "trainer": {
            "max_steps": 2,
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": callbacks,
        },
        "model": {
            "class_path": "ptmdd_lightning.modules.DMDistiller",
            "init_args": {
                "ipc": 1,
                "net_arch": "ConvNetW32",
                "pool_root": str(pool),
                "ptm_recipe": {"name": "tiny", "epochs": 1, "milestones": []},
                "ptms": [],
            },
        },
        "data": {
            "class_path": "ptmdd_lightning.data.DistillDataModule",
            "init_args": {"dataset": "fashion_mnist", "root": str(data_root), "batch_real": 4},
        },
    }


def _sweep(folder: Path, data_root: Path, axis: str = "N_m: [1]", baseline: bool = True, **base) -> Path:
    pool = folder / "pool"
    (folder / "base.yaml").write_text(yaml.safe_dump(_base(data_root, pool, **base)))
    text = f"""
name: tiny
base: base.yaml
axes:
  {axis}
overrides:
  model.init_args.ptms:
    - {{arch: ConvNetW32, alpha: 0.1, num_seeds: "${{N_m}}", epoch: 1, loss: clom}}
"""
    if baseline:
        text += "baselines:\n  DM:\n    model.init_args.ptms: []\n"
    (folder / "sweep.yaml").write_text(text)
    return folder / "sweep.yaml"


@pytest.fixture
def child_env(monkeypatch):
    """The runs' processes import the test helpers (tests.test_resume.Stall) and use one thread each."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return dict(os.environ)


def _attempts(folder: Path) -> int:
    return (folder / "ptmdd.log").read_text().count("\n# ptmdd ")


def _summary(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())["rows"]


def test_points_run_by_hand_are_collected_and_a_changed_argument_keeps_the_earlier_results(
    tmp_path, fake_fashion_root, child_env, capsys
):
    sweep, out = _sweep(tmp_path, fake_fashion_root), tmp_path / "out"
    assert main(["--sweep", str(sweep), "--out", str(out), "--point", "N_m=1"]) == 0
    assert main(["--sweep", str(sweep), "--out", str(out), "--point", "baseline=DM@seed0"]) == 0
    capsys.readouterr()
    assert main(["--status", "--out", str(out)]) == 0  # the folder alone: study.json says which sweep
    assert "2 done, 0 running, 0 failed, 0 pending" in capsys.readouterr().out
    assert main(["--sweep", str(sweep), "--out", str(out), "--collect-only"]) == 0
    assert [(r["point"], r["n"]) for r in _summary(out)] == [("N_m=1", 1), ("baseline=DM", 1)]
    first = out / "runs" / "N_m=1" / "seed0" / "version_0"
    before = {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()}
    # again, unchanged: nothing runs
    assert main(["--sweep", str(sweep), "--out", str(out)]) == 0
    assert _attempts(first) == 1
    # with a changed argument: a new version of each run; the earlier results stay as they were
    assert main(["--sweep", str(sweep), "--out", str(out), "--point", "N_m=1", "--", "--trainer.max_steps", "3"]) == 0
    assert {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()} == before
    second = out / "runs" / "N_m=1" / "seed0" / "version_1"
    assert json.loads((second / "results.json").read_text())[0]["step"] == 3
    assert [p.name for p in sorted(first.parent.iterdir())] == ["version_0", "version_1"]


def test_two_sweep_processes_on_one_study_run_every_point_exactly_once(tmp_path, fake_fashion_root, child_env):
    sweep, out = _sweep(tmp_path, fake_fashion_root, axis="N_m: [1, 2]"), tmp_path / "out"
    command = [sys.executable, "-m", "ptmdd_lightning.sweep", "--sweep", str(sweep), "--out", str(out)]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = sorted((out / "runs").glob("*/seed0/version_*"))
    assert [str(r.relative_to(out / "runs")) for r in runs] == [
        "N_m=1/seed0/version_0",
        "N_m=2/seed0/version_0",
        "baseline=DM/seed0/version_0",
    ]
    assert [_attempts(r) for r in runs] == [1, 1, 1]  # each run started once, by one of the two
    started = [line for text in outputs for line in text.splitlines() if ": starting;" in line]
    assert len(started) == 3
    assert all("3 done, 0 running, 0 failed, 0 pending" in text for text in outputs)  # both collected all
    logs = "".join((r / "ptmdd.log").read_text() for r in runs)
    assert logs.count("[ptmdd] pretraining PTM") == 2  # pool members seed0 and seed1, each once


def test_two_runs_missing_the_same_pool_member_pretrain_it_once(tmp_path, fake_fashion_root, child_env):
    pool = tmp_path / "pool"
    config = _base(fake_fashion_root, pool)
    config["model"]["init_args"]["ptms"] = [
        {"arch": "ConvNetW32", "alpha": 0.1, "num_seeds": 1, "epoch": 1, "loss": "clom"}
    ]
    procs, logs = [], []
    member = member_path(pool, "fashion_mnist", "ConvNetW32", 0, 1)
    lock = FileLock(str(member.parent.with_suffix(".lock")))
    member.parent.parent.mkdir(parents=True)
    with lock:  # both runs see the member missing and queue behind this lock: the old code trained it twice
        for name in ("a", "b"):
            config["trainer"]["logger"] = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "logs"), "name": name},
            }
            (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
            log = (tmp_path / f"{name}.log").open("w")
            logs.append(tmp_path / f"{name}.log")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ptmdd_lightning", "fit", "--config", str(tmp_path / f"{name}.yaml")],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=child_env,
                )
            )
        deadline = time.monotonic() + 120
        while not all("another run is pretraining it; waiting" in p.read_text() for p in logs):
            assert time.monotonic() < deadline, [p.read_text()[-2000:] for p in logs]
            assert all(p.poll() is None for p in procs), [p.read_text()[-2000:] for p in logs]
            time.sleep(0.2)
        time.sleep(2)
        assert not member.exists()
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.read_text()[-2000:] for p in logs]
    texts = [p.read_text() for p in logs]
    assert sum(t.count("[ptmdd] pretraining PTM") for t in texts) == 1
    assert sum(t.count("pretrained by another run, reused") for t in texts) == 1
    assert member.is_file()


def _wait_for(path: Path, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the study ended before {what}: {proc.stdout.read() if proc.stdout else ''}"
        assert time.monotonic() < deadline, f"never reached {what}"
        time.sleep(0.1)


def test_sigterm_stops_the_study_and_the_same_command_resumes_it(tmp_path, fake_fashion_root, child_env):
    marker = tmp_path / "stalled"
    # every run stalls at step 1 (the same settings for both invocations): for a SIGTERM in the first, 10 s later
    stall = {"class_path": "tests.test_resume.Stall", "init_args": {"at_step": 1, "marker": str(marker), "timeout": 10}}
    sweep, out = _sweep(tmp_path, fake_fashion_root, stall=stall), tmp_path / "out"
    command = [sys.executable, "-m", "ptmdd_lightning.sweep", "--sweep", str(sweep), "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env)
    try:
        _wait_for(marker, proc, "the first point's step 1")
        proc.send_signal(signal.SIGTERM)
        text = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == SIGTERM_EXIT, text
    assert "stopped by SIGTERM" in text
    run = out / "runs" / "N_m=1" / "seed0" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "claim.json").exists()
    assert not (run / "results.json").exists()
    assert not (out / "runs" / "baseline=DM").exists()  # nothing new started after the SIGTERM
    marker.unlink()
    assert main(["--sweep", str(sweep), "--out", str(out)]) == 0
    assert "--ckpt_path" in (run / "ptmdd.log").read_text().split("\n# ptmdd ")[-1].splitlines()[0]
    assert [(r["point"], r["n"]) for r in _summary(out)] == [("N_m=1", 1), ("baseline=DM", 1)]


def test_a_point_killed_during_its_final_evaluation_is_not_done_and_is_rerun(tmp_path, fake_fashion_root, child_env):
    marker = tmp_path / "at_train_end"
    stall = {"class_path": "tests.test_resume.StallAtTrainEnd", "init_args": {"marker": str(marker), "timeout": 5}}
    sweep, out = _sweep(tmp_path, fake_fashion_root, baseline=False, stall=stall), tmp_path / "out"
    command = [sys.executable, "-m", "ptmdd_lightning.sweep", "--sweep", str(sweep), "--out", str(out)]
    proc = subprocess.Popen(command, env=child_env, start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        _wait_for(marker, proc, "the end of training")
        os.killpg(proc.pid, signal.SIGKILL)  # the study and its ptmdd process, with no chance to clean up
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    run = out / "runs" / "N_m=1" / "seed0" / "version_0"
    assert (run / "claim.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert main(["--status", "--out", str(out)]) == 0
    assert main(["--sweep", str(sweep), "--out", str(out), "--collect-only"]) == 0
    assert _summary(out) == []  # trained to the end, but not evaluated: not done
    assert main(["--sweep", str(sweep), "--out", str(out)]) == 0  # the dead owner's claim is taken over
    assert _attempts(run) == 2 and not (run / "claim.json").exists()
    assert [(r["point"], r["n"]) for r in _summary(out)] == [("N_m=1", 1)]


def test_the_slurm_executor_runs_the_pool_job_then_the_array_through_submitit(tmp_path, fake_fashion_root, child_env):
    pytest.importorskip("submitit")
    sweep = _sweep(tmp_path, fake_fashion_root, baseline=False)
    pool = tmp_path / "pool"
    pretrain = yaml.safe_load((REPO / "configs" / "pretrain" / "fashion_mnist.yaml").read_text())
    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump(pretrain))
    text = (
        sweep.read_text()
        + f"""
prepare:
  pool:
    base: pretrain.yaml
    seeds: [0]
    overrides:
      data.init_args.root: {fake_fashion_root}
      model.init_args.arch: ConvNetW32
      model.init_args.recipe: {{name: tiny, epochs: 1, milestones: []}}
      trainer.max_epochs: 1
      trainer.enable_progress_bar: false
      trainer.callbacks.PTMCheckpoint.init_args: {{epochs: [1], pool_root: {pool}}}
    creates: {pool}/fashion_mnist/ConvNetW32/seed${{seed}}/epoch1.pt
slurm: {{partition: gpu, gpus_per_task: 0, time_min: 10, array_parallelism: 2}}
"""
    )
    sweep.write_text(text)
    out = tmp_path / "out"
    args = ["--sweep", str(sweep), "--out", str(out), "--executor", "slurm", "--slurm-cluster", "local"]
    assert main(args) == 0
    jobs = sorted(p.name for p in (out / "slurm").iterdir())
    assert len(jobs) >= 2  # the prepare job and the array's task
    assert (pool / "fashion_mnist" / "ConvNetW32" / "seed0" / "epoch1.pt").is_file()
    run = out / "runs" / "N_m=1" / "seed0" / "version_0"
    assert "[ptmdd] pretraining PTM" not in (run / "ptmdd.log").read_text()  # the pool job made the member
    assert [(r["point"], r["n"]) for r in _summary(out)] == [("N_m=1", 1)]
    assert main([*args, "--status"]) == 0


def test_a_user_error_stops_the_study_after_its_first_run(tmp_path, fake_fashion_root, child_env, capsys):
    """Missing data (ptmdd's exit 2) fails every run alike: the study stops after the first and says so once; with
    the data there, the same command runs both points."""
    empty = tmp_path / "no_data"
    empty.mkdir()
    sweep = _sweep(tmp_path, empty)  # a point and a baseline
    out = tmp_path / "study"
    assert main(["--sweep", str(sweep), "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert text.count("FAILED (exit 2)") == 1 and "not found under data.root" in text
    assert "stopped at a user error (exit 2, above)" in text and "0 done, 0 running, 1 failed, 1 pending" in text
    config = tmp_path / "base.yaml"
    config.write_text(config.read_text().replace(str(empty), str(fake_fashion_root)))
    assert main(["--sweep", str(sweep), "--out", str(out)]) == 0
    assert "2 done, 0 running, 0 failed, 0 pending" in capsys.readouterr().out
