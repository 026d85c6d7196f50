"""The shell scripts parse (bash -n); the GPU check and the two campaigns refuse bad arguments."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from ptmdd_lightning.studies.spec import expand, load_sweep

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gpu_check_needs_an_output_folder():
    script = next(p for p in SCRIPTS if p.name == "gpu_check.sh")
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "usage: bash scripts/gpu_check.sh OUTDIR" in proc.stderr


def test_the_reproduction_campaign_refuses_runs_of_another_commit(tmp_path):
    script = next(p for p in SCRIPTS if p.name == "reproduce.sh")
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "usage: bash scripts/reproduce.sh OUTDIR" in proc.stderr
    (tmp_path / "lightning_logs" / "reproduce_dm_ipc10_seed0" / "version_0").mkdir(parents=True)
    (tmp_path / "reproduce_dm_ipc10_seed0.commit").write_text("0" * 40 + "\n")
    proc = subprocess.run(["bash", str(script), str(tmp_path), "dm_ipc10"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "is a run of commit 0000" in proc.stderr
    proc = subprocess.run(
        ["bash", str(script), str(tmp_path / "new"), "no_such_row"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "no row no_such_row" in proc.stderr


def test_the_findings_campaign_refuses_missing_arguments_and_unknown_sweeps(tmp_path):
    script = next(p for p in SCRIPTS if p.name == "findings.sh")
    proc = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "usage: bash scripts/findings.sh OUTDIR CORE SHARD" in proc.stderr
    proc = subprocess.run(
        ["bash", str(script), str(tmp_path), "0", "0/2"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "SWEEPS": "no_such_sweep", "CPUINFO": str(_cpuinfo(tmp_path, "avx512_bf16"))},
    )
    assert proc.returncode == 2 and "no sweep" in proc.stderr and not (tmp_path / "lightning_logs").exists()


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    """A stand-in for /proc/cpuinfo with these ISA flags (the findings campaign checks them for native bf16)."""
    path = tmp_path / f"cpuinfo_{flags.replace(' ', '_')}"
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 {flags}\n")
    return path


def test_the_findings_campaign_refuses_a_cpu_that_would_emulate_its_bf16(tmp_path):
    script = next(p for p in SCRIPTS if p.name == "findings.sh")
    fake = tmp_path / "python"  # would record a ptmdd-sweep call
    fake.write_text(f'#!/bin/bash\necho "$*" >> {tmp_path / "calls.txt"}\n')
    fake.chmod(0o755)
    avx2, amx = _cpuinfo(tmp_path, "avx512f"), _cpuinfo(tmp_path, "avx512f avx512_bf16 amx_tile amx_bf16")

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "SWEEPS": "nm", **env}
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60, env=env)

    proc = run(str(tmp_path / "out"), "0", "0/2", CPUINFO=str(avx2))
    assert proc.returncode == 3 and "no native bf16" in proc.stderr and "ALLOW_EMULATED_BF16=1" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "calls.txt").exists()  # nothing started
    assert run("--check-cpu", CPUINFO=str(avx2)).returncode == 3
    assert run("--check-cpu", CPUINFO=str(amx)).returncode == 0
    assert run("--check-cpu", CPUINFO=str(avx2), ALLOW_EMULATED_BF16="1").returncode == 0
    assert run("--check-cpu", CPUINFO=str(avx2), PTMDD_PRECISION="32-true").returncode == 0  # no bf16 to emulate
    proc = run(str(tmp_path / "out"), "0", "0/2", CPUINFO=str(avx2), ALLOW_EMULATED_BF16="1")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "calls.txt").read_text().splitlines()[0].endswith("nm.yaml --shard 0/2")


def _findings_calls(tmp_path: Path, shard: str, **env: str) -> list[str]:
    """Runs scripts/findings.sh with a stand-in for ptmdd-sweep; returns the argument lines of its calls, in order."""
    script = next(p for p in SCRIPTS if p.name == "findings.sh")
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    fake = tmp_path / "python"  # stands in for ptmdd-sweep: records its arguments, one call a line
    fake.write_text(f'#!/bin/bash\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    proc = subprocess.run(
        ["bash", str(script), str(tmp_path / "out"), "0", shard],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "CPUINFO": str(_cpuinfo(tmp_path, "avx512_bf16")), **env},
    )
    assert proc.returncode == 0, proc.stderr
    return calls.read_text().splitlines()


def test_the_findings_campaign_runs_the_deciding_points_of_a_study_first(tmp_path):
    script = next(p for p in SCRIPTS if p.name == "findings.sh")
    domain, domain_rest = _findings_calls(tmp_path, "1/2", SWEEPS="domain")
    na, na_rest = _findings_calls(tmp_path, "1/2", SWEEPS="na")
    (nm,) = _findings_calls(tmp_path, "1/2", SWEEPS="nm")
    first = {
        "domain": [
            "alpha=100__real_batch=uniform",
            "alpha=1000__real_batch=uniform",
            "baseline=CCLoM_in-domain_alpha_100",
            "baseline=CCLoM_in-domain_alpha_1000",
        ],
        "na": ["N_a=4_+MLP_+ConvNetD1"],
    }
    for call, rest, study in ((domain, domain_rest, "domain"), (na, na_rest, "na")):
        assert call.endswith(f"{study}.yaml --shard 1/2 " + " ".join(f"--point {p}" for p in first[study]))
        assert rest.endswith(f"{study}.yaml --shard 1/2")  # then all of it, in the sweep's order
        # each is a point of the shipped sweep (a typo would make the first pass fail and lose the order)
        ids = {
            point.id for point in expand(load_sweep(script.parents[1] / f"configs/paper/findings/sweeps/{study}.yaml"))
        }
        assert set(first[study]) <= ids, sorted(ids)
    assert nm.endswith("nm.yaml --shard 1/2")  # a study without deciding runs: one pass


def test_the_findings_session_script_names_its_commands_and_needs_the_venv(tmp_path):
    script = next(p for p in SCRIPTS if p.name == "findings_session.sh")
    for args in ([], ["resume"]):
        proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=30)
        assert (
            proc.returncode == 2
            and "usage: bash scripts/findings_session.sh start [COMMIT] | stop | save | autosave" in proc.stderr
        )
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(tmp_path / "none"), "OUTDIR": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 2 and "scripts/env.sh" in proc.stderr and not (tmp_path / "out").exists()


def test_the_findings_session_save_copies_the_state_without_sigterm_checkpoints_or_temporaries(tmp_path):
    script = next(p for p in SCRIPTS if p.name == "findings_session.sh")
    out, saved = tmp_path / "out", tmp_path / "saved"
    env = {"PATH": "/usr/bin:/bin", "OUTDIR": str(out), "SAVED": str(saved)}
    proc = subprocess.run(["bash", str(script), "save"], capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 2 and f"no {out} to save" in proc.stderr and not saved.exists()
    run = out / "lightning_logs" / "sweeps" / "findings_nm" / "runs" / "N_m=1" / "seed0" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    (run / "checkpoints" / "epoch=0-step=7.ckpt").write_bytes(b"sigterm")
    (run / "checkpoints" / ".last.ckpt.tmp4242").write_bytes(b"half")
    (out / "driver0.log").write_text("log")
    saved.mkdir()
    (saved / "stale.txt").write_text("from an older save")
    proc = subprocess.run(["bash", str(script), "save"], capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 0, proc.stderr
    kept = sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file())
    assert kept == ["driver0.log", str((run / "checkpoints" / "last.ckpt").relative_to(out))]
    assert (out / "driver0.log").is_file() and (run / "checkpoints" / ".last.ckpt.tmp4242").is_file()  # untouched


def test_the_findings_session_autosave_commits_the_state_until_the_drivers_end(tmp_path):
    repo, out = tmp_path / "repo", tmp_path / "out"
    (repo / "scripts").mkdir(parents=True)
    script = repo / "scripts" / "findings_session.sh"
    script.write_text(next(p for p in SCRIPTS if p.name == "findings_session.sh").read_text())
    (repo / "notes.txt").write_text("an edit in progress")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    (repo / "notes.txt").write_text("an edit in progress, changed")  # must stay out of the autosave's commits
    run = out / "lightning_logs" / "runs" / "seed0"
    run.mkdir(parents=True)
    (run / "last.ckpt").write_bytes(b"ckpt")
    (run / "epoch=0-step=7.ckpt").write_bytes(b"sigterm")
    # the driver: a process that is not the test's child (so no zombie of it answers kill -0 after it ends),
    # which writes a newer checkpoint while the autosave runs
    ckpt = run / "last.ckpt"
    driver = f"sleep 1.5; echo -n ckpt2 > {ckpt}.tmp && mv {ckpt}.tmp {ckpt}; sleep 1.5"
    pid = subprocess.run(
        ["bash", "-c", f"( {driver} ) >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (out / "drivers.pid").write_text(f"{pid} 999999999\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "OUTDIR": str(out),
        "AUTOSAVE_SECONDS": "1",
        "HOME": str(tmp_path),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    proc = subprocess.run(["bash", str(script), "autosave"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and "no driver runs" in proc.stdout, proc.stdout + proc.stderr
    log = subprocess.run([*git, "log", "--format=%s"], capture_output=True, text=True, check=True).stdout
    assert "(autosave)" in log.splitlines()[0] and log.count("(autosave)") >= 2  # while the driver ran, and after
    show = [*git, "show", "HEAD:benchmarks/findings/findings_runs/lightning_logs/runs/seed0/last.ckpt"]
    assert subprocess.run(show, capture_output=True, text=True, check=True).stdout == "ckpt2"  # the last state
    files = subprocess.run([*git, "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    saved = "benchmarks/findings/findings_runs/"
    assert sorted(files) == sorted(
        [
            "notes.txt",
            "scripts/findings_session.sh",
            saved + "drivers.pid",
            saved + "lightning_logs/runs/seed0/last.ckpt",
        ]
    )
    status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, check=True).stdout
    assert status.split() == ["M", "notes.txt"]  # the edit in progress neither committed nor lost


def test_the_findings_session_autosave_ends_at_sigterm_without_a_save(tmp_path):
    repo, out = tmp_path / "repo", tmp_path / "out"
    (repo / "scripts").mkdir(parents=True)
    script = repo / "scripts" / "findings_session.sh"
    script.write_text(next(p for p in SCRIPTS if p.name == "findings_session.sh").read_text())
    subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True)
    out.mkdir()
    driver = subprocess.run(  # a live driver that is not the test's child, for the autosave to wait on
        ["bash", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (out / "drivers.pid").write_text(f"{driver}\n")
    env = {"PATH": "/usr/bin:/bin", "OUTDIR": str(out), "AUTOSAVE_SECONDS": "30", "HOME": str(tmp_path)}
    proc = subprocess.Popen(["bash", str(script), "autosave"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(1.0)  # in its 30 s wait
        proc.terminate()
        stdout, _ = proc.communicate(timeout=10)  # at once, not after the 30 s
    finally:
        subprocess.run(["kill", driver], check=False)
    assert proc.returncode == 0 and "autosave: stopped at" in stdout, stdout
    assert not (repo / "benchmarks").exists()  # nothing saved, nothing half saved


def test_the_findings_campaign_leaves_a_deferred_studys_other_runs_for_last(tmp_path):
    def order(**env):
        lines = _findings_calls(tmp_path, "0/2", SWEEPS="epoch reviewers", **env)
        return [line.split("sweeps/")[1] for line in lines]

    # by default the epoch study runs its reference (epoch 150) in its turn, then the reviewers' runs, then its rest
    assert order() == [
        "epoch.yaml --shard 0/2 --point epoch=150",
        "reviewers.yaml --shard 0/2",
        "epoch.yaml --shard 0/2",
    ]
    assert order(DEFER="") == [  # nothing deferred: each study whole, in the order given
        "epoch.yaml --shard 0/2 --point epoch=150",
        "epoch.yaml --shard 0/2",
        "reviewers.yaml --shard 0/2",
    ]
