"""Lightning DataModules over a real dataset held in memory.

* :class:`RealDataModule`: shuffled real batches of ``batch_size`` (PTM pretraining, the full-data baseline)
  and the real test set as the val/test loaders (DD papers report test accuracy).
* :class:`DistillDataModule`: the same, but its ``train_dataloader`` is an infinite stream of class-balanced
  real batches, ``batch_real`` images of every class per step, deterministic per ``(seed, rank, step)``. This
  is the reference DC/DSA/DM code's ``get_images(c, batch_real)`` for all classes at once (VICO-UoE/
  DatasetCondensation ``main.py`` / ``main_DM.py``: ``np.random.permutation(indices_class[c])[:n]``).

Images are kept normalised, ``float32`` ``(N, C, H, W)``, with the registry mean/std of
:mod:`ptmdd_lightning.data.datasets`; labels are ``int64`` ``(N,)`` in ``[0, K)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from ptmdd_lightning.data.datasets import (
    DatasetInfo,
    get_dataset_info,
    load_split,
    prepare_fashion_mnist,
    subset_classes,
)
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.seeding import batch_seed  # re-exported: the seed of a step's real batch

__all__ = [
    "BalancedBatchStream",
    "DistillDataModule",
    "InMemoryDataset",
    "RealDataModule",
    "batch_seed",
    "sample_balanced_indices",
]


def sample_balanced_indices(
    padded_index: torch.Tensor, counts: torch.Tensor, num_per_class: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``num_per_class`` distinct indices of every class, without a Python loop over classes or images.

    One ``torch.rand(K, M)`` gives every candidate a random key; padding slots get the key 2 (> any key); the
    ``num_per_class`` smallest keys per row are a uniform sample without replacement of that class.

    Args:
        padded_index: ``(K, M)`` int64, row ``k`` starts with the ``counts[k]`` dataset indices of class ``k``
            (``M = counts.max()``), the rest is padding.
        counts: ``(K,)`` int64, the images per class; every entry must be ``>= num_per_class``.
        num_per_class: ``n >= 1``.
        generator: a CPU ``torch.Generator``; ``None`` uses the global RNG.

    Returns:
        ``(K * n,)`` int64 dataset indices, sorted by class (class 0's ``n`` first), random order within a
        class.

    Raises:
        Nothing of its own.
    """
    k, m = padded_index.shape
    keys = torch.rand(k, m, generator=generator)
    if bool((counts < m).any()):
        keys.masked_fill_(torch.arange(m).unsqueeze(0) >= counts.unsqueeze(1), 2.0)
    pos = keys.topk(num_per_class, dim=1, largest=False, sorted=True).indices
    return padded_index.gather(1, pos).reshape(-1)


def _collate_batched(batch):
    """Collate for :class:`InMemoryDataset`: its ``__getitems__`` already returns the batch tuple."""
    if isinstance(batch, tuple):
        return batch
    return default_collate(batch)


class InMemoryDataset(Dataset):
    """A map-style dataset over in-memory ``images (N, C, H, W)`` and ``labels (N,)``.

    ``__getitems__`` gathers a whole batch with one ``index_select`` instead of ``batch_size`` ``__getitem__``
    calls and a ``torch.stack``; use it with ``collate_fn=_collate_batched`` (as the DataModules do).

    Raises:
        Nothing of its own.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)


class BalancedBatchStream(IterableDataset):
    """Infinite stream of class-balanced real batches, deterministic per ``(seed, rank, step)``.

    Batch ``step`` is ``(images (K * n, C, H, W), labels (K * n,))``, sorted by class, drawn without
    replacement within each class (:func:`sample_balanced_indices`) with a ``torch.Generator`` seeded with
    :func:`batch_seed` ``(seed, rank, step)``. Iteration starts at ``start_step`` (set by the loader each
    time an iterator is made) and goes on forever. With DataLoader workers, worker ``w`` of ``W`` yields the
    steps ``start + w, start + w + W, ...``; the DataLoader's round-robin keeps the stream order.

    Raises:
        Nothing of its own.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        padded_index: torch.Tensor,
        counts: torch.Tensor,
        num_per_class: int,
        seed: int,
        rank: int = 0,
        start_step: int = 0,
    ) -> None:
        super().__init__()
        self.images = images
        self.labels = labels
        self.padded_index = padded_index
        self.counts = counts
        self.num_per_class = int(num_per_class)
        self.seed = int(seed)
        self.rank = int(rank)
        self.start_step = int(start_step)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of ``step`` (random access; what iteration yields at that step)."""
        g = torch.Generator().manual_seed(batch_seed(self.seed, self.rank, step))
        idx = sample_balanced_indices(self.padded_index, self.counts, self.num_per_class, g)
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)

    def __iter__(self):
        info = get_worker_info()
        step, stride = (self.start_step, 1) if info is None else (self.start_step + info.id, info.num_workers)
        while True:
            yield self.batch(step)
            step += stride


class _StreamLoader(DataLoader):
    """A ``DataLoader(batch_size=None)`` over a :class:`BalancedBatchStream`.

    It sets the stream's ``start_step`` from ``step_fn()`` (the trainer's ``global_step``) whenever an
    iterator is created, so a new epoch or a resumed run continues the stream where the optimizer is.
    """

    def __init__(self, dataset: BalancedBatchStream, step_fn: Callable[[], int], num_workers: int = 0) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers, persistent_workers=False)
        self.step_fn = step_fn

    def __iter__(self):
        self.dataset.start_step = int(self.step_fn())
        return super().__iter__()


class RealDataModule(pl.LightningDataModule):
    """One real dataset in memory: shuffled training batches and the real test set.

    Args:
        dataset: registry name (:data:`ptmdd_lightning.data.DATASETS`), e.g. ``"fashion_mnist"``.
        root: folder in torchvision layout; ``None`` is allowed for Fashion-MNIST only (the Debian package's
            files, decompressed into ``$PTMDD_DATA`` or ``~/.cache/ptmdd/data``).
        download: let torchvision download missing data into ``root`` (needs network). Never done otherwise.
        classes: a subset of the label space; label ``classes[i]`` becomes ``i`` (e.g. pretrain PTMs on
            Fashion-MNIST classes ``[0, 1, 2, 3, 4]`` and distill ``[5, 6, 7, 8, 9]``). ``None``: all classes.
        batch_size: training batch size of ``train_dataloader`` (shuffled, last batch may be smaller).
        num_workers: DataLoader workers (0: load in the main process; the data is in memory, so 0 is usually
            best).
        seed: seed of the training shuffle (and, in :class:`DistillDataModule`, of the balanced stream).
        eval_batch_size: batch size of the val/test loaders over the real test set.

    Available right after ``__init__`` (no data loaded): ``dataset_name``, ``info``, ``num_classes``,
    ``channels``, ``image_size``, ``mean``, ``std``, ``class_names`` (subset-aware).

    After :meth:`setup`: ``train_images``/``test_images`` normalised ``float32 (N, C, H, W)``,
    ``train_labels``/``test_labels`` ``int64 (N,)``, ``indices_by_class`` (``K`` int64 index tensors into the
    training set), ``class_counts`` ``(K,)``. Data are loaded once, whatever the number of ``setup`` calls.

    Raises:
        PtmddError: unknown dataset, ``batch_size``/``eval_batch_size < 1``, ``num_workers < 0``, bad
            ``classes`` (in ``__init__``); missing data (in :meth:`prepare_data`/:meth:`setup`).
    """

    def __init__(
        self,
        dataset: str = "fashion_mnist",
        root: str | None = None,
        download: bool = False,
        classes: list[int] | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        eval_batch_size: int = 1024,
    ) -> None:
        super().__init__()
        self._info: DatasetInfo = get_dataset_info(dataset)
        if int(batch_size) < 1:
            raise PtmddError(f"data.batch_size must be >= 1, got {batch_size}")
        if int(eval_batch_size) < 1:
            raise PtmddError(f"data.eval_batch_size must be >= 1, got {eval_batch_size}")
        if int(num_workers) < 0:
            raise PtmddError(f"data.num_workers must be >= 0, got {num_workers}")
        if classes is not None:
            cl = [int(c) for c in classes]
            k = self._info.num_classes
            if not cl or len(set(cl)) != len(cl) or not all(0 <= c < k for c in cl):
                raise PtmddError(
                    f"data.classes must be distinct class indices in [0, {k}) of {self._info.name}, not "
                    f"empty (or null for all classes); got {list(classes)}"
                )
            classes = cl
        self.root = root
        self.download = bool(download)
        self.classes: list[int] | None = classes
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.eval_batch_size = int(eval_batch_size)
        self.save_hyperparameters()

        self.train_images: torch.Tensor | None = None
        self.train_labels: torch.Tensor | None = None
        self.test_images: torch.Tensor | None = None
        self.test_labels: torch.Tensor | None = None
        self.indices_by_class: list[torch.Tensor] = []
        self.class_counts: torch.Tensor | None = None
        self._padded_index: torch.Tensor | None = None
        self._mean_t = torch.tensor(self._info.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std_t = torch.tensor(self._info.std, dtype=torch.float32).view(1, -1, 1, 1)

    # ----------------------------------------------------------------------------------- static facts
    @property
    def info(self) -> DatasetInfo:
        """What the modules get (``model.init_args.dataset_info``): the dataset, or the view of its class subset."""
        return self._info.subset(self.classes)

    @property
    def dataset_name(self) -> str:
        """Canonical registry name, e.g. ``"fashion_mnist"``."""
        return self._info.name

    @property
    def num_classes(self) -> int:
        """``K``: ``len(classes)`` with a class subset, else the dataset's class count."""
        return self.info.num_classes

    @property
    def channels(self) -> int:
        """``C`` of the images."""
        return self._info.channels

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the images."""
        return self._info.image_size

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel normalisation mean (pixels scaled to [0, 1])."""
        return self._info.mean

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel normalisation std (pixels scaled to [0, 1])."""
        return self._info.std

    @property
    def class_names(self) -> tuple[str, ...]:
        """``K`` names; with a subset, ``class_names[i]`` names original class ``classes[i]``."""
        return self.info.class_names

    # ----------------------------------------------------------------------------------- normalisation
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 (N, C, H, W)`` pixels 0..255 -> normalised ``float32`` ``(x / 255 - mean) / std``.

        A floating-point input is taken as already scaled to ``[0, 1]`` and keeps its dtype. The reference
        code's ``ToTensor()`` + ``Normalize(mean, std)``.
        """
        x = images.float().div_(255.0) if not images.is_floating_point() else images
        mean = self._mean_t.to(device=x.device, dtype=x.dtype)
        std = self._std_t.to(device=x.device, dtype=x.dtype)
        return (x - mean) / std

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised float ``(N, C, H, W)`` -> pixels in ``[0, 1]`` (``x * std + mean``, clamped)."""
        mean = self._mean_t.to(device=images.device, dtype=images.dtype)
        std = self._std_t.to(device=images.device, dtype=images.dtype)
        return (images * std + mean).clamp_(0.0, 1.0)

    # ----------------------------------------------------------------------------------- loading
    def prepare_data(self) -> None:
        """Rank 0 of each node: decompress the Debian Fashion-MNIST files into the cache (``root=None``).

        With ``download=True`` torchvision downloads the data instead. Loads nothing into ``self``.
        """
        if self.root is None and self.dataset_name == "fashion_mnist":
            prepare_fashion_mnist(download=self.download)
        elif self.download:
            for train in (True, False):
                load_split(self.dataset_name, self.root, train, download=True)

    def setup(self, stage: str | None = None) -> None:
        """Load the train and test splits once (any ``stage``), apply the class subset, normalise.

        Raises:
            PtmddError: data missing (the message names the fix), or a selected class without training images.
        """
        if self.train_images is not None:
            return
        train_x, train_y = load_split(self.dataset_name, self.root, True, download=self.download)
        test_x, test_y = load_split(self.dataset_name, self.root, False, download=self.download)
        if self.classes is not None:
            train_x, train_y = subset_classes(train_x, train_y, self.classes, self._info.num_classes)
            test_x, test_y = subset_classes(test_x, test_y, self.classes, self._info.num_classes)
        k = self.num_classes
        counts = torch.bincount(train_y, minlength=k)
        if bool((counts == 0).any()):
            empty = [int(c) for c in torch.nonzero(counts == 0).flatten()]
            raise PtmddError(
                f"classes {empty} of {self.dataset_name} have no training images; check data.root and data.classes"
            )
        order = torch.argsort(train_y, stable=True)
        self.indices_by_class = list(torch.split(order, counts.tolist()))
        padded = torch.zeros(k, int(counts.max()), dtype=torch.int64)
        for c, idx in enumerate(self.indices_by_class):  # K small copies, once
            padded[c, : idx.numel()] = idx
        self._padded_index = padded
        self.class_counts = counts
        self.test_images = self.normalize(test_x)
        self.test_labels = test_y
        self.train_labels = train_y
        self.train_images = self.normalize(train_x)  # last: it marks the module as set up

    def _require_setup(self) -> None:
        if self.train_images is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before the data are used")

    def real_by_class(self, k: int) -> torch.Tensor:
        """The ``int64`` indices into ``train_images`` of class ``k`` (ascending), shape ``(N_k,)``."""
        self._require_setup()
        if not 0 <= int(k) < self.num_classes:
            raise IndexError(f"class {k} out of range [0, {self.num_classes})")
        return self.indices_by_class[int(k)]

    def sample_real(
        self, num_per_class: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``num_per_class`` random training images of every class (e.g. to initialise a synthetic set).

        Sampled without replacement within a class, like the reference ``get_images(c, n)``.

        Args:
            num_per_class: ``n >= 1``, at most the smallest class size.
            generator: CPU ``torch.Generator``; ``None`` uses the global RNG.

        Returns:
            ``(images (K * n, C, H, W) float32 normalised, labels (K * n,) int64)``, sorted by class.

        Raises:
            PtmddError: ``n < 1`` or ``n`` larger than the smallest class.
        """
        self._require_setup()
        n = int(num_per_class)
        smallest = int(self.class_counts.min())
        if not 1 <= n <= smallest:
            raise PtmddError(
                f"cannot draw {n} real images per class: use 1 to {smallest} (the smallest class of "
                f"{self.dataset_name} has {smallest} training images)"
            )
        idx = sample_balanced_indices(self._padded_index, self.class_counts, n, generator)
        return self.train_images.index_select(0, idx), self.train_labels.index_select(0, idx)

    # ----------------------------------------------------------------------------------- loaders
    def _eval_loader(self) -> DataLoader:
        self._require_setup()
        return DataLoader(
            InMemoryDataset(self.test_images, self.test_labels),
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=_collate_batched,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches ``(images (B, C, H, W), labels (B,))``, ``B = batch_size``.

        The last batch may be smaller. The shuffle uses a ``torch.Generator`` seeded with ``seed``; under DDP
        Lightning swaps in a ``DistributedSampler``.
        """
        self._require_setup()
        return DataLoader(
            InMemoryDataset(self.train_images, self.train_labels),
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=_collate_batched,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        """The real test set in order, batches of ``eval_batch_size`` (DD papers report test accuracy)."""
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        """The real test set in order, batches of ``eval_batch_size``."""
        return self._eval_loader()


class DistillDataModule(RealDataModule):
    """:class:`RealDataModule` whose training loader is an infinite stream of class-balanced real batches.

    Args:
        batch_real: real images PER CLASS per distillation step (DC/DSA/DM: 256). Every class must have at
            least ``batch_real`` training images (checked in :meth:`setup`); batches never repeat an image.

    The other arguments are those of :class:`RealDataModule` (``batch_size`` is unused by the stream).

    ``train_dataloader`` yields ``(images (K * batch_real, C, H, W) float32, labels (K * batch_real,)
    int64)``, sorted by class (class 0 first), each drawn with a generator seeded from ``(seed, rank, step)``
    (:func:`batch_seed`): ``rank`` is ``trainer.global_rank`` (0 without a trainer) and ``step`` starts at
    ``trainer.global_step`` when an iterator over the loader is created (0 without a trainer), then counts
    batches. So each DDP rank draws its own batches, a resumed run continues the stream, and a model making
    one optimizer step per batch sees batch ``global_step`` at every step. It is an ``IterableDataset``
    (loader with ``batch_size=None``), so Lightning injects no ``DistributedSampler``; as it never ends,
    bound training with ``max_steps`` (and use an integer ``val_check_interval``). The val/test loaders are
    the real test set.

    Raises:
        PtmddError: ``batch_real < 1`` (``__init__``); ``batch_real`` above the smallest class size
            (``setup``).
    """

    def __init__(
        self,
        dataset: str = "fashion_mnist",
        root: str | None = None,
        download: bool = False,
        classes: list[int] | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        eval_batch_size: int = 1024,
        batch_real: int = 256,
    ) -> None:
        if int(batch_real) < 1:
            raise PtmddError(f"data.batch_real (real images per class per step) must be >= 1, got {batch_real}")
        self.batch_real = int(batch_real)
        super().__init__(
            dataset=dataset,
            root=root,
            download=download,
            classes=classes,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            eval_batch_size=eval_batch_size,
        )

    def setup(self, stage: str | None = None) -> None:
        """As :meth:`RealDataModule.setup`, then check that every class holds ``batch_real`` images.

        Raises:
            PtmddError: ``batch_real`` larger than the smallest class; the message gives the maximum allowed.
        """
        super().setup(stage)
        smallest = int(self.class_counts.min())
        if self.batch_real > smallest:
            raise PtmddError(
                f"data.batch_real={self.batch_real} exceeds the smallest class of {self.dataset_name} "
                f"({smallest} training images): set data.batch_real to at most {smallest}"
            )

    def _rank(self) -> int:
        trainer = self.trainer
        return int(trainer.global_rank) if trainer is not None else 0

    def _global_step(self) -> int:
        trainer = self.trainer
        return int(trainer.global_step) if trainer is not None else 0

    def balanced_stream(self, rank: int | None = None, start_step: int = 0) -> BalancedBatchStream:
        """The :class:`BalancedBatchStream` of this module (``rank`` default: the trainer's global rank)."""
        self._require_setup()
        return BalancedBatchStream(
            self.train_images,
            self.train_labels,
            self._padded_index,
            self.class_counts,
            self.batch_real,
            seed=self.seed,
            rank=self._rank() if rank is None else rank,
            start_step=start_step,
        )

    def train_dataloader(self) -> DataLoader:
        """Infinite class-balanced batches of real images.

        Infinite class-balanced batches ``(images (K * batch_real, C, H, W), labels (K *
        batch_real,))``.
        """
        return _StreamLoader(self.balanced_stream(), step_fn=self._global_step, num_workers=self.num_workers)
