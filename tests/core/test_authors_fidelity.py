"""The authors' settings, exactly (issue "Numbers a DD researcher can trust", section 1).

Each test checks ptmdd against a small transcription of the authors' computation in yaolu-zjut/DDInterpreter at
commit 19a4767 (the arXiv version) or their alpha tables at 1c96cb3, on tiny tensors.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ptmdd_lightning.core.guidance import AUTHORS_CLOM_ALPHA, PTMMember, PTMRecipe, cclom
from ptmdd_lightning.layers import load_layers
from ptmdd_lightning.modules.classifier import Classifier
from ptmdd_lightning.modules.distiller import Distiller
from ptmdd_lightning.nets import build_net
from tests.helpers import config_layers, toy_info

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------- alpha
def test_the_shipped_fashion_mnist_clom_configs_use_the_authors_alpha():
    """'docs/weight of clom.png' (1c96cb3): alpha 100 on Fashion-MNIST for DC, DSA and DM at IPC 10 and 50."""
    table = {m: AUTHORS_CLOM_ALPHA[(m, "fashion_mnist", ipc)] for m in ("dc", "dsa", "dm") for ipc in (10, 50)}
    assert set(table.values()) == {100.0}
    assert AUTHORS_CLOM_ALPHA[("dc", "cifar10", 10)] == 1000.0  # the README's example value is CIFAR-10's
    checked = 0
    runs = [r for r in config_layers(REPO / "configs" / "paper") if r[-1].name.endswith("_clom.yaml")]
    for paths in [*runs, (REPO / "configs" / "quickstart.yaml",)]:
        config, path = load_layers(paths), paths[-1]
        model = config["model"]["init_args"]
        dataset = config["data"]["init_args"]["dataset"]
        for group in model.get("ptms") or []:
            if group["loss"] == "clom" and dataset == "fashion_mnist":
                assert group["alpha"] == table[model.get("method", "dm")], path  # DMDistiller has no method
                checked += 1
    assert checked >= 7  # dc/dsa/dm, full protocol and the CPU budget layered on it, and the quickstart


# ------------------------------------------------------------------------------------------------ recipe
def _authors_lr_per_epoch(epochs: int = 150) -> list[float]:
    """train_original_models.py: SGD(lr=0.01, ...), MultiStepLR(milestones=[50, 100], gamma=0.1) stepped after
    every epoch (``for epoch in range(1, epochs + 1): train(...); scheduler.step()``): the lr of each epoch."""
    lr, lrs = 0.01, []
    for epoch in range(1, epochs + 1):
        lrs.append(lr)
        if epoch in (50, 100):  # scheduler.step() after epoch 50 and 100 multiplies by gamma
            lr *= 0.1
    return lrs


def test_the_default_ptm_recipe_is_the_authors():
    r = PTMRecipe()
    assert (r.lr, r.momentum, r.weight_decay, r.batch_size, r.epochs, r.milestones, r.gamma) == (
        0.01,
        0.9,
        0.005,
        256,
        150,
        [50, 100],
        0.1,
    )  # train_original_models.py argparse defaults
    assert [r.lr_at(e) for e in range(150)] == pytest.approx(_authors_lr_per_epoch())
    assert r.record()["augmentation"] is None and r.record()["optimizer"] == "SGD"
    scaled = PTMRecipe.scaled(30)
    assert scaled.name == "authors-scaled-30" and scaled.milestones == [10, 20] and scaled.weight_decay == 0.005


def test_a_classifier_with_the_recipe_trains_with_the_authors_optimizer_and_schedule():
    model = Classifier(arch="ConvNetW32", dataset_info=toy_info(3, image_size=(8, 8)), recipe=PTMRecipe())
    model.trainer = None  # configure_optimizers does not need one with a recipe
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD) and (group["momentum"], group["weight_decay"]) == (0.9, 0.005)
    assert conf["lr_scheduler"]["interval"] == "epoch"
    lrs = []
    for _ in range(150):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx(_authors_lr_per_epoch())


def test_the_classifier_trains_on_the_batch_as_given_without_augmentation():
    """train(..., aug=False) in train_original_models.py: the loss is CE of the net on the batch itself."""
    torch.manual_seed(0)
    model = Classifier(arch="ConvNetW32", dataset_info=toy_info(3, image_size=(8, 8)), recipe=PTMRecipe())
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    model.log = lambda *a, **k: None
    loss = model.training_step((x, y), 0)
    torch.testing.assert_close(loss, F.cross_entropy(model.net(x), y), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- CCLoM
def _authors_cclom(embed, syn_image, syn_label, real_images, real_labels, idx, num_classes, ipc):
    """utils_clom/CLoM.py, CCLoM.calculate_loss (19a4767), with the random indices given; alpha left out."""
    batch_size = len(idx)
    real_image, real_label = real_images[idx], real_labels[idx]
    real_label_onehot = torch.zeros((batch_size, num_classes))
    real_label_onehot[torch.arange(batch_size), real_label] = 1
    syn_label_onehot = torch.zeros((ipc * num_classes, num_classes))
    syn_label_onehot[torch.arange(ipc * num_classes), syn_label] = 1
    labels = torch.matmul(syn_label_onehot, real_label_onehot.t())
    syn_feature = embed(syn_image)
    real_feature = embed(real_image)
    syn_feature_norm = syn_feature / syn_feature.norm(dim=-1, keepdim=True)
    real_feature_norm = real_feature / real_feature.norm(dim=-1, keepdim=True)
    cos_dist = 1 - syn_feature_norm @ real_feature_norm.t()
    return torch.sum(labels * cos_dist) / torch.sum(cos_dist)


def _distiller_with_data(n: int = 40, **kw) -> tuple[Distiller, torch.Tensor, torch.Tensor]:
    model = Distiller(dataset_info=toy_info(4, image_size=(8, 8)), ipc=2, net_arch="ConvNetW32", **kw)
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(n, 1, 8, 8, generator=gen), torch.arange(n) % 4
    model._trainer = SimpleNamespace(datamodule=SimpleNamespace(train_images=images, train_labels=labels))
    return model, images, labels


def test_cclom_equals_the_authors_computation_on_their_uniform_real_batch():
    torch.manual_seed(0)
    model, images, labels = _distiller_with_data(cclom_batch_size=64)
    assert model.hparams.cclom_real == "uniform" and model.hparams.guidance_view == "raw"  # the defaults
    step_real = torch.full((8, 1, 8, 8), 7.0)  # the step's own batch: never used by the uniform draw
    real, real_labels = model._cclom_real(step_real, torch.arange(8) % 4, random.Random(3))
    # the draw: 64 images of the whole training set, with replacement, labels along
    matches = (real.flatten(1)[:, None, :] == images.flatten(1)[None]).all(-1)
    assert real.shape == (64, 1, 8, 8) and bool(matches.any(1).all())
    idx = matches.float().argmax(1)
    assert torch.equal(real_labels, labels[idx]) and len(set(idx.tolist())) < 64  # 64 draws of 40: repeats
    embed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))
    syn = torch.randn(8, 1, 8, 8)
    syn_labels = torch.arange(4).repeat_interleave(2)
    ours = cclom(embed(real), real_labels, embed(syn), syn_labels)
    theirs = _authors_cclom(embed, syn, syn_labels, images, labels, idx, 4, 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def _counting_member(num_classes: int = 4) -> tuple[PTMMember, list[int]]:
    """A frozen ConvNetW32 PTM of another normalisation (so adapt() does work) whose embed() records its batch sizes;
    ``net.plain_embed`` is the embed that records nothing."""
    net = build_net("ConvNetW32", 1, num_classes, (8, 8)).eval().requires_grad_(False)
    meta = {"image_size": (8, 8), "channels": 1, "mean": (0.1,), "std": (0.9,)}
    member = PTMMember(net, meta, 1.0, "cclom", (0.0,), (1.0,))
    seen: list[int] = []
    embed = net.embed

    def counting(x):
        seen.append(x.shape[0])
        return embed(x)

    net.embed, net.plain_embed = counting, embed
    return member, seen


def test_cclom_from_the_feature_table_equals_the_authors_per_step_embedding_of_the_same_draw(caplog):
    """ptmdd's feature table (a speed path) vs CCLoM.calculate_loss embedding its B drawn images every step."""
    caplog.set_level("INFO")
    torch.manual_seed(0)
    table_model, images, labels = _distiller_with_data(cclom_batch_size=16)
    step_model, _, _ = _distiller_with_data(cclom_batch_size=16, cclom_feature_table=False)
    assert table_model.hparams.cclom_feature_table  # the default
    member, seen = _counting_member()
    step, step_labels = torch.zeros(8, 1, 8, 8), torch.arange(8) % 4
    syn, syn_labels = torch.randn(8, 1, 8, 8), torch.arange(4).repeat_interleave(2)
    for seed in (3, 4, 5):
        feat, real_labels = table_model._cclom_real_features(member, step, step_labels, random.Random(seed))
        ref, ref_labels = step_model._cclom_real_features(member, step, step_labels, random.Random(seed))
        assert feat.shape == (16, 32) and torch.equal(real_labels, ref_labels)
        torch.testing.assert_close(feat, ref, rtol=1e-5, atol=1e-6)
        # the draw, transcribed: the step's rng seeds a generator, then 16 indices of the 40 training images
        idx = torch.randint(0, 40, (16,), generator=torch.Generator().manual_seed(random.Random(seed).getrandbits(63)))
        embed = lambda x: member.net.plain_embed(member.adapt(x))  # noqa: E731
        ours = cclom(feat, real_labels, embed(syn), syn_labels)
        theirs = _authors_cclom(embed, syn, syn_labels, images, labels, idx, 4, 2)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    # the table: the 40 training images once, in chunks of cclom_batch_size, at the first step; per step: 16 drawn
    assert seen == [16, 16, 8] + [16] * 3
    assert caplog.text.count("CCLoM feature table of PTM") == 1 and "40 x 32 float32" in caplog.text  # in the log


def test_cclom_with_an_augmented_view_or_the_step_batch_embeds_every_step():
    """The table only where a raw image's features are fixed: augmented real images change every step."""
    for kw in ({"guidance_view": "augmented"}, {"cclom_real": "batch", "cclom_batch_real": 1}):
        model, _, _ = _distiller_with_data(cclom_batch_size=16, **kw)
        member, seen = _counting_member()
        for seed in (3, 4):
            model._cclom_real_features(member, torch.zeros(8, 1, 8, 8), torch.arange(8) % 4, random.Random(seed))
        assert seen == [16, 16] if "guidance_view" in kw else seen == [4, 4], kw
        assert not model._aux.get("cclom_tables"), kw


def test_cclom_real_batch_is_reproducible_per_step_and_batch_mode_keeps_the_earlier_behaviour():
    model, _, _ = _distiller_with_data()
    a, _ = model._cclom_real(torch.zeros(8, 1, 8, 8), torch.arange(8) % 4, random.Random(5))
    b, _ = model._cclom_real(torch.zeros(8, 1, 8, 8), torch.arange(8) % 4, random.Random(5))
    assert torch.equal(a, b)
    batch_model, _, _ = _distiller_with_data(cclom_real="batch", cclom_batch_real=1)
    step = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 1, 8, 8)  # class-balanced: 4 classes x 2, class-major
    real, real_labels = batch_model._cclom_real(step, torch.arange(4).repeat_interleave(2), random.Random(0))
    assert torch.equal(real[:, 0, 0, 0], torch.tensor([0.0, 2.0, 4.0, 6.0]))  # the first image of every class
    assert torch.equal(real_labels, torch.arange(4))


def test_guidance_sees_the_raw_synthetic_images_by_default():
    """main_DM.py line 248 / main.py line 271: our_loss.calculate_loss(image_syn, label_syn), no augmentation."""
    torch.manual_seed(0)
    model = Distiller(dataset_info=toy_info(4, image_size=(8, 8)), ipc=2, net_arch="ConvNetW32")
    assert model.dsa_strategy is not None  # DM augments its own objective ...
    seen = {}

    def guidance(real, real_labels, syn, syn_labels, rng):
        seen["syn"], seen["real"] = syn, real
        return {}

    model._guidance = guidance
    model.log = lambda *a, **k: None
    real = torch.randn(8, 1, 8, 8)
    model.training_step((real, torch.arange(4).repeat_interleave(2)), 0)
    assert torch.equal(seen["syn"], model.synthetic.images)  # ... but the PTMs see the raw images
    assert torch.equal(seen["real"], real)


# ------------------------------------------------------------------------------------- evaluation configs
def test_paper_configs_evaluate_in_fp32_and_dc_dsa_start_from_noise():
    for paths in config_layers(REPO / "configs" / "paper"):
        config, path = load_layers(paths), paths[-1]
        callbacks = config["trainer"]["callbacks"]
        (evaluation,) = [c for c in callbacks if c["class_path"].endswith("SyntheticSetEvaluation")]
        assert evaluation["init_args"]["protocol"]["precision"] == "32", path
        if path.parent.name == "paper":  # the full protocol (the CPU layers shrink the budget)
            assert evaluation["init_args"]["num_models"] == 20, path  # --num_eval 20
        model = config["model"]["init_args"]
        if config["model"]["class_path"].endswith("GradientMatchingDistiller"):
            assert model["init"] == "noise", path  # main.py --init default


# ------------------------------------------------------------------------------------------------- PTM mode


def _authors_clom(net: torch.nn.Module, syn_image: torch.Tensor, syn_label: torch.Tensor, alpha: float) -> torch.Tensor:
    """DDInterpreter 19a4767 ``utils_clom/CLoM.py``: line 56 freezes the member with ``requires_grad_(False)`` and
    never calls ``eval()``, so ``calculate_loss`` runs it in train mode: ``alpha * CrossEntropyLoss(model(syn), y)``."""
    model = net.requires_grad_(False).train()
    return alpha * torch.nn.CrossEntropyLoss()(model(syn_image), syn_label)


@pytest.mark.parametrize("arch", ["ConvNet", "ConvNetW32", "ConvNetD1", "LeNet", "MLP"])
def test_the_studies_ptms_give_the_authors_train_mode_clom_in_eval_mode(arch):
    """ptmdd keeps PTMs in eval mode (a deviation, docs/paper.md); without BatchNorm that is the same function."""
    torch.manual_seed(0)
    net = build_net(arch, 1, 10, (28, 28))
    member = PTMMember(
        net, {"image_size": (28, 28), "channels": 1, "mean": (0.0,), "std": (1.0,)}, 100.0, "clom", (0.0,), (1.0,)
    )
    member.train()  # a parent's train() does not switch the PTM
    x, y = torch.randn(20, 1, 28, 28), torch.arange(20) % 10
    ours = 100.0 * F.cross_entropy(member(x), y)
    assert not net.training
    torch.testing.assert_close(ours, _authors_clom(net, x, y, 100.0), rtol=1e-6, atol=1e-5)


def test_a_batchnorm_ptm_is_where_eval_mode_departs_from_the_authors():
    torch.manual_seed(0)
    net = build_net("ConvNetBN", 1, 10, (28, 28))
    with torch.no_grad():  # running statistics unlike any one batch's, as after pretraining
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    member = PTMMember(
        net, {"image_size": (28, 28), "channels": 1, "mean": (0.0,), "std": (1.0,)}, 100.0, "clom", (0.0,), (1.0,)
    )
    x, y = torch.randn(20, 1, 28, 28), torch.arange(20) % 10
    ours = 100.0 * F.cross_entropy(member(x), y)
    before = [m.running_mean.clone() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    theirs = _authors_clom(net, x, y, 100.0)
    assert not torch.allclose(ours, theirs, rtol=1e-3)
    after = [m.running_mean for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # theirs drifts the statistics
