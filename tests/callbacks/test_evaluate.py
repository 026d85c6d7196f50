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
    assert rows[0]["guidance_pretrain_seconds"] is None
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
