"""Distiller and Classifier: what a step changes (only the synthetic images), frozen PTMs, DC/DSA/DM smoke runs."""

from __future__ import annotations

import pytest
import torch
from lightning import Callback, Trainer

from ptmdd_lightning.core.guidance import PTMGroup, PTMRecipe, member_path
from ptmdd_lightning.data import DistillDataModule, RealDataModule
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.modules import Classifier, Distiller
from tests.helpers import fmnist_info


def _trainer(**kwargs):
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return Trainer(**{**defaults, **kwargs})


@pytest.fixture
def pool_root(tmp_path, fake_fashion_root):
    """Two ConvNetW32 PTMs (seeds 0, 1) trained one epoch on the tiny data, written as pool members."""
    from ptmdd_lightning.callbacks import PTMCheckpoint

    root = tmp_path / "pool"
    for seed in (0, 1):
        torch.manual_seed(seed)
        data = RealDataModule(dataset="fashion_mnist", root=str(fake_fashion_root), batch_size=64)
        model = Classifier(arch="ConvNetW32", dataset_info=fmnist_info(), recipe=PTMRecipe())
        _trainer(
            max_epochs=1, limit_val_batches=0, callbacks=[PTMCheckpoint(epochs=[1], pool_root=str(root), seed=seed)]
        ).fit(model, data)
    return root


class _GradProbe(Callback):
    """Records, right before the optimizer step, which tensors received gradients."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.syn_grad = pl_module.synthetic.images.grad.detach().clone()
        self.trainable = [n for n, p in pl_module.named_parameters() if p.requires_grad]
        self.pool_grads = [p.grad for p in pl_module.pool.parameters()]
        self.net_grads = [p.grad for p in pl_module._aux["net"].parameters()]


@pytest.mark.parametrize("sampling", ["random", "all"])
def test_step_changes_only_the_synthetic_images_and_ptms_stay_frozen(fake_fashion_root, pool_root, sampling):
    dm = DistillDataModule(dataset="fashion_mnist", root=str(fake_fashion_root), batch_real=4)
    group = PTMGroup(arch="ConvNetW32", num_seeds=2, epoch=1, alpha=1.0)
    model = Distiller(
        ipc=2, method="dm", net_arch="ConvNetW32", ptms=[group], pool_root=str(pool_root), ptm_sampling=sampling
    )
    on_disk = [
        torch.load(member_path(pool_root, "fashion_mnist", "ConvNetW32", s, 1), weights_only=False) for s in (0, 1)
    ]
    probe = _GradProbe()
    init = {}

    class _Init(Callback):
        def on_train_start(self, trainer, pl_module):
            init["images"] = pl_module.synthetic.images.detach().clone()

    _trainer(max_steps=3, callbacks=[probe, _Init()]).fit(model, datamodule=dm)
    assert probe.trainable == ["synthetic.images"]
    assert probe.syn_grad.abs().sum() > 0
    assert all(g is None for g in probe.pool_grads) and all(g is None for g in probe.net_grads)
    assert not torch.equal(model.synthetic.images.detach(), init["images"])  # the images moved
    for member, blob in zip(model.pool.members, on_disk, strict=True):
        after = member.net.state_dict()
        assert all(torch.equal(after[k], v) for k, v in blob["state_dict"].items())  # bit-identical PTMs
        assert not member.net.training


@pytest.mark.parametrize("method", ["dm", "dc", "dsa"])
def test_fast_dev_run_each_method(fake_fashion_root, method):
    dm = DistillDataModule(dataset="fashion_mnist", root=str(fake_fashion_root), batch_real=4)
    model = Distiller(ipc=1, method=method, net_arch="ConvNetW32")
    _trainer(fast_dev_run=True).fit(model, datamodule=dm)
    assert torch.isfinite(model.synthetic.images).all()


class _StepProbe(Callback):
    """The synthetic images before the first step, and the metrics logged by it."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.images = pl_module.synthetic.images.detach().clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.logged = {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.parametrize("base_weight", [0.0, 0.5])
def test_base_weight_scales_the_base_objective_and_zero_is_the_guidance_alone(
    fake_fashion_root, pool_root, base_weight
):
    dm = DistillDataModule(dataset="fashion_mnist", root=str(fake_fashion_root), batch_real=4)
    group = PTMGroup(arch="ConvNetW32", num_seeds=1, epoch=1, alpha=3.0)
    model = Distiller(
        ipc=2, method="dm", net_arch="ConvNetW32", ptms=[group], pool_root=str(pool_root), base_weight=base_weight
    )
    probe = _StepProbe()
    _trainer(max_steps=1, callbacks=[probe]).fit(model, datamodule=dm)
    # by hand: alpha * the PTM's mean cross-entropy on the raw synthetic images (labels 0,0,1,1,...)
    ptm = model.pool.members[0].net
    labels = torch.arange(10).repeat_interleave(2)
    with torch.no_grad():
        logp = torch.log_softmax(ptm(probe.images), dim=1)
    clom_by_hand = 3.0 * float(-logp[torch.arange(20), labels].mean())
    assert probe.logged["train/loss_clom"] == pytest.approx(clom_by_hand, rel=1e-5)
    if base_weight == 0:
        assert "train/loss_dm" not in probe.logged  # not computed at all
        assert probe.logged["train/loss"] == pytest.approx(clom_by_hand, rel=1e-5)
    else:
        assert probe.logged["train/loss"] == pytest.approx(0.5 * probe.logged["train/loss_dm"] + clom_by_hand, rel=1e-5)


def test_guidance_alone_runs_dsa_without_its_inner_loop_and_refuses_no_ptms(fake_fashion_root, pool_root):
    dm = DistillDataModule(dataset="fashion_mnist", root=str(fake_fashion_root), batch_real=4)
    group = PTMGroup(arch="ConvNetW32", num_seeds=1, epoch=1, alpha=1.0)
    model = Distiller(ipc=1, method="dsa", net_arch="ConvNetW32", ptms=[group], pool_root=str(pool_root), base_weight=0)
    probe = _StepProbe()
    _trainer(max_steps=2, callbacks=[probe]).fit(model, datamodule=dm)
    assert model._aux["net"] is None  # no matching net was ever built, so no inner loop ran
    assert not torch.equal(model.synthetic.images.detach(), probe.images)  # the guidance moved the images
    with pytest.raises(PtmddError, match="add ptms"):
        Distiller(ipc=1, method="dm", base_weight=0.0)
    with pytest.raises(PtmddError, match="base_weight must be >= 0"):
        Distiller(ipc=1, method="dm", base_weight=-1.0)


def test_fast_dev_run_classifier(fake_fashion_root):
    dm = RealDataModule(dataset="fashion_mnist", root=str(fake_fashion_root), batch_size=32)
    model = Classifier(arch="ConvNetW32")
    _trainer(fast_dev_run=True).fit(model, datamodule=dm)


def test_classifier_trains_convnet3_through_the_cpu_kernels_with_the_module_loss():
    from ptmdd_lightning.backends.cpu import kernels as cpu_kernels

    torch.manual_seed(0)
    model = Classifier(arch="ConvNetW32")
    x = torch.randn(6, 1, 28, 28)
    logits = model.train_forward(x)
    assert model._aux["fast"].kernels == cpu_kernels.available()
    torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-5)
    # any other net trains as the module itself
    other = Classifier(arch="ConvNetBN")
    torch.testing.assert_close(other.train_forward(x), other(x))
    assert not other._aux["fast"].kernels


def test_same_seed_same_synthetic_set(fake_fashion_root, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    results = []
    for _ in range(2):
        dm = DistillDataModule(dataset="fashion_mnist", root=str(fake_fashion_root), batch_real=4)
        model = Distiller(ipc=1, method="dm", net_arch="ConvNetW32")
        _trainer(max_steps=3).fit(model, datamodule=dm)
        results.append(model.synthetic.images.detach().clone())
    assert torch.equal(results[0], results[1])


# ------------------------------------------------------------------ one algorithm per class
def test_distiller_selects_the_algorithms_class_and_refuses_dc_arguments_for_dm():
    from ptmdd_lightning.modules import DMDistiller, GradientMatchingDistiller

    dm = Distiller(ipc=1, method="dm", net_arch="ConvNetW32")
    assert type(dm) is DMDistiller and dm.method == "dm" and dm.lr_img == 1.0 and "method" not in dm.hparams
    dc = Distiller(ipc=1, method="dc", net_arch="ConvNetW32")
    assert type(dc) is GradientMatchingDistiller and dc.dsa_strategy is None and dc.lr_img == 0.1
    assert not dc.automatic_optimization  # the outer step and its inner loop are one training_step
    assert GradientMatchingDistiller(ipc=10).dsa_strategy is not None  # DSA by default
    with pytest.raises(PtmddError, match=r"outer_loop only apply to DC/DSA.*DMDistiller"):
        Distiller(ipc=1, method="dm", outer_loop=3)
    with pytest.raises(PtmddError, match="runs method 'dc' or 'dsa', not 'dm'"):
        GradientMatchingDistiller(method="dm")
    with pytest.raises(PtmddError, match="unknown method 'dx'"):
        Distiller(method="dx")


@pytest.mark.parametrize("method", ["dm", "dc"])
def test_an_older_distiller_config_gives_the_same_synthetic_set_as_the_algorithms_class(
    tmp_path, monkeypatch, fake_fashion_root, method
):
    import yaml

    from ptmdd_lightning.main import main
    from tests.test_resume import tiny_config

    monkeypatch.chdir(tmp_path)
    old = tiny_config(tmp_path / "old.yaml", fake_fashion_root, method, max_steps=3)
    cfg = yaml.safe_load(old.read_text())
    cfg["model"]["class_path"] = (
        "ptmdd_lightning.modules.DMDistiller" if method == "dm" else "ptmdd_lightning.modules.GradientMatchingDistiller"
    )
    if method == "dm":
        cfg["model"]["init_args"].pop("method")
    cfg["trainer"]["logger"]["init_args"]["name"] = "new"
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump(cfg))
    a = main(["fit", "--config", str(old), "--trainer.precision", "32-true"]).model.synthetic.images.detach()
    b = main(["fit", "--config", str(new), "--trainer.precision", "32-true"]).model.synthetic.images.detach()
    assert torch.equal(a, b)


def test_pool_cost_counts_the_files_and_their_pretraining_time(pool_root):
    """Issue "PTMs as teachers too" (cost): PTMCheckpoint records pretrain_seconds; pool_cost sums it per run."""
    from ptmdd_lightning.core.guidance import PTMPool, load_ptm, pool_cost

    files = sorted(pool_root.rglob("epoch1.pt"))
    recorded = [load_ptm(f)[1]["pretrain_seconds"] for f in files]
    assert len(files) == 2 and all(s > 0 for s in recorded)
    # and where those seconds were spent: one attempt each, from the first step, on this machine's CPU kind
    from ptmdd_lightning.machine import cpu_info

    for f in files:
        attempts = load_ptm(f)[1]["attempts"]
        assert [(a["from_step"], a["from_epoch"], a["cpu_kind"]) for a in attempts] == [(0, 0, cpu_info()["kind"])]
    pool = PTMPool(
        [PTMGroup(arch="ConvNetW32", num_seeds=2, epoch=1)], pool_root, "fashion_mnist", 10, (0.2861,), (0.3530,)
    )
    cost = pool_cost(list(pool.members))
    assert cost["members"] == 2 and cost["pool_bytes"] == sum(f.stat().st_size for f in files)
    assert cost["pretrain_seconds"] == pytest.approx(sum(recorded), abs=1e-3)
    assert cost["pretrain_kinds"] == f"{cpu_info()['kind']} x2"  # two pretraining runs, both here
    pool.members[0].meta.pop("pretrain_seconds")  # a member pretrained before ptmdd recorded it
    pool.members[0].meta.pop("attempts")
    older = pool_cost(list(pool.members))
    assert older["pretrain_seconds"] is None
    assert older["pretrain_kinds"] == f"? x1, {cpu_info()['kind']} x1"


def test_a_resumed_pretraining_run_lists_both_attempts_in_its_member_file(tmp_path, fake_fashion_root):
    """A pool member stopped after epoch 1 and resumed from last.ckpt: the file of epoch 2 names both attempts."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ptmdd_lightning.callbacks import PTMCheckpoint
    from ptmdd_lightning.core.guidance import load_ptm

    root, ckpts = tmp_path / "pool", tmp_path / "ckpt"

    class StopAfterOneEpoch(Callback):  # a run killed after its first epoch's checkpoint
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    def fit(ckpt_path=None) -> int:
        torch.manual_seed(0)
        data = RealDataModule(dataset="fashion_mnist", root=str(fake_fashion_root), batch_size=64)
        model = Classifier(arch="ConvNetW32", dataset_info=fmnist_info(), recipe=PTMRecipe())
        trainer = _trainer(
            max_epochs=2,
            limit_val_batches=0,
            enable_checkpointing=True,
            callbacks=[
                PTMCheckpoint(epochs=[1, 2], pool_root=str(root), seed=0, overwrite=True),
                ModelCheckpoint(dirpath=ckpts, save_last=True),
                *([] if ckpt_path else [StopAfterOneEpoch()]),
            ],
        )
        trainer.fit(model, data, ckpt_path=ckpt_path)
        return trainer.global_step

    steps_per_epoch = fit()
    assert fit(ckpt_path=str(ckpts / "last.ckpt")) == 2 * steps_per_epoch
    first = load_ptm(member_path(root, "fashion_mnist", "ConvNetW32", 0, 1))[1]["attempts"]
    both = load_ptm(member_path(root, "fashion_mnist", "ConvNetW32", 0, 2))[1]["attempts"]
    assert [(a["from_step"], a["from_epoch"]) for a in first] == [(0, 0)]
    assert [(a["from_step"], a["from_epoch"]) for a in both] == [(0, 0), (steps_per_epoch, 1)]
    assert both[0] == first[0]  # the first attempt, restored from the checkpoint as it was written
