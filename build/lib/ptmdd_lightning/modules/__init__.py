"""Lightning wrappers: Classifier (PTM pretraining, full-data baseline), Distiller (DC/DSA/DM + CLoM/CCLoM),
and SyntheticSetEvaluator (standalone evaluation of an exported synthetic set)."""

from ptmdd_lightning.modules.classifier import Classifier
from ptmdd_lightning.modules.distiller import Distiller
from ptmdd_lightning.modules.evaluator import SyntheticSetEvaluator

__all__ = ["Classifier", "Distiller", "SyntheticSetEvaluator"]
