"""Inverted-dropout scaling makes the average over a pattern's offsets equal eval mode.

Every row (tile) is kept under exactly one offset of a given dp, with scale dp when the
sizes divide evenly, so the mean over offsets of the training output is the dense output.
"""

import pytest
import torch

from ardrop.nn import ApproxLinear
from ardrop.patterns import Pattern


def _offset_average(layer, kind, dp, x, tile=4):
    outs = []
    layer.train()
    for off in range(dp):
        layer.site.set_pattern(Pattern(kind, dp, off, tile))
        outs.append(layer(x))
    return torch.stack(outs).mean(0)


@pytest.mark.parametrize("dp", [1, 2, 3, 4, 6, 8])
def test_row_offsets_average_to_eval(dp):
    torch.manual_seed(dp)
    layer = ApproxLinear(10, 24, kind="row").double()  # linear activation, 24 divisible by dp
    x = torch.randn(5, 10, dtype=torch.float64)
    avg = _offset_average(layer, "row", dp, x)
    torch.testing.assert_close(avg, layer.eval()(x), rtol=1e-12, atol=1e-12)
    if dp > 1:  # and a single training step is not the eval output
        layer.train().site.set_pattern(Pattern("row", dp, 0))
        assert not torch.allclose(layer(x), layer.eval()(x))


@pytest.mark.parametrize("dp", [1, 2, 3, 4, 6])
def test_tile_offsets_average_to_eval(dp):
    torch.manual_seed(dp)
    # 12 tile-rows: a multiple of every dp above, so each offset keeps the same number of tiles
    layer = ApproxLinear(20, 48, kind="tile", tile=4).double()
    x = torch.randn(5, 20, dtype=torch.float64)
    for off in range(dp):
        assert Pattern("tile", dp, off, 4).tile_scale(48, 20) == pytest.approx(dp)
    avg = _offset_average(layer, "tile", dp, x)
    torch.testing.assert_close(avg, layer.eval()(x), rtol=1e-12, atol=1e-12)
