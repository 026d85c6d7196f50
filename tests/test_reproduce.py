"""python -m ptmdd_lightning.reproduce: the reproduction table from the runs of scripts/reproduce.sh."""

from __future__ import annotations

import json
import math

import pytest

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.reproduce import main, table


def _run(outdir, row, seed, accs, commit="a" * 40, real=(0.40, 0.42)):
    folder = outdir / "lightning_logs" / f"reproduce_{row}_seed{seed}" / "version_0"
    folder.mkdir(parents=True)

    def entry(which, values):
        m = sum(values) / len(values)
        return {
            "step": 1000,
            "arch": "ConvNet",
            "set": which,
            "mean": m,
            "n": len(values),
            "accs": list(values),
            "std": math.sqrt(sum((v - m) ** 2 for v in values) / len(values)),
            "machine": {"cpu": {"kind": "amx-bf16"}},
        }

    (folder / "results.json").write_text(json.dumps([entry("synthetic", accs), entry("random_real", real)]))
    (folder / "synthetic_set.pt").write_bytes(b"x")
    (outdir / f"reproduce_{row}_seed{seed}.commit").write_text(commit + "\n")


def test_the_table_compares_with_the_published_number_and_pairs_clom_by_seed(tmp_path, capsys):
    for seed, (base, clom) in enumerate([(0.70, 0.71), (0.69, 0.71), (0.71, 0.72)]):
        _run(tmp_path, "dsa_ipc1", seed, [base - 0.01, base + 0.01])
        _run(tmp_path, "dsa_ipc1_clom", seed, [clom - 0.01, clom + 0.01])
    _run(tmp_path, "dc_ipc1", 0, [0.69, 0.71])
    (tmp_path / "lightning_logs" / "reproduce_dm_ipc10_seed0" / "version_0").mkdir(parents=True)  # unfinished
    text = table(tmp_path)
    # DSA: seed means 70, 69, 71 -> 70.00 ± 0.82 over 3 seeds; published 70.6 -> -0.60
    assert "| DSA, IPC 1 |" in text and "70.00 ± 0.82 over 3 seeds (2 models each)" in text
    assert "| -0.60 | 41.00 ± 1.00 | 0, 1, 2 | aaaaaaa | amx-bf16 |" in text
    # DC: one seed -> mean ± std over its models; +0.00 against 70.5 is -0.50
    assert "70.00 ± 1.00 (2 models) | -0.50 |" in text
    assert "| DM, IPC 10 |" in text and "not run yet" in text  # no finished run
    # CLoM gain: differences 1, 2, 1 points -> mean 1.33, CI 4.303 * 0.577 / sqrt 3 = ±1.43
    assert "+1.33 points, 95 % CI [-0.10, +2.77] over seeds [0, 1, 2]" in text
    main([str(tmp_path)])
    assert capsys.readouterr().out == text
    # a run of the script's first version has no <run>.commit: OUTDIR/commit.txt names its commit
    (tmp_path / "reproduce_dc_ipc1_seed0.commit").unlink()
    (tmp_path / "commit.txt").write_text("b" * 40)
    assert "| 0 | bbbbbbb | amx-bf16 |" in table(tmp_path)


def test_a_missing_outdir_is_one_line(tmp_path, capsys):
    with pytest.raises(PtmddError, match="give the OUTDIR"):
        table(tmp_path / "nope")
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2 and "usage:" in capsys.readouterr().err
