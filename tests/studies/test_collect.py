"""Collecting a study with pandas: the long table, the summary grouped from it, paired differences, the plot."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from ptmdd_lightning.studies.collect import collect, label_contrasts, long_table, plot_summary, write_summary
from tests.studies.fakes import SWEEP, finish, make_study

NO_REAL = "{label: 4, value: 4, overrides: {trainer.callbacks.SyntheticSetEvaluation.init_args.baseline: false}}"


def test_collect_pools_the_seeds_pairs_them_and_writes_table_long_csv_and_plot(tmp_path):
    study = make_study(tmp_path, SWEEP.replace("N_m: [1, 4]", f"N_m: [1, {NO_REAL}]"))
    slot = {s.key: s for s in study.slots()}
    finish(study, slot["N_m=1@seed0"], [0.5, 0.7], [0.4, 0.4])
    finish(study, slot["N_m=1@seed1"], [0.6, 0.6], [0.4, 0.4])
    finish(study, slot["N_m=4@seed0"], [0.8, 0.8], None)  # evaluated without the random-real subset
    finish(study, slot["baseline=DM@seed0"], [0.55, 0.45], [0.4, 0.4])
    finish(study, slot["baseline=DM@seed1"], [0.52, 0.52], [0.4, 0.4])
    claim, unfinished, _ = study.claim(slot["N_m=4@seed1"])  # only an early evaluation: not done, left out
    claim.release(study)
    (unfinished / "results.json").write_text(
        json.dumps([{"step": 1, "arch": "ConvNet", "set": "synthetic", "accs": [0.9]}])
    )
    table = long_table(study)
    assert len(table) == 2 * 2 + 2 * 2 + 2 + 2 * 2 + 2 * 2  # one row per evaluated model of a done run
    assert set(table["seed"]) == {0, 1} and 0.9 not in set(table["acc"])
    rows = collect(study)
    assert [r["point"] for r in rows] == ["N_m=1", "N_m=4", "baseline=DM"]
    first = rows[0]
    assert first["n"] == 4 and first["runs"] == 2
    assert first["synthetic_mean"] == pytest.approx(0.6)
    assert first["synthetic_std"] == pytest.approx(math.sqrt(0.02 / 4))  # population std over all 4 models
    assert first["gain_vs_random"] == pytest.approx(0.2)
    # pooled: 0.6 - mean(0.55, 0.45, 0.52, 0.52) = 0.6 - 0.51
    assert first["gain_vs_baseline"] == pytest.approx(0.09) and first["baseline"] == "DM"
    # paired over seeds 0 and 1: differences 0.6 - 0.5 = 0.10 and 0.6 - 0.52 = 0.08; t(0.975, 1) = 12.706
    assert first["paired_gain"] == pytest.approx(0.09) and first["paired_seeds"] == 2
    sd = math.sqrt(((0.10 - 0.09) ** 2 + (0.08 - 0.09) ** 2) / 1)
    assert first["paired_ci95"] == pytest.approx(12.706 * sd / math.sqrt(2), rel=1e-3)
    assert rows[1]["paired_seeds"] == 1 and rows[1]["paired_ci95"] is None  # one shared seed: no CI
    assert rows[1]["random_real_mean"] == pytest.approx(0.4)  # the study's shared random-real result
    assert rows[2]["gain_vs_baseline"] is None  # the reference itself
    files = write_summary(study, rows)
    names = [f.name for f in files]
    assert names == ["results_long.csv", "summary.md", "summary.csv", "summary.json"]
    md = (study.out / "summary.md").read_text()
    assert "60.00 ± 7.07" in md and "+9.00 ± 12.71" in md
    assert pd.read_csv(study.out / "results_long.csv")["acc"].sum() == pytest.approx(table["acc"].sum())
    assert json.loads((study.out / "summary.json").read_text())["rows"][1]["synthetic_mean"] == pytest.approx(0.8)
    assert plot_summary(study.spec, rows, study.out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_categorical_axis_plots_grouped_bars(tmp_path):
    text = SWEEP.replace("N_m: [1, 4]", "N_m: [few, many]").replace('"${N_m}"', "1")
    evaluation = "trainer.callbacks.SyntheticSetEvaluation.init_args: {archs: [AlexNet], baseline: false}"
    text = text.replace("fixed:", f"fixed:\n  {evaluation}")
    study = make_study(tmp_path, text)
    for i, slot in enumerate(s for s in study.slots() if s.seed == 0):
        finish(study, slot, [0.5 + 0.05 * i], None, arch="AlexNet")
    rows = collect(study)
    assert rows[0]["random_real_mean"] is None and rows[0]["gain_vs_random"] is None
    assert plot_summary(study.spec, rows, study.out).is_file()


def test_an_empty_study_collects_nothing(tmp_path):
    study = make_study(tmp_path)
    assert collect(study) == []
    assert "no finished runs" in (write_summary(study, [])[1]).read_text()


def test_runs_evaluated_with_teachers_are_summarised_per_labels_and_compared_within_them(tmp_path):
    """Issue "PTMs as teachers too": hard and soft rows of one run never pool; gains pair within one label kind."""
    study = make_study(tmp_path, SWEEP.replace("N_m: [1, 4]", "N_m: [1]"))
    slot = {s.key: s for s in study.slots()}
    teacher = {"labels": "soft", "augment": True, "teacher": "ConvNetW32 e5 s[0] T=4"}
    accs = {  # (synthetic hard, real hard, synthetic soft, real soft)
        "N_m=1@seed0": ([0.60, 0.62], [0.50, 0.50], [0.80, 0.80], [0.78, 0.78]),
        "N_m=1@seed1": ([0.64, 0.64], [0.50, 0.50], [0.81, 0.83], [0.78, 0.78]),
        "baseline=DM@seed0": ([0.58, 0.58], [0.50, 0.50], [0.81, 0.81], [0.78, 0.78]),
        "baseline=DM@seed1": ([0.60, 0.60], [0.50, 0.50], [0.80, 0.80], [0.78, 0.78]),
    }
    for key, (syn, real, syn_s, real_s) in accs.items():
        folder = finish(study, slot[key], syn, real)
        rows = json.loads((folder / "results.json").read_text())
        step = rows[-1]["step"]
        rows += [
            {"step": step, "arch": "ConvNet", "set": "synthetic", "accs": syn_s, **teacher},
            {"step": step, "arch": "ConvNet", "set": "random_real", "accs": real_s, **teacher},
        ]
        (folder / "results.json").write_text(json.dumps(rows))
    soft = "soft (ConvNetW32 e5 s[0] T=4)"
    assert set(long_table(study)["labels"]) == {"hard", soft}
    rows = {(r["point"], r["labels"]): r for r in collect(study)}
    hard, soft_row = rows[("N_m=1", "hard")], rows[("N_m=1", soft)]
    assert hard["synthetic_mean"] == pytest.approx(0.625) and soft_row["synthetic_mean"] == pytest.approx(0.81)
    assert hard["random_real_mean"] == pytest.approx(0.5) and soft_row["random_real_mean"] == pytest.approx(0.78)
    # paired per seed within the labels: hard (0.61 - 0.58, 0.64 - 0.60), soft (0.80 - 0.81, 0.82 - 0.80)
    assert hard["paired_gain"] == pytest.approx(0.035) and soft_row["paired_gain"] == pytest.approx(0.005)
    assert soft_row["series"].endswith(soft)  # its own series in the plot
    write_summary(study, list(rows.values()))
    assert f"| {soft}" in (study.out / "summary.md").read_text()
    contrasts = json.loads((study.out / "labels.json").read_text())  # soft - hard over the 4 distilled sets
    assert contrasts[0]["cells"] == 4 and contrasts[0]["mean"] == pytest.approx((0.19 + 0.18 + 0.23 + 0.20) / 4)
    assert plot_summary(study.spec, list(rows.values()), study.out).is_file()


def test_label_kinds_are_compared_on_the_same_sets():
    """labels.md: b - a paired over every (point, seed) distilled set, the random real subset counted once."""
    records = []
    for point, seed, hard, soft in [("p", 0, 0.60, 0.80), ("p", 1, 0.62, 0.81), ("q", 0, 0.58, 0.79)]:
        for labels, acc in (("hard", hard), ("soft (T)", soft)):
            records.append({"point": point, "seed": seed, "arch": "ConvNet", "set": "synthetic", "labels": labels,
                            "acc": acc})  # fmt: skip
            records.append({"point": point, "seed": seed, "arch": "ConvNet", "set": "random_real", "labels": labels,
                            "acc": 0.5 if labels == "hard" else 0.75})  # fmt: skip
    (syn, real) = label_contrasts(pd.DataFrame.from_records(records))
    assert (syn["a"], syn["b"], syn["set"], syn["cells"]) == ("hard", "soft (T)", "synthetic", 3)
    assert syn["mean"] == pytest.approx((0.20 + 0.19 + 0.21) / 3)
    sd = math.sqrt(((0.20 - 0.20) ** 2 + (0.19 - 0.20) ** 2 + (0.21 - 0.20) ** 2) / 2)
    assert syn["ci95"] == pytest.approx(4.303 * sd / math.sqrt(3), rel=1e-3)  # t(0.975, 2) = 4.303
    assert (real["set"], real["cells"], real["ci95"]) == ("random_real", 1, None)  # one subset, once
    assert real["mean"] == pytest.approx(0.25)
