"""2-process DDP distillation on CPU (gloo) through the CLI, checked against single-process semantics.

``ptmdd fit ... --trainer.strategy ddp --trainer.devices 2 --trainer.accelerator cpu`` (Lightning's
subprocess launcher) runs 2 DM + CLoM steps with a PTM pool that PretrainPTMPool pretrains on rank 0 first.
A :class:`RankDump` callback saves, per rank, the batches drawn, the local (pre all-reduce) and reduced
gradients of the synthetic images, the images after each step, the PTMs and which rank evaluated/exported.
The test then recomputes each rank's first step in this process (a single-process Trainer whose module and
DataModule report rank 0 or 1) and checks that the DDP step is the single-process step with the mean of the
two ranks' gradients.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning import Callback, Trainer

from ptmdd_lightning.core.guidance import PTMGroup, member_path
from ptmdd_lightning.data import DistillDataModule
from ptmdd_lightning.modules import Distiller, DMDistiller
from tests.helpers import resumable_checkpoint

REPO = Path(__file__).resolve().parents[1]
SEED = 5
STEPS = 2
MODEL = {"ipc": 2, "method": "dm", "net_arch": "ConvNetW32", "ptm_sampling": "random"}
GROUP = {"arch": "ConvNetW32", "alpha": 0.5, "num_seeds": 1, "epoch": 1, "loss": "clom"}
#: a one-epoch recipe with batch 64, so that the tiny data gives the member several steps
RECIPE = {"name": "ddp-test", "epochs": 1, "milestones": [], "batch_size": 64}


class RankDump(Callback):
    """Test helper: record what one DDP rank saw and did; write ``<out_dir>/rank<r>.pt`` at teardown."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.record: dict = {}
        self._handle = None

    def on_train_start(self, trainer, pl_module) -> None:
        images = pl_module.synthetic.images
        self.record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "initial": images.detach().clone(),
            "batches": [],
            "local_grads": [],
            "grads": [],
            "after": [],
        }
        # a tensor hook sees this rank's own gradient, before DDP's all-reduce (which hooks AccumulateGrad)
        self._handle = images.register_hook(lambda g: self.record["local_grads"].append(g.detach().clone()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.record["batches"].append((batch[0].clone(), batch[1].clone()))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.record["grads"].append(pl_module.synthetic.images.grad.detach().clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["after"].append(pl_module.synthetic.images.detach().clone())

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or not self.record:
            return
        self._handle.remove()
        from ptmdd_lightning.callbacks import SyntheticSetEvaluation, SyntheticSetExport

        self.record["trainable"] = [n for n, p in pl_module.named_parameters() if p.requires_grad]
        self.record["pool"] = [
            {
                "state": {k: v.detach().cpu().clone() for k, v in m.net.state_dict().items()},
                "training": m.net.training,
                "requires_grad": any(p.requires_grad for p in m.net.parameters()),
                "has_grad": any(p.grad is not None for p in m.net.parameters()),
            }
            for m in pl_module.pool.members
        ]
        self.record["evaluated_rows"] = sum(
            len(c.rows) for c in trainer.callbacks if isinstance(c, SyntheticSetEvaluation)
        )
        self.record["exported"] = any(
            c.last_path is not None for c in trainer.callbacks if isinstance(c, SyntheticSetExport)
        )
        torch.save(self.record, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


def _config(path: Path, data_root: Path, pool_root: Path, dump_dir: Path) -> Path:
    config = {
        "seed_everything": SEED,
        "trainer": {
            "max_steps": STEPS,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "precision": "32-true",  # the single-process recomputation below runs in fp32 on every CPU
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "logs", "name": "ddp"},
            },
            "callbacks": [
                {"class_path": "ptmdd_lightning.callbacks.PretrainPTMPool"},
                {
                    "class_path": "ptmdd_lightning.callbacks.SyntheticSetEvaluation",
                    "init_args": {
                        "archs": ["ConvNetW32"],
                        "num_models": 1,
                        "baseline": False,
                        "protocol": {"epochs": 1, "precision": "32"},
                    },
                },
                {"class_path": "ptmdd_lightning.callbacks.SyntheticSetExport"},
                resumable_checkpoint(1),
                {"class_path": "tests.test_ddp.RankDump", "init_args": {"out_dir": str(dump_dir)}},
            ],
        },
        "model": {
            "class_path": "ptmdd_lightning.modules.Distiller",
            "init_args": {**MODEL, "pool_root": str(pool_root), "ptms": [GROUP], "ptm_recipe": RECIPE},
        },
        "data": {
            "class_path": "ptmdd_lightning.data.DistillDataModule",
            "init_args": {"dataset": "fashion_mnist", "root": str(data_root), "batch_real": 4},
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, fake_fashion_root):
    """Run the 2-process DDP distillation once; return its folder, the per-rank records and its output."""
    work = tmp_path_factory.mktemp("ddp")
    pool_root, dump_dir = work / "pool", work / "dumps"
    dump_dir.mkdir()
    config = _config(work / "ddp.yaml", fake_fashion_root, pool_root, dump_dir)
    env = dict(os.environ, OMP_NUM_THREADS="1", PTMDD_DATA=str(work / "cache"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("PL_GLOBAL_SEED", None)
    log = work / "ddp.log"
    with log.open("w") as out:  # own session: on a timeout the launcher's rank-1 child is killed too
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ptmdd_lightning",
                "fit",
                "--config",
                str(config),
                "--trainer.strategy",
                "ddp",
                "--trainer.devices",
                "2",
                "--trainer.accelerator",
                "cpu",
            ],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = "timeout (a rank waits in a collective that another rank never joins?)"
    output = log.read_text()
    assert code == 0, f"{code}\n{output}"
    records = [torch.load(dump_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    return {"work": work, "pool_root": pool_root, "records": records, "output": output}


def _as_rank(rank: int):
    """DMDistiller / DistillDataModule subclasses that behave as DDP rank ``rank`` in a single process."""
    model_cls = type(f"DMDistillerRank{rank}", (DMDistiller,), {"global_rank": property(lambda self: rank)})
    data_cls = type(f"DistillDataRank{rank}", (DistillDataModule,), {"_rank": lambda self: rank})
    return model_cls, data_cls


class _FirstStep(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch = (batch[0].clone(), batch[1].clone())
        self.initial = pl_module.synthetic.images.detach().clone()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grad = pl_module.synthetic.images.grad.detach().clone()


def _single_process_first_step(
    rank: int, data_root: Path, pool_root: Path
) -> tuple[_FirstStep, DMDistiller, DistillDataModule]:
    model_cls, data_cls = _as_rank(rank)
    data = data_cls(dataset="fashion_mnist", root=str(data_root), batch_real=4)
    dm_args = {k: v for k, v in MODEL.items() if k != "method"}  # DMDistiller is DM
    model = model_cls(**dm_args, pool_root=str(pool_root), ptms=[PTMGroup(**GROUP)], ptm_recipe=RECIPE)
    probe = _FirstStep()
    Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe],
    ).fit(model, datamodule=data)
    return probe, model, data


def test_ranks_agree_draw_their_own_batches_and_keep_ptms_frozen(ddp_run):
    r0, r1 = ddp_run["records"]
    assert (r0["rank"], r1["rank"]) == (0, 1) and r0["world_size"] == 2 and r0["strategy"] == "DDPStrategy"
    assert torch.equal(r0["initial"], r1["initial"])
    for step in range(STEPS):
        assert torch.equal(r0["after"][step], r1["after"][step])  # identical synthetic sets after every step
        assert torch.equal(r0["grads"][step], r1["grads"][step])  # one all-reduced gradient
        assert not torch.equal(r0["batches"][step][0], r1["batches"][step][0])  # each rank its own real batch
        assert torch.equal(r0["batches"][step][1], r1["batches"][step][1])  # class-balanced and sorted
        assert not torch.equal(r0["local_grads"][step], r1["local_grads"][step])
        # DDP's all-reduce is the mean of the ranks' gradients (g0/2 + g1/2 == (g0 + g1)/2 exactly in fp32)
        assert torch.equal(r0["grads"][step], (r0["local_grads"][step] + r1["local_grads"][step]) / 2)
    on_disk = torch.load(member_path(ddp_run["pool_root"], "fashion_mnist", "ConvNetW32", 0, 1), weights_only=False)
    for record in (r0, r1):
        assert record["trainable"] == ["synthetic.images"]
        (member,) = record["pool"]
        assert not member["training"] and not member["requires_grad"] and not member["has_grad"]
        assert all(torch.equal(member["state"][k], v) for k, v in on_disk["state_dict"].items())


def test_evaluation_and_export_run_once_into_one_run_folder(ddp_run):
    r0, r1 = ddp_run["records"]
    assert (r0["evaluated_rows"], r0["exported"]) == (1, True)
    assert (r1["evaluated_rows"], r1["exported"]) == (0, False)
    runs = sorted((ddp_run["work"] / "logs" / "ddp").iterdir())
    assert [p.name for p in runs] == ["version_0"]
    rows = json.loads((runs[0] / "results.json").read_text())
    assert [(r["step"], r["arch"], r["set"]) for r in rows] == [(STEPS, "ConvNetW32", "synthetic")]
    export = torch.load(runs[0] / "synthetic_set.pt", weights_only=False)
    assert torch.equal(export["images"], r0["after"][-1])
    last = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == STEPS
    assert torch.equal(last["state_dict"]["synthetic.images"], r0["after"][-1])
    pool_files = sorted(p.relative_to(ddp_run["pool_root"]) for p in ddp_run["pool_root"].rglob("*.pt"))
    assert [str(p) for p in pool_files] == ["fashion_mnist/ConvNetW32/seed0/epoch1.pt"]  # pretrained once


def test_ddp_step_is_the_single_process_step_with_the_mean_gradient(ddp_run, fake_fashion_root, monkeypatch):
    """Recompute each rank's first step in one process; the DDP step must equal SGD on the mean gradient."""
    monkeypatch.setenv("PL_GLOBAL_SEED", str(SEED))
    records = ddp_run["records"]
    grads = []
    for rank in (0, 1):
        probe, model, _data = _single_process_first_step(rank, fake_fashion_root, ddp_run["pool_root"])
        assert torch.equal(probe.initial, records[rank]["initial"])
        assert torch.equal(probe.batch[0], records[rank]["batches"][0][0])  # the batch that rank drew
        # same computation as that DDP rank (tolerance only for thread-count dependent reductions)
        torch.testing.assert_close(probe.grad, records[rank]["local_grads"][0], rtol=1e-5, atol=1e-7)
        grads.append(probe.grad)
    lr, expected = model.lr_img, records[0]["initial"] - model.lr_img * (grads[0] + grads[1]) / 2
    assert lr == 1.0  # DM default
    # first SGD step with momentum: the buffer is the gradient itself, so x1 = x0 - lr * g
    torch.testing.assert_close(records[0]["after"][0], expected, rtol=1e-5, atol=1e-6)


def test_model_data_and_callbacks_pickle(ddp_run, fake_fashion_root):
    """What the ddp_spawn launcher sends to its workers must pickle: model (pool loaded), data, callbacks."""
    from ptmdd_lightning.callbacks import PretrainPTMPool, SyntheticSetEvaluation, SyntheticSetExport

    data = DistillDataModule(dataset="fashion_mnist", root=str(fake_fashion_root), batch_real=4)
    data.setup("fit")
    model = Distiller(**MODEL, pool_root=str(ddp_run["pool_root"]), ptms=[PTMGroup(**GROUP)], ptm_recipe=RECIPE)
    model.setup("validate")  # loads the PTM pool (the fit-only part needs a trainer)
    assert model.pool is not None and len(model.pool) == 1
    callbacks = [
        PretrainPTMPool(),
        SyntheticSetEvaluation(archs=["ConvNetW32"]),
        SyntheticSetExport(),
        RankDump(out_dir=str(ddp_run["work"])),
    ]
    for obj in (model, data, callbacks):
        clone = pickle.loads(pickle.dumps(obj))
        assert type(clone) is type(obj)
    assert torch.equal(pickle.loads(pickle.dumps(model)).synthetic.images, model.synthetic.images)
