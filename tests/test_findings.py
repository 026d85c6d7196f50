"""The findings table: per-seed means, paired differences with their t-interval, verdicts, the pools' cost."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.findings import (
    CONTRASTS,
    POOLS,
    Contrast,
    Pool,
    contrast_row,
    family_row,
    main,
    pool_cost,
    seed_means,
    table,
)
from ptmdd_lightning.studies.spec import expand, load_sweep
from ptmdd_lightning.studies.store import point_config

SWEEPS = Path(__file__).resolve().parents[1] / "configs" / "paper" / "findings" / "sweeps"
T_975_DF2 = 4.302652729911275  # Student's t, 0.975 quantile, 2 degrees of freedom (any table)
T_9975_DF2 = 9.924843200918  # 0.995 quantile, 2 degrees of freedom: the Bonferroni level of 5 contrasts


def _write_long(path, per_seed: dict[str, dict[int, list[float]]]) -> None:
    """A results_long.csv as ptmdd-sweep writes it, plus rows the table must ignore."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "point", "name", "seed", "arch", "labels", "set", "model", "acc", "step"])
        for point, seeds in per_seed.items():
            for seed, accs in seeds.items():
                for m, acc in enumerate(accs):
                    w.writerow(["point", point, point, seed, "ConvNet", "hard", "synthetic", m, acc, 2000])
                    w.writerow(["point", point, point, seed, "ConvNet", "hard", "random_real", m, 0.10, 2000])
                    w.writerow(["point", point, point, seed, "AlexNet", "hard", "synthetic", m, 0.20, 2000])
                    w.writerow(["point", point, point, seed, "ConvNet", "soft (t)", "synthetic", m, 0.30, 2000])


def test_seed_means_average_the_convnet_models_of_the_synthetic_set_with_hard_labels(tmp_path):
    path = tmp_path / "results_long.csv"
    _write_long(path, {"N_m=1": {0: [0.80, 0.82], 1: [0.70, 0.71]}})
    means = seed_means(path)
    assert means.keys() == {"N_m=1"}
    assert means["N_m=1"][0] == pytest.approx(81.0) and means["N_m=1"][1] == pytest.approx(70.5)
    assert seed_means(path, "random_real") == {"N_m=1": {0: pytest.approx(10.0), 1: pytest.approx(10.0)}}
    with pytest.raises(PtmddError, match="does not exist"):
        seed_means(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("point,seed\nx,0\n")
    with pytest.raises(PtmddError, match="lacks the columns"):
        seed_means(tmp_path / "bad.csv")


def test_a_paired_interval_above_zero_holds_below_zero_does_not_and_across_zero_cannot_tell():
    a = {0: 80.0, 1: 81.0, 2: 82.0}
    contrast = Contrast("f", "nm", "A", "B", "B vs A")
    # differences 1.0, 1.2, 0.8: mean 1.0, sd 0.2, half-width t * 0.2 / sqrt(3)
    half = T_975_DF2 * 0.2 / math.sqrt(3)
    row = contrast_row(contrast, {"A": a, "B": {0: 81.0, 1: 82.2, 2: 82.8}})
    assert row["diff"] == f"+1.00 ± {half:.2f}" and row["ci"] == f"[{1 - half:+.2f}, {1 + half:+.2f}]"
    assert row["a"] == "81.00" and row["b"] == "82.00" and row["seeds"] == 3 and row["verdict"] == "holds"
    row = contrast_row(contrast, {"A": a, "B": {0: 79.0, 1: 79.8, 2: 81.2}})
    assert row["verdict"] == "does not hold"  # -1.0, -1.2, -0.8: the opposite effect
    row = contrast_row(contrast, {"A": a, "B": {0: 81.0, 1: 80.0, 2: 82.5}})
    assert row["verdict"] == "cannot tell"  # +1.0, -1.0, +0.5
    question = Contrast("f", "nm", "A", "B", "B vs A", expect=0)
    assert contrast_row(question, {"A": a, "B": {0: 79.0, 1: 79.8, 2: 81.2}})["verdict"] == "a better"
    assert contrast_row(question, {"A": a, "B": {0: 81.0, 1: 80.0, 2: 82.5}})["verdict"] == "no difference detected"


def test_a_family_holds_on_one_bonferroni_interval_above_zero_not_on_a_95_percent_one():
    family = [Contrast("2", "epoch", "E150", f"E{e}", f"epoch {e} vs 150", family="early vs 150") for e in range(5)]
    base = {0: 80.0, 1: 81.0, 2: 82.0}
    flat = {f"E{e}": {0: 80.0, 1: 81.5, 2: 81.5} for e in range(5)}  # differences 0, +0.5, -0.5: across 0
    # one epoch with differences 1.0, 1.2, 0.8 (sd 0.2): above 0 at 95 % (1.0 - 4.30 * 0.2 / sqrt(3) = +0.50) but
    # not at the family's 99 % (1.0 - 9.92 * 0.2 / sqrt(3) = -0.15): one such epoch among five decides nothing
    points = {"E150": base, **flat, "E3": {0: 81.0, 1: 82.2, 2: 82.8}}
    assert contrast_row(family[3], points)["verdict"] == "holds"  # alone, at 95 %
    row = family_row(family, points)
    half = T_9975_DF2 * 0.2 / math.sqrt(3)
    assert row["verdict"] == "cannot tell" and row["contrast"] == "early vs 150: epoch 3 vs 150"
    assert row["ci"] == f"[{1 - half:+.2f}, {1 + half:+.2f}]" and row["seeds"] == 3
    # differences 2.0, 2.2, 1.8: 2.0 - 1.146 > 0, so the family holds, named by that epoch
    points["E1"] = {0: 82.0, 1: 83.2, 2: 83.8}
    row = family_row(family, points)
    assert row["verdict"] == "holds (epoch 1 vs 150)" and row["b"] == "83.00" and row["a"] == "81.00"
    # every early epoch worse, each below 0 even at 99 %: does not hold
    worse = {"E150": base, **{f"E{e}": {s: v - 2.0 - 0.2 * (s == 1) for s, v in base.items()} for e in range(5)}}
    assert family_row(family, worse)["verdict"] == "does not hold (every one below)"
    # a contrast short of seeds (or not run yet) cannot undo a Bonferroni interval above 0: it holds already
    points["E4"] = {0: 90.0, 1: 90.0}
    assert family_row(family, points)["verdict"] == "holds (epoch 1 vs 150; 4 of 5 contrasts at 3 seeds)"
    # but without one: cannot tell yet, nor "does not hold" while one is missing, however far below the rest lie
    del points["E1"]
    row = family_row(family, points)
    assert row["verdict"] == "cannot tell yet (3 of 5 contrasts at 3 seeds)"
    assert row["contrast"].endswith("epoch 3 vs 150")
    worse.pop("E4")
    assert family_row(family, worse)["verdict"] == "cannot tell yet (4 of 5 contrasts at 3 seeds)"
    assert family_row(family, {"E150": base, "E2": {0: 80.0}})["verdict"] == "cannot tell (1 seed; 3 needed)"
    assert family_row(family, None)["verdict"] == "not run yet"
    with pytest.raises(PtmddError, match="share one family"):
        family_row([*family, Contrast("2", "epoch", "E150", "E9", "x", family="other")], points)
    with pytest.raises(PtmddError, match="at least one"):
        family_row([], points)


def test_the_table_prints_each_family_row_after_its_contrasts(tmp_path):
    seeds = {s: [0.80 + 0.01 * s] for s in range(3)}
    _write_long(
        tmp_path / "lightning_logs/sweeps/findings_epoch/results_long.csv",
        {f"epoch={e}": seeds for e in (1, 5, 10, 20, 50, 150)},
    )
    lines = table(tmp_path).splitlines()
    at = next(i for i, line in enumerate(lines) if "epoch 50 vs 150" in line)
    assert "some early epoch vs 150 (decides; Bonferroni over 5)" in lines[at + 1]
    assert lines[at + 1].endswith("| cannot tell |")  # identical settings: every interval is [0, 0], not above 0
    assert sum("Bonferroni" in line for line in lines) == 2  # finding 3's family too, after its two contrasts
    at = next(i for i, line in enumerate(lines) if "in- vs other-domain, alpha 1000" in line)
    assert "at some alpha (decides; Bonferroni over 2)" in lines[at + 1] and lines[at + 1].endswith("not run yet |")


def test_fewer_than_three_shared_seeds_give_no_verdict_and_missing_studies_are_not_run():
    contrast = Contrast("f", "nm", "A", "B", "B vs A")
    two = contrast_row(contrast, {"A": {0: 80.0, 1: 81.0, 2: 82.0}, "B": {0: 85.0, 1: 86.0}})
    assert two["seeds"] == 2 and two["verdict"] == "cannot tell (2 seeds; 3 needed)"
    one = contrast_row(contrast, {"A": {0: 80.0}, "B": {0: 85.0}})
    assert one["diff"] == "+5.00" and one["verdict"].startswith("cannot tell (1 seed")
    assert contrast_row(contrast, None)["verdict"] == "not run yet"


def _member(root, arch: str, seed: int, seconds: float | None, epoch: int = 150, kinds=None) -> int:
    """A pool member file as PTMCheckpoint writes it (``kinds``: its attempts' CPU kinds, ``None``: a file written
    before attempts were recorded); returns its size in bytes."""
    path = root / "fashion_mnist" / arch / f"seed{seed}" / f"epoch{epoch}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"state_dict": {"w": torch.zeros(3 + seed)}, "pretrain_seconds": seconds}
    if kinds is not None:
        blob["attempts"] = [{"from_step": 235 * i, "cpu_kind": k} for i, k in enumerate(kinds)]
    torch.save(blob, path)
    return path.stat().st_size


def test_pool_cost_sums_its_members_pretraining_time_and_files(tmp_path):
    root = tmp_path / "pool"
    sizes = [_member(root, "ConvNetW32", 0, 1800.0), _member(root, "LeNet", 0, 900.0, kinds=["avx512-bf16"])]
    _member(root, "ConvNetW32", 1, 3600.0)  # not a member of the pool below
    pool = Pool("N_a = 2", "na", "N_a=2_+LeNet", (("ConvNetW32", 0), ("LeNet", 0)))
    cost = pool_cost(root, pool)
    assert cost["hours"] == pytest.approx(0.75) and cost["megabytes"] == pytest.approx(sum(sizes) / 1e6)
    # where the hours were spent: the older file records no machine ("?"), the LeNet one its attempt's kind
    assert cost["kinds"] == "? x1, avx512-bf16 x1"
    # a member resumed on another kind counts under both, in order; repeats of one kind merge
    _member(root, "MLP", 0, 60.0, kinds=["amx-bf16", "amx-bf16", "avx512-bf16"])
    _member(root, "LeNet", 1, 60.0, kinds=["amx-bf16"])
    mixed = pool_cost(root, Pool("x", "na", "x", (("MLP", 0), ("LeNet", 1), ("LeNet", 0))))
    assert mixed["kinds"] == "amx-bf16 x1, amx-bf16 -> avx512-bf16 x1, avx512-bf16 x1"  # sorted by name
    # incomplete pools cost nothing yet: a missing member, a member without its recorded time
    assert pool_cost(root, Pool("N_m = 5", "nm", "N_m=5", tuple(("ConvNetW32", s) for s in range(5)))) is None
    _member(root, "MLP", 1, None)
    assert pool_cost(root, Pool("x", "na", "x", (("ConvNetW32", 0), ("MLP", 1)))) is None


@pytest.mark.parametrize("pool", POOLS, ids=lambda p: p.label)
def test_every_pool_is_the_pool_its_point_distils_with(pool):
    sweep = load_sweep(SWEEPS / f"{pool.study}.yaml")
    point = next((p for p in expand(sweep) if p.id == pool.point), None)
    assert point is not None, pool.point
    groups = point_config(point, 0)["model"]["init_args"]["ptms"]
    members = tuple((g["arch"], s) for g in groups for s in range(g["num_seeds"]))  # ptmdd's pool order
    assert members == pool.members and {g["epoch"] for g in groups} == {pool.epoch}
    assert {g.get("source") for g in groups} == {None}  # Fashion-MNIST itself, the folder pool_cost reads


def test_table_reads_the_studies_and_states_their_commits(tmp_path, capsys):
    study = tmp_path / "lightning_logs" / "sweeps" / "findings_nm"
    _write_long(
        study / "results_long.csv",
        {
            "baseline=DM_alone": {0: [0.80], 1: [0.81], 2: [0.82]},
            "N_m=1": {0: [0.81], 1: [0.822], 2: [0.828]},
            "N_m=5": {0: [0.82], 1: [0.834], 2: [0.836]},
        },
    )
    (study / "commits.txt").write_text("7b0ad54aaaa 2026-12-03T12:36Z shard 0/2\nfbea4c6bbbb 2026-12-03T13:00Z\n")
    for point, kind in (("N_m=1", "amx-bf16"), ("N_m=5", "amx-bf16"), ("baseline=DM_alone", "avx512-bf16")):
        run = study / "runs" / point / "seed0" / "version_0"
        run.mkdir(parents=True)
        machine = {"cpu": {"kind": kind}, "precision": "distillation bf16-mixed, evaluation 32"}
        (run / "results.json").write_text(json.dumps([{"step": 2000, "machine": machine}]))
    _member(tmp_path / "ptm_pool" / "findings", "ConvNetW32", 0, 1800.0)  # the N_m = 1 pool, complete
    _member(tmp_path / "ptm_pool" / "findings", "LeNet", 0, 900.0)  # N_a = 2's pool, complete but not run yet
    for seed in (0, 1):  # the epoch study's epoch-5 pool: the first 5 epochs of two member runs, 3 min each
        _member(tmp_path / "ptm_pool" / "findings", "ConvNetW32", seed, 180.0, epoch=5)
    text = table(tmp_path)
    lines = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| 1. diversity: N_m")}
    assert "| holds |" in lines["N_m 5 vs 1 (decides)"]  # differences 1.0, 1.2, 0.8
    # DM alone's seed 0 ran on AMD, N_m = 1's on Intel: that pair is marked, the all-Intel one is not
    assert "| b better |" in lines["DM + CLoM (N_m 1) vs DM alone †"]
    assert "† The paired runs of this row ran on more than one CPU kind" in text
    assert "| not run yet |" in lines["N_m 2 vs 1"]
    assert "nm at 7b0ad54, fbea4c6" in text and "na at -" in text
    # where the runs ran: a study of mixed CPU kinds shows it
    assert "nm: 2 on amx-bf16 (distillation bf16-mixed, evaluation 32); 1 on avx512-bf16 (distillation" in text
    # a run resumed on another CPU kind counts as such, and marks its contrast
    resumed = {"cpu": {"kind": "amx-bf16"}, "precision": "distillation bf16-mixed, evaluation 32"}
    resumed["attempts"] = [{"from_step": 0, "cpu_kind": "amx-bf16"}, {"from_step": 900, "cpu_kind": "avx512-bf16"}]
    run = study / "runs" / "N_m=5" / "seed1" / "version_0"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps([{"step": 2000, "machine": resumed}]))
    again = table(tmp_path)
    assert "N_m 5 vs 1 (decides) † |" in again and "1 on amx-bf16 -> avx512-bf16 (distillation" in again
    assert "na: -" in text
    # DM alone (80, 81, 82: std 1.00) and the random real subset (acc 0.10 in every seed) of the same runs
    assert "| nm | 81.00 ± 1.00 | 10.00 ± 0.00 | 3 |" in text
    # each complete pool's cost beside its gain over DM alone (N_m = 1: +1.0, +1.2, +0.8 -> +1.00 ± 0.50)
    assert "| N_m = 1 | 150 | 0.50 | ? x1 | " in text
    assert "| +1.00 ± 0.50 |" in text.split("| N_m = 1 | 150 | 0.50 | ")[1].splitlines()[0]
    assert "| N_a = 2 (+LeNet) | 150 | 0.75 | ? x2 | " in text and "N_m = 2 | 150 |" not in text
    assert "| N_m = 2 | 5 | 0.10 | ? x2 | " in text  # the epoch study has no results here: its gain is "-"
    assert text.split("| N_m = 2 | 5 | 0.10 | ? x2 | ")[1].splitlines()[0].endswith("| - |")
    main([str(tmp_path)])
    assert capsys.readouterr().out == again
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path / "missing")])
    assert err.value.code == 2 and "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("contrast", CONTRASTS, ids=lambda c: f"{c.study}:{c.label}")
def test_every_contrast_names_two_points_of_its_shipped_sweep(contrast):
    # a typo would leave the contrast "not run" for ever; the ids are those ptmdd-sweep gives the sweep's points
    sweep = load_sweep(SWEEPS / f"{contrast.study}.yaml")
    ids = {point.id for point in expand(sweep)}
    assert contrast.a in ids, (contrast.a, sorted(ids))
    assert contrast.b in ids, (contrast.b, sorted(ids))
    assert contrast.a != contrast.b
