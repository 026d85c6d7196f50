"""Real data: the dataset registry, offline loaders and the Lightning DataModules."""

from ptmdd_lightning.data.datamodule import DistillDataModule, RealDataModule
from ptmdd_lightning.data.datasets import DATASETS, DatasetInfo, get_dataset_info, load_split

__all__ = ["DATASETS", "DatasetInfo", "DistillDataModule", "RealDataModule", "get_dataset_info", "load_split"]
