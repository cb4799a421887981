"""Pattern semantics checked against brute-force definitions from SPEC section 1."""

import math

import pytest
import torch

from ardrop.checks import check_rate
from ardrop.patterns import Pattern
from ardrop.nn.site import PatternSite


@pytest.mark.parametrize("n", [1, 5, 8, 13, 32, 33])
@pytest.mark.parametrize("dp", range(1, 9))
def test_row_pattern_matches_definition(n, dp):
    for offset in range(dp):
        p = Pattern("row", dp, offset)
        expected = torch.tensor([r % dp == offset for r in range(n)])
        assert torch.equal(p.row_mask(n), expected)
        assert p.kept_rows(n).tolist() == [r for r in range(n) if r % dp == offset]
        kept = int(expected.sum())
        if kept:
            assert p.row_scale(n) == pytest.approx(n / kept)
        else:
            with pytest.raises(ValueError, match="keeps no row"):
                p.row_scale(n)


@pytest.mark.parametrize("shape", [(64, 64), (70, 45), (5, 100), (32, 33)])
@pytest.mark.parametrize("tile", [4, 7, 32])
@pytest.mark.parametrize("dp", [1, 2, 3, 5, 8])
def test_tile_pattern_matches_definition(shape, tile, dp):
    out, inn = shape
    masks = []
    for offset in range(dp):
        p = Pattern("tile", dp, offset, tile)
        m = p.tile_mask(out, inn)
        brute = torch.tensor(
            [[((r // tile) + (c // tile)) % dp == offset for c in range(inn)] for r in range(out)]
        )
        assert torch.equal(m, brute)
        assert p.num_kept_weights(out, inn) == int(brute.sum())
        masks.append(m)
    # every weight is kept under exactly one offset
    assert torch.equal(torch.stack(masks).sum(0), torch.ones(out, inn, dtype=torch.long))


def test_tile_rows_and_columns_balanced_when_divisible():
    p = Pattern("tile", 4, 1, tile=8)
    grid = p.tile_grid_mask(64, 128)
    assert (grid.sum(1) == grid.shape[1] // 4).all()
    assert (grid.sum(0) == grid.shape[0] // 4).all()
    assert p.tile_scale(64, 128) == pytest.approx(4.0)


def test_max_tile_dp_is_number_of_diagonals():
    out, inn, t = 70, 45, 32
    limit = Pattern.max_tile_dp(out, inn, t)
    assert limit == math.ceil(70 / 32) + math.ceil(45 / 32) - 1
    for off in range(limit):
        assert Pattern("tile", limit, off, t).num_kept_weights(out, inn) > 0
    assert Pattern("tile", limit + 1, limit, t).num_kept_weights(out, inn) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="row", dp=0, offset=0), "dp must be"),
        (dict(kind="row", dp=3, offset=3), "offset must be"),
        (dict(kind="row", dp=3, offset=-1), "offset must be"),
        (dict(kind="tile", dp=2, offset=0, tile=0), "tile size"),
        (dict(kind="column", dp=2, offset=0), "kind must be"),
        (dict(kind="row", dp=2.0, offset=0), "dp must be"),
    ],
)
def test_bad_patterns_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Pattern(**kwargs)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), "abc"])
def test_bad_rates_raise(rate):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        check_rate(rate)


def test_site_validates_patterns():
    site = PatternSite("row", 0.5, max_dp=4)
    site.set_pattern(Pattern("row", 4, 3))
    with pytest.raises(ValueError, match="largest usable dp"):
        site.set_pattern(Pattern("row", 5, 0))
    with pytest.raises(ValueError, match="drops rows"):
        site.set_pattern(Pattern("tile", 2, 0))
    with pytest.raises(ValueError, match="takes no pattern"):
        PatternSite("bernoulli", 0.5, max_dp=4).set_pattern(Pattern("row", 2, 0))
    with pytest.raises(ValueError, match="dropout kind"):
        PatternSite("gaussian", 0.5, max_dp=4)
    with pytest.raises(ValueError, match="dropout rate"):
        PatternSite("row", 1.5, max_dp=4)
    fresh = PatternSite("tile", 0.5, max_dp=4)
    with pytest.raises(RuntimeError, match="PatternCallback"):
        fresh.active_pattern()
    fresh.eval()
    assert fresh.active_pattern() is None
