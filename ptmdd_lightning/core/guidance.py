"""PTM guidance: CLoM, CCLoM and pools of frozen pre-trained models.

Source: Lu et al., "Can pre-trained models assist in dataset distillation?" (arXiv:2310.03295, 2023), Sec. 3:
the total loss is ``L = L_DD + alpha * L_CLoM`` (or ``+ alpha * L_CCLoM``), with a pool of PTMs that vary in
initialisation (N_m seeds), architecture (N_a architectures) and training epoch; one PTM is drawn from the pool at
every iteration.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.fileio import safe_load
from ptmdd_lightning.machine import kinds_summary
from ptmdd_lightning.nets import build_net, canonical_net_name


def clom(logits_syn: Tensor, syn_labels: Tensor) -> Tensor:
    """CLoM, the classification loss of a pre-trained model on the synthetic images (Lu et al. 2023, Eq. 2).

    Args:
        logits_syn: ``(N, K)`` logits of a frozen PTM on the synthetic images, any float dtype.
        syn_labels: ``(N,)`` int64 labels in ``[0, K)``.

    Returns:
        Scalar float32: ``mean_i CE(logits_syn[i], syn_labels[i])`` in nats. The caller multiplies by alpha.

    Raises:
        PtmddError: if the PTM's number of classes ``K`` does not cover the labels (a PTM of another label space:
            use CCLoM instead).
    """
    if logits_syn.ndim != 2 or logits_syn.shape[0] != syn_labels.shape[0]:
        raise PtmddError(
            f"clom expects logits (N, K) and labels (N,), got {tuple(logits_syn.shape)} and {tuple(syn_labels.shape)}."
        )
    if syn_labels.numel() and int(syn_labels.max()) >= logits_syn.shape[1]:
        raise PtmddError(
            f"CLoM needs a PTM of the target label space: the PTM has {logits_syn.shape[1]} classes but "
            f"the labels go up to {int(syn_labels.max())}; use loss: cclom for PTMs of another label "
            "space."
        )
    return F.cross_entropy(logits_syn.float(), syn_labels)


def cclom(feat_real: Tensor, real_labels: Tensor, feat_syn: Tensor, syn_labels: Tensor, eps: float = 1e-8) -> Tensor:
    """CCLoM, the contrastive classification loss of a pre-trained model (Lu et al. 2023, Eq. 3).

    ``D[i, j] = 1 - cos(F(real_i), F(syn_j))``, ``M[i, j] = 1[real_labels_i == syn_labels_j]``,
    ``L = sum(D * M) / sum(D)``: the share of the cosine distance that lies between same-class pairs. Minimising it
    pulls each synthetic image towards the real images of its class in the PTM's feature space, relative to all classes.
    Labels need only agree between the real batch and the synthetic set, so the PTM may come from any label space.

    Args:
        feat_real: ``(B, D)`` PTM features of a real batch (no gradient needed).
        real_labels: ``(B,)`` int64.
        feat_syn: ``(N, D)`` PTM features of the synthetic images.
        syn_labels: ``(N,)`` int64.
        eps: added to ``sum(D)`` to avoid 0/0 when all features coincide.

    Returns:
        Scalar float32 in ``[0, 1]``.

    Raises:
        PtmddError: if the feature widths differ or the batch is empty.
    """
    if feat_real.ndim != 2 or feat_syn.ndim != 2 or feat_real.shape[1] != feat_syn.shape[1]:
        raise PtmddError(
            f"cclom expects features (B, D) and (N, D), got {tuple(feat_real.shape)} and {tuple(feat_syn.shape)}."
        )
    if feat_real.shape[0] == 0 or feat_syn.shape[0] == 0:
        raise PtmddError("CCLoM needs a real batch: set model.init_args.cclom_batch_real >= 1.")
    fr = F.normalize(feat_real.float(), dim=1)
    fs = F.normalize(feat_syn.float(), dim=1)
    dist = 1.0 - fr @ fs.T
    mask = (real_labels[:, None] == syn_labels[None, :]).to(dist.dtype)
    return (dist * mask).sum() / (dist.sum() + eps)


@torch.no_grad()
def ptm_feature_table(
    member: PTMMember, images: Tensor, chunk: int = 8196, prepare: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """The PTM features of every image of a training set, for CCLoM's real side: ``(N, D)``.

    CCLoM's real features ``F(real_i)`` come from a frozen PTM in eval mode on raw (un-augmented) images, so an
    image's features never change during a run: embedding the whole training set once and gathering rows by the
    drawn indices gives the same ``feat_real`` as embedding the ``B`` drawn images at every step (the authors'
    ``CCLoM.__get_images_randomly`` + forward, DDInterpreter 19a4767 ``utils_clom/CLoM.py``), up to floating-point
    rounding: the rows are computed in chunks in training-set order rather than in the step's draw, and convolution
    kernels may round a row differently in another batch. A speed path of ptmdd, not the authors'.

    Args:
        member: the frozen PTM (:class:`PTMMember`; its device is where the table is made and kept).
        images: ``(N, C, H, W)`` float32 normalised target-domain training images (any device).
        chunk: images embedded at once (>= 1); the distiller passes ``cclom_batch_size``, the size the per-step
            path embeds at once.
        prepare: applied to a chunk before and after :meth:`PTMMember.adapt` (the distiller's memory format);
            ``None``: nothing.

    Returns:
        ``(N, D)`` features in the dtype the PTM's ``embed`` returns under the caller's autocast (bf16 under
        ``bf16-mixed``, else float32), on the member's device, no gradient. Memory ``N * D`` elements
        (60,000 x 512 in bf16, ConvNetW32 on Fashion-MNIST: 61 MB).

    Raises:
        PtmddError: ``chunk < 1`` or no images.
    """
    if chunk < 1 or images.shape[0] == 0:
        raise PtmddError(
            f"a PTM feature table needs images and chunk >= 1, got {images.shape[0]} images, chunk {chunk}."
        )
    prepare = prepare or (lambda x: x)
    device = member.t_mean.device
    table: Tensor | None = None
    for start in range(0, images.shape[0], chunk):
        x = prepare(images[start : start + chunk].to(device, non_blocking=True))
        feats = member.net.embed(prepare(member.adapt(x)))
        if table is None:
            table = feats.new_empty((images.shape[0], *feats.shape[1:]))
        table[start : start + feats.shape[0]] = feats
    return table


@dataclass
class PTMGroup:
    """One architecture's share of a PTM pool (Lu et al. 2023, Sec. 4.2-4.4: N_m seeds, N_a architectures, epoch).

    Args:
        arch: net name of :func:`ptmdd_lightning.nets.build_net`, e.g. ``"ConvNet"``, ``"AlexNet"``, ``"VGG11"``.
        alpha: the loss weight alpha of this architecture (>= 0).
        num_seeds: N_m, the members trained from seeds ``0 .. N_m - 1`` (``seeds`` overrides).
        epoch: the checkpoint epoch to load: early (sub-optimal) checkpoints can guide better than converged ones.
        loss: ``"clom"`` for PTMs of the target label space, ``"cclom"`` for PTMs of any label space.
        source: the pool folder of the PTMs' training data, e.g. ``"fashion_mnist"``, ``"fashion_mnist-c01234"``
            (a class subset) or ``"mnist"``; ``None`` means the target dataset.
        seeds: explicit seed list; overrides ``num_seeds``.

    Raises:
        PtmddError: alpha < 0, num_seeds (N_m) < 1, ``seeds: []``, epoch < 0, or a loss other than
            ``"clom"``/``"cclom"``.
    """

    arch: str = "ConvNet"
    alpha: float = 1.0
    num_seeds: int = 1
    epoch: int = 10
    loss: Literal["clom", "cclom"] = "clom"
    source: str | None = None
    seeds: list[int] | None = None

    def member_seeds(self) -> list[int]:
        """The seeds of this group's members."""
        return list(self.seeds) if self.seeds is not None else list(range(self.num_seeds))

    def validate(self) -> None:
        """Raise :class:`PtmddError` for alpha < 0, N_m < 1, an empty ``seeds`` list, epoch < 0 or an unknown loss."""
        if self.alpha < 0:
            raise PtmddError(f"PTM alpha must be >= 0, got {self.alpha} for arch {self.arch}.")
        if self.seeds is None and self.num_seeds < 1:
            raise PtmddError(f"PTM num_seeds (N_m) must be >= 1, got {self.num_seeds} for arch {self.arch}.")
        if self.seeds is not None and len(self.seeds) == 0:
            raise PtmddError(
                f"PTM group {self.arch} has seeds: [] (no member, so no guidance); list the member "
                "seeds (e.g. seeds: [0, 1]), or drop seeds and set num_seeds (N_m)."
            )
        if self.epoch < 0:
            raise PtmddError(f"PTM epoch must be >= 0, got {self.epoch} for arch {self.arch}.")
        if self.loss not in ("clom", "cclom"):
            raise PtmddError(f"PTM loss must be 'clom' or 'cclom', got {self.loss!r}.")


#: the authors' CLoM weight alpha (DDInterpreter 1c96cb3, "docs/weight of clom.png"): (method, dataset, IPC) -> alpha
AUTHORS_CLOM_ALPHA: dict[tuple[str, str, int], float] = {
    ("dc", "fashion_mnist", 10): 100.0,
    ("dc", "fashion_mnist", 50): 100.0,
    ("dc", "cifar10", 10): 1000.0,
    ("dc", "cifar10", 50): 5000.0,
    ("dc", "cifar100", 10): 10000.0,
    ("dc", "cifar100", 50): 1000.0,
    ("dsa", "fashion_mnist", 10): 100.0,
    ("dsa", "fashion_mnist", 50): 100.0,
    ("dsa", "cifar10", 10): 5000.0,
    ("dsa", "cifar10", 50): 1000.0,
    ("dsa", "cifar100", 10): 10000.0,
    ("dsa", "cifar100", 50): 10.0,
    ("dm", "fashion_mnist", 10): 100.0,
    ("dm", "fashion_mnist", 50): 100.0,
    ("dm", "cifar10", 10): 2000.0,
    ("dm", "cifar10", 50): 1000.0,
    ("dm", "cifar100", 10): 500.0,
    ("dm", "cifar100", 50): 1.0,
}
#: the authors' per-architecture alpha of a model pool on CIFAR-10 at IPC 50 (DDInterpreter 1c96cb3,
#: "docs/weight of clom with a model pool (C10-50).png"): (method, arch) -> alpha
AUTHORS_POOL_ALPHA_CIFAR10_IPC50: dict[tuple[str, str], float] = {
    ("dc", "ConvNet"): 5000.0,
    ("dc", "VGG11"): 5000.0,
    ("dc", "ResNet18"): 5000.0,
    ("dc", "AlexNet"): 100.0,
    ("dsa", "ConvNet"): 1000.0,
    ("dsa", "VGG11"): 1000.0,
    ("dsa", "ResNet18"): 1000.0,
    ("dsa", "AlexNet"): 2000.0,
    ("dm", "ConvNet"): 1000.0,
    ("dm", "VGG11"): 1000.0,
    ("dm", "ResNet18"): 1000.0,
    ("dm", "AlexNet"): 1000.0,
}


@dataclass
class PTMRecipe:
    """How every member of a PTM pool is pretrained; one recipe per pool, recorded in every member file.

    The default is the authors' (DDInterpreter 19a4767 ``train_original_models.py``): SGD with lr 0.01, momentum
    0.9, weight decay 5e-3, batch 256, 150 epochs with the lr multiplied by 0.1 at epochs 50 and 100
    (``MultiStepLR`` stepped once per epoch), no augmentation, a checkpoint every epoch; the guidance loads epoch
    ``E`` of that one run. A member of epoch ``E`` is therefore the state after ``E`` epochs of the 150-epoch
    schedule; ptmdd trains only the ``E`` epochs it needs (the schedule depends on the epoch, not on the run's
    length). :meth:`scaled` gives the named, proportionally shortened variant for CPUs.

    Args:
        name: the recipe's name, recorded and compared (``"authors"``, ``"authors-scaled-30"``, your own).
        epochs: the schedule's length (a group's ``epoch`` must be <= it).
        milestones: epochs after which the lr is multiplied by ``gamma`` (strictly increasing, in ``[1, epochs]``).
        gamma: the lr factor at each milestone.
        lr, momentum, weight_decay: SGD settings.
        batch_size: pretraining batch size.

    Raises:
        PtmddError: (:meth:`validate`) a value out of range.
    """

    name: str = "authors"
    epochs: int = 150
    milestones: list[int] = field(default_factory=lambda: [50, 100])
    gamma: float = 0.1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-3
    batch_size: int = 256

    @classmethod
    def scaled(cls, epochs: int) -> PTMRecipe:
        """The authors' recipe shortened to ``epochs``.

        The authors' recipe shortened to ``epochs``: same optimizer and weight decay, milestones at 1/3 and 2/3
        (e.g. 30 epochs, decays after 10 and 20), named ``"authors-scaled-<epochs>"``.
        """
        return cls(name=f"authors-scaled-{epochs}", epochs=epochs, milestones=[epochs // 3, 2 * epochs // 3])

    def validate(self) -> None:
        """Raise :class:`PtmddError` for a value out of range."""
        ms = [int(m) for m in self.milestones]
        increasing = all(b > a for a, b in itertools.pairwise(ms))
        if self.epochs < 1 or not increasing or any(not 1 <= m <= self.epochs for m in ms):
            raise PtmddError(
                f"PTM recipe {self.name!r}: epochs must be >= 1 and milestones strictly increasing in "
                f"[1, epochs]; got epochs={self.epochs}, milestones={self.milestones}."
            )
        if (
            self.lr <= 0
            or not 0 <= self.momentum < 1
            or self.weight_decay < 0
            or self.batch_size < 1
            or not 0 < self.gamma <= 1
        ):
            raise PtmddError(
                f"PTM recipe {self.name!r}: needs lr > 0, 0 <= momentum < 1, weight_decay >= 0, "
                f"batch_size >= 1, 0 < gamma <= 1; got {self.record()}."
            )

    def lr_at(self, epoch: int) -> float:
        """The learning rate of (0-based) training epoch ``epoch``: ``lr * gamma ** #milestones <= epoch``."""
        return self.lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)

    def record(self) -> dict:
        """The plain dict stored in member files (``optimizer`` and ``augmentation`` spelt out)."""
        return {
            "name": self.name,
            "optimizer": "SGD",
            "lr": float(self.lr),
            "momentum": float(self.momentum),
            "weight_decay": float(self.weight_decay),
            "batch_size": int(self.batch_size),
            "epochs": int(self.epochs),
            "milestones": [int(m) for m in self.milestones],
            "gamma": float(self.gamma),
            "augmentation": None,
        }


def pool_key(dataset: str, classes: list[int] | None = None) -> str:
    """The pool folder name of a training set: ``"fashion_mnist"``, or ``"fashion_mnist-c0-1-2-3-4"`` for a subset.

    Raises:
        Nothing of its own.
    """
    if not classes:
        return dataset
    return f"{dataset}-c" + "-".join(str(int(c)) for c in classes)


def member_path(pool_root: str | Path, source: str, arch: str, seed: int, epoch: int) -> Path:
    """Where a pool member lives: ``<pool_root>/<source>/<arch>/seed<seed>/epoch<epoch>.pt``.

    Raises:
        Nothing of its own.
    """
    return Path(pool_root) / source / arch / f"seed{seed}" / f"epoch{epoch}.pt"


def pretrain_command(
    source: str,
    arch: str,
    seed: int,
    epoch: int,
    pool_root: str | Path,
    data_root: str | Path | None = None,
    recipe: PTMRecipe | None = None,
) -> str:
    """The ``ptmdd fit`` command that pretrains one missing pool member into ``pool_root``.

    It runs ``configs/pretrain/fashion_mnist.yaml`` (a :class:`~ptmdd_lightning.modules.Classifier` with a
    ``PTMCheckpoint`` as its last callback) for ``epoch`` epochs of ``recipe`` (default: the authors')
    with ``seed_everything = seed`` and the member's dataset, class subset (``source``
    ``"<dataset>-c5-6-7-8-9"``), data root and architecture. The config path is written relative to the working
    directory when the repository's ``configs/`` is found (an editable install).

    Returns:
        one shell line.

    Raises:
        PtmddError: a ``recipe`` out of range (:class:`PTMRecipe`).
    """
    name, _, cls = source.partition("-c")
    config = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "fashion_mnist.yaml"
    if config.is_file():
        try:
            config_arg = str(config.relative_to(Path.cwd().resolve()))
        except ValueError:
            config_arg = str(config)
    else:
        config_arg = "configs/pretrain/fashion_mnist.yaml"
    parts = ["ptmdd fit --config", shlex.quote(config_arg), "--data.init_args.dataset", name]
    if cls:
        parts += ["--data.init_args.classes", shlex.quote("[" + ", ".join(cls.split("-")) + "]")]
    if data_root is not None:
        parts += ["--data.init_args.root", shlex.quote(str(data_root))]
    recipe = recipe if recipe is not None else PTMRecipe()
    if recipe.record() != PTMRecipe().record():
        parts += ["--model.init_args.recipe", shlex.quote(json.dumps(dataclasses.asdict(recipe)))]
    parts += ["--data.init_args.batch_size", str(recipe.batch_size)]
    parts += [
        "--model.init_args.arch",
        arch,
        "--seed_everything",
        str(seed),
        "--trainer.max_epochs",
        str(max(epoch, 1)),
        "--trainer.callbacks.init_args.epochs",
        shlex.quote(f"[{epoch}]"),
        "--trainer.callbacks.init_args.pool_root",
        shlex.quote(str(pool_root)),
    ]
    return " ".join(parts)


def load_ptm(path: str | Path) -> tuple[nn.Module, dict]:
    """Load one PTM checkpoint written by :class:`ptmdd_lightning.callbacks.PTMCheckpoint`.

    Source: ptmdd's own file format (CRC-checked, no pickle: ``ptmdd_lightning/fileio.py``); the authors load
    ``torch.load`` state dicts of their epoch-E checkpoints.

    Returns:
        ``(net, meta)``: the net in eval mode with ``requires_grad=False`` on every parameter, and the metadata
        (``arch``, ``channels``, ``num_classes``, ``image_size``, ``dataset``, ``mean``, ``std``, ``epoch``, ``seed``;
        ``pretrain_seconds`` where recorded), plus ``path`` (this file) and ``file_bytes`` (its size on disk).

    Raises:
        PtmddError: if the file is missing, truncated/corrupted, or its weights do not fit its declared architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise PtmddError(f"PTM checkpoint {path} does not exist.")
    # no pickle execution, CRC-checked (a shared pool is user-supplied input; ptmdd_lightning/fileio.py)
    blob = safe_load(path, "PTM checkpoint", "delete it and pretrain that member again")
    needed = ("state_dict", "arch", "channels", "num_classes", "image_size", "mean", "std")
    if not isinstance(blob, dict) or any(k not in blob for k in needed):
        raise PtmddError(
            f"{path} is not a ptmdd PTM checkpoint (needs keys {needed}); pretrain it with a "
            "configs/pretrain/*.yaml config."
        )
    net = build_net(blob["arch"], blob["channels"], blob["num_classes"], tuple(blob["image_size"]))
    try:
        net.load_state_dict(blob["state_dict"])
    except RuntimeError as err:
        raise PtmddError(
            f"PTM checkpoint {path} does not match architecture {blob['arch']} "
            f"({blob['channels']} channels, {blob['num_classes']} classes, image size "
            f"{tuple(blob['image_size'])}): {str(err).splitlines()[0]}"
        ) from err
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    meta.update(path=str(path), file_bytes=path.stat().st_size)
    return net, meta


def pool_cost(members: Sequence[PTMMember]) -> dict[str, float | int | str | None]:
    """What a set of pool members cost: their files on disk and their pretraining time.

    Args:
        members: loaded members (:class:`PTMMember`, e.g. ``PTMPool.members`` or a teacher's).

    Returns:
        ``{"members": n, "pool_bytes": the files' bytes, "pretrain_seconds": s, "pretrain_kinds": k}``: ``s`` sums,
        over every distinct pretraining run ``(dataset, classes, arch, seed)``, the largest ``pretrain_seconds`` its
        used files record (one run writes all its epochs; a file records the wall seconds of its run up to that
        epoch); ``None`` when a member records none (pretrained before ptmdd recorded it). ``k`` says on which CPU
        kinds those runs ran (:func:`~ptmdd_lightning.machine.kinds_summary` of each run's longest ``attempts``,
        written by :class:`~ptmdd_lightning.callbacks.PTMCheckpoint` since 2026-12-04; ``"?"`` before), e.g.
        ``"amx-bf16 x2"``: seconds of different kinds are not the same cost.

    Raises:
        Nothing of its own.
    """
    runs: dict[tuple, list[float | None]] = {}
    attempts: dict[tuple, list | None] = {}
    for m in members:
        meta = m.meta
        key = (meta.get("dataset"), str(meta.get("classes")), meta.get("arch"), meta.get("seed"))
        runs.setdefault(key, []).append(meta.get("pretrain_seconds"))
        mine = meta.get("attempts")  # a later epoch's file holds the earlier ones' attempts and maybe more
        if key not in attempts or len(mine or []) > len(attempts[key] or []):
            attempts[key] = mine
    unknown = any(s is None for times in runs.values() for s in times)
    return {
        "members": len(members),
        "pool_bytes": int(sum(int(m.meta.get("file_bytes", 0)) for m in members)),
        "pretrain_seconds": None if unknown or not runs else round(sum(max(t) for t in runs.values()), 3),
        "pretrain_kinds": kinds_summary(attempts.values()),
    }


class PTMMember(nn.Module):
    """A frozen PTM plus the rule that maps target-domain images into its input domain.

    Domain rule (documented in the README): target images (normalised with the target mean/std) are de-normalised,
    channels are repeated 1 -> 3 or averaged 3 -> 1, resized bilinearly to the PTM's image size when it differs, and
    normalised with the PTM's training mean/std.

    Source: the frozen PTM of CLoM/CCLoM (Lu et al. 2023, Sec. 3; DDInterpreter 19a4767 ``utils_clom/CLoM.py``
    line 56 loads each member with ``requires_grad_(False)``). Deviation: ptmdd keeps the PTM in eval mode; the
    authors' PTM stays in train mode. The two are the same function for nets without BatchNorm (ConvNet-3 with
    instance norm and its width/depth variants, LeNet, MLP, AlexNet, VGG11); a BatchNorm PTM (``AlexNetBN``,
    ``VGG11BN``, ``ResNet18BN``...) would, in the authors' code, normalise with the statistics of each synthetic
    (or real) batch and update its running statistics at every step (docs/paper.md). The domain rule is
    ptmdd's own: the authors' PTMs share the target's input shape.

    Args:
        net: the PTM; it is put in eval mode with ``requires_grad=False`` here and stays so.
        meta: its checkpoint metadata.
        alpha: the loss weight.
        loss: ``"clom"`` or ``"cclom"``.
        target_mean, target_std: the target dataset's per-channel mean/std.

    Raises:
        Nothing of its own.
    """

    def __init__(
        self,
        net: nn.Module,
        meta: dict,
        alpha: float,
        loss: str,
        target_mean: tuple[float, ...],
        target_std: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)  # frozen, whoever built it (load_ptm does the same)
        self.meta = meta
        self.alpha = float(alpha)
        self.loss = loss
        self.image_size = tuple(meta["image_size"])
        self.channels = int(meta["channels"])
        self.register_buffer("t_mean", torch.tensor(target_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("t_std", torch.tensor(target_std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("s_mean", torch.tensor(meta["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("s_std", torch.tensor(meta["std"]).view(1, -1, 1, 1), persistent=False)
        self.same_domain = (
            len(target_mean) == self.channels
            and tuple(target_mean) == tuple(meta["mean"])
            and tuple(target_std) == tuple(meta["std"])
        )

    def adapt(self, x: Tensor) -> Tensor:
        """Map normalised target images ``(N, C_t, H_t, W_t)`` to this PTM's input ``(N, C_s, H_s, W_s)``."""
        if self.same_domain and tuple(x.shape[-2:]) == self.image_size:
            return x
        x = x * self.t_std + self.t_mean
        if x.shape[1] != self.channels:
            x = x.mean(dim=1, keepdim=True)
            x = x.expand(-1, self.channels, -1, -1)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return (x - self.s_mean) / self.s_std

    def forward(self, x: Tensor) -> Tensor:
        """The PTM's logits ``(N, K_s)`` of normalised target images ``(N, C_t, H_t, W_t)`` (via :meth:`adapt`)."""
        return self.net(self.adapt(x))

    def train(self, mode: bool = True) -> PTMMember:
        """PTMs stay in eval mode whatever the parent module does (frozen BatchNorm statistics)."""
        return super().train(False)


class PTMPool(nn.Module):
    """A pool of frozen PTMs: N_a architectures x N_m seeds at one checkpoint epoch each (Lu et al. 2023, Sec. 3).

    Args:
        groups: one :class:`PTMGroup` per architecture.
        pool_root: the pool folder (layout ``<pool_root>/<source>/<arch>/seed<S>/epoch<E>.pt``).
        target: the target dataset's pool key (``source`` default), e.g. ``"fashion_mnist"``.
        num_classes: the target's K.
        mean, std: the target's normalisation.
        channels, image_size: the target's C and (H, W); members of the target's own pool must match them.
        data_root: the data root, for the pretraining command of a missing member (``None``: the default root).
        recipe: the pool's :class:`PTMRecipe` (``None``: the authors'); every member must record the same one.

    Raises:
        PtmddError: a missing member (naming the folder and the pretraining command), a member of another
            recipe or of none recorded (naming both), a group epoch beyond the recipe's, a checkpoint of another
            architecture than its group, of another channel count or image size than the target's own data, whose
            class count does not fit CLoM, or a corrupted file.
    """

    def __init__(
        self,
        groups: list[PTMGroup],
        pool_root: str | Path,
        target: str,
        num_classes: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        channels: int | None = None,
        image_size: tuple[int, int] | None = None,
        data_root: str | Path | None = None,
        recipe: PTMRecipe | None = None,
    ) -> None:
        super().__init__()

        recipe = recipe if recipe is not None else PTMRecipe()
        recipe.validate()
        wanted = recipe.record()
        self.recipe = wanted
        self.members = nn.ModuleList()
        for group in groups:
            group.validate()
            if group.epoch > recipe.epochs:
                raise PtmddError(
                    f"PTM group {group.arch} asks for epoch {group.epoch}, beyond the {recipe.epochs} "
                    f"epochs of recipe {recipe.name!r}; lower the epoch or use a longer recipe."
                )
            source = group.source or target
            for seed in group.member_seeds():
                path = member_path(pool_root, source, group.arch, seed, group.epoch)
                if not path.is_file():
                    command = pretrain_command(source, group.arch, seed, group.epoch, pool_root, data_root, recipe)
                    raise PtmddError(
                        f"PTM pool member missing: {path} (pool folder {Path(pool_root)}). Pretrain it with "
                        f"`{command}`, or add the PretrainPTMPool callback to pretrain missing members "
                        "automatically."
                    )
                net, meta = load_ptm(path)
                got = meta.get("recipe")
                if got != wanted:
                    what = (
                        "records no recipe (pretrained before ptmdd recorded recipes, or by hand)"
                        if got is None
                        else f"was pretrained with recipe {got}"
                    )
                    raise PtmddError(
                        f"PTM checkpoint {path} {what}, but this pool uses recipe {wanted}; a pool never mixes "
                        "recipes. Use another pool_root for this recipe (PretrainPTMPool pretrains its members), "
                        "set ptm_recipe to the members' recipe, or delete the file and pretrain that member again."
                    )
                if canonical_net_name(str(meta["arch"])) != canonical_net_name(group.arch):
                    raise PtmddError(
                        f"PTM checkpoint {path} holds a {meta['arch']}, but its pool group asks for "
                        f"{group.arch}; delete the file and pretrain that member again."
                    )
                shape = (int(meta["channels"]), tuple(int(s) for s in meta["image_size"]))
                if (
                    source == target
                    and channels is not None
                    and image_size is not None
                    and shape != (int(channels), tuple(int(s) for s in image_size))
                ):
                    what = "channels" if shape[0] != int(channels) else "image size"
                    raise PtmddError(
                        f"PTM checkpoint {path} does not match the target {target}: its {what} "
                        f"({shape[0]} channels, image size {shape[1]}) differ from the data's "
                        f"({channels} channels, image size {tuple(image_size)}); delete it and "
                        "pretrain that member again."
                    )
                if group.loss == "clom" and int(meta["num_classes"]) != num_classes:
                    raise PtmddError(
                        f"CLoM needs PTMs of the target label space, but {path} has {meta['num_classes']} classes and "
                        f"the target has {num_classes}; use loss: cclom for PTMs of another label space."
                    )
                if group.loss == "clom" and source != target:
                    raise PtmddError(
                        f"CLoM needs PTMs trained on the target label space ({target}), but group {group.arch} uses "
                        f"source {source}; use loss: cclom for PTMs of another dataset or class split."
                    )
                self.members.append(PTMMember(net, meta, group.alpha, group.loss, mean, std))

    def __len__(self) -> int:
        return len(self.members)

    def train(self, mode: bool = True) -> PTMPool:
        """The pool stays in eval mode whatever its parent does (frozen BatchNorm statistics, no dropout)."""
        return super().train(False)

    def pick(self, mode: Literal["random", "all"], rng: random.Random) -> list[tuple[PTMMember, float]]:
        """The members used this step and their weights (the weights include alpha).

        ``random``: one member drawn uniformly, weight alpha (the paper's per-iteration sampling).
        ``all``: every member, weight alpha / len(pool), so ``all`` is the expectation of ``random``.

        Source: DDInterpreter 19a4767 ``utils_clom/CLoM.py``, ``calculate_loss``: an architecture drawn uniformly,
        then one of its ``model_num`` members, weight that architecture's alpha. With groups of equal size (the
        only pools the authors' code builds: one ``--model_num`` for all architectures) that is the same
        distribution as one uniform draw over all members. Deviation: with groups of different N_m, ptmdd's draw
        picks an architecture in proportion to its N_m.

        Args:
            mode: ``"random"`` or ``"all"``.
            rng: the step's generator (the caller seeds it per step).

        Returns:
            ``[(member, weight), ...]``: one pair for ``random``, every member for ``all``; ``[]`` for an empty pool.

        Raises:
            Nothing of its own.
        """
        if not len(self.members):
            return []
        if mode == "random":
            member = self.members[rng.randrange(len(self.members))]
            return [(member, member.alpha)]
        n = len(self.members)
        return [(m, m.alpha / n) for m in self.members]
