"""`grouped_tile_linear` and `grouped_linear` against explicit per-group masks (float64, 1e-12).

The reference builds each group's tile mask from the definition (tile (i, j) kept iff
(i + j) mod dp == offset) and multiplies densely; it shares no code with the ops. Cases
cover the batched path (groups g::G with distinct offsets of one dp) and the general one,
ragged shapes, extra batch dimensions (the LSTM's [T, B, H]) and a group axis shorter
than a multiple of G.
"""
import pytest
import torch

from ardrop.functional.grouped import Group, grouped_linear, grouped_tile_linear


def _tile_mask(rows, cols, t, dp, offset):
    i = torch.arange(rows)[:, None] // t
    j = torch.arange(cols)[None, :] // t
    return ((i + j) % dp == offset).double()


CASES = [  # (group axis, extra dims, in, out, dp, offset, tile, relu, layout)
    (13, (), 30, 22, 3, 1, 4, True, "batched"),
    (7, (3,), 45, 70, 5, 2, 8, False, "batched"),
    (20, (2,), 64, 64, 2, 0, 32, True, "batched"),
    (9, (), 33, 17, 4, 3, 4, True, "batched"),
    (10, (), 30, 22, 3, 1, 4, True, "repeated_offsets"),
]


@pytest.mark.parametrize("n, extra, n_in, n_out, dp, off, t, relu, layout", CASES)
def test_grouped_tile_matches_explicit_masks(n, extra, n_in, n_out, dp, off, t, relu, layout):
    torch.manual_seed(0)
    count = dp if layout == "batched" else dp + 1  # dp + 1 groups: two share an offset (general path)
    groups = [Group(g, count, dp, (off + g) % dp, out_scale=1.0 + 0.25 * g) for g in range(count)]
    x = torch.randn(n, *extra, n_in, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n_out, n_in, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n_out, dtype=torch.float64, requires_grad=True)
    y = grouped_tile_linear(x, w, b, groups, t, relu)
    gy = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)
    y.backward(gy)
    xr, wr, br = (p.detach().clone().requires_grad_() for p in (x, w, b))
    rows = []
    for u in range(n):
        gr = groups[u % count]
        z = xr[u] @ (wr * _tile_mask(n_out, n_in, t, dp, gr.out_offset) * gr.out_scale).t() + br
        rows.append(torch.relu(z) if relu else z)
    yr = torch.stack(rows)
    yr.backward(gy)
    assert torch.allclose(y, yr, atol=1e-12)
    for got, want in ((x.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
        assert torch.allclose(got, want, atol=1e-12)


def test_grouped_row_matches_explicit_masks():
    torch.manual_seed(1)
    n, n_in, n_out, dp = 11, 19, 14, 3
    groups = [Group(g, dp, dp, (2 + g) % dp, 2, g % 2, in_scale=1.5, out_scale=1.2) for g in range(dp)]
    x = torch.randn(n, n_in, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n_out, n_in, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n_out, dtype=torch.float64, requires_grad=True)
    y = grouped_linear(x, w, b, groups, relu=True)
    y.backward(torch.ones_like(y))
    xr, wr, br = (p.detach().clone().requires_grad_() for p in (x, w, b))
    rows = []
    for u in range(n):
        gr = groups[u % dp]
        keep_in = (torch.arange(n_in) % gr.in_dp == gr.in_offset).double() * gr.in_scale
        keep_out = (torch.arange(n_out) % gr.out_dp == gr.out_offset).double()
        rows.append(torch.relu((xr[u] * keep_in) @ wr.t() + br) * keep_out * gr.out_scale)
    yr = torch.stack(rows)
    yr.backward(torch.ones_like(yr))
    assert torch.allclose(y, yr, atol=1e-12)
    for got, want in ((x.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
        assert torch.allclose(got, want, atol=1e-12)
