"""python -m ptmdd_lightning.compare: two runs, the random-real baseline and the paired difference with its CI."""

from __future__ import annotations

import json
import math

import pytest

from ptmdd_lightning.compare import compare_runs, main, paired_difference, t_quantile
from ptmdd_lightning.errors import PtmddError


def test_t_quantiles_match_printed_tables():
    # printed two-sided tables of Student's t: 95 % for df 2 / 30 / 40 / 120, 99 % for df 2 and 10
    for df, level, table in (
        (2, 0.95, 4.303),
        (30, 0.95, 2.042),
        (40, 0.95, 2.021),
        (120, 0.95, 1.980),
        (2, 0.99, 9.925),
        (10, 0.99, 3.169),
    ):
        assert t_quantile(df, level) == pytest.approx(table, abs=1e-3)
    for df, level in ((0, 0.95), (2, 0.0), (2, 1.0)):
        with pytest.raises(PtmddError, match=r"paired values|confidence level"):
            t_quantile(df, level)


def test_paired_difference_by_hand():
    d = paired_difference([0.80, 0.81, 0.79], [0.82, 0.82, 0.80])
    # differences 0.02, 0.01, 0.01: mean 0.04/3, sample sd sqrt(((0.02-m)^2 + 2 (0.01-m)^2) / 2)
    m = 0.04 / 3
    sd = math.sqrt(((0.02 - m) ** 2 + 2 * (0.01 - m) ** 2) / 2)
    assert d["n"] == 3 and d["mean"] == pytest.approx(m)
    assert d["half_width"] == pytest.approx(4.303 * sd / math.sqrt(3), rel=1e-4)
    wide = paired_difference([0.80, 0.81, 0.79], [0.82, 0.82, 0.80], level=0.99)  # t_{0.995, 2} = 9.925
    assert wide["mean"] == d["mean"] and wide["half_width"] == pytest.approx(9.925 * sd / math.sqrt(3), rel=1e-4)
    with pytest.raises(PtmddError):
        paired_difference([0.5], [0.6])


def _run(folder, accs, baseline=(0.75, 0.76, 0.74), step=300):
    def row(which, values, s=step):
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return {
            "step": s,
            "arch": "ConvNet",
            "set": which,
            "mean": mean,
            "std": std,
            "n": len(values),
            "accs": list(values),
            "seconds": 1.0,
        }

    folder.mkdir()
    rows = [row("synthetic", [0.1, 0.1, 0.1], s=50), row("synthetic", accs), row("random_real", baseline)]
    (folder / "results.json").write_text(json.dumps(rows))
    return folder


def test_compare_prints_three_rows_and_the_paired_difference(tmp_path, capsys):
    a = _run(tmp_path / "a", [0.80, 0.81, 0.79])
    b = _run(tmp_path / "b", [0.82, 0.82, 0.80])
    main([str(a), str(b), "--labels", "DM alone", "DM + CLoM"])
    out = capsys.readouterr().out
    assert "| ConvNet | random real | 75.00 ± 0.82 | 3 |" in out
    assert "| ConvNet | DM alone | 80.00 ± 0.82 | 3 |" in out  # the final step's row, not step 50's
    assert "| ConvNet | DM + CLoM | 81.33 ± 0.94 | 3 |" in out
    assert "DM + CLoM - DM alone = +1.33 points, 95 % CI [-0.10, +2.77]" in out


def test_compare_refuses_runs_of_different_protocols(tmp_path, capsys):
    a = _run(tmp_path / "a", [0.80, 0.81, 0.79])
    b = _run(tmp_path / "b", [0.82, 0.82, 0.80], baseline=(0.70, 0.71, 0.72))
    with pytest.raises(PtmddError, match="random-real baselines of the two runs differ"):
        compare_runs(a, b)
    with pytest.raises(SystemExit) as exit_info:
        main([str(a), str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "results.json does not exist" in capsys.readouterr().err
