"""SyntheticSetEvaluation: train fresh nets on the synthetic set, test them on the real test set.

The protocol is the DC/DSA/DM code's ``evaluate_synset``: SGD (lr 0.01, momentum 0.9, weight decay 5e-4), batch 256,
lr x 0.1 at half the epochs, DSA augmentation (one random op per batch, per-image parameters), and the test accuracy
after the last epoch, as mean +- std over ``num_models`` freshly initialised nets per architecture. A random real subset
with the same IPC is evaluated under the identical protocol as the baseline.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from ptmdd_lightning.callbacks.export import EndOfTrainingWork, log_synthetic_grid
from ptmdd_lightning.core.evaluate import EvalProtocol, as_eval_protocol, random_real_subset, train_and_test
from ptmdd_lightning.core.guidance import pool_cost
from ptmdd_lightning.core.soft_labels import Teacher, TeacherSpec, as_teacher_specs, build_teacher, check_real_hard_acc
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.machine import auto_precision, machine_record
from ptmdd_lightning.progress import EvaluationProgress
from ptmdd_lightning.reporting import attach_scores, evaluation_labels, format_table, result_row, run_dir, write_results
from ptmdd_lightning.seeding import baseline_draw_seed, check_baseline_draw, run_seed

#: one evaluation of a set: ``(labels, augment, teacher)``, teacher the :meth:`TeacherSpec.describe` of a soft one
Variant = tuple[str, bool, str | None]
HARD: Variant = ("hard", True, None)


class SyntheticSetEvaluation(EndOfTrainingWork):
    """Evaluate the synthetic set every ``every_n_steps`` and at the end of training (global rank 0 only).

    Logs ``eval/<arch>/acc`` and ``eval/<arch>/acc_std`` (fractions in [0, 1]), the random-real baseline as
    ``eval/<arch>/baseline_acc`` and the gain ``eval/<arch>/gain``, adds the image grid to TensorBoard, writes
    ``results.{md,csv,json}`` to the run folder and prints a summary.

    Interruptions: SIGTERM stops an evaluation after the epoch in progress; the rows finished so far, and the
    models of the row in progress that were already tested, go into ``last.ckpt`` (:meth:`on_exception`), and a
    resumed run evaluates only what is missing (rows, and within a row the untested models: model ``i`` depends
    on the evaluation seed and ``i`` alone, :func:`~ptmdd_lightning.core.evaluate.train_and_test`), also when
    training was already complete (:class:`~ptmdd_lightning.callbacks.export.EndOfTrainingWork`). A SIGKILL
    loses the evaluation since the last checkpoint.

    Args:
        archs: evaluation architectures (cross-architecture generalisation), e.g. ``["ConvNet", "AlexNet"]``.
        num_models: freshly initialised models per architecture.
        protocol: the evaluation training (:class:`~ptmdd_lightning.core.evaluate.EvalProtocol`: ``epochs``,
            ``lr``, ``momentum``, ``weight_decay``, ``batch_size``, ``lr_decay_at``, ``dsa_strategy``,
            ``precision``, ``compile``, ``backend``, ...); ``None``: its defaults, the DC/DSA/DM ``evaluate_synset``
            (1000 epochs with DSA; the DC paper uses 300 without augmentation: ``{epochs: 300, dsa_strategy:
            none}``). In YAML: ``protocol: {epochs: 300}``. The precision that ran is recorded in
            ``results.json`` (``machine.precision``).
        mode: ``"auto"`` (models one after the other on CPU, where vmap measured slower; vmapped on CUDA), ``"vmap"``,
            ``"loop"``.
        baseline: also evaluate a random real subset with the same IPC (once per run; it does not change).
        baseline_draw: which random real subset (``ipc`` images of every class, the DC code's ``get_images``):
            ``"evaluation"`` (default) draws it with the evaluation ``seed`` (``+ 1``), so every run evaluated with
            that seed gets the same subset (every earlier result of ptmdd); ``"run"`` draws it from the run's
            ``seed_everything`` too (:func:`~ptmdd_lightning.seeding.random_real_seed`), a new subset per
            distillation seed, as the DC/DSA/DM code draws new real images in every experiment: over a study's
            seeds the random real row then averages over draws, not over one draw repeated.
        every_n_steps: evaluate every N optimisation steps too (``None``: only at the end).
        seed: evaluation seed (model inits, shuffles, augmentation).
        teachers: soft-label evaluation, a list of :class:`~ptmdd_lightning.core.soft_labels.TeacherSpec` (``ptms``,
            groups of the distiller's PTM pool (``pool_root``, ``ptm_recipe``), and ``temperature``): every set is
            evaluated with hard labels and again with each teacher's soft labels, the random real subset with the
            same teacher; rows carry ``labels`` and ``teacher``. ``None`` (default): hard labels only.
        real_hard_acc: ``Acc(real, hard)`` (fraction) of the first arch on the whole training set under this
            protocol, for DD-Ranking's HLR/IOR/LRS/ARS on the synthetic rows (``None``: no scores).
        real_hard_source: where ``real_hard_acc`` comes from, recorded in the rows.
        no_aug: also evaluate both sets with hard labels without augmentation (for ARS).

    Raises:
        PtmddError: num_models < 1, no archs, a ``protocol`` that is not an ``EvalProtocol`` (a flat key of
            older configs, e.g. ``epochs``, is refused by the CLI naming ``protocol.epochs``), a bad teacher
            or a ``real_hard_acc`` outside ``[0, 1]``, or an unknown ``baseline_draw``.
    """

    def __init__(
        self,
        archs: list[str] | None = None,
        num_models: int = 5,
        protocol: EvalProtocol | None = None,
        mode: Literal["auto", "vmap", "loop"] = "auto",
        baseline: bool = True,
        every_n_steps: int | None = None,
        seed: int = 0,
        teachers: list[TeacherSpec] | None = None,
        real_hard_acc: float | None = None,
        real_hard_source: str | None = None,
        no_aug: bool = False,
        baseline_draw: Literal["evaluation", "run"] = "evaluation",
    ) -> None:
        archs = list(archs) if archs else ["ConvNet"]
        self.baseline_draw = check_baseline_draw(baseline_draw)
        if num_models < 1:
            raise PtmddError(f"evaluation needs num_models >= 1, got {num_models}.")
        specs = as_teacher_specs(teachers)
        check_real_hard_acc(real_hard_acc)
        self.teacher_specs = {spec.describe(): spec for spec in specs}
        self.real_hard_acc = real_hard_acc
        self.real_hard_source = real_hard_source
        self.no_aug = no_aug
        self._teachers: dict[str, Teacher] = {}
        self.archs = archs
        self.num_models = num_models
        self.protocol = as_eval_protocol(protocol)
        self.mode = mode
        self.baseline = baseline
        self.every_n_steps = every_n_steps
        self.seed = seed
        self.rows: list[dict[str, Any]] = []
        self._baseline_rows: dict[str, dict[str, Any]] = {}
        self._unsaved = False  # rows (or models of a row) evaluated since the last checkpoint
        # the row in progress: {row key: {"accs": {model index: accuracy}, "seconds": wall seconds so far}}
        self._partial: dict[str, dict[str, Any]] = {}
        self._train_seconds = 0.0  # wall seconds of the distillation steps so far (kept across a resume)
        self._mark: float | None = None
        self._soft_label_bytes = 0

    def state_dict(self) -> dict[str, Any]:
        """The rows evaluated so far, for the Lightning checkpoint.

        The rows evaluated so far (and the random-real rows), saved in the Lightning checkpoint so that a resumed
        run's ``results.*`` still list the evaluations made before the interruption; ``partial``: the models of
        an unfinished row already tested (``{row key: {"accs": {index: accuracy}, "seconds": s}}``).
        """
        self._unsaved = False
        baseline = {k: dict(v) for k, v in self._baseline_rows.items()}
        partial = {k: {"accs": dict(v["accs"]), "seconds": v["seconds"]} for k, v in self._partial.items()}
        return {
            "rows": [dict(r) for r in self.rows],
            "baseline_rows": baseline,
            "train_seconds": self._train_seconds,
            "partial": partial,
        }

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """After a SIGTERM during an evaluation, rewrite ``last.ckpt`` with the rows finished so far.

        ``ModelCheckpoint(save_on_exception=True)`` writes nothing when it already saved this step (the final
        step's checkpoint precedes the final evaluation), so the rows would be lost and evaluated again. Single
        process only: under DDP the other ranks wait in a barrier and cannot join the collective save.
        """
        if not (isinstance(exception, SIGTERMException) and self._unsaved and trainer.world_size == 1):
            return
        for callback in trainer.checkpoint_callbacks:
            path = getattr(callback, "last_model_path", "")
            if path:
                trainer.save_checkpoint(path)
                models = sum(len(p["accs"]) for p in self._partial.values())
                rank_zero_info(
                    f"[ptmdd] SIGTERM during the evaluation: saved the {len(self.rows)} rows evaluated "
                    f"so far and {models} tested models of the row in progress with the step-{trainer.global_step} "
                    f"state in {path}"
                )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (checkpoints written before this state existed restore nothing)."""
        self.rows = [dict(r) for r in state_dict.get("rows", [])]
        self._baseline_rows = {k: dict(v) for k, v in state_dict.get("baseline_rows", {}).items()}
        self._train_seconds = float(state_dict.get("train_seconds", 0.0))
        self._partial = {
            k: {"accs": {int(i): float(a) for i, a in v["accs"].items()}, "seconds": float(v["seconds"])}
            for k, v in state_dict.get("partial", {}).items()
        }

    def baseline_draw_seed(self) -> int:
        """The seed of the random real subset's draw (``torch.Generator().manual_seed``), see ``baseline_draw``.

        ``"evaluation"``: the evaluation seed + 1; ``"run"``: :func:`~ptmdd_lightning.seeding.random_real_seed` of the
        run's seed (``PL_GLOBAL_SEED``, set by ``seed_everything``; 0 when unset) and the evaluation seed.
        """
        return baseline_draw_seed(self.baseline_draw, self.seed, run_seed())

    def _protocol(self, trainer: Trainer) -> EvalProtocol:
        if trainer.fast_dev_run:  # a smoke test of the whole pipeline: one epoch is enough
            return dataclasses.replace(self.protocol, epochs=1)
        return self.protocol

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Finish a periodic evaluation that a resumed run's checkpoint step lacks.

        A run resumed at a step of the periodic evaluation whose rows are missing (stopped inside that evaluation,
        or checkpointed before it) evaluates them now: the synthetic set is that step's.
        """
        step = trainer.global_step
        if self.every_n_steps and 0 < step != trainer.max_steps and step % self.every_n_steps == 0:
            missing = any(
                self._row_at(step, arch, "synthetic", variant) is None
                for arch in self.archs
                for variant in self._variants()
            )
            if missing:
                rank_zero_info(f"[ptmdd] the evaluation of step {step} was interrupted: finishing it")
                self.evaluate(trainer, pl_module)
        self._mark = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if self._mark is not None:  # the distillation's own time, evaluations excluded
            self._train_seconds += time.perf_counter() - self._mark
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != trainer.max_steps:
            self.evaluate(trainer, pl_module)
        self._mark = time.perf_counter()

    @override
    def end_of_training(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rows = self.evaluate(trainer, pl_module)
        if trainer.is_global_zero and rows:
            rank_zero_info(self.summary(pl_module, rows))

    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> list[dict[str, Any]]:
        """Run the evaluation now on global rank 0 (other ranks wait); return this step's rows."""
        rows: list[dict[str, Any]] = []
        if trainer.is_global_zero:
            rows = self._evaluate(trainer, pl_module)
        trainer.strategy.barrier("synthetic_set_evaluation")
        return rows

    def _variants(self) -> list[Variant]:
        """The evaluations of every set: ``(labels, augment, teacher)``, hard and augmented first."""
        variants: list[Variant] = [("hard", True, None)]
        variants += [("soft", True, name) for name in self.teacher_specs]
        if self.no_aug:
            variants.append(("hard", False, None))
        return variants

    def _get_teacher(self, trainer: Trainer, pl_module: LightningModule, name: str) -> Teacher:
        """The teacher ``name``, loaded once from the distiller's pool folder with its recipe."""
        if name not in self._teachers:
            self._teachers[name] = build_teacher(
                self.teacher_specs[name],
                pl_module.hparams.pool_root,
                pl_module.dataset_info,
                recipe=getattr(pl_module, "ptm_recipe", None),
                data_root=getattr(trainer.datamodule, "root", None),
            )
        return self._teachers[name]

    def _run(
        self,
        trainer: Trainer,
        arch: str,
        which: str,
        images,
        labels,
        pl_module,
        seed: int,
        variant: Variant = HARD,
    ) -> tuple[torch.Tensor, float]:
        dm = trainer.datamodule
        num_models = 1 if trainer.fast_dev_run else self.num_models
        protocol = self._protocol(trainer)
        kind, augment, name = variant
        if not augment:
            protocol = dataclasses.replace(protocol, dsa_strategy=None)
        teacher = self._get_teacher(trainer, pl_module, name) if name is not None else None
        what = f"{which} set on {arch}" + ("" if variant == HARD else f", {kind} labels ({name}), augment {augment}")
        # models of this row tested before an interruption (same step, set, seed and protocol) are not retrained
        key = f"{trainer.global_step}|{arch}|{which}|{kind}|{augment}|{name}|{seed}|{num_models}|{protocol.epochs}"
        partial = self._partial.get(key, {"accs": {}, "seconds": 0.0})
        done = partial["accs"]
        resumed = f", {len(done)} tested before the interruption" if done else ""
        rank_zero_info(f"[ptmdd] evaluating the {what}: {num_models} models x {protocol.epochs} epochs{resumed}")
        start = time.perf_counter()

        def keep(i: int, acc: float) -> None:
            self._partial[key] = {
                "accs": {**self._partial.get(key, partial)["accs"], i: acc},
                "seconds": partial["seconds"] + time.perf_counter() - start,
            }
            self._unsaved = True

        with EvaluationProgress(f"eval {arch} {which}", num_models, trainer) as progress:
            accs = train_and_test(
                arch,
                images,
                labels,
                dm.test_images,
                dm.test_labels,
                pl_module.dataset_info.num_classes,
                num_models,
                protocol,
                seed=seed,
                device=pl_module.device,
                mode=self.mode,
                progress=progress,
                teacher=teacher,
                done=done,
                on_model=keep,
            )
        self._partial.pop(key, None)  # the row is complete: the caller keeps it
        return accs, partial["seconds"] + time.perf_counter() - start

    def _row_at(self, step: int, arch: str, which: str, variant: Variant = HARD) -> dict[str, Any] | None:
        """The row of ``(step, arch, set, variant)`` evaluated already (kept in the state across a resume), if any."""
        return next(
            (
                r
                for r in self.rows
                if (r["step"], r["arch"], r["set"]) == (step, arch, which)
                and (r.get("labels", "hard"), r.get("augment", True), r.get("teacher")) == variant
            ),
            None,
        )

    def _row(
        self, step: int, arch: str, which: str, accs: torch.Tensor, seconds: float, variant: Variant = HARD
    ) -> dict[str, Any]:
        row = result_row(step, arch, which, accs, seconds)
        if self.teacher_specs or self.no_aug:  # rows of hard labels alone keep their earlier keys
            row.update(labels=variant[0], augment=variant[1])
            if variant[2] is not None:
                row["teacher"] = variant[2]
                row.update(self._teacher_cost(variant[2]))
        return row

    def _teacher_cost(self, name: str) -> dict[str, Any]:
        """What the soft labels of teacher ``name`` cost: its pool files and pretraining, its weights in memory.

        Also ``soft_label_bytes``: what one fp32 soft label per synthetic image would take instead of the teacher
        (issue "PTMs as teachers too", cost).
        """
        teacher = self._teachers[name]
        cost = pool_cost(list(teacher.members))
        weights = sum(t.numel() * t.element_size() for t in teacher.state_dict().values())  # what ships
        return {
            "teacher_bytes": int(weights),
            "teacher_pool_bytes": cost["pool_bytes"],
            "teacher_pretrain_seconds": cost["pretrain_seconds"],
            "teacher_pretrain_kinds": cost["pretrain_kinds"],
            "soft_label_bytes": self._soft_label_bytes,
        }

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule) -> list[dict[str, Any]]:
        dm = trainer.datamodule
        step = trainer.global_step
        images = pl_module.synthetic.images.detach().float()
        labels = pl_module.synthetic.labels
        self._soft_label_bytes = int(images.shape[0] * pl_module.dataset_info.num_classes * 4)
        rows = []
        metrics: dict[str, float] = {}
        for arch in self.archs:
            for variant in self._variants():
                plain_hard = variant == HARD
                # a row already evaluated at this step (before a SIGTERM, then resumed) is not evaluated again
                row = self._row_at(step, arch, "synthetic", variant)
                if row is None:
                    accs, secs = self._run(trainer, arch, "synthetic", images, labels, pl_module, self.seed, variant)
                    row = self._row(step, arch, "synthetic", accs, secs, variant)
                    self.rows.append(row)
                    self._unsaved = True
                rows.append(row)
                if plain_hard:
                    metrics[f"eval/{arch}/acc"] = row["mean"]
                    metrics[f"eval/{arch}/acc_std"] = row["std"]
                elif variant[2] is not None:
                    metrics[f"eval/{arch}/soft_acc/{variant[2]}"] = row["mean"]
                if not self.baseline:
                    continue
                # the random real subset is evaluated once per run and variant (it does not change)
                key = arch if plain_hard else f"{arch}|{variant[0]}|{variant[1]}|{variant[2]}"
                if key not in self._baseline_rows:
                    gen = torch.Generator().manual_seed(self.baseline_draw_seed())
                    real_x, real_y = random_real_subset(
                        dm.train_images, dm.train_labels, pl_module.hparams.ipc, pl_module.dataset_info.num_classes, gen
                    )
                    accs_b, secs_b = self._run(
                        trainer,
                        arch,
                        "random_real",
                        real_x.to(pl_module.device),
                        real_y.to(pl_module.device),
                        pl_module,
                        self.seed,
                        variant,
                    )
                    self._baseline_rows[key] = self._row(step, arch, "random_real", accs_b, secs_b, variant)
                    self._unsaved = True
                base = self._row_at(step, arch, "random_real", variant)
                if base is None:
                    base = dict(self._baseline_rows[key], step=step)
                    self.rows.append(base)
                rows.append(base)
                if plain_hard:
                    metrics[f"eval/{arch}/baseline_acc"] = base["mean"]
                    metrics[f"eval/{arch}/gain"] = row["mean"] - base["mean"]
        pool = getattr(pl_module, "pool", None)
        guidance = pool_cost(list(pool.members)) if pool is not None else None
        for r in rows:
            if r["set"] == "synthetic" and (self.teacher_specs or self.no_aug):  # runs of the new kind only
                r["distill_seconds"] = round(self._train_seconds, 3)
                r["guidance_pool_bytes"] = guidance["pool_bytes"] if guidance else 0
                r["guidance_pretrain_seconds"] = guidance["pretrain_seconds"] if guidance else 0.0
                r["guidance_pretrain_kinds"] = guidance["pretrain_kinds"] if guidance else ""
        if self.real_hard_acc is not None:
            attach_scores(self.rows, float(self.real_hard_acc), self.real_hard_source)
            for r in rows:
                if r["set"] == "synthetic" and evaluation_labels(r) == "hard":
                    metrics.update({f"eval/{r['arch']}/{k}": r[k] for k in ("hlr", "ior", "lrs", "ars") if k in r})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        log_synthetic_grid(trainer, pl_module)
        evaluation = self.protocol.precision
        if evaluation == "auto":
            evaluation = auto_precision(pl_module.device)
        precision = f"distillation {trainer.precision}, evaluation {evaluation}"
        machine = machine_record(pl_module.device, precision)
        attempts = getattr(pl_module, "attempts", None)
        if attempts:  # a distillation run: where each of its attempts ran (it may have crossed CPU kinds)
            machine["attempts"] = attempts
        write_results(self.rows, run_dir(trainer), machine=machine)
        return rows

    def summary(self, pl_module: LightningModule, rows: list[dict[str, Any]]) -> str:
        """A short printable summary of the final evaluation."""
        hp = pl_module.hparams
        guide = "+".join(sorted({g.loss for g in getattr(pl_module, "ptm_groups", [])})) or "no PTM guidance"
        lines = [
            f"\n[ptmdd] {pl_module.dataset_info.name}, IPC {hp.ipc}, {pl_module.method.upper()} + {guide}: "
            f"test accuracy over {self.num_models} models x {self.protocol.epochs} epochs"
        ]
        lines.append(format_table(rows))
        for arch in self.archs:
            hard = [r for r in rows if r["arch"] == arch and evaluation_labels(r) == "hard"]
            syn = next((r for r in hard if r["set"] == "synthetic"), None)
            base = next((r for r in hard if r["set"] == "random_real"), None)
            if syn and base:
                lines.append(
                    f"{arch}: distilled {100 * syn['mean']:.2f}% vs random real {100 * base['mean']:.2f}% "
                    f"-> gain {100 * (syn['mean'] - base['mean']):+.2f} points"
                )
        return "\n".join(lines)
