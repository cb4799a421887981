"""LightningModules built on the ardrop layers: MLP classifier (MNIST) and LSTM LM (PTB).

Imports: torch, Lightning, torchmetrics, omegaconf, `ardrop` (never `callbacks` or `datamodules`).
"""
from models.lstm import LSTMLanguageModel
from models.mlp import MLPClassifier

__all__ = ["MLPClassifier", "LSTMLanguageModel"]
