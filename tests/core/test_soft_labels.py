"""Soft-label evaluation and DD-Ranking's robust scores (``ptmdd_lightning.core.soft_labels``): hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ptmdd_lightning.core.evaluate import EvalProtocol, train_models
from ptmdd_lightning.core.soft_labels import Teacher, ars, kd_loss, lrs, robust_scores
from ptmdd_lightning.errors import PtmddError
from tests.core.test_evaluate import NO_AUG, bright_dark, max_param_diff, tiny_net

LN3 = math.log(3.0)
E, INV_E = math.e, math.exp(-1.0)


class FixedLogits(nn.Module):
    """A 'PTM' that gives every image the same logits."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


class SignOracle(nn.Module):
    """Logits +-1000 from the sign of an image's mean: the one-hot labels of ``bright_dark`` (softmax exactly 0/1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = (x.mean(dim=(1, 2, 3)) > 0).float()
        return 1000.0 * torch.stack([1.0 - bright, bright], dim=1)


# ------------------------------------------------------------------------------------------------ KD loss
def test_kd_loss_by_hand():
    # row 1: s / T = [0, ln 3] -> q = [1/4, 3/4]; p = [1/2, 1/2]:
    #   KL = 1/2 ln(1/2 / 1/4) + 1/2 ln(1/2 / 3/4) = 1/2 ln(4/3); times T^2 = 4 -> 2 ln(4/3)
    # row 2: p = q = [1/2, 1/2] -> 0. Batch mean: ln(4/3).
    s = torch.tensor([[0.0, 2 * LN3], [0.0, 0.0]], requires_grad=True)
    p = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    loss = kd_loss(s, p, temperature=2.0)
    assert loss.item() == pytest.approx(math.log(4 / 3), rel=1e-6)
    # d/ds of T^2 KL(p || softmax(s/T)) / b = T (q - p) / b: row 1 -> 2 ([1/4, 3/4] - [1/2, 1/2]) / 2
    loss.backward()
    torch.testing.assert_close(s.grad, torch.tensor([[-0.25, 0.25], [0.0, 0.0]]))


def test_kd_loss_of_one_hot_soft_labels_at_t1_is_the_cross_entropy():
    s = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    p = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = -(torch.log_softmax(s, 1)[0, 0] + torch.log_softmax(s, 1)[1, 2]) / 2
    assert kd_loss(s, p, 1.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_kd_loss_refuses_bad_input():
    with pytest.raises(PtmddError, match="same shape"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(PtmddError, match="T must be > 0"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)


# ------------------------------------------------------------------------------------------------ teacher
def test_an_ensemble_teacher_averages_the_members_softmax_at_t():
    # member A: [0, 0] -> [1/2, 1/2]; member B: [0, 2 ln 3] at T = 2 -> [1/4, 3/4]; mean [3/8, 5/8]
    teacher = Teacher([FixedLogits([0.0, 0.0]), FixedLogits([0.0, 2 * LN3])], temperature=2.0)
    probs = teacher(torch.zeros(3, 1, 4, 4))
    torch.testing.assert_close(probs, torch.tensor([[0.375, 0.625]] * 3))
    assert not teacher.training and not teacher.train().training  # stays in eval mode


def test_a_teacher_of_another_label_space_or_input_shape_is_refused():
    with pytest.raises(PtmddError, match="3 classes"):
        Teacher([FixedLogits([0.0, 1.0])], names=["ConvNet/seed0"]).check(3, (1, 4, 4))
    conv = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(8, 2))  # a 3-channel 4x4 PTM
    with pytest.raises(PtmddError, match="cannot take the student's images"):
        Teacher([conv]).check(2, (1, 4, 4))
    with pytest.raises(PtmddError, match="at least one PTM"):
        Teacher([])
    with pytest.raises(PtmddError, match="T must be > 0"):
        Teacher([FixedLogits([0.0])], temperature=-1.0)


# --------------------------------------------------------------------------------------- soft training
@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_training_on_one_hot_soft_labels_is_training_on_the_hard_labels(mode):
    """A teacher whose soft labels are exactly the hard labels (T = 1) trains the same models as the hard labels."""
    x, y = bright_dark(16, seed=2)
    p = EvalProtocol(epochs=3, batch_size=8, lr=0.05, **NO_AUG)
    hard = train_models(tiny_net, x, y, 2, 2, p, seed=5, mode=mode)
    soft = train_models(tiny_net, x, y, 2, 2, p, seed=5, mode=mode, teacher=Teacher([SignOracle()], temperature=1.0))
    assert max_param_diff(hard, soft) < 1e-6


def test_training_on_a_teachers_soft_labels_follows_the_teacher_not_the_labels():
    """A teacher that calls every image class 1 (p = [0, 1]) drives the students to class 1 whatever the labels."""
    x, y = bright_dark(16, seed=3)
    p = EvalProtocol(epochs=20, batch_size=8, lr=0.1, **NO_AUG)
    teacher = Teacher([FixedLogits([-1000.0, 1000.0])], temperature=1.0)
    (model,) = train_models(tiny_net, x, y, 2, 1, p, seed=0, mode="loop", teacher=teacher)
    assert bool((model.eval()(x).argmax(1) == 1).all())
    loop = train_models(tiny_net, x, y, 2, 2, p, seed=1, mode="loop", teacher=teacher)
    vmap = train_models(tiny_net, x, y, 2, 2, p, seed=1, mode="vmap", teacher=teacher)
    assert max_param_diff(loop, vmap) < 1e-5  # both modes train the same students


def test_train_models_refuses_a_teacher_that_does_not_fit():
    x, y = bright_dark(8, seed=0)
    with pytest.raises(PtmddError, match="label space"):
        train_models(tiny_net, x, y, 2, 1, EvalProtocol(epochs=1, **NO_AUG), teacher=Teacher([FixedLogits([0.0] * 3)]))


# ---------------------------------------------------------------------------------------- robust scores
def test_lrs_and_ars_by_hand():
    # IOR 0.2, HLR 0.3, w 0.5: exponent 0.1 - 0.15 = -0.05
    assert lrs(0.2, 0.3) == pytest.approx((math.exp(-0.05) - INV_E) / (E - INV_E), rel=1e-12)
    assert lrs(0.2, 0.3) == pytest.approx(0.248191, abs=1e-6)  # 0.583350 / 2.350402
    assert lrs(1.0, 0.0, weight=1.0) == pytest.approx(1.0) and lrs(0.0, 1.0, weight=0.0) == pytest.approx(0.0)
    # ARS: 0.5 * 0.1 + 0.5 * 0.3 = 0.2
    assert ars(0.1, 0.3) == pytest.approx((math.exp(0.2) - INV_E) / (E - INV_E), rel=1e-12)
    assert ars(0.1, 0.3, weight=1.0) == pytest.approx((math.exp(0.1) - INV_E) / (E - INV_E), rel=1e-12)
    with pytest.raises(PtmddError, match="weight"):
        lrs(0.1, 0.1, weight=1.5)


def test_robust_scores_are_per_round_means_and_stds():
    def score(x: float) -> float:
        return (math.exp(x) - INV_E) / (E - INV_E)

    out = robust_scores(
        real_hard=0.9,
        syn_hard=[0.7, 0.8],
        random_hard=[0.6, 0.6],
        syn_soft=[0.8, 0.8],
        random_soft=[0.75, 0.7],
        syn_no_aug=[0.65, 0.7],
        random_no_aug=[0.6, 0.5],
    )
    # rounds: HLR [0.2, 0.1], IOR hard [0.1, 0.2], IOR soft [0.05, 0.1], gains without augmentation [0.05, 0.2]
    assert out["hlr"]["mean"] == pytest.approx(0.15) and out["hlr"]["std"] == pytest.approx(0.05)
    assert out["ior_hard"]["mean"] == pytest.approx(0.15) and out["ior_soft"]["mean"] == pytest.approx(0.075)
    lrs_hard = [score(0.5 * 0.1 - 0.5 * 0.2), score(0.5 * 0.2 - 0.5 * 0.1)]
    assert out["lrs_hard"]["mean"] == pytest.approx(sum(lrs_hard) / 2)
    assert out["lrs_hard"]["std"] == pytest.approx(abs(lrs_hard[0] - lrs_hard[1]) / 2)
    lrs_soft = [score(0.5 * 0.05 - 0.5 * 0.2), score(0.5 * 0.1 - 0.5 * 0.1)]
    assert out["lrs_soft"]["mean"] == pytest.approx(sum(lrs_soft) / 2)
    ars_rounds = [score(0.5 * 0.1 + 0.5 * 0.05), score(0.5 * 0.2 + 0.5 * 0.2)]
    assert out["ars"]["mean"] == pytest.approx(sum(ars_rounds) / 2)
    assert set(robust_scores(0.9, [0.7], [0.6])) == {"hlr", "ior_hard", "lrs_hard"}


def test_robust_scores_refuse_unpaired_sets():
    with pytest.raises(PtmddError, match="same number"):
        robust_scores(0.9, [0.7, 0.8], [0.6])
    with pytest.raises(PtmddError, match="both the synthetic and the random"):
        robust_scores(0.9, [0.7], [0.6], syn_soft=[0.8])
