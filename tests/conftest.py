"""Shared fixtures: tiny Fashion-MNIST-format data made on the fly (no real files, no network)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_fake_fashion_mnist(root: Path, n_train_per_class: int = 20, n_test_per_class: int = 5, seed: int = 0) -> Path:
    """Write un-gzipped idx files in torchvision's ``<root>/FashionMNIST/raw`` layout.

    Class ``k`` images are noise around a class-specific bright square, so nets can learn them; uint8 28x28.
    """
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for split, per_class in (("train", n_train_per_class), ("test", n_test_per_class)):
        labels = torch.arange(10).repeat_interleave(per_class)
        images = torch.randint(0, 60, (labels.numel(), 28, 28), generator=gen)
        for k in range(10):
            r, c = divmod(k, 4)
            images[labels == k, 2 + 6 * r : 8 + 6 * r, 2 + 6 * c : 8 + 6 * c] += 180
        images = images.clamp(0, 255).to(torch.uint8)
        img_name, lbl_name = FILES[split]
        (raw / img_name).write_bytes(struct.pack(">IIII", 0x803, labels.numel(), 28, 28) + images.numpy().tobytes())
        (raw / lbl_name).write_bytes(
            struct.pack(">II", 0x801, labels.numel()) + labels.to(torch.uint8).numpy().tobytes()
        )
    return Path(root)


@pytest.fixture(scope="session")
def fake_fashion_root(tmp_path_factory) -> Path:
    """A data root holding a tiny Fashion-MNIST (20 train / 5 test images per class)."""
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fake_fashion"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep every test's data cache and PL seed environment private."""
    monkeypatch.setenv("PTMDD_DATA", str(tmp_path / "ptmdd_cache"))
