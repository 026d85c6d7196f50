"""The seed derivations (ptmdd_lightning/seeding.py): the values every earlier result was made with."""

from __future__ import annotations

import hashlib

import pytest

from ptmdd_lightning.seeding import baseline_draw_seed, batch_seed, mix_seed, random_real_seed

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
    with pytest.raises(ValueError, match="draw must be one of"):
        baseline_draw_seed("seed", 3, 7)
