"""Resume after a kill: a CPU run killed for real (SIGKILL or SIGTERM) and resumed with ``--ckpt_path last``
ends with the same synthetic set, bit for bit, as an uninterrupted run with the same seed; runs go into
versioned folders.

The killed run is a subprocess (``python -m ptmdd_lightning fit``) that a :class:`Stall` callback holds at
step 5, after the periodic ``last.ckpt`` of step 4 exists; the reference and the resumed runs use :func:`main`
in-process, so the equality also shows that the CLI is deterministic across processes.
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
import torch
import yaml
from lightning import Callback

from ptmdd_lightning.core.evaluate import EvalProtocol
from ptmdd_lightning.machine import cpu_info
from ptmdd_lightning.main import main
from tests.helpers import resumable_checkpoint

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 8
STALL_AT = 5  # the periodic checkpoint (every 2 steps) of step 4 exists when the killed run reaches step 5


class Stall(Callback):
    """Test helper: at ``global_step == at_step`` write ``marker`` and wait (up to ``timeout`` s) for SIGTERM.

    Numerically inert; the killed run uses it so that the test can kill it at a known step.
    """

    def __init__(self, at_step: int, marker: str, timeout: float = 120.0) -> None:
        self.at_step = at_step
        self.marker = marker
        self.timeout = timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.at_step:
            return
        Path(self.marker).write_text(str(trainer.global_step))
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.02)


def write_ptm(
    path: Path,
    arch: str = "ConvNetW32",
    channels: int = 1,
    num_classes: int = 10,
    image_size: tuple[int, int] = (28, 28),
    seed: int = 0,
    **meta,
) -> Path:
    """A PTM checkpoint in the PTMCheckpoint format with randomly initialised weights (no training needed)."""
    from ptmdd_lightning.core.guidance import PTMRecipe
    from ptmdd_lightning.nets import build_net

    torch.manual_seed(seed)
    net = build_net(arch, channels, num_classes, image_size)
    blob = {
        "state_dict": net.state_dict(),
        "arch": arch,
        "channels": channels,
        "num_classes": num_classes,
        "image_size": tuple(image_size),
        "dataset": "fashion_mnist",
        "classes": None,
        "mean": (0.2861,) * channels,
        "std": (0.3530,) * channels,
        "epoch": 1,
        "seed": seed,
        "val_acc": None,
        "recipe": PTMRecipe().record(),
    }
    blob.update(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return path


def tiny_config(
    path: Path,
    data_root: Path,
    method: str = "dm",
    max_steps: int = MAX_STEPS,
    extra_callbacks: list | None = None,
    ptm_pool: Path | None = None,
    loss: str = "clom",
    **model,
) -> Path:
    """Write a tiny distillation config (ConvNetW32, IPC 1, batch_real 4, periodic/on-exception last.ckpt); with
    ``ptm_pool``, guided by its member through ``loss`` (CCLoM: 16 uniform real images a step, feature table)."""
    init_args = {"ipc": 1, "method": method, "net_arch": "ConvNetW32", **model}
    if method != "dm":
        init_args.update(outer_loop=3, inner_loop=2, batch_train=4)
    if ptm_pool is not None:
        init_args.update(
            pool_root=str(ptm_pool),
            ptms=[{"arch": "ConvNetW32", "alpha": 0.1, "num_seeds": 1, "epoch": 1, "loss": loss}],
        )
        if loss == "cclom":
            init_args.update(cclom_batch_size=16)
    config = {
        "seed_everything": 3,
        "trainer": {
            "max_steps": max_steps,
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "logs", "name": "run"},
            },
            "callbacks": [
                resumable_checkpoint(2),
                *(extra_callbacks or []),
            ],
        },
        "model": {"class_path": "ptmdd_lightning.modules.Distiller", "init_args": init_args},
        "data": {
            "class_path": "ptmdd_lightning.data.DistillDataModule",
            "init_args": {"dataset": "fashion_mnist", "root": str(data_root), "batch_real": 4},
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def ptm_pool(tmp_path) -> Path:
    """A one-member pool (ConvNetW32, seed 0, epoch 1) for CLoM."""
    root = tmp_path / "pool"
    write_ptm(root / "fashion_mnist" / "ConvNetW32" / "seed0" / "epoch1.pt")
    return root


@pytest.fixture(autouse=True)
def _restore_seed_env(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # seed_everything sets it; restored after the test


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # The killed run must use the thread count of this (reference and resumed) process: results are bitwise
    # only for the same thread count and CPU kind (docs/distributed.md, "Determinism"); with 1 thread here and 2
    # in-process, AMD EPYC machines ended with different synthetic sets.
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    return env


def _start(workdir: Path, config: Path) -> subprocess.Popen:
    """Start ``python -m ptmdd_lightning fit --config`` in ``workdir``, output to ``workdir/run.log``."""
    with (workdir / "run.log").open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ptmdd_lightning", "fit", "--config", str(config)],
            cwd=workdir,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _kill_when_stalled(proc: subprocess.Popen, workdir: Path, sig: signal.Signals) -> tuple[int, str]:
    """Wait for the Stall marker in ``workdir``, send ``sig``; ``(returncode, output)``."""
    log = workdir / "run.log"
    try:
        deadline = time.monotonic() + 180
        while not (workdir / "stalled").exists():
            assert proc.poll() is None, f"the run ended before it was killed:\n{log.read_text()}"
            assert time.monotonic() < deadline, "the run never reached the stall step"
            time.sleep(0.05)
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, log.read_text()


def _images(cli) -> torch.Tensor:
    return cli.model.synthetic.images.detach().clone()


@pytest.mark.parametrize(
    ("method", "sig", "guided"),
    [
        ("dm", signal.SIGTERM, "clom"),
        ("dm", signal.SIGKILL, "cclom"),  # the feature table is made again after the resume
        ("dc", signal.SIGKILL, False),
        pytest.param("dsa", signal.SIGKILL, False, marks=pytest.mark.slow),
        pytest.param("dc", signal.SIGTERM, False, marks=pytest.mark.slow),
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else str(v),
)
def test_killed_run_resumes_to_the_uninterrupted_result(
    tmp_path, monkeypatch, fake_fashion_root, ptm_pool, method, sig, guided
):
    pool, loss = (ptm_pool, guided) if guided else (None, "clom")
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    ref_dir.mkdir()
    run_dir.mkdir()
    base = tiny_config(tmp_path / "base.yaml", fake_fashion_root, method, ptm_pool=pool, loss=loss)
    stall = {
        "class_path": "tests.test_resume.Stall",
        "init_args": {"at_step": STALL_AT, "marker": str(run_dir / "stalled")},
    }
    killed = tiny_config(
        tmp_path / "killed.yaml", fake_fashion_root, method, ptm_pool=pool, loss=loss, extra_callbacks=[stall]
    )

    proc = _start(run_dir, killed)  # its start-up (imports) overlaps the in-process reference run
    try:
        monkeypatch.chdir(ref_dir)
        reference = _images(main(["fit", "--config", str(base)]))
    finally:
        code, output = _kill_when_stalled(proc, run_dir, sig)
    ckpt_dir = run_dir / "logs" / "run" / "version_0" / "checkpoints"
    last = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        assert last["global_step"] == STALL_AT - 1  # the periodic checkpoint; step 5 is lost and redone
        if method != "dm":  # the inner loop is part of the step (manual optimisation): nothing is pending
            assert not last["dc_net"]["inner_loop_pending"]
    else:
        assert code == 143, output
        assert "stopped by SIGTERM" in output
        assert last["global_step"] == STALL_AT  # Lightning finished step 5, then saved on the exception
        assert (ckpt_dir / f"epoch=0-step={STALL_AT}.ckpt").is_file()
    assert not torch.equal(last["state_dict"]["synthetic.images"], reference)  # killed midway indeed

    monkeypatch.chdir(run_dir)
    resumed = main(["fit", "--config", str(base), "--ckpt_path", "last"])
    assert resumed.trainer.global_step == MAX_STEPS
    assert Path(resumed.trainer.log_dir).resolve() == (run_dir / "logs" / "run" / "version_0").resolve()
    assert sorted(p.name for p in (run_dir / "logs" / "run").iterdir()) == ["version_0"]  # no new folder
    assert torch.equal(_images(resumed), reference)  # bitwise: images, momentum, step, data, RNG, DC net
    saved = yaml.safe_load((run_dir / "logs" / "run" / "version_0" / "config.yaml").read_text())
    assert saved["ckpt_path"] == "last" and saved["trainer"]["logger"]["init_args"]["version"] is None


def test_new_runs_get_new_versions_and_last_resumes_the_newest(tmp_path, monkeypatch, capsys, fake_fashion_root):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, max_steps=2)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--ckpt_path", "last"])
    assert exit_info.value.code == 2
    assert "no last.ckpt to resume from" in capsys.readouterr().err
    first = main(["fit", "--config", str(config)])
    second = main(["fit", "--config", str(config)])
    assert Path(first.trainer.log_dir).name == "version_0"
    assert Path(second.trainer.log_dir).name == "version_1"
    resumed = main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_steps", "3"])
    assert Path(resumed.trainer.log_dir).name == "version_1"
    assert resumed.trainer.global_step == 3
    # each attempt is recorded where it began, and kept in the checkpoint for the next one
    kind = cpu_info()["kind"]
    assert [(a["from_step"], a["cpu_kind"]) for a in resumed.model.attempts] == [(0, kind), (2, kind)]
    last = Path(resumed.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["ptmdd_attempts"] == resumed.model.attempts
    # a checkpoint of a ptmdd that kept no attempts: what ran before it is unknown, not this machine
    old = torch.load(last, weights_only=True)
    del old["ptmdd_attempts"]
    torch.save(old, last)
    again = main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_steps", "4"])
    assert [(a["from_step"], a["cpu_kind"]) for a in again.model.attempts] == [(0, None), (3, kind)]
    assert sorted(p.name for p in (tmp_path / "logs" / "run").iterdir()) == ["version_0", "version_1"]


class StallAtTrainEnd(Callback):
    """Test helper: in ``on_train_end`` (listed before the evaluation: after the final checkpoint, before the
    evaluation and the export) write ``marker`` and wait up to ``timeout`` s, to be killed there."""

    def __init__(self, marker: str, timeout: float = 120.0) -> None:
        self.marker = marker
        self.timeout = timeout

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.marker).write_text(str(trainer.global_step))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            time.sleep(0.02)


def _evaluation(epochs: int) -> dict:
    return {
        "class_path": "ptmdd_lightning.callbacks.SyntheticSetEvaluation",
        "init_args": {
            "archs": ["ConvNetW32"],
            "num_models": 1,
            "baseline": False,
            "protocol": {"epochs": epochs, "precision": "32"},
        },
    }


EXPORT = {"class_path": "ptmdd_lightning.callbacks.SyntheticSetExport"}


def test_a_run_killed_in_the_final_evaluation_window_resumes_to_its_results_and_export(
    tmp_path, monkeypatch, fake_fashion_root
):
    """SIGKILL after the final checkpoint, before evaluation and export; ``--ckpt_path last`` (training already
    complete, so Lightning skips the loop) still evaluates and exports."""
    stall = {"class_path": "tests.test_resume.StallAtTrainEnd", "init_args": {"marker": str(tmp_path / "stalled")}}
    killed = tiny_config(tmp_path / "killed.yaml", fake_fashion_root, extra_callbacks=[stall, _evaluation(2), EXPORT])
    code, _output = _kill_when_stalled(_start(tmp_path, killed), tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    folder = tmp_path / "logs" / "run" / "version_0"
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == MAX_STEPS
    assert not (folder / "results.json").exists() and not (folder / "synthetic_set.pt").exists()

    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, extra_callbacks=[_evaluation(2), EXPORT])
    resumed = main(["fit", "--config", str(config), "--ckpt_path", "last"])
    assert resumed.trainer.global_step == MAX_STEPS
    rows = json.loads((folder / "results.json").read_text())
    assert [(r["step"], r["set"]) for r in rows] == [(MAX_STEPS, "synthetic")]
    # the results record both attempts: the killed one and the resume, which only evaluated
    attempts = rows[0]["machine"]["attempts"]
    kind = cpu_info()["kind"]
    assert [(a["from_step"], a["cpu_kind"]) for a in attempts] == [(0, kind), (MAX_STEPS, kind)]
    export = torch.load(folder / "synthetic_set.pt", weights_only=True)
    assert torch.equal(export["images"], _images(resumed)) and export["global_step"] == MAX_STEPS


def test_sigterm_stops_the_final_evaluation_promptly_and_the_resume_finishes_it(
    tmp_path, monkeypatch, fake_fashion_root
):
    killed = tiny_config(
        tmp_path / "killed.yaml", fake_fashion_root, extra_callbacks=[_evaluation(1_000_000), EXPORT]
    )  # hours, unless stopped
    proc = _start(tmp_path, killed)
    log = tmp_path / "run.log"
    try:
        deadline = time.monotonic() + 180
        while "evaluating the synthetic set" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the evaluation never started"
            time.sleep(0.05)
        time.sleep(0.5)  # inside the epochs
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        stopped_after = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 143, log.read_text()
    assert stopped_after < 30 and "stopped by SIGTERM" in log.read_text()
    folder = tmp_path / "logs" / "run" / "version_0"
    assert not (folder / "synthetic_set.pt").exists()

    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, extra_callbacks=[_evaluation(2), EXPORT])
    main(["fit", "--config", str(config), "--ckpt_path", "last"])
    assert json.loads((folder / "results.json").read_text())[0]["step"] == MAX_STEPS
    assert (folder / "synthetic_set.pt").is_file()


class StallAfterFirstModel(Callback):
    """Test helper: once the evaluation has tested its first model, write ``marker`` and wait (up to ``timeout``
    s) for SIGTERM, which then stops the evaluation inside the second model.

    Wraps the evaluation's ``train_and_test`` to see its ``on_model`` calls; numerically inert.
    """

    def __init__(self, marker: str, timeout: float = 120.0) -> None:
        import ptmdd_lightning.callbacks.evaluate as evaluate

        self.marker, self.timeout, self.trainer = marker, timeout, None
        original = evaluate.train_and_test

        def wrapped(*args, on_model=None, **kwargs):
            def stall(i: int, acc: float) -> None:
                on_model(i, acc)
                if not Path(self.marker).exists():
                    Path(self.marker).write_text(str(i))
                    deadline = time.monotonic() + self.timeout
                    while not self.trainer.received_sigterm and time.monotonic() < deadline:
                        time.sleep(0.02)

            return original(*args, on_model=stall, **kwargs)

        evaluate.train_and_test = wrapped

    def setup(self, trainer, pl_module, stage) -> None:
        self.trainer = trainer


@pytest.mark.parametrize("every", [None, 4], ids=["final", "periodic"])
def test_models_tested_before_a_sigterm_are_kept_and_the_resume_trains_only_the_others(
    tmp_path, monkeypatch, fake_fashion_root, every
):
    """SIGTERM inside the second of 3 evaluation models (of the final evaluation, or of the periodic one at step 4):
    ``last.ckpt`` keeps model 0's accuracy, the resumed run trains models 1 and 2 only (the periodic one as soon as
    it resumes at step 4, on that step's synthetic set), and every row equals an uninterrupted run's, model by
    model."""
    import ptmdd_lightning.callbacks.evaluate as evaluate

    evaluation = _evaluation(3)
    evaluation["init_args"].update(num_models=3, every_n_steps=every)
    stall = {"class_path": "tests.test_resume.StallAfterFirstModel", "init_args": {"marker": str(tmp_path / "stalled")}}
    killed = tiny_config(tmp_path / "killed.yaml", fake_fashion_root, extra_callbacks=[stall, evaluation])
    code, output = _kill_when_stalled(_start(tmp_path, killed), tmp_path, signal.SIGTERM)
    assert code == 143, output
    assert "saved the 0 rows evaluated so far and 1 tested models of the row in progress" in output
    folder = tmp_path / "logs" / "run" / "version_0"
    saved = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == (every or MAX_STEPS)
    state = next(v for k, v in saved["callbacks"].items() if "SyntheticSetEvaluation" in k)
    (partial,) = state["partial"].values()
    assert list(partial["accs"]) == [0] and not (folder / "results.json").exists()

    given: list[dict] = []
    original = evaluate.train_and_test

    def spy(*args, done=None, **kwargs):
        given.append(dict(done or {}))
        return original(*args, done=done, **kwargs)

    monkeypatch.setattr(evaluate, "train_and_test", spy)
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, extra_callbacks=[evaluation])
    main(["fit", "--config", str(config), "--ckpt_path", "last"])
    assert given[0] == {0: partial["accs"][0]} and all(d == {} for d in given[1:])  # model 0 is not trained again
    rows = json.loads((folder / "results.json").read_text())

    (tmp_path / "reference").mkdir()
    monkeypatch.chdir(tmp_path / "reference")
    main(["fit", "--config", str(config)])
    expected = json.loads((tmp_path / "reference" / "logs" / "run" / "version_0" / "results.json").read_text())
    assert [(r["step"], r["accs"]) for r in rows] == [(r["step"], r["accs"]) for r in expected]
    assert [r["step"] for r in rows] == ([MAX_STEPS] if every is None else [every, MAX_STEPS])
    assert rows[0]["accs"][0] == partial["accs"][0]


def test_rows_finished_before_a_sigterm_are_saved_and_not_evaluated_again(tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from ptmdd_lightning.callbacks import SyntheticSetEvaluation

    callback = SyntheticSetEvaluation(archs=["ConvNetW32"], num_models=1, protocol=EvalProtocol(epochs=1))
    saved: list[str] = []
    trainer = SimpleNamespace(
        world_size=1,
        global_step=8,
        save_checkpoint=saved.append,
        checkpoint_callbacks=[SimpleNamespace(last_model_path=str(tmp_path / "last.ckpt"))],
    )
    callback.on_exception(trainer, None, SIGTERMException())
    assert saved == []  # nothing new since the last checkpoint
    callback.rows.append({"step": 8, "arch": "ConvNetW32", "set": "synthetic", "mean": 0.5})
    callback._unsaved = True
    callback.on_exception(trainer, None, RuntimeError("not a SIGTERM"))
    assert saved == []
    callback.on_exception(trainer, None, SIGTERMException())
    assert saved == [str(tmp_path / "last.ckpt")]
    assert callback.state_dict()["rows"] == callback.rows and not callback._unsaved


def test_last_resumes_only_a_run_with_the_same_seed_ipc_method_and_pool(
    tmp_path, monkeypatch, capsys, fake_fashion_root
):
    """Run A stopped early, run B (another seed and IPC) finished later: ``last`` meant for A resumes A."""
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "a.yaml", fake_fashion_root, max_steps=4)
    main(["fit", "--config", str(config), "--trainer.max_steps", "2"])  # A: version_0, stopped at step 2
    main(["fit", "--config", str(config), "--seed_everything", "5", "--model.init_args.ipc", "2"])  # B: version_1
    resumed = main(["fit", "--config", str(config), "--ckpt_path", "last"])
    assert Path(resumed.trainer.log_dir).name == "version_0" and resumed.trainer.global_step == 4
    saved_b = yaml.safe_load((tmp_path / "logs" / "run" / "version_1" / "config.yaml").read_text())
    assert saved_b["seed_everything"] == 5 and saved_b["model"]["init_args"]["ipc"] == 2  # B untouched

    with pytest.raises(SystemExit) as exit_info:  # no run of seed 7: the candidates and their --ckpt_path
        main(["fit", "--config", str(config), "--seed_everything", "7", "--ckpt_path", "last"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no earlier run has this config's seed" in err and "seed_everything=7" in err
    for version in ("version_0", "version_1"):
        assert f"logs/run/{version}/checkpoints/last.ckpt" in err
    assert "'seed_everything': 5" in err and "'ipc': 2" in err


def test_a_second_run_never_writes_into_the_first_runs_folder(tmp_path, monkeypatch, capsys, fake_fashion_root):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, max_steps=2)
    pinned = ["--trainer.logger.init_args.version", "0"]
    first = main(["fit", "--config", str(config), *pinned])
    folder = Path(first.trainer.log_dir)
    before = {p.name: p.stat().st_mtime_ns for p in [folder / "config.yaml", folder / "checkpoints" / "last.ckpt"]}
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), *pinned, "--seed_everything", "9"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "already holds another run" in err and "--overwrite" in err
    assert {
        p: (folder / ("checkpoints" if p == "last.ckpt" else "") / p).stat().st_mtime_ns for p in before
    } == before  # nothing rewritten
    again = main(["fit", "--config", str(config), *pinned, "--seed_everything", "9", "--overwrite"])
    assert Path(again.trainer.log_dir) == folder
    assert yaml.safe_load((folder / "config.yaml").read_text())["seed_everything"] == 9
    assert yaml.safe_load((folder / "config.yaml").read_text())["overwrite"] is False  # a rerun asks again

    # without a logger the run folder is the working directory: the same guard
    no_logger = ["--trainer.logger", "false", "--trainer.callbacks", "[]"]
    main(["fit", "--config", str(config), *no_logger])
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), *no_logger])
    assert "already holds another run (" in capsys.readouterr().err


def test_a_failed_start_leaves_no_version_folder(tmp_path, monkeypatch, capsys, fake_fashion_root):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, max_steps=2, ptm_pool=tmp_path / "empty_pool")
    with pytest.raises(SystemExit) as exit_info:  # a PTM group whose members are missing (no PretrainPTMPool)
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    assert "ptmdd: error:" in capsys.readouterr().err
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("logs/**/*"))
    assert left in ([], ["logs/run"]), left


def test_checkpoints_are_written_next_to_their_target_and_a_failed_save_keeps_the_old_one(
    tmp_path, monkeypatch, fake_fashion_root
):
    from ptmdd_lightning.checkpoint_io import AtomicCheckpointIO

    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, max_steps=2)
    cli = main(["fit", "--config", str(config)])
    io = cli.trainer.strategy.checkpoint_io
    assert isinstance(io, AtomicCheckpointIO)
    last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    seen_tmp = []

    def dying_save(obj, fh):  # a write that dies midway, after the temporary file exists
        seen_tmp.append(Path(fh.name))
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"x": 1}, last)
    assert seen_tmp[0].parent == last.parent  # same folder: the rename never crosses filesystems
    assert last.read_bytes() == before and not seen_tmp[0].exists()


def test_stray_temporaries_of_killed_saves_are_removed_at_the_next_start(
    tmp_path, monkeypatch, capsys, fake_fashion_root
):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, max_steps=2)
    folder = Path(main(["fit", "--config", str(config)]).trainer.log_dir) / "checkpoints"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stray = folder / f".last.ckpt.tmp{dead.pid}"  # its writer is gone
    live = folder / f".last.ckpt.tmp{os.getppid()}"  # a writer that still runs
    stray.write_bytes(b"partial")
    live.write_bytes(b"in progress")
    main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_steps", "3"])
    assert not stray.exists() and live.exists()


def test_the_command_printed_for_a_missing_pool_member_works_as_printed(
    tmp_path, monkeypatch, capsys, fake_fashion_root
):
    import shlex

    monkeypatch.chdir(tmp_path)
    pool = tmp_path / "my_pool"  # not the default ptm_pool: the command must honour the config's pool_root
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, max_steps=2, ptm_pool=pool)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config)])
    err = capsys.readouterr().err
    assert "PTM pool member missing" in err
    command = err.split("`")[1]
    assert command.startswith("ptmdd fit ") and str(pool) in command
    main(shlex.split(command)[1:])  # exactly as printed (the console script `ptmdd` is main)
    assert (pool / "fashion_mnist" / "ConvNetW32" / "seed0" / "epoch1.pt").is_file()
    cli = main(["fit", "--config", str(config)])  # the distillation now finds its member
    assert cli.trainer.global_step == 2 and len(cli.model.pool.members) == 1


def test_a_ptm_group_without_members_is_refused():
    from ptmdd_lightning.core.guidance import PTMGroup
    from ptmdd_lightning.errors import PtmddError

    with pytest.raises(PtmddError, match=r"seeds: \[\] \(no member"):
        PTMGroup(arch="ConvNetW32", seeds=[]).validate()
    PTMGroup(arch="ConvNetW32", seeds=[3]).validate()  # a non-empty list is fine


def test_ckpt_path_to_an_export_or_a_pool_member_says_what_the_file_is(
    tmp_path, monkeypatch, capsys, fake_fashion_root, ptm_pool
):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, max_steps=2, extra_callbacks=[EXPORT])
    export = Path(main(["fit", "--config", str(config)]).trainer.log_dir) / "synthetic_set.pt"
    member = ptm_pool / "fashion_mnist" / "ConvNetW32" / "seed0" / "epoch1.pt"
    for path, said in [
        (export, "is a synthetic-set export, not a training checkpoint"),
        (member, "is a PTM pool member, not a distillation checkpoint"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(config), "--ckpt_path", str(path)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert said in err and "KeyError" not in err and "Traceback" not in err


def test_a_diverging_run_stops_with_a_message_and_keeps_finite_checkpoints(
    tmp_path, monkeypatch, capsys, fake_fashion_root
):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, extra_callbacks=[EXPORT], lr_img=1e30)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "distillation diverged at step" in err and "Lower lr_img (now 1e+30)" in err
    folder = tmp_path / "logs" / "run" / "version_0"
    assert not (folder / "synthetic_set.pt").exists()
    assert (folder / "checkpoints" / "last.ckpt").is_file()  # saved on the exception, before the bad update
    for ckpt in (folder / "checkpoints").glob("*.ckpt"):
        assert torch.isfinite(torch.load(ckpt, weights_only=False)["state_dict"]["synthetic.images"]).all(), ckpt


def test_pool_members_record_their_recipe_and_a_pool_never_mixes_recipes(
    tmp_path, monkeypatch, capsys, fake_fashion_root
):
    from ptmdd_lightning.core.guidance import PTMRecipe

    monkeypatch.chdir(tmp_path)
    pool = tmp_path / "pool"
    pretrain = {"class_path": "ptmdd_lightning.callbacks.PretrainPTMPool"}
    scaled = {"name": "authors-scaled-3", "epochs": 3, "milestones": [1, 2]}
    config = tiny_config(
        tmp_path / "c.yaml",
        fake_fashion_root,
        max_steps=1,
        ptm_pool=pool,
        ptm_recipe=scaled,
        extra_callbacks=[pretrain],
    )
    main(["fit", "--config", str(config)])
    member = torch.load(pool / "fashion_mnist" / "ConvNetW32" / "seed0" / "epoch1.pt", weights_only=True)
    assert member["recipe"] == PTMRecipe(**scaled).record()
    assert member["recipe"]["weight_decay"] == 0.005 and member["recipe"]["milestones"] == [1, 2]

    other = tiny_config(tmp_path / "d.yaml", fake_fashion_root, max_steps=1, ptm_pool=pool)  # the authors' recipe
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(other)])
    err = capsys.readouterr().err
    assert "a pool never mixes recipes" in err
    assert "'name': 'authors-scaled-3'" in err and "'name': 'authors'" in err  # names both


def test_an_old_pretrain_pool_setting_names_the_new_key(tmp_path, monkeypatch, capsys, fake_fashion_root):
    monkeypatch.chdir(tmp_path)
    old = {"class_path": "ptmdd_lightning.callbacks.PretrainPTMPool", "init_args": {"batch_size": 64}}
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, max_steps=1, extra_callbacks=[old])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "PretrainPTMPool no longer takes batch_size" in err and "model.init_args.ptm_recipe" in err


def test_a_checkpoint_of_a_version_before_dataset_info_resumes(tmp_path, monkeypatch, fake_fashion_root):
    """Checkpoints written before DatasetInfo carry the eight linked fields as separate hyper-parameters."""
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, max_steps=2)
    first = main(["fit", "--config", str(config)])
    ckpt = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    blob = torch.load(ckpt, weights_only=True)
    info = blob["hyper_parameters"].pop("dataset_info")
    blob["hyper_parameters"].update(
        {("dataset_name" if k == "name" else k): v for k, v in info.items()}
    )  # the layout of ptmdd 1f6c027
    torch.save(blob, ckpt)
    resumed = main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_steps", "3"])
    assert resumed.trainer.global_step == 3
    assert resumed.model.dataset_info.name == "fashion_mnist" and resumed.model.dataset_info.num_classes == 10
    assert torch.isfinite(resumed.model.synthetic.images).all()
