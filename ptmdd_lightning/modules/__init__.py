"""Lightning wrappers: the PTM classifier and the distillation algorithms.

Lightning wrappers: Classifier (PTM pretraining, full-data baseline); the distillation algorithms, one per class,
on a shared base (DMDistiller; GradientMatchingDistiller for DC and DSA; Distiller selects one by ``method`` for
older configs); and SyntheticSetEvaluator (standalone evaluation of an exported synthetic set).
"""

from ptmdd_lightning.modules.base import DistillerBase
from ptmdd_lightning.modules.classifier import Classifier
from ptmdd_lightning.modules.distiller import Distiller
from ptmdd_lightning.modules.dm import DMDistiller
from ptmdd_lightning.modules.evaluator import SyntheticSetEvaluator
from ptmdd_lightning.modules.gradient_matching import GradientMatchingDistiller

__all__ = [
    "Classifier",
    "DMDistiller",
    "Distiller",
    "DistillerBase",
    "GradientMatchingDistiller",
    "SyntheticSetEvaluator",
]
