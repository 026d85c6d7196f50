"""DistillerBase: what every distillation algorithm shares.

DistillerBase: what every distillation algorithm shares (synthetic set, PTM pool, CLoM/CCLoM guidance, seeding,
checkpoints, export). The algorithms are its subclasses, one per class: :class:`~ptmdd_lightning.modules.dm.DMDistiller`
and :class:`~ptmdd_lightning.modules.gradient_matching.GradientMatchingDistiller` (DC and DSA).

Sources:
- DC: Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021 (Alg. 1).
- DSA: Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021 (Eq. 5).
- DM: Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023 (Eq. 4).
- CLoM/CCLoM: Lu et al., "Can pre-trained models assist in dataset distillation?", 2023 (Eq. 2, 3).
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any, Literal

import torch
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from ptmdd_lightning.core.augment import dsa_augment, dsa_strategy_for, siamese_augment
from ptmdd_lightning.core.guidance import (
    PTMGroup,
    PTMMember,
    PTMPool,
    PTMRecipe,
    cclom,
    clom,
    pool_key,
    ptm_feature_table,
)
from ptmdd_lightning.core.synthetic import SyntheticSet
from ptmdd_lightning.data.datasets import DatasetInfo, as_dataset_info
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.machine import attempt_record, machine_record
from ptmdd_lightning.nets import build_net, reinit_
from ptmdd_lightning.nets.forward import BackendName, NetForward, net_forward, resolve_backend
from ptmdd_lightning.reporting import record_machine, set_plain_hparam
from ptmdd_lightning.seeding import mix_seed, run_seed

#: Learning rates of the synthetic images in the reference code: DC/DSA 0.1, DM 1.0 (both SGD, momentum 0.5).
DEFAULT_LR_IMG = {"dc": 0.1, "dsa": 0.1, "dm": 1.0}


class DistillerBase(LightningModule):
    """Optimise ``K * IPC`` synthetic images against a base DD objective plus frozen-PTM guidance.

    One training step takes a class-balanced real batch ``(K * batch_real, C, H, W)`` (from
    :class:`ptmdd_lightning.data.DistillDataModule`) and:

    1. reseeds the RNG from ``(seed, rank, step)`` so every step is reproducible and a resumed run continues exactly;
    2. augments real and synthetic images with DSA, one parameter set per class shared by both (DSA and DM);
    3. computes the base loss of the subclass (:meth:`base_loss`): DM (embedding means of a freshly initialised
       ``net_arch``) or DC/DSA (per-class gradient matching);
    4. adds ``sum alpha * CLoM`` / ``alpha * CCLoM`` of the PTM member(s) drawn for this step;
    5. backpropagates into the synthetic images only (SGD, momentum 0.5). PTMs are frozen and in eval mode.

    Not instantiated itself: a config names a subclass (``class_path: ptmdd_lightning.modules.DMDistiller`` or
    ``...GradientMatchingDistiller``); ``ptmdd_lightning.modules.Distiller`` with ``method`` still selects one.

    Args:
        dataset_info: the real data's :class:`~ptmdd_lightning.data.DatasetInfo` (name, K, C, ``(H, W)``,
            mean/std, class names, class subset), linked from the DataModule's ``info``; never set it in YAML.
            ``None``: Fashion-MNIST (the registry's entry). A dict (a checkpoint's hyper-parameters) is accepted.
        ipc: images per class (>= 1).
        dsa_strategy: DSA strategy (DSA and DM; DC never augments); ``None`` = the DSA default (without ``flip``
            for digits); ``"none"`` turns augmentation off.
        init: ``"real"`` (random real images per class) or ``"noise"`` (standard normal).
        lr_img: learning rate of the images; ``None`` = the subclass's reference default (DC/DSA 0.1, DM 1.0).
        momentum_img: SGD momentum of the images (0.5 in DC/DSA/DM).
        net_arch: the randomly initialised net of the base objective (``ConvNet`` = ConvNet-3).
        ptms: the PTM pool, one :class:`PTMGroup` per architecture (alpha, N_m, epoch, loss, source).
        ptm_sampling: ``"random"`` (one member per step, as the paper) or ``"all"`` (every member, weight
            alpha/|pool|).
        pool_root: the pool folder.
        ptm_recipe: how the pool's members are pretrained (:class:`PTMRecipe`; ``None``: the authors' 150-epoch
            recipe). One recipe per pool: members of another recipe are refused (use another ``pool_root``).
        cclom_real: where CCLoM's real batch comes from. ``"uniform"`` (default, the authors'): ``cclom_batch_size``
            images drawn uniformly with replacement from the whole training set, independently of the base
            objective's batch (DDInterpreter 19a4767 ``utils_clom/CLoM.py``, ``CCLoM.__get_images_randomly``:
            ``np.random.randint(0, len, size=B)``). ``"batch"`` (ptmdd's earlier default): the first
            ``cclom_batch_real`` images per class of the step's class-balanced real batch.
        cclom_batch_size: B of ``cclom_real: uniform`` (>= 1); the authors' README command uses 8196.
        cclom_batch_real: real images per class of ``cclom_real: batch`` (>= 1, <= data.batch_real).
        cclom_feature_table: CCLoM's real features of ``cclom_real: uniform`` with ``guidance_view: raw`` from a
            table of each member's features of the whole training set (:func:`ptmdd_lightning.core.guidance.
            ptm_feature_table`, made at the member's first CCLoM step, in that step's precision, and gathered by
            the step's drawn indices after that) instead of embedding the ``cclom_batch_size`` drawn images at
            every step as the authors' code does. The same draws and the same loss up to floating-point rounding
            (a frozen PTM's features of a raw image never change); ``false``: the authors' per-step embedding.
            Other ``cclom_real``/``guidance_view`` settings always embed per step (augmented images change every
            step, ``batch`` images are the step's). Memory: N_train x D per member used (61 MB for ConvNetW32 on
            Fashion-MNIST in bf16); time: docs/speed.md ("CCLoM's real features").
        guidance_view: what the PTMs see. ``"raw"`` (default, the authors': ``our_loss.calculate_loss(image_syn,
            label_syn)`` on the un-augmented images, DDInterpreter 19a4767 ``methods/DC_DSA_DM/main_DM.py`` line 248
            and ``main.py``) or ``"augmented"`` (the step's DSA view of the synthetic images; CCLoM's real images
            are then augmented too: the siamese view of the step's batch for ``cclom_real: batch``, their own DSA
            draw for ``uniform``, so that real and synthetic features always come from the same view).
        base_weight: the weight of the base objective in ``L = base_weight * L_DD + alpha * L_CLoM/CCLoM``
            (float >= 0, default 1.0: the paper's Eq. 2-3). ``0`` is guidance alone (the reviewers' "CLoM alone,
            without the base objective", issue 14 section 3): the base objective is then not computed at all (no
            random net; DC/DSA skip the inner loop too) and needs ``ptms``. Not in the paper or the authors' code,
            where the weight is always 1.
        channels_last: run the nets in channels_last. Off by default: ConvNet-3's instance norm in channels_last +
            bf16 made a CPU DM step slower (docs/speed.md, lever 5).
        backend: how the distillation nets run (:mod:`ptmdd_lightning.nets.forward`): ``"auto"`` (default: on a
            CPU, ConvNet-3 through ptmdd's C++ kernels and a compiled formulation where they apply; the module
            elsewhere), ``"eager"`` (the module itself: the reference), ``"cpu_kernels"``, ``"compile"``.
            ``PTMDD_BACKEND`` overrides it; ``results.json`` records what ran (``machine.backend``).

    Raises:
        PtmddError: bad settings (ipc < 1, alpha < 0, cclom_batch_real < 1, base_weight < 0 or 0 without ptms,
            unknown arch, ...), at construction time, i.e. when the CLI instantiates the config.
    """

    def __init__(
        self,
        dataset_info: DatasetInfo | None = None,
        ipc: int = 10,
        dsa_strategy: str | None = None,
        init: Literal["real", "noise"] = "real",
        lr_img: float | None = None,
        momentum_img: float = 0.5,
        net_arch: str = "ConvNet",
        ptms: list[PTMGroup] | None = None,
        ptm_sampling: Literal["random", "all"] = "random",
        pool_root: str = "ptm_pool",
        ptm_recipe: PTMRecipe | None = None,
        cclom_real: Literal["uniform", "batch"] = "uniform",
        cclom_batch_size: int = 8196,
        cclom_batch_real: int = 32,
        cclom_feature_table: bool = True,
        guidance_view: Literal["augmented", "raw"] = "raw",
        base_weight: float = 1.0,
        channels_last: bool = False,
        backend: BackendName = "auto",
    ) -> None:
        super().__init__()

        resolve_backend(backend)  # an unknown name fails here, before anything runs
        info = self.dataset_info = as_dataset_info(dataset_info)
        num_classes, channels, image_size = info.num_classes, info.channels, info.image_size
        if init not in ("real", "noise"):
            raise PtmddError(f"unknown init {init!r}; choose 'real' or 'noise'.")
        if ptm_sampling not in ("random", "all"):
            raise PtmddError(f"unknown ptm_sampling {ptm_sampling!r}; choose 'random' or 'all'.")
        if cclom_batch_real < 1 or cclom_batch_size < 1:
            raise PtmddError(
                f"cclom_batch_real and cclom_batch_size must be >= 1 (CCLoM needs a real batch), got "
                f"{cclom_batch_real} and {cclom_batch_size}."
            )
        if cclom_real not in ("uniform", "batch"):
            raise PtmddError(f"unknown cclom_real {cclom_real!r}; choose 'uniform' (the authors') or 'batch'.")
        if guidance_view not in ("raw", "augmented"):
            raise PtmddError(f"unknown guidance_view {guidance_view!r}; choose 'raw' (the authors') or 'augmented'.")
        if not base_weight >= 0:
            raise PtmddError(f"base_weight must be >= 0 (0: the PTM guidance alone), got {base_weight}.")
        if base_weight == 0 and not ptms:
            raise PtmddError(
                "base_weight 0 turns the base objective off, and no ptms are given: nothing would be optimised; "
                "add ptms (CLoM/CCLoM alone) or set base_weight > 0."
            )
        if lr_img is not None and lr_img <= 0:
            raise PtmddError(f"lr_img must be > 0, got {lr_img}.")
        ptms = [PTMGroup(**g) if isinstance(g, dict) else g for g in (ptms or [])]
        if isinstance(ptm_recipe, dict):
            ptm_recipe = PTMRecipe(**ptm_recipe)
        self.ptm_recipe = ptm_recipe if ptm_recipe is not None else PTMRecipe()
        self.ptm_recipe.validate()
        target = pool_key(info.name, info.classes)
        for group in ptms:
            group.validate()
            if group.epoch > self.ptm_recipe.epochs:
                raise PtmddError(
                    f"PTM group {group.arch} asks for epoch {group.epoch}, beyond the "
                    f"{self.ptm_recipe.epochs} epochs of ptm_recipe {self.ptm_recipe.name!r}; lower "
                    "the epoch or use a longer recipe."
                )
            build_net(group.arch, channels, num_classes, tuple(image_size))  # unknown arch -> PtmddError now
            if group.loss == "clom" and group.source not in (None, target):
                raise PtmddError(
                    f"CLoM needs PTMs of the target label space ({target}), but the {group.arch} group uses source "
                    f"{group.source}; use loss: cclom for PTMs of another dataset or class split."
                )
        build_net(net_arch, channels, num_classes, tuple(image_size))
        self.save_hyperparameters()
        set_plain_hparam(self, "dataset_info", info)  # plain values in hparams.yaml, checkpoints
        self.synthetic = SyntheticSet(num_classes, ipc, channels, tuple(image_size))
        if dsa_strategy is None:  # the DSA readme's strategy; digits drop flip (a flipped digit is another digit)
            dsa_strategy = dsa_strategy_for(info.name.split("-")[0])
        self.dsa_strategy = None if dsa_strategy.lower() == "none" else dsa_strategy
        self.lr_img = DEFAULT_LR_IMG[self.method] if lr_img is None else lr_img
        self.ptm_groups = ptms
        self.base_weight = float(base_weight)
        # Unregistered on purpose: the random net and the frozen pool are not part of the learnable state, must not be
        # seen by DDP as parameters, and do not bloat checkpoints. They live on self.device (see _place).
        self._aux: dict[str, Any] = {"net": None, "pool": None, "net_index": -1, "net_opt": None, "cclom_tables": {}}
        self._seed = 0
        #: the run's attempts (its start and every resume), kept in its checkpoints: see :attr:`attempts`
        self._attempts: list[dict[str, Any]] = []
        self._restored_step = 0

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        """Initialise the synthetic images (real or noise, seeded) and load the PTM pool on every rank."""
        self._seed = run_seed()
        if stage == "fit":
            gen = torch.Generator().manual_seed(mix_seed(self._seed, 0xD1))
            if self.hparams.init == "real":
                dm = self.trainer.datamodule if self.trainer is not None else None
                if dm is None or not hasattr(dm, "sample_real"):
                    raise PtmddError(
                        "init: real needs a DistillDataModule (data.class_path: "
                        "ptmdd_lightning.data.DistillDataModule)."
                    )
                self.synthetic.init_real(dm.sample_real, gen)
            else:
                self.synthetic.init_noise(gen)
        if self.ptm_groups and self._aux["pool"] is None:
            dm = self.trainer.datamodule if self._trainer is not None else None
            info = self.dataset_info
            self._aux["cclom_tables"] = {}  # a new pool: no member has a feature table yet
            self._aux["pool"] = PTMPool(
                self.ptm_groups,
                self.hparams.pool_root,
                pool_key(info.name, info.classes),
                info.num_classes,
                info.mean,
                info.std,
                channels=info.channels,
                image_size=info.image_size,
                data_root=getattr(dm, "root", None),
                recipe=self.ptm_recipe,
            )

    @property
    def pool(self) -> PTMPool | None:
        """The frozen PTM pool (``None`` without guidance)."""
        return self._aux["pool"]

    def _place(self, module: nn.Module) -> nn.Module:
        mf = torch.channels_last if self.hparams.channels_last else torch.contiguous_format
        return module.to(device=self.device, memory_format=mf)

    def _view(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def _fresh_net(self, seed: int, trainable: bool) -> nn.Module:
        """The base objective's net, re-initialised in place from ``seed`` (as DC/DM sample a new net)."""
        net = self._aux["net"]
        if net is None:
            info = self.dataset_info
            net = self._place(build_net(self.hparams.net_arch, info.channels, info.num_classes, info.image_size))
            self._aux["net"] = net
        gen = torch.Generator(device=self.device).manual_seed(seed)
        reinit_(net, generator=gen)
        for p in net.parameters():
            p.requires_grad_(trainable)
        net.train()
        self._fast(net)
        return net

    def _fast(self, net: nn.Module) -> NetForward:
        """The forward of ``net`` through the run's ``backend``, cached per net object.

        The forward of ``net`` through the run's ``backend`` (:func:`ptmdd_lightning.nets.forward.net_forward`),
        kept while ``net`` is the same object (it is re-initialised in place).
        """
        fast = self._aux.get("fast")
        if fast is None or fast.net is not net:
            trainer = self._trainer
            steps = None
            if trainer is not None:
                steps = 1 if trainer.fast_dev_run else (trainer.max_steps if trainer.max_steps > 0 else None)
            fast = net_forward(net, self.hparams.get("backend", "auto"), total_steps=steps)
            self._aux["fast"] = fast
        return fast

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.synthetic.images], lr=self.lr_img, momentum=self.hparams.momentum_img)

    # ------------------------------------------------------------------ the step
    def _step_rng(self) -> random.Random:
        seed = mix_seed(self._seed, self.global_rank, self.global_step)
        torch.manual_seed(seed)
        return random.Random(seed)

    @property
    def attempts(self) -> list[dict[str, Any]]:
        """Where the run ran, one entry per attempt (start or resume), oldest first.

        Each entry is :func:`ptmdd_lightning.machine.attempt_record` (``from_step``, ``cpu_kind``, ``cpu``,
        ``threads``, ``precision``, ``commit``, ``started``), appended when ``fit`` starts (``from_step``: the step of
        the checkpoint it resumes from, 0 for a new run; a resume after the last step only evaluates) and carried
        in every checkpoint (``checkpoint["ptmdd_attempts"]``). A run resumed from a checkpoint that has no such
        list (a ptmdd before 2026-12-04) starts with ``{"from_step": 0, "cpu_kind": None}``: unknown. The final
        evaluation writes the list into ``results.json`` as ``machine["attempts"]``, so a run that crossed CPU kinds
        says so. Never raises.
        """
        return [dict(a) for a in self._attempts]

    @property
    def method(self) -> str:
        """The base objective: ``"dm"``, ``"dc"`` or ``"dsa"`` (set by the subclass)."""
        raise NotImplementedError

    def base_loss(self, real_raw: Tensor, real: Tensor, real_labels: Tensor, syn: Tensor, syn_labels: Tensor) -> Tensor:
        """The base objective of this step (a scalar), to be defined by the subclass.

        Args:
            real_raw: the step's real batch ``(K * batch_real, C, H, W)`` before augmentation.
            real, syn: the real and synthetic images in the step's (DSA) view, ``(N, C, H, W)``.
            real_labels, syn_labels: ``(N,)`` int64 labels, class-sorted.
        """
        raise NotImplementedError

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.objective(batch)

    def objective(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The step's loss ``base_weight * base_loss + guidance``, each term logged; refuses a non-finite loss.

        With ``base_weight == 0`` the base objective is not computed (nor logged): the loss is the guidance alone.
        """
        real, real_labels = batch
        rng = self._step_rng()
        syn, syn_labels = self.synthetic.images, self.synthetic.labels
        if self.dsa_strategy is not None:
            real_v, syn_v = siamese_augment(real, real_labels, syn, syn_labels, self.dsa_strategy)
        else:
            real_v, syn_v = real, syn
        real_v, syn_v = self._view(real_v), self._view(syn_v)

        if self.base_weight > 0:
            base = self.base_loss(real, real_v, real_labels, syn_v, syn_labels)
            self.log(f"train/loss_{self.method}", base, prog_bar=True)
            loss = base if self.base_weight == 1.0 else self.base_weight * base
        else:
            loss = syn.new_zeros(())
        augmented = self.hparams.guidance_view == "augmented"
        for name, value in self._guidance(
            real_v if augmented else self._view(real),
            real_labels,
            syn_v if augmented else self._view(syn),
            syn_labels,
            rng,
        ).items():
            self.log(f"train/loss_{name}", value, prog_bar=True)
            loss = loss + value
        self.log("train/loss", loss)
        if not torch.isfinite(loss):
            self._stop_non_finite(f"the loss is {loss.item()}")
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop before an update with a non-finite gradient of the synthetic images (they would turn NaN/inf)."""
        grad = self.synthetic.images.grad
        if grad is not None and not torch.isfinite(grad).all():
            self._stop_non_finite("the gradient of the synthetic images is not finite")

    def _stop_non_finite(self, what: str) -> None:
        """Raise the :class:`PtmddError` of a diverged run, before the step that would write non-finite images.

        The checkpoints written so far hold finite images; ``ModelCheckpoint(save_on_exception=True)`` saves the
        current (finite) state once more.
        """
        alphas = ", ".join(f"{g.arch}: {g.alpha}" for g in self.ptm_groups) or "no PTM guidance"
        raise PtmddError(
            f"distillation diverged at step {self.global_step}: {what}. The synthetic images were not updated with "
            f"it, and the checkpoints so far hold finite images. Lower lr_img (now {self.lr_img}) or the PTM alpha "
            f"({alphas}), then start again (or resume with --ckpt_path last and the smaller value)."
        )

    def _guidance(
        self, real: Tensor, real_labels: Tensor, syn: Tensor, syn_labels: Tensor, rng: random.Random
    ) -> dict[str, Tensor]:
        """alpha-weighted CLoM / CCLoM of the PTMs picked for this step (Lu et al. 2023, Eq. 2-3)."""
        pool = self.pool
        if pool is None or not len(pool):
            return {}
        if next(pool.parameters()).device != self.device:
            self._place(pool)
        terms: dict[str, Tensor] = {}
        for member, weight in pool.pick(self.hparams.ptm_sampling, rng):
            if member.loss == "clom":
                value = clom(member.net(member.adapt(syn)), syn_labels)
            else:
                feat_real, labels_c = self._cclom_real_features(member, real, real_labels, rng)
                value = cclom(feat_real, labels_c, member.net.embed(member.adapt(syn)), syn_labels)
            terms[member.loss] = terms.get(member.loss, 0.0) + weight * value
        return terms

    def _cclom_real_features(
        self, member: PTMMember, real: Tensor, real_labels: Tensor, rng: random.Random
    ) -> tuple[Tensor, Tensor]:
        """CCLoM's real side for ``member``: features ``(B, D)`` (no gradient) and labels ``(B,)``.

        From the member's feature table where it is exact (``cclom_feature_table`` with ``cclom_real: uniform`` and
        ``guidance_view: raw``), else by embedding :meth:`_cclom_real`'s images; both consume ``rng`` alike, so the
        draws of a run do not depend on the choice.
        """
        hp = self.hparams
        if hp.cclom_feature_table and hp.cclom_real == "uniform" and hp.guidance_view == "raw":
            dm, idx, _ = self._uniform_draw(rng)
            tables = self._aux["cclom_tables"]  # emptied whenever a pool is loaded
            table = tables.get(id(member))
            if table is None or table.device != self.device:
                start = time.perf_counter()
                table = tables[id(member)] = ptm_feature_table(member, dm.train_images, hp.cclom_batch_size, self._view)
                meta, dtype = member.meta, str(table.dtype).removeprefix("torch.")
                rank_zero_info(
                    f"[ptmdd] CCLoM feature table of PTM {meta.get('arch')} seed {meta.get('seed')} epoch "
                    f"{meta.get('epoch')}: {table.shape[0]} x {table.shape[1]} {dtype} "
                    f"({table.numel() * table.element_size() / 2**20:.0f} MB) in {time.perf_counter() - start:.1f} s "
                    "(cclom_feature_table: false embeds the drawn real images every step instead)"
                )
            labels = dm.train_labels.index_select(0, idx).to(self.device, non_blocking=True)
            return table.index_select(0, idx.to(table.device)), labels
        real_c, labels_c = self._cclom_real(real, real_labels, rng)
        with torch.no_grad():
            return member.net.embed(self._view(member.adapt(real_c))), labels_c

    def _uniform_draw(self, rng: random.Random) -> tuple[Any, Tensor, torch.Generator]:
        """``cclom_real: uniform``'s draw: the DataModule, ``(cclom_batch_size,)`` int64 indices and their generator.

        Uniform with replacement over the DataModule's ``train_images``, from a generator seeded by the step's ``rng``
        (reproducible, resumable); the one place that draws, so that both CCLoM paths consume ``rng`` alike.
        """
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or getattr(dm, "train_images", None) is None:
            raise PtmddError(
                "cclom_real: uniform draws from the whole training set and needs a DistillDataModule; "
                "use cclom_real: batch without one."
            )
        gen = torch.Generator().manual_seed(rng.getrandbits(63))
        idx = torch.randint(0, dm.train_images.shape[0], (self.hparams.cclom_batch_size,), generator=gen)
        return dm, idx, gen

    def _cclom_real(self, real: Tensor, real_labels: Tensor, rng: random.Random) -> tuple[Tensor, Tensor]:
        """CCLoM's real batch ``((B, C, H, W), (B,))`` in the guidance view (see ``cclom_real``).

        ``real``/``real_labels``: the step's class-balanced batch ``(K * batch_real, ...)``, already in the guidance
        view. ``uniform`` draws its indices from a generator seeded by the step's ``rng`` (reproducible, resumable).
        """
        hp = self.hparams
        if hp.cclom_real == "batch":
            k, n = self.dataset_info.num_classes, hp.cclom_batch_real
            per_class = real.view(k, -1, *real.shape[1:])
            if per_class.shape[1] < n:
                raise PtmddError(f"cclom_batch_real={n} exceeds data.batch_real={per_class.shape[1]}; lower it.")
            return per_class[:, :n].flatten(0, 1), real_labels.view(k, -1)[:, :n].flatten()
        dm, idx, gen = self._uniform_draw(rng)
        images = dm.train_images.index_select(0, idx).to(self.device, non_blocking=True)
        labels = dm.train_labels.index_select(0, idx).to(self.device, non_blocking=True)
        if hp.guidance_view == "augmented" and self.dsa_strategy is not None:
            images = dsa_augment(images, self.dsa_strategy, siamese=False, generator=gen)
        return self._view(images), labels

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Make a checkpoint that a resumed run continues bit for bit (subclasses add their own state).

        ``hyper_parameters["ptms"]`` are stored as plain dicts: LightningCLI re-reads a checkpoint's
        hyper-parameters with ``torch.load(weights_only=True)``, which refuses :class:`PTMGroup` objects.
        """
        checkpoint["ptmdd_attempts"] = self.attempts
        hp = checkpoint.get("hyper_parameters")
        if hp is not None and hp.get("ptms"):
            checkpoint["hyper_parameters"] = {
                **hp,
                "ptms": [dataclasses.asdict(g) if dataclasses.is_dataclass(g) else dict(g) for g in hp["ptms"]],
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the checkpoint's synthetic set fits this model; take over its :attr:`attempts`.

        Raises:
            PtmddError: the checkpoint's synthetic images have another shape ``(K * IPC, C, H, W)``.
        """
        images = checkpoint.get("state_dict", {}).get("synthetic.images")
        if images is not None and tuple(images.shape) != tuple(self.synthetic.images.shape):
            hp = checkpoint.get("hyper_parameters", {})
            name = (hp.get("dataset_info") or {}).get("name", hp.get("dataset_name"))
            raise PtmddError(
                f"the checkpoint holds {tuple(images.shape)} synthetic images (dataset "
                f"{name}, ipc {hp.get('ipc')}) but this run makes "
                f"{tuple(self.synthetic.images.shape)} (dataset {self.dataset_info.name}, ipc "
                f"{self.hparams.ipc}); resume with the config of that run, or start a new run without "
                "--ckpt_path."
            )
        self._attempts = [dict(a) for a in checkpoint.get("ptmdd_attempts") or []]
        self._restored_step = int(checkpoint.get("global_step") or 0)
        if "ptmdd_attempts" not in checkpoint and self._restored_step > 0:
            self._attempts = [{"from_step": 0, "cpu_kind": None}]  # a checkpoint of a ptmdd that kept no attempts

    def on_fit_start(self) -> None:
        """Record this attempt in :attr:`attempts`; place the PTM pool on this device."""
        self._attempts.append(attempt_record(self._restored_step, self.device, str(self.trainer.precision)))
        if self.pool is not None:
            self._place(self.pool)

    def on_train_end(self) -> None:
        """Record the machine and the speed paths that ran.

        :func:`ptmdd_lightning.machine.machine_record` goes to the logger's hyper-parameters and to the run folder's
        ``hparams.yaml`` (:func:`ptmdd_lightning.reporting.record_machine`); ``results.json`` carries the same record.
        """
        record_machine(self.trainer, machine_record(self.device, str(self.trainer.precision)))

    # ------------------------------------------------------------------ export
    def export(self) -> dict[str, Any]:
        """The synthetic set and its metadata.

        The synthetic set and its metadata (see :meth:`SyntheticSet.export`); ``config`` holds the
        hyper-parameters and ``method``.
        """
        info = self.dataset_info
        return self.synthetic.export(
            info.mean, info.std, info.name, info.class_names, config={**dict(self.hparams), "method": self.method}
        )
