"""The per-iteration pattern sequence of one dropout site (SPEC section 1).

The searched distribution is turned into exact counts over ``T`` steps (largest
remainder), unfolded, shuffled with a seeded generator, and each element gets a uniform
offset. Element ``s`` is the pattern of step ``s``.

Every pattern is a pure function of ``(seed, site, step)``: the generator for "epoch"
``e = step // T`` is seeded from a stable hash of ``(seed, site, e)``. Resume, data-parallel
ranks and recomputation therefore agree without any communication, and a run that goes
past ``T`` continues with a fresh seeded shuffle instead of crashing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

from ardrop.checks import check_int
from ardrop.patterns import DEFAULT_TILE, KINDS, Pattern


def largest_remainder_counts(probs: Sequence[float], total: int) -> list[int]:
    """Integer counts proportional to ``probs`` that sum to exactly ``total``."""
    check_int("total steps", total)
    p = [float(x) for x in probs]
    if not p or any(x < 0 or math.isnan(x) for x in p):
        raise ValueError(f"probabilities must be a non-empty list of non-negative numbers, got {probs!r}")
    s = sum(p)
    if abs(s - 1.0) > 1e-6:
        raise ValueError(f"probabilities must sum to 1, they sum to {s}")
    exact = [x / s * total for x in p]
    counts = [math.floor(x) for x in exact]
    short = total - sum(counts)
    # Ties broken by the smaller dp so the result is deterministic.
    order = sorted(range(len(p)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[:short]:
        counts[k] += 1
    return counts


def stable_seed(*parts: object) -> int:
    """A seed that is identical across processes (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class PatternSequence:
    """Shuffled ``(dp, offset)`` sequence of one site; ``seq[step]`` is that step's pattern."""

    def __init__(
        self,
        probs: Sequence[float],
        total_steps: int,
        seed: int = 0,
        site: str | int = 0,
        kind: str = "row",
        tile: int = DEFAULT_TILE,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"pattern kind must be one of {KINDS}, got {kind!r}")
        self.probs = tuple(float(x) for x in probs)
        self.counts = largest_remainder_counts(self.probs, total_steps)
        self.total_steps = total_steps
        self.seed = int(seed)
        self.site = str(site)
        self.kind = kind
        self.tile = tile
        Pattern(kind, 1, 0, tile)  # validates tile
        self.position = 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def max_dp(self) -> int:
        return len(self.probs)

    def epoch_arrays(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dps, offsets)`` for steps ``epoch*T .. (epoch+1)*T - 1``."""
        if epoch not in self._cache:
            gen = torch.Generator().manual_seed(stable_seed("ardrop", self.seed, self.site, epoch))
            unfolded = torch.repeat_interleave(
                torch.arange(1, self.max_dp + 1), torch.tensor(self.counts, dtype=torch.long)
            )
            dps = unfolded[torch.randperm(self.total_steps, generator=gen)]
            offsets = (torch.rand(self.total_steps, generator=gen, dtype=torch.float64) * dps).long()
            offsets = torch.minimum(offsets, dps - 1)  # guards the float edge rand*dp == dp
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[epoch] = (dps, offsets)
        return self._cache[epoch]

    def __getitem__(self, step: int) -> Pattern:
        check_int("step", step, 0)
        epoch, idx = divmod(step, self.total_steps)
        dps, offsets = self.epoch_arrays(epoch)
        return Pattern(self.kind, int(dps[idx]), int(offsets[idx]), self.tile)

    def __len__(self) -> int:
        return self.total_steps

    def next_pattern(self) -> Pattern:
        """The pattern at the cursor, then advance it (for loops that don't track steps)."""
        pattern = self[self.position]
        self.position += 1
        return pattern

    def state_dict(self) -> dict:
        return {
            "probs": list(self.probs),
            "total_steps": self.total_steps,
            "seed": self.seed,
            "site": self.site,
            "kind": self.kind,
            "tile": self.tile,
            "position": self.position,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> PatternSequence:
        try:
            seq = cls(
                state["probs"], state["total_steps"], state["seed"], state["site"], state["kind"], state["tile"]
            )
            seq.position = int(state["position"])
        except KeyError as err:
            raise ValueError(f"pattern-sequence state is missing the field {err}; was it saved by ardrop?") from None
        return seq
