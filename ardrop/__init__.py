"""ardrop, the library: Approximate Random Dropout for PyTorch.

Holds patterns, the distribution search, pattern sequences and their planning, the
functional ops and their references, the layers, the optimiser and its read contract, and
the train, bench and report entry points. Imports: torch and `cuda_ext` (lazily, for CUDA
tensors); only the entry points import Lightning, Hydra, `models`, `callbacks` or `datamodules`.
"""
