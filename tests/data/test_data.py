"""Tests of ptmdd_lightning.data: registry, offline loading, DataModules, class-balanced stream.

Tiny fake data are made on the fly: each fake image stores its class in pixel (0, 0) (value ``10 * class``)
and a unique id in pixel (0, 1), so batches can be checked image by image after normalisation.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import ptmdd_lightning.data.datamodule as dm_mod
import ptmdd_lightning.data.datasets as ds_mod
from ptmdd_lightning.data import DATASETS, DistillDataModule, RealDataModule, get_dataset_info, load_split
from ptmdd_lightning.data.datamodule import BalancedBatchStream, batch_seed, sample_balanced_indices
from ptmdd_lightning.errors import PtmddError

COUNTS = (6, 8, 10, 7, 7, 7, 7, 7, 7, 7)  # training images per class of the fake 10-class dataset (73)
TEST_COUNTS = (2, 3, 4, 1, 1, 1, 1, 1, 1, 1)  # 16


def _fake_split(counts, offset=0, num_classes=None, size=4):
    """uint8 (N, 1, size, size): pixel (0,0) = 10 * label, pixel (0,1) = unique id; labels interleaved."""
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(1))]
    n = labels.numel()
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    images[:, 0, 0, 0] = (10 * labels).to(torch.uint8)
    images[:, 0, 0, 1] = torch.arange(offset, offset + n, dtype=torch.uint8)
    images[:, 0, 1:, :] = 128
    return images, labels


@pytest.fixture
def fake_data(monkeypatch, tmp_path):
    """Replace load_split in the DataModule by a call-recording fake (10 classes, COUNTS/TEST_COUNTS).

    prepare_data (called by Trainer.fit) must not touch the real cache either.
    """
    calls = []
    monkeypatch.setenv("PTMDD_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(dm_mod, "prepare_fashion_mnist", lambda **kw: None)

    def fake_load_split(name, root, train, download=False):
        calls.append((name, root, train, download))
        return _fake_split(COUNTS, 0) if train else _fake_split(TEST_COUNTS, 100)

    monkeypatch.setattr(dm_mod, "load_split", fake_load_split)
    return calls


def _decode(dm, images):
    """(labels, ids) stored in the pixels of normalised fake images."""
    px = (dm.denormalize(images) * 255).round().to(torch.int64)
    return px[:, 0, 0, 0] // 10, px[:, 0, 0, 1]


# --------------------------------------------------------------------------------------------- registry
def test_registry_reference_mean_std():
    assert DATASETS["fashion_mnist"].mean == (0.2861,) and DATASETS["fashion_mnist"].std == (0.3530,)
    assert DATASETS["mnist"].mean == (0.1307,) and DATASETS["mnist"].std == (0.3081,)
    assert DATASETS["cifar10"].mean == (0.4914, 0.4822, 0.4465)
    assert DATASETS["cifar10"].std == (0.2023, 0.1994, 0.2010)
    assert DATASETS["cifar100"].mean == (0.5071, 0.4866, 0.4409)
    assert DATASETS["cifar100"].std == (0.2673, 0.2564, 0.2762)
    assert DATASETS["svhn"].mean == (0.4377, 0.4438, 0.4728)
    assert DATASETS["svhn"].std == (0.1980, 0.2010, 0.1970)
    ti = DATASETS["tiny_imagenet"]
    assert (ti.image_size, ti.num_classes, ti.channels) == ((64, 64), 200, 3)
    assert len(DATASETS["cifar100"].class_names) == 100
    assert DATASETS["fashion_mnist"].class_names[9] == "Ankle boot"
    assert get_dataset_info("FashionMNIST") is DATASETS["fashion_mnist"]
    assert get_dataset_info("CIFAR-10") is DATASETS["cifar10"]


def test_unknown_dataset_raises_listing_known():
    with pytest.raises(PtmddError, match="fashion_mnist") as e:
        get_dataset_info("imagenet-21k")
    assert "cifar10" in str(e.value)
    with pytest.raises(PtmddError, match="imagenet-21k"):
        RealDataModule(dataset="imagenet-21k")
    with pytest.raises(PtmddError):
        load_split("nope", "/tmp", True)


# --------------------------------------------------------------------------------------------- loading errors
def test_missing_fashion_mnist_names_apt_get(tmp_path, monkeypatch):
    monkeypatch.setenv("PTMDD_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(ds_mod, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-such-dir")
    with pytest.raises(PtmddError, match="apt-get install -y dataset-fashion-mnist"):
        load_split("fashion_mnist", None, True)
    # an explicit root without FashionMNIST/raw gives the same fix
    with pytest.raises(PtmddError, match="apt-get install -y dataset-fashion-mnist"):
        load_split("fashion_mnist", tmp_path / "empty", False)
    dm = RealDataModule()
    with pytest.raises(PtmddError, match="apt-get install -y dataset-fashion-mnist"):
        dm.prepare_data()
    with pytest.raises(PtmddError, match="apt-get install -y dataset-fashion-mnist"):
        dm.setup("fit")


def test_other_datasets_need_root_and_name_download(tmp_path):
    with pytest.raises(PtmddError, match=r"data\.root"):
        load_split("cifar10", None, True)
    with pytest.raises(PtmddError, match=r"data\.download: true") as e:
        load_split("mnist", tmp_path, True)
    assert "data.root" in str(e.value)
    with pytest.raises(PtmddError, match=r"data\.download: true"):
        load_split("cifar100", tmp_path, False)


def _write_idx_gz(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as a gzipped idx file (big-endian header, as the original Fashion-MNIST files)."""
    header = b"\x00\x00\x08" + bytes([array.dim()]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.contiguous().numpy().tobytes())


def test_fashion_cache_prepared_from_gz_files(tmp_path, monkeypatch):
    """The Debian-layout .gz files are decompressed into <PTMDD_DATA>/FashionMNIST/raw and read by
    torchvision."""
    src = tmp_path / "system"
    src.mkdir()
    tr_x = torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8)
    tr_y = torch.tensor([0, 1, 2, 3, 4, 9, 9], dtype=torch.uint8)
    te_x = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    te_y = torch.tensor([5, 6, 7], dtype=torch.uint8)
    _write_idx_gz(src / "train-images-idx3-ubyte.gz", tr_x)
    _write_idx_gz(src / "train-labels-idx1-ubyte.gz", tr_y)
    _write_idx_gz(src / "t10k-images-idx3-ubyte.gz", te_x)
    _write_idx_gz(src / "t10k-labels-idx1-ubyte.gz", te_y)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PTMDD_DATA", str(cache))
    monkeypatch.setattr(ds_mod, "FASHION_MNIST_SYSTEM_DIR", src)

    x, y = load_split("fashion_mnist", None, True)
    assert x.dtype == torch.uint8 and x.shape == (7, 1, 28, 28) and torch.equal(x[:, 0], tr_x)
    assert y.dtype == torch.int64 and torch.equal(y, tr_y.long())
    raw = cache / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == [  # no temporary files left behind
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]
    # a truncated cache file is detected and rewritten
    img = raw / "t10k-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-5])
    x, y = load_split("fashion_mnist", None, False)
    assert torch.equal(x[:, 0], te_x) and torch.equal(y, te_y.long())
    # the cache alone suffices once prepared
    monkeypatch.setattr(ds_mod, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "gone")
    assert torch.equal(load_split("fashion_mnist", None, True)[0][:, 0], tr_x)
    # and it is a valid torchvision root
    assert torch.equal(load_split("fashion_mnist", cache, True)[1], tr_y.long())


# --------------------------------------------------------------------------------------------- DataModule bas
def test_properties_right_after_init_without_loading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("data loaded in __init__")

    monkeypatch.setattr(dm_mod, "load_split", boom)
    dm = DistillDataModule(dataset="cifar10", root="/nowhere", classes=[3, 5], batch_real=4)
    assert dm.num_classes == 2 and dm.channels == 3 and dm.image_size == (32, 32)
    assert dm.mean == (0.4914, 0.4822, 0.4465) and dm.std == (0.2023, 0.1994, 0.2010)
    assert dm.dataset_name == "cifar10" and dm.class_names == ("cat", "dog")
    full = RealDataModule(dataset="Fashion-MNIST")
    assert full.num_classes == 10 and full.channels == 1 and full.image_size == (28, 28)
    assert full.dataset_name == "fashion_mnist" and len(full.class_names) == 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"classes": [1, 1]},
        {"classes": [10]},
        {"classes": [-1]},
        {"classes": []},
        {"num_workers": -1},
        {"batch_real": 0},
        {"batch_real": -3},
    ],
)
def test_init_validation(kwargs):
    with pytest.raises(PtmddError):
        DistillDataModule(**kwargs)


def test_setup_normalizes_with_registry_stats_and_loads_once(fake_data):
    dm = RealDataModule(dataset="fashion_mnist", batch_size=5)
    dm.setup("fit")
    dm.setup("validate")
    dm.setup("test")
    assert len(fake_data) == 2  # one train + one test load, whatever the number of setup calls
    raw, labels = _fake_split(COUNTS, 0)
    expected = (raw.float() / 255 - 0.2861) / 0.3530
    assert dm.train_images.dtype == torch.float32 and dm.train_images.shape == (73, 1, 4, 4)
    torch.testing.assert_close(dm.train_images, expected)
    assert torch.equal(dm.train_labels, labels)
    # a pixel of 128: (128/255 - 0.2861)/0.3530, by hand
    assert dm.train_images[0, 0, 1, 0].item() == pytest.approx((128 / 255 - 0.2861) / 0.3530, abs=1e-6)
    assert dm.test_images.shape == (16, 1, 4, 4) and dm.test_labels.bincount().tolist() == list(TEST_COUNTS)
    torch.testing.assert_close(dm.denormalize(dm.train_images), raw.float() / 255)
    # indices by class
    for k, n in enumerate(COUNTS):
        idx = dm.real_by_class(k)
        assert idx.numel() == n and bool((dm.train_labels[idx] == k).all())
        assert torch.equal(idx, dm.indices_by_class[k])


def test_normalize_rgb_per_channel():
    dm = RealDataModule(dataset="cifar10", root="/nowhere")
    x = torch.full((1, 3, 2, 2), 51, dtype=torch.uint8)  # 0.2
    out = dm.normalize(x)
    for c, (m, s) in enumerate(zip(dm.mean, dm.std, strict=True)):
        assert out[0, c, 0, 0].item() == pytest.approx((0.2 - m) / s, abs=1e-6)


def test_classes_subset_remaps_labels(fake_data):
    dm = RealDataModule(classes=[2, 0])
    dm.setup()
    assert dm.num_classes == 2 and dm.class_names == ("Pullover", "T-shirt/top")
    orig, _ = _decode(dm, dm.train_images)
    # new label 0 <- old class 2, new label 1 <- old class 0
    assert torch.equal(orig, torch.where(dm.train_labels == 0, 2, 0))
    assert dm.train_labels.bincount().tolist() == [COUNTS[2], COUNTS[0]]
    orig_t, _ = _decode(dm, dm.test_images)
    assert torch.equal(orig_t, torch.where(dm.test_labels == 0, 2, 0))
    assert dm.test_labels.bincount().tolist() == [TEST_COUNTS[2], TEST_COUNTS[0]]


def test_real_train_and_eval_loaders(fake_data):
    dm = RealDataModule(batch_size=20, seed=3)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert [b[0].shape[0] for b in batches] == [20, 20, 20, 13]
    ids = torch.cat([_decode(dm, b[0])[1] for b in batches])
    assert sorted(ids.tolist()) == list(range(73))  # every image once per epoch
    assert ids.tolist() != list(range(73))  # shuffled
    for x, y in batches:
        assert torch.equal(_decode(dm, x)[0], y)
    again = torch.cat([_decode(dm, b[0])[1] for b in dm.train_dataloader()])
    assert torch.equal(ids, again)  # same seed, same first epoch
    val = list(dm.val_dataloader())
    assert len(val) == 1 and torch.equal(val[0][0], dm.test_images) and torch.equal(val[0][1], dm.test_labels)
    assert torch.equal(next(iter(dm.test_dataloader()))[1], dm.test_labels)


def test_sample_real(fake_data):
    dm = RealDataModule()
    dm.setup()
    x, y = dm.sample_real(5, torch.Generator().manual_seed(0))
    assert x.shape == (50, 1, 4, 4) and y.tolist() == [k for k in range(10) for _ in range(5)]
    lab, ids = _decode(dm, x)
    assert torch.equal(lab, y)
    for k in range(10):
        assert ids[y == k].unique().numel() == 5  # without replacement
    x2, _ = dm.sample_real(5, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    x6, _y6 = dm.sample_real(6)  # the whole smallest class
    assert _decode(dm, x6)[1][:6].sort().values.tolist() == sorted(dm.real_by_class(0).tolist())
    with pytest.raises(PtmddError, match="1 to 6"):
        dm.sample_real(7)
    with pytest.raises(PtmddError):
        dm.sample_real(0)


# --------------------------------------------------------------------------------------------- balanced strea
def test_sample_balanced_indices_by_hand():
    padded = torch.tensor([[4, 7, 0], [1, 2, 3]])
    counts = torch.tensor([2, 3])
    for s in range(20):
        idx = sample_balanced_indices(padded, counts, 2, torch.Generator().manual_seed(s))
        assert sorted(idx[:2].tolist()) == [4, 7]  # never the padding slot of class 0
        assert set(idx[2:].tolist()) <= {1, 2, 3} and idx[2] != idx[3]
    seen = set()
    for s in range(40):
        idx = sample_balanced_indices(padded, counts, 2, torch.Generator().manual_seed(s))
        seen.add(tuple(sorted(idx[2:].tolist())))
    assert seen == {(1, 2), (1, 3), (2, 3)}  # every pair of class 1 is reachable


def test_balanced_batches_exact_per_class(fake_data):
    dm = DistillDataModule(batch_real=6, seed=0)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    for _ in range(4):
        x, y = next(it)
        assert x.shape == (60, 1, 4, 4) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert y.tolist() == [k for k in range(10) for _ in range(6)]  # sorted by class
        lab, ids = _decode(dm, x)
        assert torch.equal(lab, y)  # images really are of their label's class
        for k in range(10):
            assert ids[y == k].unique().numel() == 6  # no repeat within a class
    assert sorted(ids[:6].tolist()) == sorted(_decode(dm, dm.train_images[dm.real_by_class(0)])[1].tolist())


def test_stream_determinism_rank_and_step(fake_data):
    dm = DistillDataModule(batch_real=3, seed=7)
    dm.setup()
    s0, s0b, s1 = dm.balanced_stream(rank=0), dm.balanced_stream(rank=0), dm.balanced_stream(rank=1)
    ids = lambda b: _decode(dm, b[0])[1]  # noqa: E731
    assert torch.equal(ids(s0.batch(5)), ids(s0b.batch(5)))  # same (seed, rank, step) -> same batch
    assert not torch.equal(ids(s0.batch(5)), ids(s1.batch(5)))  # ranks differ
    assert not torch.equal(ids(s0.batch(5)), ids(s0.batch(6)))  # steps differ
    other = DistillDataModule(batch_real=3, seed=8)
    other.setup()
    assert not torch.equal(ids(s0.batch(5)), ids(other.balanced_stream(rank=0).batch(5)))  # seeds differ
    assert len({batch_seed(0, r, s) for r in range(4) for s in range(50)}) == 200
    # the generator seed of a batch is batch_seed(seed, rank, step)
    g = torch.Generator().manual_seed(batch_seed(7, 1, 4))
    idx = sample_balanced_indices(dm._padded_index, dm.class_counts, 3, g)
    assert torch.equal(s1.batch(4)[0], dm.train_images[idx])


def test_stream_follows_trainer_rank_and_global_step(fake_data):
    dm = DistillDataModule(batch_real=2, seed=1)
    dm.setup()
    ref = dm.balanced_stream(rank=2)
    dm.trainer = SimpleNamespace(global_rank=2, global_step=5)  # what Lightning attaches
    loader = dm.train_dataloader()
    it = iter(loader)
    for step in (5, 6, 7):
        assert torch.equal(next(it)[0], ref.batch(step)[0])
    dm.trainer.global_step = 11  # a resumed run / a new epoch restarts the stream at global_step
    it = iter(loader)
    assert torch.equal(next(it)[0], ref.batch(11)[0])
    assert torch.equal(next(it)[0], ref.batch(12)[0])


def test_stream_with_workers_keeps_order(fake_data):
    dm = DistillDataModule(batch_real=2, seed=4, num_workers=2)
    dm.setup()
    ref = dm.balanced_stream(rank=0)
    it = iter(dm.train_dataloader())
    got = [next(it)[0] for _ in range(5)]
    del it
    for step, x in enumerate(got):
        assert torch.equal(x, ref.batch(step)[0])


def test_batch_real_above_smallest_class_raises(fake_data):
    dm = DistillDataModule(batch_real=7)
    with pytest.raises(PtmddError, match="at most 6"):
        dm.setup()


def test_stream_under_lightning_trainer(fake_data):
    """Under a real Trainer: batch i is (seed, rank 0, global_step i), also across epoch restarts."""
    import lightning.pytorch as pl

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.global_step, batch[0].clone(), batch[1].clone()))
            return self.w * batch[0].mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = DistillDataModule(batch_real=2, seed=9)
    model = Recorder()
    trainer = pl.Trainer(
        max_steps=5,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, datamodule=dm)
    ref = dm.balanced_stream(rank=0)
    assert [s for s, _, _ in model.seen] == [0, 1, 2, 3, 4]
    for step, x, y in model.seen:
        rx, ry = ref.batch(step)
        assert torch.equal(x, rx) and torch.equal(y, ry)
    assert isinstance(trainer.train_dataloader.dataset, BalancedBatchStream)


# --------------------------------------------------------------------------------------------- real data
@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("PTMDD_DATA", str(tmp_path))
    dm = DistillDataModule(batch_real=256)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_images.shape == (60000, 1, 28, 28) and dm.test_images.shape == (10000, 1, 28, 28)
    assert dm.num_classes == 10 and dm.class_counts.tolist() == [6000] * 10
    assert dm.test_labels.bincount().tolist() == [1000] * 10
    # the registry statistics are the data's (to 3 decimals)
    assert dm.train_images.mean().item() == pytest.approx(0.0, abs=5e-3)
    assert dm.train_images.std().item() == pytest.approx(1.0, abs=5e-3)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2560, 1, 28, 28) and y.bincount().tolist() == [256] * 10
