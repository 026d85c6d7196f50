"""Distiller: the method-selecting entry of older configs.

Distiller: the method-selecting entry of older configs (``class_path: ptmdd_lightning.modules.Distiller`` with
``method: dm | dc | dsa``). New configs name the algorithm's class: :class:`~ptmdd_lightning.modules.DMDistiller` or
:class:`~ptmdd_lightning.modules.GradientMatchingDistiller`.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from lightning import LightningModule

from ptmdd_lightning.core.guidance import PTMGroup, PTMRecipe
from ptmdd_lightning.data.datasets import DatasetInfo
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.modules.base import DistillerBase
from ptmdd_lightning.modules.dm import DMDistiller
from ptmdd_lightning.modules.gradient_matching import GradientMatchingDistiller
from ptmdd_lightning.nets.forward import BackendName

__all__ = ["Distiller"]

#: the DC/DSA-only arguments and their defaults (a DM run given another value is refused, not silently dropped)
_GRADIENT_MATCHING_ONLY = {
    name: p.default
    for name, p in inspect.signature(GradientMatchingDistiller.__init__).parameters.items()
    if name not in ("self", "method", "kwargs")
}


class Distiller(LightningModule):
    """``Distiller(method=..., ...)`` builds the algorithm's class.

    ``Distiller(method=..., ...)`` builds the algorithm's class: ``"dm"`` -> :class:`DMDistiller`, ``"dc"`` /
    ``"dsa"`` -> :class:`GradientMatchingDistiller` (same arguments, same numbers). Kept so that configs and code
    written before the split still run; the object returned is an instance of that class, not of ``Distiller``.

    Args:
        method: ``"dm"``, ``"dc"`` or ``"dsa"``.
        lr_net, outer_loop, inner_loop, batch_train, dc_metric: DC/DSA only (see
            :class:`GradientMatchingDistiller`); a DM run must leave them at their defaults.
        **other: :class:`~ptmdd_lightning.modules.base.DistillerBase`'s arguments.

    Raises:
        PtmddError: an unknown method, or a DC/DSA-only argument set for DM (naming the class to use).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> DistillerBase:  # type: ignore[misc]
        """Build the class of ``method`` (see the class docstring) from keyword arguments."""
        if args:
            raise PtmddError("Distiller takes keyword arguments only (as a config gives them).")
        method = kwargs.pop("method", "dm")
        if method == "dm":
            extra = {
                k: v for k, v in kwargs.items() if k in _GRADIENT_MATCHING_ONLY and v != _GRADIENT_MATCHING_ONLY[k]
            }
            if extra:
                raise PtmddError(
                    f"{', '.join(sorted(extra))} only apply to DC/DSA, not to method dm; remove them, or "
                    "use class_path: ptmdd_lightning.modules.DMDistiller."
                )
            return DMDistiller(**{k: v for k, v in kwargs.items() if k not in _GRADIENT_MATCHING_ONLY})
        if method in ("dc", "dsa"):
            return GradientMatchingDistiller(method=method, **kwargs)
        raise PtmddError(
            f"unknown method {method!r}; choose one of 'dm', 'dc', 'dsa' (or name the class: "
            "ptmdd_lightning.modules.DMDistiller / GradientMatchingDistiller)."
        )

    def __init__(
        self,
        dataset_info: DatasetInfo | None = None,
        ipc: int = 10,
        method: Literal["dm", "dc", "dsa"] = "dm",
        dsa_strategy: str | None = None,
        init: Literal["real", "noise"] = "real",
        lr_img: float | None = None,
        momentum_img: float = 0.5,
        net_arch: str = "ConvNet",
        lr_net: float = 0.01,
        outer_loop: int | None = None,
        inner_loop: int | None = None,
        batch_train: int = 256,
        dc_metric: Literal["ours", "mse", "cos"] = "ours",
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
        """The union of both classes' arguments, for the config parser; never runs (see :meth:`__new__`)."""
        raise AssertionError("unreachable: Distiller.__new__ returns a DMDistiller or a GradientMatchingDistiller")
