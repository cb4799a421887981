"""Approximate-dropout patterns: which rows or weight tiles a step keeps.

A pattern is the triple ``(kind, dp, offset)`` of SPEC section 1. It keeps one unit in
every ``dp``, so a kernel can skip the rest by stride arithmetic instead of a random mask.
The explicit masks produced here are the *reference semantics*: fast paths never build
them, tests compare fast paths against them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ardrop.checks import check_int

KINDS = ("row", "tile")
DEFAULT_TILE = 32


@dataclass(frozen=True)
class Pattern:
    """One sub-model of a layer: keep every ``dp``-th row, or every ``dp``-th tile diagonal."""

    kind: str
    dp: int
    offset: int
    tile: int = DEFAULT_TILE

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"pattern kind must be one of {KINDS}, got {self.kind!r}")
        check_int("dp", self.dp)
        check_int("tile size", self.tile)
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or not 0 <= self.offset < self.dp:
            raise ValueError(
                f"offset must be an integer in 0..dp-1 = 0..{self.dp - 1}, got {self.offset!r}"
            )

    @property
    def nominal_rate(self) -> float:
        """Drop rate ``(dp-1)/dp``; exact when the size divides evenly."""
        return (self.dp - 1) / self.dp

    # ---- row patterns ------------------------------------------------------------
    def _require(self, kind: str) -> None:
        if self.kind != kind:
            raise ValueError(f"this is a {self.kind} pattern; a {kind} pattern is needed here")

    def num_kept_rows(self, n: int) -> int:
        self._require("row")
        check_int("number of rows", n)
        return len(range(self.offset, n, self.dp))

    def kept_rows(self, n: int) -> torch.Tensor:
        """Indices ``r`` with ``r % dp == offset``."""
        if self.num_kept_rows(n) == 0:
            return torch.empty(0, dtype=torch.long)
        return torch.arange(self.offset, n, self.dp)

    def row_mask(self, n: int) -> torch.Tensor:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[self.kept_rows(n)] = True
        return mask

    def row_scale(self, n: int) -> float:
        """``total / kept`` so the step's activations keep their scale (SPEC: inverted dropout)."""
        kept = self.num_kept_rows(n)
        if kept == 0:
            raise ValueError(
                f"row pattern dp={self.dp} offset={self.offset} keeps no row of a {n}-row layer; "
                f"dp must not exceed the layer width ({n})"
            )
        return n / kept

    @staticmethod
    def max_row_dp(n: int) -> int:
        """Largest dp for which every offset keeps at least one of ``n`` rows."""
        check_int("number of rows", n)
        return n

    # ---- tile patterns -----------------------------------------------------------
    def tile_grid(self, out_features: int, in_features: int) -> tuple[int, int]:
        self._require("tile")
        check_int("out_features", out_features)
        check_int("in_features", in_features)
        return math.ceil(out_features / self.tile), math.ceil(in_features / self.tile)

    def tile_grid_mask(self, out_features: int, in_features: int) -> torch.Tensor:
        """Tile ``(i, j)`` is kept iff ``(i + j) % dp == offset``."""
        gi, gj = self.tile_grid(out_features, in_features)
        i = torch.arange(gi).unsqueeze(1)
        j = torch.arange(gj).unsqueeze(0)
        return (i + j) % self.dp == self.offset

    def tile_mask(self, out_features: int, in_features: int) -> torch.Tensor:
        """Element mask of a ``[out, in]`` weight; ragged edge tiles are cut to the matrix."""
        grid = self.tile_grid_mask(out_features, in_features)
        full = grid.repeat_interleave(self.tile, 0).repeat_interleave(self.tile, 1)
        return full[:out_features, :in_features].contiguous()

    def num_kept_weights(self, out_features: int, in_features: int) -> int:
        self.tile_grid(out_features, in_features)  # validates
        return _kept_weights(out_features, in_features, self.tile, self.dp, self.offset)

    def tile_scale(self, out_features: int, in_features: int) -> float:
        kept = self.num_kept_weights(out_features, in_features)
        if kept == 0:
            raise ValueError(
                f"tile pattern dp={self.dp} offset={self.offset} keeps no tile of a "
                f"{out_features}x{in_features} weight with {self.tile}x{self.tile} tiles; dp must not exceed "
                f"{Pattern.max_tile_dp(out_features, in_features, self.tile)} (the number of tile diagonals)"
            )
        return out_features * in_features / kept

    @staticmethod
    def max_tile_dp(out_features: int, in_features: int, tile: int = DEFAULT_TILE) -> int:
        """Number of tile diagonals: larger dp leaves some offsets with no tile at all."""
        check_int("tile size", tile)
        check_int("out_features", out_features)
        check_int("in_features", in_features)
        return math.ceil(out_features / tile) + math.ceil(in_features / tile) - 1


@functools.lru_cache(maxsize=4096)
def _kept_weights(out_features: int, in_features: int, tile: int, dp: int, offset: int) -> int:
    """Kept weights of a tile pattern in O(tiles per side), cached: every tile layer asks each step.

    Tile-row ``a`` keeps the tile-columns ``b = offset - a (mod dp)``, so it needs only the
    widths of the tile-columns summed per residue class.
    """
    gi, gj = math.ceil(out_features / tile), math.ceil(in_features / tile)
    class_cols = [0] * dp
    for b in range(gj):
        class_cols[b % dp] += min(tile, in_features - b * tile)
    return sum(min(tile, out_features - a * tile) * class_cols[(offset - a) % dp] for a in range(gi))
