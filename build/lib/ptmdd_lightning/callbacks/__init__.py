"""Callbacks: PTM checkpointing and pool pretraining, synthetic-set evaluation, export and TensorBoard grids."""

from ptmdd_lightning.callbacks.evaluate import SyntheticSetEvaluation
from ptmdd_lightning.callbacks.export import SyntheticSetExport
from ptmdd_lightning.callbacks.ptm import PretrainPTMPool, PTMCheckpoint

__all__ = ["PTMCheckpoint", "PretrainPTMPool", "SyntheticSetEvaluation", "SyntheticSetExport"]
