"""The determinism contract (docs/distributed.md, "Determinism"): bitwise for the same seed, config, thread count and
CPU kind; within a tolerance for another thread count.

Thread counts are switched in-process with ``torch.set_num_threads`` (restored afterwards). fp32 throughout, so
that the contract is tested the same way on every CPU kind (bf16 is the default only on AMX CPUs).
"""

from __future__ import annotations

import pytest
import torch

from ptmdd_lightning.core.evaluate import EvalProtocol, train_models
from ptmdd_lightning.main import main
from tests.test_resume import tiny_config


@pytest.fixture
def threads():
    before = torch.get_num_threads()

    def use(n: int) -> None:
        torch.set_num_threads(n)

    yield use
    torch.set_num_threads(before)


def _distil(tmp_path, monkeypatch, root, name: str) -> torch.Tensor:
    folder = tmp_path / name
    folder.mkdir()
    monkeypatch.chdir(folder)
    config = tiny_config(folder / "c.yaml", root, max_steps=6)
    cli = main(["fit", "--config", str(config), "--trainer.precision", "32-true"])
    return cli.model.synthetic.images.detach().clone()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_distillation_is_bitwise_for_the_same_threads_and_close_for_another_count(
    tmp_path, monkeypatch, threads, fake_fashion_root
):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    threads(2)
    first = _distil(tmp_path, monkeypatch, fake_fashion_root, "a")
    again = _distil(tmp_path, monkeypatch, fake_fashion_root, "b")
    threads(1)
    one = _distil(tmp_path, monkeypatch, fake_fashion_root, "c")
    assert torch.equal(first, again)  # same seed, config, threads, CPU: bitwise
    # another thread count: only the order of floating-point sums changes (DM, 6 steps, fp32)
    assert _relative(one, first) < 1e-4, _relative(one, first)


def test_evaluation_training_is_bitwise_for_the_same_threads_and_close_for_another_count(threads, fake_fashion_root):
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(20, 1, 28, 28, generator=gen), torch.arange(10).repeat(2)
    protocol = EvalProtocol(epochs=10, batch_size=8, precision="32")

    def weights(n: int) -> torch.Tensor:
        threads(n)
        (model,) = train_models("ConvNetW32", images, labels, 10, 1, protocol, seed=3, mode="loop")
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    two, again, one = weights(2), weights(2), weights(1)
    assert torch.equal(two, again)
    assert _relative(one, two) < 1e-4, _relative(one, two)
