"""SyntheticSetEvaluation with a teacher: soft-label rows beside the hard ones, DD-Ranking's scores (tiny fit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptmdd_lightning.main import main
from ptmdd_lightning.nets import build_net
from tests.test_resume import ptm_pool, tiny_config  # noqa: F401  (ptm_pool is a fixture)


def test_the_callback_evaluates_with_hard_and_soft_labels_and_scores_the_synthetic_rows(
    tmp_path,
    monkeypatch,
    fake_fashion_root,
    ptm_pool,  # noqa: F811
):
    monkeypatch.chdir(tmp_path)
    evaluation = {
        "class_path": "ptmdd_lightning.callbacks.SyntheticSetEvaluation",
        "init_args": {
            "archs": ["ConvNetW32"],
            "num_models": 2,
            "protocol": {"epochs": 1},
            "teachers": [{"ptms": [{"arch": "ConvNetW32", "epoch": 1}], "temperature": 3.0}],
            "real_hard_acc": 0.85,
            "real_hard_source": "a test value",
            "no_aug": True,
        },
    }
    config = tiny_config(
        tmp_path / "c.yaml", fake_fashion_root, max_steps=2, extra_callbacks=[evaluation], ptm_pool=ptm_pool
    )
    cli = main(["fit", "--config", str(config)])
    rows = json.loads((Path(cli.trainer.log_dir) / "results.json").read_text())
    assert [(r["set"], r["labels"], r["augment"]) for r in rows] == [
        (s, labels, aug)
        for labels, aug in (("hard", True), ("soft", True), ("hard", False))
        for s in ("synthetic", "random_real")
    ]
    assert rows[2]["teacher"] == rows[3]["teacher"] == "ConvNetW32 e1 s[0] T=3"
    syn, rnd = rows[0]["accs"], rows[1]["accs"]
    assert rows[0]["hlr"] == pytest.approx(sum(0.85 - a for a in syn) / 2)
    assert rows[0]["ior"] == pytest.approx(sum(a - b for a, b in zip(syn, rnd, strict=True)) / 2)
    assert {"lrs", "ars"} <= set(rows[0]) and "lrs" in rows[2] and "lrs" not in rows[1]
    md = (Path(cli.trainer.log_dir) / "results.md").read_text()
    assert "soft (ConvNetW32 e1 s[0] T=3)" in md and "HLR (pts)" in md and "ARS (%)" in md
    # what it cost: the distillation, the guidance pool (one member, no recorded pretraining time), the teacher
    member = ptm_pool / "fashion_mnist" / "ConvNetW32" / "seed0" / "epoch1.pt"
    assert rows[0]["distill_seconds"] > 0 and rows[0]["guidance_pool_bytes"] == member.stat().st_size
    assert rows[0]["guidance_pretrain_seconds"] is None and rows[0]["guidance_pretrain_kinds"] == "? x1"
    weights = sum(p.numel() * 4 for p in build_net("ConvNetW32", 1, 10, (28, 28)).parameters())
    assert rows[2]["teacher_bytes"] == weights and rows[2]["teacher_pool_bytes"] == member.stat().st_size
    assert rows[2]["soft_label_bytes"] == 10 * 10 * 4  # IPC 1 x 10 classes, one fp32 K-vector each


def test_pretrain_ptm_pool_also_pretrains_the_teachers_members(tmp_path, monkeypatch, fake_fashion_root):
    """A run without guidance but with a teacher: PretrainPTMPool trains the teacher (here in fast_dev_run's pool)."""
    monkeypatch.chdir(tmp_path)
    callbacks = [
        {"class_path": "ptmdd_lightning.callbacks.PretrainPTMPool"},
        {
            "class_path": "ptmdd_lightning.callbacks.SyntheticSetEvaluation",
            "init_args": {
                "archs": ["ConvNetW32"],
                "num_models": 1,
                "protocol": {"epochs": 1},
                "teachers": [{"ptms": [{"arch": "ConvNetW32", "epoch": 1}]}],
            },
        },
    ]
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, max_steps=2, extra_callbacks=callbacks)
    cli = main(["fit", "--config", str(config), "--trainer.fast_dev_run", "true"])
    evaluation = next(c for c in cli.trainer.callbacks if type(c).__name__ == "SyntheticSetEvaluation")
    assert [(r["set"], r["labels"]) for r in evaluation.rows] == [
        ("synthetic", "hard"),
        ("random_real", "hard"),
        ("synthetic", "soft"),
        ("random_real", "soft"),
    ]


def test_runs_of_two_seeds_evaluate_different_random_real_subsets_with_baseline_draw_run(
    tmp_path, monkeypatch, fake_fashion_root
):
    """``baseline_draw="run"``: runs of seeds 3 and 4 evaluate different random real subsets, each the draw of
    ``random_real_seed(run seed, evaluation seed)``."""
    import torch

    import ptmdd_lightning.callbacks.evaluate as evaluate
    from ptmdd_lightning.core.evaluate import random_real_subset
    from ptmdd_lightning.seeding import random_real_seed

    drawn: list[tuple] = []

    def spy(images, labels, ipc, num_classes, generator):
        state = generator.get_state()
        subset = random_real_subset(images, labels, ipc, num_classes, generator)
        drawn.append((images, labels, ipc, num_classes, state, subset))
        return subset

    monkeypatch.setattr(evaluate, "random_real_subset", spy)
    monkeypatch.chdir(tmp_path)
    evaluation = {
        "class_path": "ptmdd_lightning.callbacks.SyntheticSetEvaluation",
        "init_args": {"archs": ["ConvNetW32"], "num_models": 1, "protocol": {"epochs": 1}, "baseline_draw": "run"},
    }
    config = tiny_config(tmp_path / "c.yaml", fake_fashion_root, max_steps=1, extra_callbacks=[evaluation])
    for seed in (3, 4):
        main(["fit", "--config", str(config), "--seed_everything", str(seed)])
    (images, labels, ipc, k, _, subset_3), (*_, subset_4) = drawn
    for (*_, state, subset), seed in zip(drawn, (3, 4), strict=True):
        expected = torch.Generator().manual_seed(random_real_seed(seed, 0))
        assert torch.equal(state, expected.get_state())
        by_hand = random_real_subset(images, labels, ipc, k, expected)
        assert all(torch.equal(a, b) for a, b in zip(subset, by_hand, strict=True))
    assert not torch.equal(subset_3[0], subset_4[0])


def test_the_default_draw_depends_on_the_evaluation_seed_alone(monkeypatch):
    from ptmdd_lightning.callbacks import SyntheticSetEvaluation
    from ptmdd_lightning.seeding import random_real_seed

    for run_seed in ("3", "4"):
        monkeypatch.setenv("PL_GLOBAL_SEED", run_seed)
        assert SyntheticSetEvaluation(seed=5).baseline_draw_seed() == 6  # every earlier result's draw
        per_run = SyntheticSetEvaluation(seed=5, baseline_draw="run").baseline_draw_seed()
        assert per_run == random_real_seed(int(run_seed), 5)


def test_an_unknown_baseline_draw_is_refused_with_the_choices():
    from ptmdd_lightning.callbacks import SyntheticSetEvaluation
    from ptmdd_lightning.errors import PtmddError

    with pytest.raises(PtmddError, match="baseline_draw must be one of evaluation, run"):
        SyntheticSetEvaluation(baseline_draw="seed")
