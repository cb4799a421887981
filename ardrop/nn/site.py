"""`PatternSite`: the one place a layer's dropout state lives.

Layers do not own a random generator or a pattern sequence. They hold a site whose
pattern is set from outside each step (by `callbacks.PatternCallback`, the benchmark, or
a user loop). That keeps the sequence a pure function of (seed, site, step), so resume,
data-parallel ranks and recomputation agree by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ardrop.checks import check_int, check_rate
from ardrop.patterns import DEFAULT_TILE, Pattern

SITE_KINDS = ("row", "tile", "bernoulli", "none")


def check_groups(groups) -> int | str:
    """``"dp"`` (one group per offset) or an integer >= 1 (1: the paper's one pattern per step)."""
    if groups == "dp":
        return groups
    return check_int("groups", groups, hint=" (1 = one pattern per step) or 'dp'")


class PatternSite(nn.Module):
    """Dropout state of one site: kind, requested rate, shape limit and current pattern."""

    def __init__(self, kind: str, rate: float, max_dp: int, tile: int = DEFAULT_TILE, groups: int | str = 1) -> None:
        super().__init__()
        if kind not in SITE_KINDS:
            raise ValueError(f"dropout kind must be one of {SITE_KINDS}, got {kind!r}")
        check_int("tile size", tile)
        check_int("max_dp", max_dp)
        self.kind = kind
        self.rate = check_rate(rate, "dropout rate") if kind != "none" else 0.0
        self.max_dp = max_dp
        self.tile = tile
        self.groups = check_groups(groups)
        self.pattern: Pattern | None = None
        self.step_seed: int | None = None  # Bernoulli masks' seed for this step (set from outside)
        self._generators: dict[torch.device, torch.Generator] = {}

    @property
    def structured(self) -> bool:
        """True for the approximate (pattern-driven) kinds."""
        return self.kind in ("row", "tile")

    def set_pattern(self, pattern: Pattern | None) -> None:
        if pattern is None:
            self.pattern = None
            return
        if not self.structured:
            raise ValueError(f"a {self.kind!r} dropout site takes no pattern")
        if pattern.kind != self.kind:
            raise ValueError(f"this site drops {self.kind}s; got a {pattern.kind} pattern")
        if pattern.dp > self.max_dp:
            raise ValueError(
                f"pattern dp={pattern.dp} exceeds this site's largest usable dp {self.max_dp}; "
                f"search with max_dp <= {self.max_dp}"
            )
        if pattern.kind == "tile" and pattern.tile != self.tile:
            raise ValueError(f"pattern tile size {pattern.tile} differs from the site's {self.tile}")
        self.pattern = pattern

    def set_step_seed(self, seed: int | None) -> None:
        """Seed this step's Bernoulli mask (``callbacks.PatternCallback`` derives it from (seed, site, step)).

        Why: with torch's global generator a resumed run draws different masks from the
        uninterrupted one; a per-step seed makes the masks, like the patterns, a pure
        function of (seed, site, step). None goes back to the global generator.
        """
        if seed is not None:
            check_int("step seed", seed, 0, hint=" or None")
        self.step_seed = seed
        self._generators.clear()  # re-seeded lazily, one per device the site runs on

    def bernoulli(self, x: torch.Tensor) -> torch.Tensor:
        """``F.dropout(x, rate)`` in training, drawing from this step's seed when one is set."""
        if not self.training or self.rate == 0.0 or self.step_seed is None:
            return F.dropout(x, self.rate, self.training)
        gen = self._generators.get(x.device)
        if gen is None:
            gen = self._generators[x.device] = torch.Generator(device=x.device)
            gen.manual_seed(self.step_seed)
        keep = 1.0 - self.rate
        return x * torch.empty_like(x).bernoulli_(keep, generator=gen).div_(keep)  # F.dropout's own ops

    def active_pattern(self) -> Pattern | None:
        """The pattern to apply now, or None when the layer should run dense.

        Dense when evaluating, for the non-structured kinds, and for ``dp == 1``.
        """
        if not self.training or not self.structured:
            return None
        if self.pattern is None:
            raise RuntimeError(
                f"{self.kind} dropout site has no pattern in training mode: use "
                "callbacks.PatternCallback, or call site.set_pattern(...) before each step"
            )
        return None if self.pattern.dp == 1 else self.pattern

    def group_patterns(self, n: int) -> list[tuple[int, int, Pattern]] | None:
        """``(start, stride, pattern)`` of each group along an axis of ``n`` elements, or None.

        None: one pattern for all (evaluation, dp 1, ``groups=1``). Otherwise element ``u``
        uses offset ``(offset + u mod G) mod dp`` with ``G = min(groups, dp, n)``: with
        ``groups="dp"`` every unit is kept by exactly one group (see `ardrop.functional.grouped`).
        """
        p = self.active_pattern()
        if p is None:
            return None
        count = min(p.dp if self.groups == "dp" else self.groups, p.dp, n)
        if count <= 1:
            return None
        return [(g, count, Pattern(p.kind, p.dp, (p.offset + g) % p.dp, p.tile)) for g in range(count)]

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, rate={self.rate}, max_dp={self.max_dp}, tile={self.tile}, "
                f"groups={self.groups}, pattern={self.pattern}")
