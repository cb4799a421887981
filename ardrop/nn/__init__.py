"""Modules that skip dropped work, mirroring ``torch.nn``; the ops live in ``ardrop.functional``."""

from ardrop.nn.site import SITE_KINDS, PatternSite

__all__ = ["SITE_KINDS", "PatternSite"]

# Layers are added below as their modules land (the import stays cheap and explicit).
try:  # noqa: SIM105 - filled in by the layer modules
    from ardrop.nn.linear import ApproxLinear  # noqa: F401
    from ardrop.nn.mlp import ApproxMLP  # noqa: F401

    __all__ += ["ApproxLinear", "ApproxMLP"]
except ImportError:  # pragma: no cover - during development only
    pass
try:
    from ardrop.nn.lstm import ApproxLSTMLM  # noqa: F401

    __all__ += ["ApproxLSTMLM"]
except ImportError:  # pragma: no cover
    pass
