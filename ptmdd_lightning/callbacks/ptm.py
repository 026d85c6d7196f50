"""PTM pool callbacks: checkpoint a pretraining run at chosen epochs; pretrain a pool's missing members.

Lu et al. (2023, Sec. 4.4) find that PTMs taken from early, sub-optimal epochs can guide distillation better than
converged ones; the pool therefore stores each member at a list of epochs.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from ptmdd_lightning.core.guidance import PTMGroup, PTMRecipe, member_path, pool_key
from ptmdd_lightning.data import RealDataModule
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.fileio import atomic_save
from ptmdd_lightning.machine import attempt_record
from ptmdd_lightning.modules.classifier import Classifier
from ptmdd_lightning.progress import PoolProgressBar, shows_progress
from ptmdd_lightning.seeding import run_seed

log = logging.getLogger(__name__)


class PTMCheckpoint(Callback):
    """Save a :class:`~ptmdd_lightning.modules.Classifier`'s net at the chosen epochs into the PTM pool.

    Files: ``<pool_root>/<source>/<arch>/seed<S>/epoch<E>.pt`` (written atomically) holding ``state_dict`` and the
    metadata a :class:`~ptmdd_lightning.core.guidance.PTMPool` validates: ``arch``, ``channels``, ``num_classes``,
    ``image_size``, ``dataset``, ``classes``, ``mean``, ``std``, ``epoch``, ``seed``, the last ``val_acc``,
    ``pretrain_seconds`` (wall seconds of training up to this epoch, summed over the run's resumes: the seconds so
    far are kept in the Lightning checkpoint; work lost to a kill since the last checkpoint is not counted, its redoing
    is), the ``recipe`` it
    was trained with (:meth:`~ptmdd_lightning.core.guidance.PTMRecipe.record` of the Classifier's
    ``recipe``; without one, its plain SGD settings under the name ``"custom"``) and ``attempts``: where the
    pretraining ran, one :func:`~ptmdd_lightning.machine.attempt_record` per start or resume (``from_step``,
    ``from_epoch``, ``cpu_kind``, threads, precision, commit, UTC start), kept in the Lightning checkpoint like the
    seconds. ``pretrain_seconds`` is a wall time of the CPU kinds listed there (a resumed run may span kinds); a
    run resumed from a checkpoint of a ptmdd that kept no attempts starts the list with
    ``{"from_step": 0, "from_epoch": 0, "cpu_kind": None}`` (unknown).
    Epoch ``E`` means "after E completed training epochs"; ``0`` saves the initialisation.

    Args:
        epochs: the epochs to save, e.g. ``[1, 5, 10, 20]`` (each >= 0 and <= ``trainer.max_epochs``).
        pool_root: the pool folder.
        seed: the member's seed; ``None`` = the run's ``seed_everything`` value.
        source: the pool key of the training data; ``None`` = derived from the DataModule (dataset + class subset).
        overwrite: allow replacing files that already exist (otherwise a new run refuses to overwrite them).

    Raises:
        PtmddError: at fit start, for an epoch beyond ``max_epochs`` or an existing file without ``overwrite``.
    """

    def __init__(
        self,
        epochs: list[int],
        pool_root: str = "ptm_pool",
        seed: int | None = None,
        source: str | None = None,
        overwrite: bool = False,
    ) -> None:
        if not epochs or any(int(e) < 0 for e in epochs):
            raise PtmddError(f"PTMCheckpoint epochs must be a non-empty list of epochs >= 0, got {epochs}.")
        self.epochs = sorted({int(e) for e in epochs})
        self.pool_root = pool_root
        self.seed = seed
        self.source = source
        self.overwrite = overwrite
        self.saved: list[Path] = []
        #: stands in for the DataModule's metadata when a run has none (the nested runs of PretrainPTMPool)
        self.data_info = None
        self._seconds_before = 0.0  # training seconds of the run before its last resume (from the checkpoint)
        self._started: float | None = None
        self._attempts: list[dict] = []  # where the run ran: its start and every resume (see the class docstring)

    def _elapsed(self) -> float:
        """Wall seconds of training so far: before the last resume plus since this process started training."""
        since = time.perf_counter() - self._started if self._started is not None else 0.0
        return self._seconds_before + since

    @property
    def attempts(self) -> list[dict]:
        """Where the pretraining ran so far, oldest first (copies; see the class docstring)."""
        return [dict(a) for a in self._attempts]

    def state_dict(self) -> dict:
        """``{"pretrain_seconds": s, "attempts": [...]}``: training seconds and attempts so far, for the checkpoint."""
        return {"pretrain_seconds": self._elapsed(), "attempts": self.attempts}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict` (checkpoints written before a key existed restore 0 s and no attempts)."""
        self._seconds_before = float(state_dict.get("pretrain_seconds", 0.0))
        self._attempts = [dict(a) for a in state_dict.get("attempts") or []]

    def _member_seed(self) -> int:
        return int(self.seed) if self.seed is not None else run_seed()

    def _source(self, trainer: Trainer) -> str:
        if self.source is not None:
            return self.source
        dm = trainer.datamodule or self.data_info
        if dm is None:
            raise PtmddError("PTMCheckpoint needs a DataModule or an explicit source name.")
        return pool_key(dm.dataset_name, getattr(dm, "classes", None))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Delete the throw-away pool of a ``fast_dev_run`` (nothing of a real run is touched)."""
        if getattr(self, "_throwaway", None):
            self.pool_root = self._real_pool_root
        _remove_throwaway(self)

    def path(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> Path:
        """The file of ``epoch`` for this run's member."""
        return member_path(self.pool_root, self._source(trainer), pl_module.hparams.arch, self._member_seed(), epoch)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run:  # a smoke run must never put half-trained members into a real pool
            self._real_pool_root = self.pool_root
            self.pool_root = self._throwaway = tempfile.mkdtemp(prefix="ptmdd_fast_dev_run_pool_")
            rank_zero_info(f"[ptmdd] fast_dev_run: PTM checkpoints go to {self.pool_root}")
        max_epochs = trainer.max_epochs
        if not trainer.fast_dev_run and max_epochs is not None and max_epochs >= 0 and self.epochs[-1] > max_epochs:
            raise PtmddError(
                f"PTMCheckpoint epoch {self.epochs[-1]} is never reached with trainer.max_epochs="
                f"{max_epochs}; raise max_epochs or drop that epoch."
            )
        resuming = trainer.ckpt_path is not None
        existing = [p for e in self.epochs if (p := self.path(trainer, pl_module, e)).exists()]
        if existing and not (self.overwrite or resuming):
            raise PtmddError(
                f"PTM checkpoints already exist ({existing[0]} and {len(existing) - 1} more); a new run "
                "does not overwrite them. Use another pool_root or seed, or set overwrite: true."
            )

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.perf_counter()
        step, epoch = int(trainer.global_step), int(trainer.current_epoch)
        if step > 0 and not self._attempts:  # resumed from a checkpoint of a ptmdd that kept no attempts
            self._attempts = [{"from_step": 0, "from_epoch": 0, "cpu_kind": None}]
        self._attempts.append({**attempt_record(step, pl_module.device, str(trainer.precision)), "from_epoch": epoch})
        if 0 in self.epochs and trainer.current_epoch == 0:
            self._save(trainer, pl_module, 0)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch in self.epochs:
            self._save(trainer, pl_module, epoch)

    @staticmethod
    def _recipe_record(trainer: Trainer, pl_module: LightningModule) -> dict:
        """The recipe the member was trained with: the Classifier's ``recipe``, else its plain settings ("custom")."""
        recipe = getattr(pl_module, "recipe", None)
        if recipe is not None:
            return recipe.record()
        hp = pl_module.hparams
        max_epochs = int(trainer.max_epochs) if trainer.max_epochs and trainer.max_epochs > 0 else None
        at = hp.get("lr_decay_at")
        milestones = [max(1, int(max_epochs * at))] if at is not None and max_epochs else []
        loader = trainer.train_dataloader
        return {
            "name": "custom",
            "optimizer": "SGD",
            "lr": float(hp.lr),
            "momentum": float(hp.momentum),
            "weight_decay": float(hp.weight_decay),
            "batch_size": getattr(loader, "batch_size", None),
            "epochs": max_epochs,
            "milestones": milestones,
            "gamma": 0.1,
            "augmentation": None,
        }

    def _save(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        path = self.path(trainer, pl_module, epoch)
        if trainer.is_global_zero:
            hp = pl_module.hparams
            dm = trainer.datamodule or self.data_info
            val_acc = trainer.callback_metrics.get("val/acc")
            blob = {
                "state_dict": {k: v.detach().cpu().clone() for k, v in pl_module.net.state_dict().items()},
                "arch": hp.arch,
                "channels": int(pl_module.dataset_info.channels),
                "num_classes": int(pl_module.dataset_info.num_classes),
                "image_size": tuple(int(s) for s in pl_module.dataset_info.image_size),
                "dataset": getattr(dm, "dataset_name", None),
                "classes": getattr(dm, "classes", None),
                "mean": tuple(float(m) for m in dm.mean),
                "std": tuple(float(s) for s in dm.std),
                "epoch": epoch,
                "seed": self._member_seed(),
                "val_acc": float(val_acc) if val_acc is not None else None,
                "recipe": self._recipe_record(trainer, pl_module),
                # wall seconds of training up to this epoch, summed over resumes: the member's cost
                "pretrain_seconds": round(self._elapsed(), 3),
                "attempts": self.attempts,  # where those seconds were spent (CPU kinds, threads, precision)
            }
            atomic_save(blob, path)
            rank_zero_info(f"[ptmdd] saved PTM {path}")
        self.saved.append(path)
        trainer.strategy.barrier("ptm_checkpoint")


class PretrainPTMPool(Callback):
    """Before distillation, pretrain every PTM pool member that is not on disk yet (existing ones are reused).

    The members are those of the distiller's guidance (``ptms``) and of every soft-label teacher of the run's
    :class:`~ptmdd_lightning.callbacks.SyntheticSetEvaluation` (``teachers``), all in the distiller's ``pool_root``.

    For each missing ``(source, arch, seed)`` it runs a nested Lightning ``Trainer.fit`` of a
    :class:`~ptmdd_lightning.modules.Classifier` with :class:`PTMCheckpoint` saving the epochs the pool asks for. It
    runs on global rank 0 while the other ranks wait, and it isolates the RNG so the distillation's randomness is the
    same whether or not members were pretrained. Sources other than the target dataset (a class subset or another
    dataset) are loaded with :class:`~ptmdd_lightning.data.RealDataModule` from the target's ``root`` (for the same
    dataset) or ``roots[dataset]``.

    The recipe is the pool's (the Distiller's ``ptm_recipe``, default the authors': SGD lr 0.01, momentum 0.9,
    weight decay 5e-3, batch 256, lr x 0.1 at epochs 50 and 100 of 150, no augmentation). A member of epoch ``E``
    is trained for the ``E`` epochs it needs of that schedule, one run per ``(source, arch, seed)`` saving every
    epoch the pool asks for, and records the recipe.

    Args:
        precision: Lightning precision of the pretraining; ``None`` = the distillation trainer's.
        roots: data roots of other source datasets, e.g. ``{"mnist": "/data"}``.
        max_epochs, batch_size, lr, momentum, weight_decay: removed (the recipe is the pool's); accepted only to
            refuse them with a message that names ``model.init_args.ptm_recipe``.

    Raises:
        PtmddError: one of the removed arguments is set.
    """

    def __init__(
        self,
        precision: str | None = None,
        roots: dict[str, str] | None = None,
        max_epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
    ) -> None:
        removed = {
            k: v
            for k, v in dict(
                max_epochs=max_epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay
            ).items()
            if v is not None
        }
        if removed:
            raise PtmddError(
                f"PretrainPTMPool no longer takes {', '.join(removed)}: a pool's members share one recipe, "
                "model.init_args.ptm_recipe (default: the authors', SGD lr 0.01, momentum 0.9, weight decay 5e-3, "
                "batch 256, 150 epochs, lr x0.1 after 50 and 100), e.g. ptm_recipe: {name: mine, epochs: 30, "
                "milestones: [10, 20], batch_size: 64}. Remove these keys from the callback."
            )
        self.precision = precision
        self.roots = roots or {}

    def missing(self, groups: list[PTMGroup], pool_root: str, target: str) -> dict[tuple[str, str, int], list[int]]:
        """``{(source, arch, seed): [epochs]}`` of the members not on disk."""
        need: dict[tuple[str, str, int], list[int]] = {}
        for g in groups:
            source = g.source or target
            for seed in g.member_seeds():
                if not member_path(pool_root, source, g.arch, seed, g.epoch).is_file():
                    need.setdefault((source, g.arch, seed), []).append(g.epoch)
        return need

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # the distiller's guidance members and the members of every soft-label teacher of the run's evaluation
        groups = list(getattr(pl_module, "ptm_groups", None) or [])
        for callback in trainer.callbacks:
            for spec in (getattr(callback, "teacher_specs", None) or {}).values():
                groups += list(spec.ptms)
        if stage != "fit" or not groups:
            return
        dm = trainer.datamodule
        target = pool_key(dm.dataset_name, getattr(dm, "classes", None))
        if trainer.fast_dev_run:  # smoke run: one-batch members in a throw-away pool, never in the real one
            folder = tempfile.mkdtemp(prefix="ptmdd_fast_dev_run_pool_") if trainer.is_global_zero else None
            self._throwaway = folder
            pl_module.hparams.pool_root = trainer.strategy.broadcast(folder)
            rank_zero_info(f"[ptmdd] fast_dev_run: pretraining the pool in {pl_module.hparams.pool_root}")
        pool_root = pl_module.hparams.pool_root
        need = self.missing(groups, pool_root, target)
        if need and trainer.is_global_zero:
            recipe = getattr(pl_module, "ptm_recipe", None) or PTMRecipe()
            for k, ((source, arch, seed), _) in enumerate(sorted(need.items()), start=1):
                label = f"PTM {k}/{len(need)} {source}/{arch}/seed{seed} ({recipe.name})"
                # one process pretrains a member; another run that misses it waits here, then reuses it
                lock = member_path(pool_root, source, arch, seed, 0).parent.with_suffix(".lock")
                lock.parent.mkdir(parents=True, exist_ok=True)
                with _pool_lock(lock, f"{source}/{arch}/seed{seed}"):
                    epochs = self.missing(groups, pool_root, target).get((source, arch, seed))
                    if not epochs:
                        rank_zero_info(f"[ptmdd] PTM {source}/{arch}/seed{seed}: pretrained by another run, reused")
                        continue
                    self._pretrain(trainer, pool_root, source, target, arch, seed, epochs, label, recipe)
        trainer.strategy.barrier("pretrain_ptm_pool")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Delete the throw-away pool of a ``fast_dev_run`` (the members are already loaded into the model)."""
        _remove_throwaway(self)

    def _source_data(self, trainer: Trainer, source: str, target: str):
        dm = trainer.datamodule
        if source == target:
            return dm.train_images, dm.train_labels, dm
        name, _, cls = source.partition("-c")
        classes = [int(c) for c in cls.split("-")] if cls else None
        root = self.roots.get(name, dm.root if name == dm.dataset_name else None)
        src = RealDataModule(dataset=name, root=root, classes=classes)
        src.prepare_data()
        src.setup("fit")
        return src.train_images, src.train_labels, src

    def _pretrain(
        self,
        trainer: Trainer,
        pool_root: str,
        source: str,
        target: str,
        arch: str,
        seed: int,
        epochs: list[int],
        label: str = "PTM",
        recipe: PTMRecipe | None = None,
    ) -> None:
        from lightning.pytorch.utilities.seed import isolate_rng
        from torch.utils.data import DataLoader, TensorDataset

        images, labels, data = self._source_data(trainer, source, target)
        recipe = recipe or PTMRecipe()
        max_epochs = max(epochs)
        rank_zero_info(
            f"[ptmdd] pretraining {label} for {max_epochs} epochs "
            f"(saving epochs {sorted(set(epochs))}) into {pool_root}"
        )
        device = trainer.strategy.root_device
        with isolate_rng():
            torch.manual_seed(seed)
            model = Classifier(arch=arch, dataset_info=data.info, recipe=recipe)
            gen = torch.Generator().manual_seed(seed)
            loader = DataLoader(
                TensorDataset(images, labels),
                batch_size=recipe.batch_size,
                shuffle=True,
                generator=gen,
                drop_last=False,
            )
            ckpt = PTMCheckpoint(epochs=sorted(set(epochs)), pool_root=pool_root, seed=seed, source=source)
            ckpt.data_info = data
            bar = [PoolProgressBar(label)] if shows_progress(trainer) else []
            nested = Trainer(
                accelerator="gpu" if device.type == "cuda" else "cpu",
                devices=[device.index or 0] if device.type == "cuda" else 1,
                precision=self.precision or trainer.precision,
                max_epochs=max_epochs,
                callbacks=[ckpt, *bar],
                logger=False,
                enable_checkpointing=False,
                limit_train_batches=1 if trainer.fast_dev_run else None,
                limit_val_batches=0,
                enable_model_summary=False,
                enable_progress_bar=bool(bar),
                num_sanity_val_steps=0,
            )
            nested.fit(model, train_dataloaders=loader)


@contextmanager
def _pool_lock(path: Path, member: str) -> Iterator[None]:
    """Hold the pretraining lock of one pool member, saying so when another run holds it."""
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        rank_zero_info(f"[ptmdd] PTM {member}: another run is pretraining it; waiting for it ({path})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _remove_throwaway(callback: Callback) -> None:
    """Remove the ``ptmdd_fast_dev_run_pool_*`` folder that ``callback`` made (on the rank that made it), if any."""
    folder = getattr(callback, "_throwaway", None)
    callback._throwaway = None  # type: ignore[attr-defined]
    if folder and Path(folder).name.startswith("ptmdd_fast_dev_run_pool_"):
        shutil.rmtree(folder, ignore_errors=True)
