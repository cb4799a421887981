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
from torch import nn

from ardrop.nn._lstm_recurrence import lstm_from_gates, lstm_gates_reference, lstm_layer_fused, lstm_layer_reference
from ardrop.nn.site import SITE_KINDS, PatternSite
from ardrop.nn.site_linear import site_linear
from ardrop.checks import check_int, site_rates
from ardrop.contract.param_reads import FlushesLazyParams, flush_params, mark_dense
from ardrop.patterns import DEFAULT_TILE, Pattern

LSTM_BACKENDS = ("fast", "reference")
# One pattern per offset, interleaved over time steps: with one pattern for the whole
# step the LM diverges at lr 1 (docs/learning.md), as Bernoulli dropout with one mask
# shared by all samples and time steps does.
DEFAULT_GROUPS = "dp"


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
        groups: int | str | None = None,
    ) -> None:
        """``groups``: patterns per step (`PatternSite`); None is the family default, `DEFAULT_GROUPS`."""
        super().__init__()
        groups = DEFAULT_GROUPS if groups is None else groups
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

    def _layer(self, site: PatternSite, layer: _LSTMLayer, x, h0, c0):
        w_ih, w_hh, b_ih, b_hh = layer.weights()
        reference = self.backend == "reference"
        grouped = site.group_patterns(x.shape[0]) is not None  # one pattern per time-step class
        pattern = site.active_pattern()
        if not grouped and (pattern is None or pattern.kind == "row"):
            # The fused kernel does the input GEMM itself: dense, or over the kept columns only
            # (gathered once: oneDNN would otherwise copy the strided view in forward and again
            # in backward; the slice's backward writes the full-size gradient param.grad needs).
            if site.kind == "bernoulli":
                x = site.bernoulli(x)
            if pattern is None or reference:
                flush_params(w_ih, b_ih)  # dense reads of the stored tensors
            if reference:
                if pattern is not None:
                    x = x * (pattern.row_mask(self.hidden_size).to(x) * pattern.row_scale(self.hidden_size))
                return lstm_layer_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
            if pattern is None:
                return lstm_layer_fused(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
            dp, off = pattern.dp, pattern.offset
            return lstm_layer_fused(x[..., off::dp] * pattern.row_scale(self.hidden_size), h0, c0,
                                    w_ih[:, off::dp].contiguous(), w_hh, b_ih, b_hh)
        # Tile, or one pattern per time-step class: the input projection with the site's
        # dropout, then the recurrence from the precomputed gates.
        gx = site_linear(site, x, w_ih, b_ih, side="in", backend=self.backend)
        return (lstm_gates_reference if reference else lstm_from_gates)(gx, h0, c0, w_hh, b_hh)

    def _decode(self, site: PatternSite, x):
        return site_linear(site, x, self.decoder.weight, self.decoder.bias, side="in", backend=self.backend)

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, hidden_size={self.hidden_size}, num_layers={self.num_layers}, "
            f"kind={self.kind}, tile={self.tile}, tie_weights={self.tie_weights}, backend={self.backend}, "
            f"groups={self.sites[0].groups}"
        )
