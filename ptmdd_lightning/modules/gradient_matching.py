"""GradientMatchingDistiller: DC and DSA with PTM guidance.

GradientMatchingDistiller: DC (Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021,
Alg. 1) and DSA (Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021, Eq. 5),
with PTM guidance (Lu et al. 2023).
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ptmdd_lightning.core.augment import dsa_augment
from ptmdd_lightning.core.objectives import DC_BN_IMAGES_PER_CLASS, dc_loss, dc_outer_inner, freeze_batchnorm_stats
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.modules.base import DistillerBase
from ptmdd_lightning.nets import build_net
from ptmdd_lightning.seeding import mix_seed

__all__ = ["GradientMatchingDistiller"]


class GradientMatchingDistiller(DistillerBase):
    """DC / DSA: per-class gradient matching, plus CLoM/CCLoM.

    DC / DSA: per-class gradient matching on a net re-sampled every ``outer_loop`` steps and trained on the
    synthetic set for ``inner_loop`` epochs after every other outer step, plus CLoM/CCLoM.

    One Lightning step is one outer step of the DC code (``main.py``): the matching update of the synthetic
    images and then, unless a new net is due, the net's inner loop, in one ``training_step`` (manual
    optimisation), so a checkpoint is always written between whole steps and a resumed run continues bit for bit.

    Args:
        method: ``"dsa"`` (default; DC + differentiable siamese augmentation of real and synthetic images, one
            parameter set per class) or ``"dc"`` (no augmentation).
        lr_net: the inner loop's SGD learning rate of the net (0.01, the DC code's ``lr_net``).
        outer_loop, inner_loop: loop lengths; ``None`` = the DC code's ``get_loops`` schedule for this IPC.
        batch_train: batch size when the net trains on the synthetic set (256).
        dc_metric: gradient distance: ``"ours"`` (per-output-row cosine, 1-D params skipped), ``"mse"``, ``"cos"``.
        **kwargs: :class:`~ptmdd_lightning.modules.base.DistillerBase`'s arguments (``ipc``, ``init``, ``lr_img``
            (default 0.1), ``dsa_strategy``, ``ptms``, ``backend``, ...).

    Raises:
        PtmddError: an unknown method, ``batch_train < 1``, ``lr_net <= 0``, or the base's errors.
    """

    def __init__(
        self,
        method: Literal["dc", "dsa"] = "dsa",
        lr_net: float = 0.01,
        outer_loop: int | None = None,
        inner_loop: int | None = None,
        batch_train: int = 256,
        dc_metric: Literal["ours", "mse", "cos"] = "ours",
        **kwargs: Any,
    ) -> None:
        if method not in ("dc", "dsa"):
            raise PtmddError(
                f"GradientMatchingDistiller runs method 'dc' or 'dsa', not {method!r}; DM is "
                "class_path: ptmdd_lightning.modules.DMDistiller."
            )
        if batch_train < 1 or lr_net <= 0:
            raise PtmddError(f"batch_train must be >= 1 and lr_net > 0, got {batch_train} and {lr_net}.")
        # known before the base's __init__, which reads `self.method` (a plain attribute: Module.__init__ has not run)
        object.__setattr__(self, "_method", method)
        super().__init__(**kwargs)
        self.hparams["method"] = method  # also when LightningCLI hands over the config's keys without the default
        self.automatic_optimization = False  # the outer step and its inner loop are one training_step
        if method == "dc":
            self.dsa_strategy = None  # DC never augments
        default_outer, default_inner = dc_outer_inner(self.hparams.ipc)
        self.outer_loop = outer_loop or default_outer
        self.inner_loop = default_inner if inner_loop is None else inner_loop
        self._aux.update(net_index=-1, net_opt=None)

    @property
    def method(self) -> str:
        """``"dc"`` or ``"dsa"``."""
        return self._method

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One outer step: update the synthetic images (matching loss + guidance), then the inner loop."""
        opt = self.optimizers()
        loss = self.objective(batch)
        opt.zero_grad()
        self.manual_backward(loss)
        self.on_before_optimizer_step(opt)  # refuse a non-finite gradient before the update
        opt.step()
        # else the net is re-sampled at the next step; guidance alone (base_weight 0) has no net to train
        if self.base_weight > 0 and self.global_step % self.outer_loop != 0:
            self._train_net_on_synthetic()
        return loss.detach()

    def base_loss(self, real_raw: Tensor, real: Tensor, real_labels: Tensor, syn: Tensor, syn_labels: Tensor) -> Tensor:
        """The DC/DSA gradient-matching loss on the current outer-loop net.

        DC/DSA (Zhao et al. 2021, Alg. 1): per-class gradient matching on the current outer-loop net (a new
        random net every ``outer_loop`` steps). Scalar float32.
        """
        net_index = self.global_step // self.outer_loop
        if self._aux["net_index"] != net_index or self._aux["net"] is None:
            # a new random net every outer loop; rank-independent so DDP ranks train the same net
            net = self._fresh_net(mix_seed(self._seed, net_index, 0xDC), trainable=True)
            self._aux["net_index"] = net_index
            self._aux["net_opt"] = torch.optim.SGD(net.parameters(), lr=self.hparams.lr_net)
        net = self._aux["net"]
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
            # DC code: BN statistics from real data (16 per class), then frozen for the matching passes
            k = self.dataset_info.num_classes
            per_class = real_raw.view(k, -1, *real_raw.shape[1:])[:, :DC_BN_IMAGES_PER_CLASS]
            freeze_batchnorm_stats(net, self._view(per_class.flatten(0, 1)))
        # Real side: one compiled forward/backward per class (nets/forward.py). Synthetic side (per-class gradients that
        # are differentiated again): compiled vmap(grad) of the fused ConvNet when the fast net is compiled, else the
        # module vmapped over the classes (docs/speed.md, lever 11).
        fast = self._fast(net)
        loss = dc_loss(
            net,
            real,
            real_labels,
            syn,
            syn_labels,
            self.dataset_info.num_classes,
            metric=self.hparams.dc_metric,
            batched=None,
            forward=fast.forward,
            syn_class_grads=fast.class_grads if fast.compiled else None,
        )
        net.train()
        return loss

    def _train_net_on_synthetic(self) -> None:
        """The inner loop: ``inner_loop`` epochs of SGD on the (DSA-augmented) synthetic set, seeded by the step."""
        net, opt = self._aux["net"], self._aux["net_opt"]
        images = self.synthetic.images.detach()
        labels = self.synthetic.labels
        gen = torch.Generator().manual_seed(mix_seed(self._seed, self.global_step, 0x1A))
        # rank-independent: every DDP rank must train the same DC net (the DSA draws below use the global RNG)
        torch.manual_seed(mix_seed(self._seed, self.global_step, 0x1B))
        ctx = self.trainer.precision_plugin.train_step_context() if self._trainer else contextlib.nullcontext()
        net.train()
        fast = self._fast(net)  # net's forward, faster (the backend; nets/forward.py)
        with ctx:
            for _ in range(self.inner_loop):
                order = torch.randperm(images.shape[0], generator=gen).to(images.device)
                for start in range(0, images.shape[0], self.hparams.batch_train):
                    idx = order[start : start + self.hparams.batch_train]
                    x = images[idx]
                    if self.dsa_strategy is not None:
                        x = dsa_augment(x, self.dsa_strategy, siamese=False)
                    loss = nn.functional.cross_entropy(fast(self._view(x)), labels[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The base's checkpoint plus the outer-loop net and its optimizer.

        The base's checkpoint plus ``checkpoint["dc_net"]``: the outer-loop net's ``state_dict``, its SGD state
        and its index. Written between whole steps (the inner loop belongs to the step), so nothing is pending.
        """
        super().on_save_checkpoint(checkpoint)
        if self._aux["net"] is not None:
            checkpoint["dc_net"] = {
                "index": self._aux["net_index"],
                "state_dict": {k: v.detach().cpu().clone() for k, v in self._aux["net"].state_dict().items()},
                "optimizer": self._aux["net_opt"].state_dict(),
                "inner_loop_pending": False,
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The base's check, then restore the outer-loop net and its optimizer state.

        Checkpoints of ptmdd versions whose inner loop ran after the checkpoint hook carry
        ``inner_loop_pending``; that inner loop runs first when such a run resumes (:meth:`on_train_start`).
        """
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("dc_net")
        if state is None:
            return
        info = self.dataset_info
        net = build_net(self.hparams.net_arch, info.channels, info.num_classes, info.image_size)
        net.load_state_dict(state["state_dict"])
        self._aux["net"] = net
        self._aux["net_index"] = state["index"]
        self._aux["pending_opt_state"] = state["optimizer"]
        if state.get("inner_loop_pending"):
            self._aux["pending_inner_loop"] = (state["rng_cpu"], state.get("rng_cuda"))

    def on_fit_start(self) -> None:
        """Place the restored outer-loop net (with its optimizer state) and the PTM pool on this device."""
        super().on_fit_start()
        net = self._aux["net"]
        if net is not None:
            self._place(net)
            opt = torch.optim.SGD(net.parameters(), lr=self.hparams.lr_net)
            if "pending_opt_state" in self._aux:
                opt.load_state_dict(self._aux.pop("pending_opt_state"))
            self._aux["net_opt"] = opt

    def on_train_start(self) -> None:
        """Run an older checkpoint's pending inner loop.

        An older checkpoint's pending inner loop (see :meth:`on_load_checkpoint`). Here, not in
        :meth:`on_fit_start`: Lightning restores ``global_step`` (which seeds the inner loop) in between.
        """
        pending = self._aux.pop("pending_inner_loop", None)
        if pending is not None and self._aux["net"] is not None:
            rng_cpu, rng_cuda = pending
            torch.set_rng_state(rng_cpu)
            if rng_cuda is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng_cuda, self.device)
            self._train_net_on_synthetic()
