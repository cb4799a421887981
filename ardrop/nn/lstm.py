"""`ApproxLSTMLM`: the paper's LSTM language model with approximate dropout.

Dropout sits on the non-recurrent connections only (Zaremba et al. 2014): the embedding
output, between stacked layers, and before the decoder, so an ``L``-layer model has
``L + 1`` `PatternSite`s, ``sites.0`` .. ``sites.L`` in data-flow order. The recurrence
``h W_hh^T`` is never dropped, so it is never cheaper; the saving is in the consumers of
each dropped vector (``W_ih`` of the next layer, or the decoder).

Row patterns drop units of the vector, so the consumer only needs the kept input columns:
the fast path hands torch's fused LSTM the compact input and the matching columns of
``W_ih`` (its one input GEMM then runs ``1/dp`` of the work), and the decoder runs
`compact_linear` on the compact hidden state. Tile patterns drop weight tiles of the
consumer: the input projection is the block-sparse `tile_linear`, and the recurrence then
runs from those precomputed gates (`lstm_from_gates`; why not the fused kernel is
explained in `_lstm_recurrence`). Measured cost of that choice on the 2-core CPU
(2x1000, batch 20, 35 steps, one layer forward + backward with a dense input GEMM):
oneDNN fused 127-135 ms, precomputed gates + `lstm_from_gates` 134-138 ms, i.e. about 5%
(~7 ms per layer) more for the recurrence, against ~12 ms per layer saved by the
block-sparse input projection at dp=2; the plain autograd loop would cost 255 ms.

``backend="reference"`` computes the same function densely with explicit masks and a
plain per-step LSTM; it is the test oracle, not a training path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ardrop.functional import compact_linear, tile_linear
from ardrop.functional.grouped import Group, grouped_linear, grouped_tile_linear
from ardrop.nn._lstm_recurrence import lstm_from_gates, lstm_gates_reference, lstm_layer_fused, lstm_layer_reference
from ardrop.nn.site import SITE_KINDS, PatternSite
from ardrop.checks import check_int, site_rates
from ardrop.contract.param_reads import FlushesLazyParams, flush_params, mark_dense
from ardrop.patterns import DEFAULT_TILE, Pattern

LSTM_BACKENDS = ("fast", "reference")


class _LSTMLayer(nn.Module):
    """Weights of one LSTM layer in torch's layout (gates i, f, g, o stacked on rows)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))

    def weights(self):
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh


class ApproxLSTMLM(FlushesLazyParams, nn.Module):
    """Embedding -> ``num_layers`` LSTM layers -> decoder, dropout on non-recurrent links."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 1000,
        num_layers: int = 2,
        kind: str = "row",
        rates: float | Sequence[float] = 0.5,
        tile: int = DEFAULT_TILE,
        tie_weights: bool = False,
        backend: str = "fast",
        init_range: float = 0.1,
        groups: int | str = "dp",
    ) -> None:
        super().__init__()
        check_int("vocab_size", vocab_size)
        check_int("hidden_size", hidden_size)
        check_int("num_layers", num_layers)
        check_int("tile size", tile)
        if kind not in SITE_KINDS:
            raise ValueError(f"dropout kind must be one of {SITE_KINDS}, got {kind!r}")
        if backend not in LSTM_BACKENDS:
            raise ValueError(f"backend must be one of {LSTM_BACKENDS}, got {backend!r}")
        if isinstance(init_range, bool) or not isinstance(init_range, (int, float)) or not init_range > 0:
            raise ValueError(f"init_range must be a positive number, got {init_range!r}")
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.kind, self.tile, self.backend = kind, tile, backend
        self.tie_weights = bool(tie_weights)

        self.encoder = nn.Embedding(vocab_size, hidden_size)
        self.layers = nn.ModuleList(_LSTMLayer(hidden_size, hidden_size) for _ in range(num_layers))
        self.decoder = nn.Linear(hidden_size, vocab_size)
        rate_list = site_rates(rates, num_layers + 1,
                               sites=f" (embedding output, {num_layers - 1} between layers, before the decoder)")
        self.sites = nn.ModuleList(
            PatternSite(kind, r, self._site_max_dp(k), tile, groups) for k, r in enumerate(rate_list)
        )
        # Zaremba et al.: every parameter uniform in [-init_range, init_range].
        for p in self.parameters():
            nn.init.uniform_(p, -init_range, init_range)
        if self.tie_weights:
            self.decoder.weight = self.encoder.weight
        self._flush_hooks()  # saving, loading and copying see a LazySGD's pending updates

    def _consumer_shape(self, site_index: int) -> tuple[int, int]:
        """Weight shape ``[out, in]`` of the matrix that reads the site's vector."""
        h = self.hidden_size
        return (self.vocab_size, h) if site_index == self.num_layers else (4 * h, h)

    def _site_max_dp(self, site_index: int) -> int:
        if self.kind == "tile":
            return Pattern.max_tile_dp(*self._consumer_shape(site_index), self.tile)
        return Pattern.max_row_dp(self.hidden_size)  # row: width of the dropped vector

    # ---- input checks ------------------------------------------------------------
    def _check_tokens(self, tokens) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor):
            raise ValueError(f"tokens must be a LongTensor of shape [T, B], got {type(tokens).__name__}")
        if tokens.dim() != 2:
            raise ValueError(
                f"tokens must have shape [T, B] (time-major), got {tokens.dim()}-D shape {tuple(tokens.shape)}"
            )
        if tokens.dtype not in (torch.long, torch.int32):
            raise ValueError(f"tokens must be integer word ids (torch.long), got dtype {tokens.dtype}")
        if tokens.numel() == 0:
            raise ValueError(f"tokens is empty (shape {tuple(tokens.shape)}); need T >= 1 and B >= 1")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"token ids must be in 0..{self.vocab_size - 1} (vocab_size), got range {lo}..{hi}")
        return tokens

    def _initial_state(self, state, batch: int, like: torch.Tensor):
        shape = (self.num_layers, batch, self.hidden_size)
        if state is None:
            zeros = like.new_zeros(shape)
            return zeros, zeros
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError("state must be a pair (h, c) as returned by forward, or None")
        for name, t in zip("hc", state):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"state {name} must have shape [num_layers, B, hidden] = {list(shape)}, got {got}")
            if t.dtype != like.dtype or t.device != like.device:
                raise ValueError(
                    f"state {name} is {t.dtype} on {t.device} but the model is {like.dtype} on {like.device}"
                )
        return state[0], state[1]

    # ---- forward -----------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, state=None):
        """``tokens [T, B]`` -> ``(logits [T, B, V], (h [L, B, H], c [L, B, H]))``."""
        tokens = self._check_tokens(tokens)
        if self.tie_weights:  # the embedding reads it without telling a LazySGD (marked here, so copies are too)
            mark_dense(self.encoder.weight)
        x = self.encoder(tokens)
        h0, c0 = self._initial_state(state, tokens.shape[1], x)
        hs, cs = [], []
        for k, layer in enumerate(self.layers):
            x, h, c = self._layer(self.sites[k], layer, x, h0[k], c0[k])
            hs.append(h)
            cs.append(c)
        logits = self._decode(self.sites[self.num_layers], x)
        return logits, (torch.stack(hs), torch.stack(cs))

    def _time_groups(self, site: PatternSite, x, consumer: torch.Tensor) -> list[Group] | None:
        """One pattern per time step class (``t mod G``), or None for one pattern per step.

        Time steps, not batch columns: a Bernoulli mask shared by the batch but redrawn
        every time step trains like ordinary dropout (docs/learning.md), and time-major
        inputs make each group a strided slice with no transposes.
        """
        found = site.group_patterns(x.shape[0])
        if found is None:
            return None
        out = []
        for start, stride, p in found:
            if p.kind == "row":
                out.append(Group(start, stride, in_dp=p.dp, in_offset=p.offset,
                                 in_scale=p.row_scale(self.hidden_size)))
            else:
                out.append(Group(start, stride, p.dp, p.offset, out_scale=p.tile_scale(*consumer.shape)))
        return out

    def _grouped_projection(self, groups: list[Group], x, w, b):
        """``x @ W.T + b`` with each time-step group's pattern: the fast op, or the masked dense oracle."""
        if self.backend != "reference":
            if self.kind == "row":
                return grouped_linear(x, w, b, groups)
            return grouped_tile_linear(x, w, b, groups, self.tile)
        flush_params(w, b)
        out = x.new_empty(*x.shape[:-1], w.shape[0])
        for g in groups:
            if self.kind == "row":
                mask = Pattern("row", g.in_dp, g.in_offset).row_mask(w.shape[1]).to(x) * g.in_scale
                out[g.start::g.stride] = F.linear(x[g.start::g.stride] * mask, w, b)
            else:
                masked = w * (Pattern("tile", g.out_dp, g.out_offset, self.tile).tile_mask(*w.shape).to(w) * g.out_scale)
                out[g.start::g.stride] = F.linear(x[g.start::g.stride], masked, b)
        return out

    def _layer(self, site: PatternSite, layer: _LSTMLayer, x, h0, c0):
        w_ih, w_hh, b_ih, b_hh = layer.weights()
        groups = self._time_groups(site, x, w_ih)
        if groups is not None:
            gx = self._grouped_projection(groups, x, w_ih, b_ih)
            if self.backend == "reference":
                return lstm_gates_reference(gx, h0, c0, w_hh, b_hh)
            return lstm_from_gates(gx, h0, c0, w_hh, b_hh)
        pattern = site.active_pattern()
        reference = self.backend == "reference"
        if pattern is None or reference:
            flush_params(w_ih, b_ih)  # dense reads of the stored tensors
        if pattern is None:
            if site.kind == "bernoulli":
                x = site.bernoulli(x)
            run = lstm_layer_reference if reference else lstm_layer_fused
            return run(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        dp, off = pattern.dp, pattern.offset
        if pattern.kind == "row":
            scale = pattern.row_scale(self.hidden_size)
            if reference:
                mask = pattern.row_mask(self.hidden_size).to(x) * scale
                return lstm_layer_reference(x * mask, h0, c0, w_ih, w_hh, b_ih, b_hh)
            # The fused kernel's input GEMM runs over the kept columns only. The kept
            # columns are gathered once (oneDNN would otherwise copy the strided view in
            # forward and again in backward); the slice's backward writes the full-size,
            # zero-filled gradient that param.grad needs anyway.
            return lstm_layer_fused(x[..., off::dp] * scale, h0, c0, w_ih[:, off::dp].contiguous(), w_hh, b_ih, b_hh)
        scale = pattern.tile_scale(*w_ih.shape)
        if reference:
            masked = w_ih * (pattern.tile_mask(*w_ih.shape).to(w_ih) * scale)
            return lstm_layer_reference(x, h0, c0, masked, w_hh, b_ih, b_hh)
        steps, batch, _ = x.shape
        gx = tile_linear(x.reshape(steps * batch, -1), w_ih, b_ih, dp, off, self.tile, scale)
        return lstm_from_gates(gx.view(steps, batch, -1), h0, c0, w_hh, b_hh)

    def _decode(self, site: PatternSite, x):
        w, b = self.decoder.weight, self.decoder.bias
        groups = self._time_groups(site, x, w)
        if groups is not None:
            return self._grouped_projection(groups, x, w, b)
        pattern = site.active_pattern()
        if pattern is None or self.backend == "reference":
            flush_params(w, b)  # dense reads of the stored tensors
        if pattern is None:
            if site.kind == "bernoulli":
                x = site.bernoulli(x)
            return F.linear(x, w, b)
        dp, off = pattern.dp, pattern.offset
        if pattern.kind == "row":
            scale = pattern.row_scale(self.hidden_size)
            if self.backend == "reference":
                return F.linear(x * (pattern.row_mask(self.hidden_size).to(x) * scale), w, b)
            return compact_linear(x[..., off::dp], w, b, 1, 0, dp, off, in_scale=scale)
        scale = pattern.tile_scale(*w.shape)
        if self.backend == "reference":
            return F.linear(x, w * (pattern.tile_mask(*w.shape).to(w) * scale), b)
        steps, batch, _ = x.shape
        return tile_linear(x.reshape(steps * batch, -1), w, b, dp, off, self.tile, scale).view(steps, batch, -1)

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, hidden_size={self.hidden_size}, num_layers={self.num_layers}, "
            f"kind={self.kind}, tile={self.tile}, tie_weights={self.tie_weights}, backend={self.backend}, "
            f"groups={self.sites[0].groups}"
        )
