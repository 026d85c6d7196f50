"""Lightning wrappers: Classifier (PTM pretraining, full-data baseline) and Distiller (DC/DSA/DM + CLoM/CCLoM)."""

from ptmdd_lightning.modules.classifier import Classifier
from ptmdd_lightning.modules.distiller import Distiller
from ptmdd_lightning.modules.evaluator import SyntheticSetEvaluator

__all__ = ["Classifier", "Distiller", "SyntheticSetEvaluator"]
