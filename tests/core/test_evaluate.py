"""Tests of the evaluation engine ``ptmdd_lightning.core.evaluate`` (tiny nets and data made on the fly)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from torch import nn

from ptmdd_lightning.core import evaluate as ev
from ptmdd_lightning.core.evaluate import (
    EvalProtocol,
    evaluate_models,
    lr_for_epoch,
    random_real_subset,
    summarize,
    train_and_test,
    train_models,
)
from ptmdd_lightning.errors import PtmddError

NO_AUG = dict(dsa_strategy=None, precision="32")  # fp32: the comparisons below are exact on every CPU


def tiny_net() -> nn.Module:
    """conv -> instance norm -> ReLU -> avg-pool -> linear: ConvNet's layer types at 1x4x4 -> 2 classes."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(4, 4),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


def bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2))


def bright_dark(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 1 = bright (+1), class 0 = dark (-1), plus N(0, 0.5^2) noise: ``(n, 1, 4, 4)``, ``(n,)``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (2.0 * y.float() - 1.0).view(n, 1, 1, 1) + 0.5 * torch.randn(n, 1, 4, 4, generator=g)
    return x, y


def max_param_diff(a: list[nn.Module], b: list[nn.Module]) -> float:
    return max(
        float((p - q).detach().abs().max())
        for ma, mb in zip(a, b, strict=True)
        for p, q in zip(ma.parameters(), mb.parameters(), strict=True)
    )


# ------------------------------------------------------------------------------------------- protocol


def test_protocol_defaults_are_the_reference_ones():
    p = EvalProtocol()
    assert (p.epochs, p.lr, p.momentum, p.weight_decay, p.batch_size) == (1000, 0.01, 0.9, 5e-4, 256)
    assert p.dsa_strategy == "color_crop_cutout_flip_scale_rotate" and p.augments
    assert p.precision == "auto" and p.decay_epoch == 500  # auto: bf16 only where native (machine.py)
    assert not EvalProtocol(dsa_strategy="none").augments and not EvalProtocol(dsa_strategy=None).augments
    assert EvalProtocol(precision="bf16-mixed").precision == "bf16"


def test_lr_decays_once_at_half_the_epochs():
    p = EvalProtocol(epochs=10, lr=0.01)
    assert [lr_for_epoch(p, e) for e in range(10)] == pytest.approx([0.01] * 5 + [0.001] * 5)
    assert EvalProtocol(epochs=1000).decay_epoch == 500
    assert EvalProtocol(epochs=301).decay_epoch == 150  # = Epoch // 2 as in the reference
    assert EvalProtocol(epochs=300).decay_epoch == 150
    never = EvalProtocol(epochs=10, lr_decay_at=1.0)
    assert {lr_for_epoch(never, e) for e in range(10)} == {0.01}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(epochs=0),
        dict(batch_size=0),
        dict(lr=0.0),
        dict(momentum=1.0),
        dict(weight_decay=-1.0),
        dict(lr_decay_at=1.5),
        dict(precision="16"),
        dict(test_batch_size=0),
        dict(dsa_strategy=3),
    ],
)
def test_protocol_rejects_bad_values(kwargs):
    with pytest.raises(PtmddError):
        EvalProtocol(**kwargs)


# ------------------------------------------------------------------------------------------------ SGD


def test_vmapped_training_equals_sequential_torch_optim_sgd():
    """Same inits, same shuffles (3 batches of 8, 8, 4 per epoch), no aug, a decay at epoch 2."""
    x, y = bright_dark(20, seed=1)
    p = EvalProtocol(epochs=4, batch_size=8, lr=0.05, **NO_AUG)
    init = train_models(tiny_net, x, y, 2, 3, EvalProtocol(epochs=1, lr=1e-30, **NO_AUG), seed=3, mode="loop")
    vm = train_models(tiny_net, x, y, 2, 3, p, seed=3, mode="vmap")
    lp = train_models(tiny_net, x, y, 2, 3, p, seed=3, mode="loop")
    assert max_param_diff(vm, lp) < 1e-5
    assert max_param_diff(vm, init) > 1e-2  # the models did train
    assert max_param_diff(vm[:1], vm[1:2]) > 1e-2  # every model its own init


def test_every_model_reshuffles_every_epoch():
    master = torch.Generator().manual_seed(0)
    rngs = [ev._ModelRNG(master, torch.device("cpu")) for _ in range(2)]
    epochs = [list(ev._epoch_batches(20, 8, rngs)) for _ in range(2)]
    for batches in epochs:
        assert [b.shape for b in batches] == [(2, 8), (2, 8), (2, 4)]  # the last batch is smaller
        perm = torch.cat(batches, dim=1)
        assert all(sorted(row.tolist()) == list(range(20)) for row in perm)  # one pass over the set
        assert not torch.equal(perm[0], perm[1])  # each model its own order
    assert not torch.equal(torch.cat(epochs[0], 1), torch.cat(epochs[1], 1))  # a new order every epoch
    assert not torch.equal(torch.cat(epochs[0], 1)[0], torch.arange(20))


class ScalarNet(nn.Module):
    """Logits ``[w, -w]`` for every image: the CE loss of label 0 is ``softplus(-2w)``, its gradient
    ``-2 sigmoid(-2w)``, so the SGD trajectory can be computed by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.w, -self.w]).unsqueeze(0).expand(x.shape[0], 2)


def hand_sgd(epochs: int, lr: float, momentum: float, wd: float, reset: bool) -> float:
    w, buf = 0.3, None
    for ep in range(epochs):
        lr_ep = lr if ep < epochs // 2 else 0.1 * lr
        if reset and ep == epochs // 2:
            buf = None
        d = -2.0 / (1.0 + math.exp(2.0 * w)) + wd * w
        buf = d if buf is None else momentum * buf + d
        w -= lr_ep * buf
    return w


@pytest.mark.parametrize("mode", ["vmap", "loop"])
@pytest.mark.parametrize("reset", [True, False])
def test_training_follows_hand_computed_sgd_with_decay_at_half(mode, reset):
    x = torch.zeros(4, 1, 2, 2)
    y = torch.zeros(4, dtype=torch.int64)
    p = EvalProtocol(epochs=6, lr=0.5, momentum=0.9, weight_decay=0.01, reset_momentum_at_decay=reset, **NO_AUG)
    (model,) = train_models(ScalarNet, x, y, 2, 1, p, seed=0, mode=mode)
    expected = hand_sgd(6, 0.5, 0.9, 0.01, reset)
    assert float(model.w.detach()) == pytest.approx(expected, abs=1e-6)
    # the decay matters: without it (or at another epoch) the trajectory is far from this one
    no_decay = EvalProtocol(epochs=6, lr=0.5, weight_decay=0.01, lr_decay_at=1.0, **NO_AUG)
    (other,) = train_models(ScalarNet, x, y, 2, 1, no_decay, seed=0, mode=mode)
    assert abs(float(other.w.detach()) - expected) > 1e-2


# ------------------------------------------------------------------------------------ train and test


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_separable_problem_is_learned(precision):
    x, y = bright_dark(20, seed=0)
    tx, ty = bright_dark(200, seed=1)
    p = EvalProtocol(epochs=20, batch_size=8, **{**NO_AUG, "precision": precision})
    accs = train_and_test(tiny_net, x, y, tx, ty, num_classes=2, num_models=3, protocol=p, seed=0)
    assert accs.shape == (3,) and accs.dtype == torch.float64
    assert bool((accs > 0.9).all()), accs
    # untrained nets (lr ~ 0) are at chance level on average, so the test can fail
    p0 = EvalProtocol(epochs=1, lr=1e-30, **NO_AUG)
    accs0 = train_and_test(tiny_net, x, y, tx, ty, 2, 8, p0, seed=0)
    assert float(accs0.mean()) < 0.85


def test_results_are_deterministic_for_a_seed_and_leave_the_global_rng_alone():
    x, y = bright_dark(20, seed=0)
    tx, ty = bright_dark(50, seed=1)
    p = EvalProtocol(epochs=3, batch_size=8, lr=0.05, **NO_AUG)
    state = torch.get_rng_state()
    a = train_models(tiny_net, x, y, 2, 2, p, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_models(tiny_net, x, y, 2, 2, p, seed=7)
    c = train_models(tiny_net, x, y, 2, 2, p, seed=8)
    assert max_param_diff(a, b) == 0.0
    assert max_param_diff(a, c) > 1e-3
    acc_a = train_and_test(tiny_net, x, y, tx, ty, 2, 2, p, seed=7)
    acc_b = train_and_test(tiny_net, x, y, tx, ty, 2, 2, p, seed=7)
    assert torch.equal(acc_a, acc_b)


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_vmapped_testing_equals_sequential_testing(precision):
    x, y = bright_dark(20, seed=0)
    tx, ty = bright_dark(30, seed=1)
    models = train_models(tiny_net, x, y, 2, 3, EvalProtocol(epochs=2, batch_size=8, **NO_AUG), seed=0)
    a = evaluate_models(models, tx, ty, precision=precision, batch_size=7, mode="vmap")
    b = evaluate_models(models, tx, ty, precision=precision, batch_size=7, mode="loop")
    if precision == "32":
        assert torch.equal(a, b)
    else:  # bf16 kernels differ between the grouped (vmapped) and the plain convolutions
        assert float((a - b).abs().max()) <= 0.1
    with torch.no_grad():
        expected = [float((m(tx).argmax(1) == ty).double().mean()) for m in models]
    if precision == "32":
        assert a.tolist() == pytest.approx(expected)


def test_batchnorm_nets_fall_back_to_the_loop():
    x, y = bright_dark(20, seed=0)
    tx, ty = bright_dark(40, seed=1)
    p = EvalProtocol(epochs=10, batch_size=8, **NO_AUG)
    with pytest.raises(PtmddError, match="mode='loop'"):
        train_models(bn_net, x, y, 2, 2, p, seed=0, mode="vmap")
    models = train_models(bn_net, x, y, 2, 2, p, seed=0, mode="auto")
    assert int(models[0][1].num_batches_tracked) == 30  # 10 epochs x 3 batches, running stats updated
    accs = evaluate_models(models, tx, ty, mode="vmap")  # falls back to the loop, eval-mode BN
    assert bool((accs > 0.9).all()), accs


def test_auto_mode_uses_vmap_only_on_cuda():
    x, y = bright_dark(4, seed=0)
    models = [tiny_net() for _ in range(2)]
    assert ev._resolve_mode("auto", models, x, y, "32") == "loop"  # CPU: the loop is faster (measured)
    assert ev._resolve_mode("vmap", models, x, y, "32") == "vmap"
    assert ev._resolve_mode("loop", models, x, y, "32") == "loop"
    with pytest.raises(PtmddError):
        ev._resolve_mode("fast", models, x, y, "32")


def test_user_errors():
    x, y = bright_dark(8, seed=0)
    p = EvalProtocol(epochs=1, **NO_AUG)
    with pytest.raises(PtmddError, match="labels must lie"):
        train_models(tiny_net, x, y + 5, 2, 1, p)
    with pytest.raises(PtmddError, match="num_models"):
        train_models(tiny_net, x, y, 2, 0, p)
    with pytest.raises(PtmddError, match="mode"):
        train_models(tiny_net, x, y, 2, 1, p, mode="fast")
    with pytest.raises(PtmddError, match="test images"):
        train_and_test(tiny_net, x, y, torch.zeros(3, 1, 5, 5), torch.zeros(3, dtype=torch.int64), 2, 1, p)
    with pytest.raises(PtmddError, match="float tensor"):
        train_models(tiny_net, x[0], y, 2, 1, p)
    with pytest.raises(PtmddError, match="int64"):
        train_models(tiny_net, x, y.float(), 2, 1, p)


@pytest.mark.skipif(importlib.util.find_spec("ptmdd_lightning.core.augment") is None, reason="DSA not there")
def test_dsa_training_is_deterministic_and_the_same_in_both_modes():
    x, y = bright_dark(12, seed=0)
    p = EvalProtocol(epochs=3, batch_size=8, lr=0.05, precision="32")
    vm = train_models(tiny_net, x, y, 2, 2, p, seed=1, mode="vmap")
    lp = train_models(tiny_net, x, y, 2, 2, p, seed=1, mode="loop")
    again = train_models(tiny_net, x, y, 2, 2, p, seed=1, mode="vmap")
    plain = train_models(tiny_net, x, y, 2, 2, EvalProtocol(epochs=3, batch_size=8, lr=0.05, **NO_AUG), seed=1)
    assert max_param_diff(vm, lp) < 1e-5
    assert max_param_diff(vm, again) == 0.0
    assert max_param_diff(vm, plain) > 1e-4  # DSA changed the batches


def _has_build_net() -> bool:
    try:
        from ptmdd_lightning.nets import build_net  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_build_net(), reason="ptmdd_lightning.nets.build_net not there yet")
def test_convnet_by_name_trains_in_both_modes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 8, 8, generator=g)
    y = torch.arange(6) % 3
    p = EvalProtocol(epochs=2, batch_size=4, **NO_AUG)
    vm = train_models("ConvNet", x, y, 3, 2, p, seed=0, mode="vmap")
    lp = train_models("ConvNet", x, y, 3, 2, p, seed=0, mode="loop")
    assert max_param_diff(vm, lp) < 1e-4
    accs = evaluate_models(vm, x, y)
    assert accs.shape == (2,) and bool(((accs >= 0) & (accs <= 1)).all())


# ------------------------------------------------------------------------------- baseline and summary


def test_random_real_subset_gives_ipc_distinct_images_per_class():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1])
    images = torch.arange(12, dtype=torch.float32).view(12, 1, 1, 1).expand(12, 1, 2, 2).contiguous()
    xs, ys = random_real_subset(images, labels, 3, 3, torch.Generator().manual_seed(0))
    assert xs.shape == (9, 1, 2, 2) and ys.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    src = xs[:, 0, 0, 0].long()
    assert len(set(src.tolist())) == 9  # without replacement
    assert torch.equal(labels[src], ys)  # each image comes from its class
    xs2, _ = random_real_subset(images, labels, 3, 3, torch.Generator().manual_seed(0))
    assert torch.equal(xs, xs2)
    picks = {
        tuple(random_real_subset(images, labels, 2, 3, torch.Generator().manual_seed(s))[0][:2, 0, 0, 0].tolist())
        for s in range(10)
    }
    assert len(picks) > 1  # random
    with pytest.raises(PtmddError, match="fewer than ipc"):
        random_real_subset(images, labels, 4, 3)


def test_summarize_uses_the_population_std():
    accs = torch.tensor([0.5, 0.7, 0.9], dtype=torch.float64)
    s = summarize(accs)
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(0.7)
    assert s["std"] == pytest.approx(float(np.std([0.5, 0.7, 0.9])))
    assert s["std"] == pytest.approx(math.sqrt(0.08 / 3))
    assert summarize([0.25]) == {"mean": 0.25, "std": 0.0, "n": 1}
    with pytest.raises(PtmddError):
        summarize([])


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_progress_counts_model_epochs_and_can_stop_the_training(mode):
    x, y = bright_dark(12, seed=0)
    p = EvalProtocol(epochs=3, batch_size=8, **NO_AUG)
    calls: list[tuple[int, int]] = []
    train_models(tiny_net, x, y, 2, 2, p, seed=0, mode=mode, progress=lambda done, total: calls.append((done, total)))
    # loop: one call per model-epoch; vmap: one per epoch of all models at once
    expected = [(d, 6) for d in range(1, 7)] if mode == "loop" else [(2, 6), (4, 6), (6, 6)]
    assert calls == expected

    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        if done >= 2:
            raise Stop

    with pytest.raises(Stop):
        train_and_test(tiny_net, x, y, x, y, 2, 2, p, seed=0, mode=mode, progress=stop)


# ------------------------------------------------------------------------------ interrupted and resumed


def _augmented_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, EvalProtocol]:
    x, y = bright_dark(12, seed=0)
    tx, ty = bright_dark(64, seed=1)
    # extra noise (N(0, 1.5^2)), DSA on: the models reach different accuracies (0.70-0.83), none at 1.0
    g = torch.Generator().manual_seed(5)
    x, tx = x + 1.5 * torch.randn(x.shape, generator=g), tx + 1.5 * torch.randn(tx.shape, generator=g)
    return x, y, tx, ty, EvalProtocol(epochs=4, batch_size=8, lr=0.3, precision="32")


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_an_evaluation_stopped_after_a_model_resumes_to_the_uninterrupted_accuracies(mode):
    """Models tested before an interruption (``on_model``) are passed back as ``done``: only the rest train, and the
    accuracies equal one uninterrupted evaluation's, model by model."""
    x, y, tx, ty, p = _augmented_problem()
    seen: list[tuple[int, float]] = []
    full = train_and_test(tiny_net, x, y, tx, ty, 2, 4, p, seed=3, mode=mode, on_model=lambda i, a: seen.append((i, a)))
    assert [i for i, _ in seen] == [0, 1, 2, 3] if mode == "loop" else sorted(i for i, _ in seen) == [0, 1, 2, 3]
    assert [a for _, a in sorted(seen)] == full.tolist()
    assert len(set(full.tolist())) > 2  # the models differ, so a model shifted to another index would be noticed

    class Stop(Exception):
        pass

    kept: dict[int, float] = {}

    def stop_in_model_3(done: int, total: int) -> None:
        if done > 2 * p.epochs:  # inside the third model's (index 2) training
            raise Stop

    if mode == "loop":  # the loop tests every model as it finishes: models 0 and 1 survive the stop
        with pytest.raises(Stop):
            train_and_test(
                tiny_net, x, y, tx, ty, 2, 4, p, seed=3, mode=mode, progress=stop_in_model_3, on_model=kept.__setitem__
            )
        assert kept == {0: full[0].item(), 1: full[1].item()}
    else:  # vmap trains all at once: nothing is tested before the end
        kept = {0: full[0].item(), 3: full[3].item()}
    trained: list[int] = []
    resumed = train_and_test(
        tiny_net,
        x,
        y,
        tx,
        ty,
        2,
        4,
        p,
        seed=3,
        mode=mode,
        done=kept,
        progress=lambda done, total: trained.append(done),
        on_model=lambda i, a: trained.append(-1 - i),
    )
    assert torch.equal(resumed, full)
    missing = [i for i in range(4) if i not in kept]
    assert sorted(-1 - t for t in trained if t < 0) == missing  # only the missing models were trained and tested
    # progress (in model-epochs) counts the models done before as done: the first call is one epoch past them
    first_epoch = 1 if mode == "loop" else len(missing)  # vmap: an epoch of every missing model at once
    assert min(t for t in trained if t > 0) == len(kept) * p.epochs + first_epoch


def test_done_models_are_returned_as_given_and_bad_ones_are_refused():
    x, y, tx, ty, p = _augmented_problem()
    accs = train_and_test(tiny_net, x, y, tx, ty, 2, 2, p, seed=0, done={0: 0.125, 1: 0.5})  # nothing to train
    assert accs.tolist() == [0.125, 0.5]
    for bad in ({2: 0.5}, {-1: 0.5}, {0: 1.5}, {"0": 0.5}):
        with pytest.raises(PtmddError, match="done must map model indices"):
            train_and_test(tiny_net, x, y, tx, ty, 2, 2, p, seed=0, done=bad)


def test_a_config_protocol_is_a_mapping_an_eval_protocol_or_none_and_nothing_else():
    from ptmdd_lightning.callbacks import SyntheticSetEvaluation
    from ptmdd_lightning.modules import SyntheticSetEvaluator

    made = ev.as_eval_protocol({"epochs": 300, "lr_decay_at": 1.0})
    assert isinstance(made, ev.EvalProtocol) and made.epochs == 300 and made.lr_decay_at == 1.0
    assert made.batch_size == 256  # the other fields keep their reference defaults
    assert ev.as_eval_protocol(made) is made and ev.as_eval_protocol(None) == ev.EvalProtocol()
    for bad in (300, "epochs: 300", [300]):
        with pytest.raises(PtmddError, match=r"mapping such as \{epochs: 300\}\), got "):
            ev.as_eval_protocol(bad)
    with pytest.raises(PtmddError, match="epochs must be an int >= 1"):
        ev.as_eval_protocol({"epochs": 0})
    # both owners of a protocol: the evaluation callback and the evaluator module
    with pytest.raises(PtmddError, match="got int"):
        SyntheticSetEvaluation(protocol=300)
    with pytest.raises(PtmddError, match="got str"):
        SyntheticSetEvaluator(path="unused.pt", protocol="fast")
    assert SyntheticSetEvaluation(protocol={"epochs": 7}).protocol.epochs == 7
