"""Real datasets of dataset distillation: a registry of their shapes and statistics, and offline loaders.

Every loader returns the whole split in memory as ``uint8`` images ``(N, C, H, W)`` (pixel values 0..255) and
``int64`` labels ``(N,)`` in ``[0, num_classes)``. Normalisation (``(x / 255 - mean) / std``, per channel) is
left to the caller (:class:`ptmdd_lightning.data.RealDataModule`); the mean/std are the ones hard-coded in the
reference DC/DSA/DM code (github VICO-UoE/DatasetCondensation, ``utils.py``, ``get_dataset``).

Nothing is ever downloaded unless the caller passes ``download=True``.

Fashion-MNIST needs no ``root``: the Debian package ``dataset-fashion-mnist`` installs the original gzipped
idx files under ``/usr/share/datasets/fashion-mnist``. They were re-compressed, so torchvision's md5 check of
the ``.gz`` files fails; :func:`prepare_fashion_mnist` therefore decompresses them once into
``<cache>/FashionMNIST/raw/`` (the un-gzipped idx files, the layout ``torchvision.datasets.FashionMNIST``
reads with ``download=False``). ``<cache>`` is ``$PTMDD_DATA`` if set, else ``~/.cache/ptmdd/data``.

This module is pure torch/torchvision (no Lightning).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.fileio import atomic_write

__all__ = [
    "DATASETS",
    "FASHION_MNIST_SYSTEM_DIR",
    "DatasetInfo",
    "as_dataset_info",
    "available_datasets",
    "default_data_root",
    "get_dataset_info",
    "load_split",
    "prepare_fashion_mnist",
    "subset_classes",
]

#: Where the Debian package ``dataset-fashion-mnist`` installs the original gzipped idx files.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

#: The fix printed whenever Fashion-MNIST cannot be found.
FASHION_MNIST_FIX = (
    "run `apt-get install -y dataset-fashion-mnist` or set data.root to a folder holding FashionMNIST/raw "
    "(the un-gzipped idx files), or set `data.download: true` to download them (needs network)"
)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a real dataset, or a class subset of it, known without loading it.

    The registry holds one per dataset (``classes`` ``None``); :meth:`subset` gives the view of a class subset,
    and a DataModule's ``info`` is that view. It is the one argument through which the modules learn the data
    (``model.init_args.dataset_info``, linked from the DataModule by the CLI; never written in YAML).

    Attributes:
        name: canonical registry name, e.g. ``"fashion_mnist"``.
        channels: ``C`` of the ``(N, C, H, W)`` images.
        image_size: ``(H, W)`` in pixels.
        num_classes: ``K``, labels are ``int64`` in ``[0, K)`` (with a subset: ``len(classes)``).
        mean: per-channel mean of the pixels scaled to ``[0, 1]``, a tuple of ``C`` floats.
        std: per-channel standard deviation of the pixels scaled to ``[0, 1]``, a tuple of ``C`` floats.
        class_names: ``K`` human-readable names, index ``k`` names label ``k``.
        classes: the original class indices of a subset (label ``k`` is original class ``classes[k]``), or
            ``None`` for all classes.

    Lists (as YAML and ``hparams.yaml`` give them) are stored as tuples.

    Raises:
        ValueError: mean/std without ``C`` values, or not ``K`` class names (or ``classes``).

    Source of mean/std: reference DC/DSA/DM code (VICO-UoE/DatasetCondensation ``utils.py``, ``get_dataset``);
    Tiny ImageNet uses the ImageNet statistics as that code does.
    """

    name: str
    channels: int
    image_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # frozen: normalise lists (YAML, hparams.yaml) to tuples in place
        for field, cast in (("image_size", int), ("mean", float), ("std", float), ("class_names", str)):
            object.__setattr__(self, field, tuple(cast(v) for v in getattr(self, field)))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"{self.name}: mean/std need {self.channels} values")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.classes)} subset classes for {self.num_classes} classes")

    def subset(self, classes: Sequence[int] | None) -> DatasetInfo:
        """The view of the class subset ``classes`` (original indices; ``None``: this dataset itself).

        Raises:
            ValueError: a subset of a subset, or a class index outside ``[0, K)``.
        """
        if classes is None:
            return self
        if self.classes is not None:
            raise ValueError(f"{self.name}: already the class subset {list(self.classes)}")
        cl = tuple(int(c) for c in classes)
        if not all(0 <= c < self.num_classes for c in cl):
            raise ValueError(f"{self.name}: classes {list(cl)} outside [0, {self.num_classes})")
        names = tuple(self.class_names[c] for c in cl)
        return dataclasses.replace(self, num_classes=len(cl), class_names=names, classes=cl)


_DIGITS = tuple(str(i) for i in range(10))

_CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile "
    "cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp "
    "lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom "
    "oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine "
    "possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake "
    "spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor "
    "train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()

#: The dataset registry: canonical name -> :class:`DatasetInfo`.
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="fashion_mnist",
            channels=1,
            image_size=(28, 28),
            num_classes=10,
            mean=(0.2861,),
            std=(0.3530,),
            class_names=(
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ),
        ),
        DatasetInfo(
            name="mnist",
            channels=1,
            image_size=(28, 28),
            num_classes=10,
            mean=(0.1307,),
            std=(0.3081,),
            class_names=_DIGITS,
        ),
        DatasetInfo(
            name="cifar10",
            channels=3,
            image_size=(32, 32),
            num_classes=10,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2023, 0.1994, 0.2010),
            class_names=(
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ),
        ),
        DatasetInfo(
            name="cifar100",
            channels=3,
            image_size=(32, 32),
            num_classes=100,
            mean=(0.5071, 0.4866, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            class_names=tuple(_CIFAR100_CLASSES),
        ),
        DatasetInfo(
            name="svhn",
            channels=3,
            image_size=(32, 32),
            num_classes=10,
            mean=(0.4377, 0.4438, 0.4728),
            std=(0.1980, 0.2010, 0.1970),
            class_names=_DIGITS,
        ),
        DatasetInfo(
            name="tiny_imagenet",
            channels=3,
            image_size=(64, 64),
            num_classes=200,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            # The WordNet ids are only known from the data folder (sorted wnids = label order).
            class_names=tuple(f"class_{i:03d}" for i in range(200)),
        ),
    )
}

_ALIASES = {
    "fashionmnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
    "cifar_10": "cifar10",
    "cifar_100": "cifar100",
    "tinyimagenet": "tiny_imagenet",
    "tiny": "tiny_imagenet",
}


def available_datasets() -> list[str]:
    """The canonical names of the registry, sorted.

    Raises:
        Nothing of its own.
    """
    return sorted(DATASETS)


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise PtmddError(f"data.dataset must be a string, one of {available_datasets()}; got {name!r}")
    key = name.strip().lower().replace("-", "_")
    return _ALIASES.get(key, key)


def as_dataset_info(value: DatasetInfo | Mapping[str, Any] | None) -> DatasetInfo:
    """A module's ``dataset_info`` argument as a :class:`DatasetInfo`.

    Args:
        value: a :class:`DatasetInfo` (what the CLI links from the DataModule), a dict of its fields (a
            checkpoint's or ``hparams.yaml``'s hyper-parameters), or ``None`` (Fashion-MNIST, all classes).

    Raises:
        PtmddError: a dict with unknown or missing fields, or inconsistent ones.
    """
    if value is None:
        return DATASETS["fashion_mnist"]
    if isinstance(value, DatasetInfo):
        return value
    try:
        return DatasetInfo(**dict(value))
    except (TypeError, ValueError) as err:
        raise PtmddError(
            f"dataset_info {dict(value)} is not a DatasetInfo ({err}); it is linked from the DataModule, so leave it "
            "out of the config (set data.init_args.dataset / classes instead)."
        ) from err


def get_dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``.

    The :class:`DatasetInfo` of ``name`` (case-insensitive; ``-`` and ``_`` are the same; ``FashionMNIST``,
    ``CIFAR-10`` and ``TinyImageNet`` style aliases accepted).

    Raises:
        PtmddError: unknown name; the message lists the known names.
    """
    key = _canonical(name)
    if key not in DATASETS:
        raise PtmddError(f"unknown dataset {name!r}: set data.dataset to one of {available_datasets()}")
    return DATASETS[key]


def default_data_root() -> Path:
    """The data cache folder.

    The data cache: ``$PTMDD_DATA`` if set and non-empty, else ``~/.cache/ptmdd/data`` (not created
    here).

    Raises:
        Nothing of its own.
    """
    env = os.environ.get("PTMDD_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ptmdd" / "data"


# ------------------------------------------------------------------------------------------------------------
# Fashion-MNIST from the Debian package
# ------------------------------------------------------------------------------------------------------------

#: The gzipped idx files of the Debian package (and of the original Fashion-MNIST release).
_FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _idx_file_complete(path: Path) -> bool:
    """Whether ``path`` is an uncompressed idx file (uint8 data) whose size matches its header.

    idx format: 2 zero bytes, type byte (0x08 = uint8), number of dims ``d``, then ``d`` big-endian uint32
    sizes, then the data. A truncated or foreign file returns ``False``.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
            if len(head) != 4 or head[:3] != b"\x00\x00\x08" or not 1 <= head[3] <= 4:
                return False
            dims = f.read(4 * head[3])
    except OSError:
        return False
    if len(dims) != 4 * head[3]:
        return False
    n = 1
    for i in range(head[3]):
        n *= int.from_bytes(dims[4 * i : 4 * i + 4], "big")
    return size == 4 + len(dims) + n


def prepare_fashion_mnist(
    cache: str | os.PathLike | None = None, source: str | os.PathLike | None = None, download: bool = False
) -> Path:
    """Make ``<cache>/FashionMNIST/raw/`` hold the four un-gzipped idx files and return ``<cache>``.

    Files already present and complete (size matching their idx header) are kept. Missing ones are
    decompressed from ``source`` (default :data:`FASHION_MNIST_SYSTEM_DIR`, the Debian package
    ``dataset-fashion-mnist``), each written atomically (temporary file + ``os.replace``). If ``source``
    lacks them and ``download`` is true, torchvision downloads them into ``<cache>``.

    Args:
        cache: the cache folder; default :func:`default_data_root`.
        source: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.
        download: let torchvision download what is still missing (needs network).

    Returns:
        The cache folder, usable as ``torchvision.datasets.FashionMNIST(root=..., download=False)``.

    Raises:
        PtmddError: files missing and not downloadable; the message names
            ``apt-get install -y dataset-fashion-mnist``.
    """
    cache = Path(cache).expanduser() if cache is not None else default_data_root()
    source = Path(source) if source is not None else FASHION_MNIST_SYSTEM_DIR
    raw = cache / "FashionMNIST" / "raw"
    missing = []
    for gz_name in _FASHION_FILES:
        dst = raw / gz_name[: -len(".gz")]
        if _idx_file_complete(dst):
            continue
        src = source / gz_name
        if not src.is_file():
            missing.append(gz_name)
            continue

        def _write(f, src=src):
            with gzip.open(src, "rb") as g:
                shutil.copyfileobj(g, f, length=1 << 20)

        try:
            atomic_write(dst, _write)
        except (OSError, EOFError) as e:  # gzip.BadGzipFile, truncated .gz, unwritable cache
            raise PtmddError(
                f"cannot prepare Fashion-MNIST from {src} into {raw}: {e}. Set PTMDD_DATA to a writable "
                f"folder, or {FASHION_MNIST_FIX}"
            ) from e
        if not _idx_file_complete(dst):
            dst.unlink(missing_ok=True)
            raise PtmddError(f"{src} is not a complete gzipped idx file; {FASHION_MNIST_FIX}")
    if missing:
        if download:
            import torchvision

            for train in (True, False):
                try:
                    torchvision.datasets.FashionMNIST(root=str(cache), train=train, download=True)
                except Exception as e:  # network errors come in many types
                    raise PtmddError(f"downloading Fashion-MNIST into {cache} failed ({e}); {FASHION_MNIST_FIX}") from e
        else:
            raise PtmddError(
                f"Fashion-MNIST not found: {', '.join(missing)} missing from {source} and from {raw}; "
                f"{FASHION_MNIST_FIX}"
            )
    return cache


# ------------------------------------------------------------------------------------------------------------
# Loaders
# ------------------------------------------------------------------------------------------------------------


def _not_found(name: str, root: Path, split: str, err: Exception) -> PtmddError:
    if name == "fashion_mnist":
        fix = FASHION_MNIST_FIX
    else:
        fix = (
            f"set data.root to the folder holding the torchvision files of {name}, or set "
            "`data.download: true` to download them there (needs network)"
        )
    return PtmddError(f"{name} ({split} split) not found under data.root={str(root)!r} ({err}); {fix}")


def _mnist_like(cls, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ds = cls(root=str(root), train=train, download=download)
    images = ds.data if isinstance(ds.data, torch.Tensor) else torch.as_tensor(ds.data)
    labels = ds.targets if isinstance(ds.targets, torch.Tensor) else torch.as_tensor(ds.targets)
    return images.to(torch.uint8).unsqueeze(1), labels


def _cifar(cls, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ds = cls(root=str(root), train=train, download=download)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return images, torch.as_tensor(ds.targets)


def _svhn(root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import scipy.io  # noqa: F401  (torchvision's SVHN reads .mat files with scipy)
    except ImportError as e:
        raise PtmddError("SVHN needs scipy to read its .mat files: run `pip install scipy`") from e
    import torchvision

    ds = torchvision.datasets.SVHN(root=str(root), split="train" if train else "test", download=download)
    # torchvision already maps label 10 to 0 and transposes to (N, C, H, W).
    return torch.from_numpy(ds.data), torch.from_numpy(ds.labels.astype("int64"))


def _tiny_imagenet_base(root: Path) -> Path:
    for base in (root / "tiny-imagenet-200", root):
        if (base / "train").is_dir():
            return base
    raise FileNotFoundError(f"no tiny-imagenet-200/train folder in {root}")


def _read_rgb(paths: Sequence[Path], size: tuple[int, int]) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            out[i] = np.asarray(im)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _tiny_imagenet(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny ImageNet from ``<root>/tiny-imagenet-200`` (or ``root`` itself when it holds ``train/``).

    ``train/<wnid>/**/*.JPEG`` is read ImageFolder-style; labels are the sorted wnids' ranks. The test split
    is ``val/``: either the original ``val/images`` + ``val/val_annotations.txt`` or ``val/<wnid>/**``.
    Decoded tensors are cached (uint8) in
    ``<default_data_root()>/tiny_imagenet_<train|test>_<hash of root>.pt``.
    """
    base = _tiny_imagenet_base(root)
    split = "train" if train else "test"
    key = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:12]
    cache_file = default_data_root() / f"tiny_imagenet_{split}_{key}.pt"
    if cache_file.is_file():
        blob = torch.load(cache_file, weights_only=True)
        return blob["images"], blob["labels"]

    exts = {".jpeg", ".jpg", ".png"}
    wnids = sorted(d.name for d in (base / "train").iterdir() if d.is_dir())
    index = {w: i for i, w in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    if train:
        for w in wnids:
            found = sorted(p for p in (base / "train" / w).rglob("*") if p.suffix.lower() in exts)
            paths += found
            labels += [index[w]] * len(found)
    else:
        val = base / "val"
        ann = val / "val_annotations.txt"
        if ann.is_file():
            for line in ann.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 2 and parts[1] in index:
                    paths.append(val / "images" / parts[0])
                    labels.append(index[parts[1]])
        elif val.is_dir():
            for w in sorted(d.name for d in val.iterdir() if d.is_dir() and d.name in index):
                found = sorted(p for p in (val / w).rglob("*") if p.suffix.lower() in exts)
                paths += found
                labels += [index[w]] * len(found)
        if not paths:
            raise FileNotFoundError(f"no validation images in {val}")
    if not paths:
        raise FileNotFoundError(f"no training images in {base / 'train'}")
    images = _read_rgb(paths, DATASETS["tiny_imagenet"].image_size)
    label_t = torch.tensor(labels, dtype=torch.int64)
    try:
        atomic_write(cache_file, lambda f: torch.save({"images": images, "labels": label_t}, f))
    except OSError:
        pass  # the cache is an optimisation only
    return images, label_t


def load_split(
    name: str, root: str | os.PathLike | None, train: bool, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of a real dataset into memory.

    Args:
        name: a registry name (see :func:`get_dataset_info`).
        root: the folder in torchvision layout (``MNIST/raw``, ``FashionMNIST/raw``, ``cifar-10-batches-py``,
            ``cifar-100-python``, ``{train,test}_32x32.mat``, ``tiny-imagenet-200/{train,val}``). ``None`` is
            allowed for Fashion-MNIST only: the cache prepared by :func:`prepare_fashion_mnist` is used.
        train: the training split if true, else the test split (Tiny ImageNet: ``val``).
        download: let torchvision download a missing dataset into ``root`` (needs network). Never done
            otherwise.

    Returns:
        ``(images, labels)``: ``uint8`` ``(N, C, H, W)`` contiguous, values 0..255, and ``int64`` ``(N,)`` in
        ``[0, K)``, in the file order of the split.

    Raises:
        PtmddError: unknown dataset; ``root=None`` for a dataset other than Fashion-MNIST; data missing (the
            message names the fix: ``apt-get install -y dataset-fashion-mnist``/``data.root`` for
            Fashion-MNIST, ``data.root`` and ``data.download: true`` otherwise).
    """
    import torchvision

    info = get_dataset_info(name)
    split = "train" if train else "test"
    if root is None:
        if info.name != "fashion_mnist":
            raise PtmddError(
                f"{info.name} needs data.root: set data.root to the folder holding its torchvision files "
                "(add `data.download: true` to download them there)"
            )
        root_path = prepare_fashion_mnist(download=download)
        download = False
    else:
        root_path = Path(root).expanduser()
    try:
        if info.name == "fashion_mnist":
            images, labels = _mnist_like(torchvision.datasets.FashionMNIST, root_path, train, download)
        elif info.name == "mnist":
            images, labels = _mnist_like(torchvision.datasets.MNIST, root_path, train, download)
        elif info.name == "cifar10":
            images, labels = _cifar(torchvision.datasets.CIFAR10, root_path, train, download)
        elif info.name == "cifar100":
            images, labels = _cifar(torchvision.datasets.CIFAR100, root_path, train, download)
        elif info.name == "svhn":
            images, labels = _svhn(root_path, train, download)
        elif info.name == "tiny_imagenet":
            if download:
                raise PtmddError(
                    "Tiny ImageNet cannot be downloaded by ptmdd: unpack tiny-imagenet-200.zip into "
                    "data.root and set `data.download: false`"
                )
            images, labels = _tiny_imagenet(root_path, train)
        else:  # pragma: no cover - every registry entry has a loader
            raise PtmddError(f"no loader for {info.name}")
    except PtmddError:
        raise
    except (RuntimeError, FileNotFoundError) as e:  # torchvision: "Dataset not found or corrupted ..."
        raise _not_found(info.name, root_path, split, e) from e

    images = images.contiguous().to(torch.uint8)
    labels = labels.to(torch.int64)
    expected = (info.channels, *info.image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected or labels.shape != (images.shape[0],):
        raise PtmddError(
            f"{info.name} ({split}) under {root_path} has images {tuple(images.shape)} and labels "
            f"{tuple(labels.shape)}, expected (N, {', '.join(map(str, expected))}) and (N,); check data.root"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= info.num_classes):
        raise PtmddError(
            f"{info.name} ({split}) under {root_path} has labels outside [0, {info.num_classes}); check data.root"
        )
    return images, labels


def subset_classes(
    images: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the samples whose label is in ``classes`` and remap label ``classes[i]`` to ``i``.

    Used to pretrain PTMs on one part of the label space and distill another (e.g. Fashion-MNIST classes 0-4
    versus 5-9). The sample order is kept.

    Args:
        images: ``(N, ...)`` any dtype.
        labels: ``(N,)`` int64 in ``[0, num_classes)``.
        classes: distinct ints in ``[0, num_classes)``; their order defines the new labels.
        num_classes: the size of the original label space.

    Returns:
        ``(images[mask], new_labels)`` with ``new_labels`` int64 in ``[0, len(classes))``.

    Raises:
        PtmddError: ``classes`` empty, repeated or out of range.
    """
    classes = [int(c) for c in classes]
    if not classes or len(set(classes)) != len(classes) or not all(0 <= c < num_classes for c in classes):
        raise PtmddError(f"data.classes must be distinct ints in [0, {num_classes}) and not empty; got {classes}")
    lut = torch.full((num_classes,), -1, dtype=torch.int64)
    lut[torch.tensor(classes, dtype=torch.int64)] = torch.arange(len(classes), dtype=torch.int64)
    new = lut[labels]
    mask = new >= 0
    return images[mask], new[mask]
