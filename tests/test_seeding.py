"""The seed derivations (ptmdd_lightning/seeding.py): the values every earlier result was made with."""

from __future__ import annotations

import hashlib

import pytest

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.seeding import (
    baseline_draw_seed,
    batch_seed,
    check_baseline_draw,
    mix_seed,
    random_real_seed,
    run_seed,
)

GOLDEN, MULT, M64 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, (1 << 64) - 1


def test_mix_seed_of_one_part_by_hand():
    assert mix_seed() == GOLDEN & ((1 << 63) - 1)
    p = 5
    h = GOLDEN ^ ((p + GOLDEN + (GOLDEN << 6) + (GOLDEN >> 2)) & M64)
    assert mix_seed(p) == ((h * MULT) & M64) & ((1 << 63) - 1)


def test_mix_seed_is_frozen_order_sensitive_and_63_bit():
    # frozen: these are the streams of every synthetic set in docs/ (a new derivation would change all of them)
    assert mix_seed(0, 0, 0) == 6002199475437790307
    assert mix_seed(7, 1, 4, 0xE1) == 4693447868187329792
    assert mix_seed(1, 2) != mix_seed(2, 1)
    seeds = {mix_seed(s, r, t) for s in range(3) for r in range(3) for t in range(30)}
    assert len(seeds) == 270 and all(0 <= x < 2**63 for x in seeds)


def test_batch_seed_is_the_sha256_of_the_tagged_triple():
    digest = hashlib.sha256(b"ptmdd-data:7:1:4").digest()
    assert batch_seed(7, 1, 4) == int.from_bytes(digest[:8], "little") & ((1 << 63) - 1) == 5461736375655456704
    assert batch_seed(7, 1, 4) != mix_seed(7, 1, 4)  # the data stream is not a distiller stream


def test_random_real_seed_is_the_sha256_of_the_tagged_pair():
    digest = hashlib.sha256(b"ptmdd-random-real:3:0").digest()
    assert random_real_seed(3, 0) == int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
    assert random_real_seed(3, 0) != random_real_seed(0, 3) and random_real_seed(3, 0) != batch_seed(3, 0, 0)


def test_baseline_draw_seed_per_evaluation_or_per_run():
    assert baseline_draw_seed("evaluation", 3, 7) == baseline_draw_seed("evaluation", 3, 8) == 4
    assert baseline_draw_seed("run", 3, 7) == random_real_seed(7, 3) != baseline_draw_seed("run", 3, 8)
    with pytest.raises(PtmddError, match="baseline_draw must be one of evaluation, run, got 'seed'"):
        baseline_draw_seed("seed", 3, 7)


def test_check_baseline_draw_passes_the_two_draws_and_names_the_key_otherwise():
    assert check_baseline_draw("evaluation") == "evaluation" and check_baseline_draw("run") == "run"
    with pytest.raises(PtmddError, match=r"baseline_draw must be one of evaluation, run, got 'Run'.*eval_seed"):
        check_baseline_draw("Run")


def test_run_seed_is_what_seed_everything_set_and_zero_without(monkeypatch):
    import random

    import numpy as np
    import torch
    from lightning.pytorch import seed_everything

    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # recorded first, so the environment is restored after the test
    assert run_seed() == 7
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert run_seed() == 0
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):  # leave the other tests' global RNGs as they were
        seed_everything(1234, verbose=False)
        assert run_seed() == 1234
    random.setstate(py_state)
    np.random.set_state(np_state)
