"""SyntheticSetEvaluator: evaluate an exported synthetic set on its own (``ptmdd test`` / ``ptmdd validate``).

    ptmdd test --config configs/evaluate.yaml \
        --model.init_args.path lightning_logs/<run>/version_0/synthetic_set.pt

The protocol is the one of :class:`ptmdd_lightning.callbacks.SyntheticSetEvaluation` (the DC/DSA/DM reference
``evaluate_synset``, VICO-UoE/DatasetCondensation ``utils.py``): ``num_models`` freshly initialised nets of
every architecture in ``archs`` are trained on the synthetic set (SGD lr 0.01, momentum 0.9, weight decay
5e-4, batch 256, lr x 0.1 at half the epochs, DSA with one random op per batch) and tested on the DataModule's
real test set after the last epoch; a random real subset with the same IPC is evaluated under the identical
protocol as the baseline. The result is the cross-architecture table of Lu et al. (2023, Sec. 4.5), written as
``results.{md,csv,json}``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

from ptmdd_lightning.core.evaluate import EvalProtocol, as_eval_protocol, random_real_subset, train_and_test
from ptmdd_lightning.core.guidance import PTMRecipe
from ptmdd_lightning.core.soft_labels import Teacher, TeacherSpec, as_teacher_specs, build_teacher, check_real_hard_acc
from ptmdd_lightning.core.synthetic import load_synthetic_set
from ptmdd_lightning.data.datasets import DatasetInfo, as_dataset_info
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.machine import auto_precision, machine_record
from ptmdd_lightning.nets import build_net
from ptmdd_lightning.progress import EvaluationProgress
from ptmdd_lightning.reporting import (
    attach_scores,
    evaluation_labels,
    format_table,
    result_row,
    run_dir,
    set_plain_hparam,
    write_results,
)
from ptmdd_lightning.seeding import baseline_draw_seed, check_baseline_draw, run_seed

#: The architectures of the DD cross-architecture tables (DC/DSA/DM papers, Lu et al. 2023 Table 6).
DEFAULT_ARCHS = ("ConvNet", "AlexNet", "VGG11", "ResNet18")


def check_export(
    blob: dict[str, Any],
    path: str | Path,
    info: DatasetInfo,
) -> None:
    """Raise :class:`PtmddError` unless an exported synthetic set fits the DataModule it is evaluated on.

    Args:
        blob: the dict of :func:`ptmdd_lightning.core.synthetic.load_synthetic_set` (``images`` float32
            ``(N, C, H, W)``, ``labels`` int64 ``(N,)``, ``dataset``, ``mean``, ``std``, ``num_classes`` and
            ``config``, the Distiller's hyper-parameters, which hold the class subset: ``dataset_info.classes``,
            or ``classes`` in exports of ptmdd versions before :class:`~ptmdd_lightning.data.DatasetInfo`).
        path: the file (named in the messages).
        info: the DataModule's dataset, K, C, ``(H, W)``, normalisation and class subset (``info.classes``,
            ``None``: all classes).

    Raises:
        PtmddError: another dataset, K, C, H, W, class subset or normalisation; the message names the setting
            to change (``data.init_args.dataset`` / ``data.init_args.classes``).
    """
    dataset_name, num_classes, channels = info.name, info.num_classes, info.channels
    image_size, mean, std, classes = info.image_size, info.mean, info.std, info.classes
    images, labels = blob["images"], blob["labels"]
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise PtmddError(f"{path}: 'images' must be a (N, C, H, W) tensor; re-export the synthetic set.")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise PtmddError(f"{path}: 'labels' must be a (N,) tensor with one label per image; re-export it.")
    if str(blob["dataset"]) != dataset_name:
        raise PtmddError(
            f"{path} was distilled from {blob['dataset']!r} but the DataModule loads {dataset_name!r}; "
            f"set --data.init_args.dataset {blob['dataset']}."
        )
    config = blob.get("config") or {}
    config = config if isinstance(config, dict) else {}
    export_classes = (config.get("dataset_info") or {}).get("classes", config.get("classes"))
    export_classes = [int(c) for c in export_classes] if export_classes else None
    if export_classes != (list(classes) if classes else None):
        fix = (
            f"--data.init_args.classes '{export_classes}'"
            if export_classes
            else "--data.init_args.classes null (all classes)"
        )
        raise PtmddError(
            f"{path} was distilled on the class subset {export_classes} but the DataModule uses "
            f"{list(classes) if classes else None}; set {fix}."
        )
    k = int(blob.get("num_classes") or int(labels.max()) + 1)
    if k != num_classes:
        raise PtmddError(
            f"{path} has {k} classes but the DataModule has {num_classes}; evaluate it on the dataset "
            "and class subset it was distilled from."
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise PtmddError(
            f"{path} holds labels {int(labels.min())}..{int(labels.max())}, outside 0..{num_classes - 1}: labels "
            "must be class indices in [0, num_classes), the order of the DataModule's classes (a class subset is "
            "re-indexed from 0); re-export the synthetic set, or relabel it."
        )
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).sum())
        raise PtmddError(
            f"{path} holds {bad} non-finite pixel values (NaN/inf) in its images: its distillation diverged. "
            "Distil again with a lower lr_img or alpha; an evaluation of it would be meaningless."
        )
    c, h, w = (int(s) for s in images.shape[1:])
    if c != channels or (h, w) != tuple(image_size):
        raise PtmddError(
            f"{path} holds images of {c}x{h}x{w} but the DataModule gives {channels}x{image_size[0]}x"
            f"{image_size[1]}; evaluate it on the dataset it was distilled from."
        )
    for what, got, want in (("mean", blob["mean"], mean), ("std", blob["std"], std)):
        if len(got) != len(want) or any(
            not math.isclose(float(a), float(b), abs_tol=1e-6) for a, b in zip(got, want, strict=False)
        ):
            raise PtmddError(
                f"{path} was normalised with {what} {tuple(got)} but the DataModule uses {tuple(want)}; "
                "evaluate it with the DataModule of the dataset it was distilled from."
            )


class SyntheticSetEvaluator(LightningModule):
    """Evaluate an exported ``synthetic_set.pt`` on a DataModule's real test set (no distillation).

    ``ptmdd test`` (or ``ptmdd validate``) with this model: :meth:`setup` loads the export and checks that it
    fits the DataModule (dataset, class subset, K, C, H, W, normalisation); at the end of the test
    (validation) epoch, on global rank 0, ``num_models`` fresh nets of every architecture are trained on the
    synthetic images and tested on ``datamodule.test_images``; a random real subset with the export's IPC is
    evaluated alike (``baseline``). The test loop's own batches are not used for anything (the evaluation
    reads the DataModule's in-memory test set).

    Logged (fractions in ``[0, 1]``, under the stage prefix ``test`` or ``val``): ``<stage>/<arch>/acc``,
    ``<stage>/<arch>/acc_std``, ``<stage>/<arch>/baseline_acc`` and ``<stage>/<arch>/gain``. Written: the
    Markdown / CSV / JSON table ``<output_dir>/<stem>.{md,csv,json}`` (rows ``step, arch, set, mean, std, n,
    accs, seconds`` with ``set`` in ``synthetic`` / ``random_real``), printed as well. ``fast_dev_run``
    shrinks the protocol to one model and one epoch per architecture, as the callback does.

    Args:
        path: the exported synthetic set (``synthetic_set.pt`` of
            :class:`ptmdd_lightning.callbacks.SyntheticSetExport`).
        archs: evaluation architectures (``build_net`` names); default ConvNet, AlexNet, VGG11, ResNet18.
        num_models: freshly initialised models per architecture (>= 1).
        protocol: the evaluation training (:class:`ptmdd_lightning.core.evaluate.EvalProtocol`: ``epochs``,
            ``lr``, ``momentum``, ``weight_decay``, ``batch_size``, ``lr_decay_at``, ``dsa_strategy``,
            ``precision``, ``backend``, ...; in YAML ``protocol: {epochs: 300}``); ``None``: its defaults (the
            DC/DSA/DM ``evaluate_synset``: 1000 epochs with DSA, precision ``auto``). The same settings as the
            :class:`~ptmdd_lightning.callbacks.SyntheticSetEvaluation` callback give the same numbers. The
            precision and backend that ran are recorded in ``results.json`` (``machine``).
        mode: ``"auto"``, ``"vmap"`` or ``"loop"`` (see :func:`ptmdd_lightning.core.evaluate.train_models`).
        baseline: also evaluate a random real subset with the same IPC.
        eval_seed: evaluation seed (model inits, shuffles, augmentation; the baseline subset is drawn as the
            callback draws it with its ``seed``, so both give the same numbers). Named apart from the DataModule's
            ``seed`` and ``batch_size``, which Lightning's logger merges with these hparams.
        baseline_draw: the random real subset's draw, as the callback's (``"evaluation"``: from ``eval_seed``
            alone; ``"run"``: from this run's ``seed_everything`` too,
            :func:`ptmdd_lightning.seeding.baseline_draw_seed`; give ``--seed_everything`` the distillation run's
            seed to evaluate the subset that its own evaluation drew).
        output_dir: where to write the table; ``None`` = the run's log folder
            (``lightning_logs/evaluate/version_N``).
        stem: base name of the table files.
        dataset_info: the real data's :class:`~ptmdd_lightning.data.DatasetInfo`, linked from the DataModule's
            ``info`` by the CLI; never set it in YAML (``None``: Fashion-MNIST; a dict of its fields is accepted).
        teachers: soft-label evaluation, a list of :class:`~ptmdd_lightning.core.soft_labels.TeacherSpec`
            (``ptms``, the teaching PTM pool groups, and ``temperature``; in YAML ``teachers: [{ptms: [{arch:
            ConvNet, epoch: 10}], temperature: 4}]``). Every set is evaluated with hard labels and then with each
            teacher's soft labels (``T^2 * KL`` on every augmented batch), the random real subset with the same
            teacher; rows carry ``labels: hard | soft`` and ``teacher``. ``None`` (default): hard labels only.
        pool_root: the PTM pool folder of the teacher's members.
        ptm_recipe: the recipe of the teacher's members (``None``: the authors').
        real_hard_acc: ``Acc(real, hard)``, the accuracy (fraction) of the first arch trained on the whole
            training set under this protocol, for DD-Ranking's HLR/LRS (``None``: no robust scores).
        real_hard_source: where ``real_hard_acc`` comes from (a run folder, a paper table), recorded in the rows.
        no_aug: also evaluate both sets with hard labels and without augmentation, for DD-Ranking's ARS.

    Raises:
        PtmddError: ``num_models < 1``, no archs, a bad ``protocol``, teacher or ``baseline_draw`` (construction);
            no ``path``, a missing or corrupted file, an export that does not fit the DataModule, or a teacher that
            does not fit the data (:meth:`setup`).
    """

    def __init__(
        self,
        path: str | None = None,
        archs: list[str] | None = None,
        num_models: int = 5,
        protocol: EvalProtocol | None = None,
        mode: Literal["auto", "vmap", "loop"] = "auto",
        baseline: bool = True,
        eval_seed: int = 0,
        output_dir: str | None = None,
        stem: str = "results",
        dataset_info: DatasetInfo | None = None,
        teachers: list[TeacherSpec] | None = None,
        pool_root: str = "ptm_pool",
        ptm_recipe: PTMRecipe | None = None,
        real_hard_acc: float | None = None,
        real_hard_source: str | None = None,
        no_aug: bool = False,
        baseline_draw: Literal["evaluation", "run"] = "evaluation",
    ) -> None:
        super().__init__()
        info = self.dataset_info = as_dataset_info(dataset_info)
        check_baseline_draw(baseline_draw)

        archs = list(archs) if archs is not None else list(DEFAULT_ARCHS)
        if not archs:
            raise PtmddError("SyntheticSetEvaluator needs at least one arch, e.g. archs: [ConvNet, AlexNet].")
        if num_models < 1:
            raise PtmddError(f"evaluation needs num_models >= 1, got {num_models}.")
        for arch in archs:
            build_net(arch, info.channels, info.num_classes, info.image_size)  # unknown arch -> PtmddError now
        self.protocol = as_eval_protocol(protocol)
        specs = as_teacher_specs(teachers)
        if isinstance(ptm_recipe, dict):
            ptm_recipe = PTMRecipe(**ptm_recipe)
        check_real_hard_acc(real_hard_acc)
        self.teacher_specs = specs
        self.ptm_recipe = ptm_recipe
        self.save_hyperparameters(ignore=["protocol", "teachers", "ptm_recipe"])
        set_plain_hparam(self, "protocol", self.protocol)  # plain values in hparams.yaml
        set_plain_hparam(self, "dataset_info", info)
        set_plain_hparam(self, "teachers", specs)
        set_plain_hparam(self, "ptm_recipe", ptm_recipe)
        self.teachers: list[Teacher] = []
        self.archs = archs
        self.export_blob: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        """Load the export (once) and check it against the DataModule's metadata."""
        if self.export_blob is not None:
            return
        hp = self.hparams
        if not hp.path:
            raise PtmddError(
                "SyntheticSetEvaluator needs the exported set: pass --model.init_args.path "
                "lightning_logs/<run>/version_<n>/synthetic_set.pt."
            )
        blob = load_synthetic_set(hp.path)
        check_export(blob, hp.path, self.dataset_info)
        self.export_blob = blob
        dm = self.trainer.datamodule if self._trainer is not None else None
        for spec in self.teacher_specs:
            teacher = build_teacher(
                spec, hp.pool_root, self.dataset_info, recipe=self.ptm_recipe, data_root=getattr(dm, "root", None)
            )
            self.teachers.append(teacher)

    @property
    def ipc(self) -> int:
        """Images per class of the loaded export (for the random-real baseline)."""
        blob = self.export_blob
        if blob is None:
            raise RuntimeError("setup() must run before ipc is known")
        if blob.get("ipc"):
            return int(blob["ipc"])
        return int(torch.bincount(blob["labels"]).max())

    # ------------------------------------------------------------------ the loops (batches are not needed)
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Nothing per batch: the evaluation runs once, in :meth:`on_validation_epoch_end`."""
        return None

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Nothing per batch: the evaluation runs once, in :meth:`on_test_epoch_end`."""
        return None

    @override
    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._evaluate_and_log("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._evaluate_and_log("test")

    # ------------------------------------------------------------------ evaluation
    def _protocol(self):
        if self.trainer.fast_dev_run:
            return dataclasses.replace(self.protocol, epochs=1)
        return self.protocol

    def _eval_precision(self) -> str:
        """The evaluation precision that runs here: ``"auto"`` resolved on this module's device."""
        precision = self._protocol().precision
        return auto_precision(self.device) if precision == "auto" else precision

    def _row(self, arch: str, which: str, accs: Tensor, seconds: float) -> dict[str, Any]:
        return result_row(int(self.export_blob.get("global_step", 0) or 0), arch, which, accs, seconds)

    def evaluate(self) -> list[dict[str, Any]]:
        """Train and test every architecture on the synthetic set and the random-real baseline; return rows.

        Runs with gradients enabled even inside Lightning's ``inference_mode`` evaluation loop.

        Returns:
            One ``{"step", "arch", "set", "mean", "std", "n", "accs", "seconds"}`` row per architecture and
            set (``synthetic`` then ``random_real``); accuracies are fractions in ``[0, 1]``, ``std`` the
            population std.
        """
        dm = self.trainer.datamodule
        if dm is None or getattr(dm, "test_images", None) is None:
            raise PtmddError(
                "SyntheticSetEvaluator needs a RealDataModule (data.class_path: "
                "ptmdd_lightning.data.RealDataModule) with the dataset the set was distilled from."
            )
        hp = self.hparams
        k = self.dataset_info.num_classes
        num_models = 1 if self.trainer.fast_dev_run else int(hp.num_models)
        protocol = self._protocol()
        images = self.export_blob["images"].to(self.device, torch.float32)
        labels = self.export_blob["labels"].to(self.device, torch.int64)
        test_x, test_y = dm.test_images, dm.test_labels
        rows: list[dict[str, Any]] = []
        with torch.inference_mode(False), torch.enable_grad():
            real = None
            if hp.baseline:
                seed = baseline_draw_seed(hp.baseline_draw, int(hp.eval_seed), run_seed())
                gen = torch.Generator().manual_seed(seed)
                real = random_real_subset(dm.train_images, dm.train_labels, self.ipc, k, gen)
            sets = [("synthetic", images, labels)]
            if real is not None:
                sets.append(("random_real", real[0].to(self.device), real[1].to(self.device)))
            # (labels, augment, teacher, its spec, protocol): hard labels always; every teacher's soft labels; the
            # hard labels without augmentation
            variants: list[tuple[str, bool, Teacher | None, TeacherSpec | None, EvalProtocol]] = [
                ("hard", True, None, None, protocol)
            ]
            variants += [
                ("soft", True, t, spec, protocol) for t, spec in zip(self.teachers, self.teacher_specs, strict=True)
            ]
            if hp.no_aug:
                variants.append(("hard", False, None, None, dataclasses.replace(protocol, dsa_strategy=None)))
            for arch in self.archs:
                for labels_kind, augment, teacher, spec, variant_protocol in variants:
                    for which, x, y in sets:
                        what = f"{which} set on {arch}, {labels_kind} labels{'' if augment else ', no augmentation'}"
                        rank_zero_info(
                            f"[ptmdd] evaluating the {what}: {num_models} models x {variant_protocol.epochs} epochs"
                        )
                        start = time.perf_counter()
                        with EvaluationProgress(f"eval {arch} {which}", num_models, self.trainer) as progress:
                            accs = train_and_test(
                                arch,
                                x,
                                y,
                                test_x,
                                test_y,
                                k,
                                num_models,
                                variant_protocol,
                                seed=int(hp.eval_seed),
                                device=self.device,
                                mode=hp.mode,
                                progress=progress,
                                teacher=teacher,
                            )
                        row = self._row(arch, which, accs, time.perf_counter() - start)
                        if len(variants) > 1:
                            row.update(labels=labels_kind, augment=augment)
                            if spec is not None:
                                row["teacher"] = spec.describe()
                        rows.append(row)
        if hp.real_hard_acc is not None:
            attach_scores(rows, float(hp.real_hard_acc), hp.real_hard_source)
        return rows

    def _output_dir(self) -> Path:
        if self.hparams.output_dir:
            folder = Path(self.hparams.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        return run_dir(self.trainer)

    def _evaluate_and_log(self, stage: str) -> None:
        rows = self.evaluate() if self.trainer.is_global_zero else None
        rows = self.trainer.strategy.broadcast(rows, src=0)
        self.rows = rows
        for r in rows:
            if r["set"] == "synthetic" and r.get("labels", "hard") == "soft":
                self.log(f"{stage}/{r['arch']}/soft_acc", r["mean"])
            if r["set"] == "synthetic" and evaluation_labels(r) == "hard":
                self.log(f"{stage}/{r['arch']}/acc", r["mean"])
                self.log(f"{stage}/{r['arch']}/acc_std", r["std"])
                for key in ("hlr", "ior", "lrs", "ars"):
                    if key in r:
                        self.log(f"{stage}/{r['arch']}/{key}", r[key])
                base = next(
                    (
                        b
                        for b in rows
                        if b["arch"] == r["arch"] and b["set"] == "random_real" and evaluation_labels(b) == "hard"
                    ),
                    None,
                )
                if base is not None:
                    self.log(f"{stage}/{r['arch']}/baseline_acc", base["mean"])
                    self.log(f"{stage}/{r['arch']}/gain", r["mean"] - base["mean"])
        if self.trainer.is_global_zero:
            folder = self._output_dir()
            write_results(
                rows,
                folder,
                self.hparams.stem,
                machine=machine_record(self.device, f"evaluation {self._eval_precision()}"),
            )
            blob = self.export_blob
            rank_zero_info(
                f"\n[ptmdd] {self.hparams.path}: {blob['dataset']}, IPC {self.ipc}, "
                f"{1 if self.trainer.fast_dev_run else self.hparams.num_models} models x "
                f"{self._protocol().epochs} epochs per architecture\n{format_table(rows)}\n"
                f"[ptmdd] wrote {folder / self.hparams.stem}.md/.csv/.json"
            )
