"""The ``ptmdd`` command: LightningCLI over ptmdd's modules and DataModules.

``ptmdd fit --config configs/quickstart.yaml`` (also ``validate``/``test``/``predict``); every Lightning strategy
(``--trainer.strategy ddp --trainer.devices N --trainer.num_nodes M``) works unchanged.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

# Imported so that configs may name classes by their short name (class_path: Distiller).
import ptmdd_lightning.callbacks  # noqa: F401
import ptmdd_lightning.data  # noqa: F401
import ptmdd_lightning.modules  # noqa: F401
from ptmdd_lightning.errors import PtmddError

#: DataModule attributes linked into the model at instantiation (never repeated in YAML).
LINKED = ("num_classes", "channels", "image_size", "mean", "std", "dataset_name", "class_names")


class PtmddCLI(LightningCLI):
    """LightningCLI that links the DataModule's derived values (K, C, (H, W), mean/std, name) into the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in LINKED:
            parser.link_arguments("data", f"model.init_args.{name}", compute_fn=_getter(name), apply_on="instantiate")


def _getter(name: str):
    def get(datamodule):
        value = getattr(datamodule, name)
        return list(value) if isinstance(value, tuple) else value

    get.__name__ = f"datamodule_{name}"
    return get


def main(args: ArgsType = None) -> PtmddCLI | None:
    """Run the ``ptmdd`` command line.

    Args:
        args: the arguments (``["fit", "--config", "configs/quickstart.yaml"]``); ``None`` reads ``sys.argv``.

    Returns:
        The :class:`PtmddCLI` after its subcommand ran (tests inspect ``cli.trainer``/``cli.model``).

    A :class:`~ptmdd_lightning.errors.PtmddError` (a user error) prints ``ptmdd: error: <message>`` and exits with
    status 2 instead of a traceback.
    """
    try:
        return PtmddCLI(
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except PtmddError as err:
        print(f"ptmdd: error: {err}", file=sys.stderr)
        sys.exit(2)
