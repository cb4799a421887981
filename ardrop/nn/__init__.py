"""Modules that skip dropped work, mirroring ``torch.nn``; the ops live in ``ardrop.functional``.

Imports: torch, `ardrop.functional`, `ardrop.contract`, `ardrop.patterns`, `ardrop.checks`.
"""

from ardrop.nn.linear import ApproxLinear
from ardrop.nn.lstm import ApproxLSTMLM
from ardrop.nn.mlp import ApproxMLP
from ardrop.nn.site import SITE_KINDS, PatternSite

__all__ = ["SITE_KINDS", "ApproxLSTMLM", "ApproxLinear", "ApproxMLP", "PatternSite"]
