"""`ApproxMLP`: the paper's MNIST MLP with approximate dropout on every hidden layer.

With row patterns the hidden activations stay compact between layers ("compact
chaining"): hidden layer ``l+1`` multiplies only its kept rows against the kept columns
that layer ``l`` produced, and the output layer consumes the compact last hidden layer.
The dropped units are never materialised, so both layers around each site skip work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ardrop.functional import compact_linear, row_dropout_reference
from ardrop.functional.grouped import Group, grouped_linear
from ardrop.contract.param_reads import FlushesLazyParams, flush_params
from ardrop.nn.linear import ApproxLinear, check_layer_backend, check_width
from ardrop.checks import check_int, site_rates
from ardrop.patterns import DEFAULT_TILE


# One pattern per step (the paper's), measured against `dp` groups on MNIST 2048x2048 at
# rate 0.7 over 20 epochs (docs/learning.md): with N = auto, row +0.03 pp against
# Bernoulli at equal epochs and +1.09 pp at equal wall time, x4.0 training time (3 seeds);
# groups=dp gave -0.07 pp at x1.78 (N = 8, one seed), so one pattern per step wins at
# equal wall time. The LSTM LM, where one pattern would serve every sample and time step
# of a step, diverges without groups.
DEFAULT_GROUPS = 1


class ApproxMLP(FlushesLazyParams, nn.Module):
    """``sizes[0] -> ... -> sizes[-1]`` with ReLU and dropout sites on the hidden layers."""

    def __init__(
        self,
        sizes: Sequence[int] = (784, 2048, 2048, 10),
        kind: str = "row",
        rates=0.5,
        tile: int = DEFAULT_TILE,
        backend: str = "fast",
        groups: int | str | None = None,
    ) -> None:
        """``groups``: patterns per step (`PatternSite`); None is the family default, `DEFAULT_GROUPS`."""
        super().__init__()
        groups = DEFAULT_GROUPS if groups is None else groups
        sizes = tuple(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes must be at least two integers >= 1 (input, ..., classes), got {sizes!r}")
        sizes = tuple(check_int(f"sizes[{i}]", s) for i, s in enumerate(sizes))
        self.sizes = sizes
        self.backend = check_layer_backend(backend)
        n_hidden = len(sizes) - 2
        rate_list = site_rates(rates, n_hidden, sites=" (one after each hidden layer)")
        self.hidden = nn.ModuleList(
            ApproxLinear(sizes[l], sizes[l + 1], kind=kind, rate=rate_list[l], tile=tile, relu=True, backend=backend,
                         groups=groups)
            for l in range(n_hidden)
        )
        self.head = nn.Linear(sizes[-2], sizes[-1])
        self.kind = self.hidden[0].kind if n_hidden else kind
        self._flush_hooks()  # saving, loading and copying see a LazySGD's pending updates (the head's too)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            x = x.flatten(1)  # images [B, 1, 28, 28] -> [B, 784]
        check_width(x, self.sizes[0], "ApproxMLP")
        if self.kind == "row" and self.backend == "fast":
            count = self._group_count(x.shape[0])
            return self._forward_compact(x) if count <= 1 else self._forward_grouped(x, count)
        if self.kind == "row":  # reference: dense layers, explicit masks
            flush_params(*self.parameters())  # dense reads below: stored values must be current (LazySGD)
            count = self._group_count(x.shape[0])
            for layer in self.hidden:
                p = layer.site.active_pattern()
                h = torch.relu(F.linear(x, layer.weight, layer.bias))
                if p is None or count <= 1:
                    x = h if p is None else row_dropout_reference(h, p.dp, p.offset)
                    continue
                x = torch.empty_like(h)  # sample b drops with offset (offset + b mod count) mod dp
                for g in range(count):
                    x[g::count] = row_dropout_reference(h[g::count], p.dp, (p.offset + g) % p.dp)
            return self.head(x)
        for layer in self.hidden:
            x = layer(x)  # each layer reads its weights the LazySGD way (or flushes first)
        return compact_linear(x, self.head.weight, self.head.bias)

    def _group_count(self, batch: int) -> int:
        """Model-wide number of sample groups this step: the largest site's (1: one pattern per step).

        One count for all sites, so a sample's offsets at consecutive layers come from the
        same group ``g`` and each layer's kept blocks stay distinct (`grouped_linear`).
        """
        counts = [len(found) for layer in self.hidden if (found := layer.site.group_patterns(batch)) is not None]
        return max(counts, default=1)

    def _forward_grouped(self, x: torch.Tensor, count: int) -> torch.Tensor:
        """Row patterns per group of samples ``g::count``, full-width activations (zeros where dropped)."""
        prev = [(1, 0)] * count
        for layer in self.hidden:
            p = layer.site.active_pattern()
            groups = []
            for g in range(count):
                dp, off = (1, 0) if p is None else (p.dp, (p.offset + g) % p.dp)
                scale = layer.out_features / len(range(off, layer.out_features, dp))
                groups.append(Group(g, count, dp, off, *prev[g], 1.0, scale))
            x = grouped_linear(x, layer.weight, layer.bias, groups, relu=True)
            prev = [(g.out_dp, g.out_offset) for g in groups]
        return grouped_linear(x, self.head.weight, self.head.bias, [Group(g, count, 1, 0, *prev[g]) for g in range(count)])

    def _forward_compact(self, x: torch.Tensor) -> torch.Tensor:
        in_dp, in_off = 1, 0
        for layer in self.hidden:
            x, in_dp, in_off = layer.forward_compact(x, in_dp, in_off)
        # Through compact_linear even when dense, so a LazySGD's pending update is read too.
        return compact_linear(x, self.head.weight, self.head.bias, 1, 0, in_dp, in_off)
