"""Algorithm 1 and the exact max-entropy solution."""

import math
import time

import numpy as np
import pytest

from ardrop.search import pattern_rates, search, search_maxent, search_sgd

RATES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


@pytest.mark.parametrize("max_dp", [8, 16])
@pytest.mark.parametrize("rate", RATES)
def test_sgd_default_hyperparameters_hit_the_rate(rate, max_dp):
    r = search_sgd(rate, max_dp)
    assert abs(r.error) < 1e-3
    probs = np.array(r.probs)
    assert probs.shape == (max_dp,)
    assert probs.min() >= 0 and probs.sum() == pytest.approx(1.0, abs=1e-12)
    # the reported rate is the distribution's own expected drop rate
    assert r.rate == pytest.approx(float(probs @ pattern_rates(max_dp)), abs=1e-15)


@pytest.mark.parametrize("max_dp", [2, 8, 64])
@pytest.mark.parametrize("rate", RATES[:1] + RATES[2:] + [0.0])
def test_maxent_is_exact(rate, max_dp):
    if rate > (max_dp - 1) / max_dp:
        pytest.skip("unreachable for this N (tested separately)")
    r = search_maxent(rate, max_dp)
    assert abs(r.error) < 1e-9
    v = pattern_rates(max_dp)
    probs = np.array(r.probs)
    if 0 < rate and probs.min() > 0:
        # max-entropy form: log K is affine in v
        slope = np.polyfit(v, np.log(probs), 1, full=True)
        assert slope[1].size == 0 or slope[1][0] < 1e-12


def test_maxent_has_highest_entropy_among_same_rate():
    rate = 0.5
    best = search_maxent(rate, 8)
    rng = np.random.default_rng(0)
    v = pattern_rates(8)
    for _ in range(200):
        # random distribution with the same mean: mix two points of v around the rate
        a, b = rng.integers(0, 4), rng.integers(4, 8)
        w = (v[b] - rate) / (v[b] - v[a])
        p = np.zeros(8)
        p[a], p[b] = w, 1 - w
        ent = -(p[p > 0] * np.log(p[p > 0])).sum()
        assert ent <= best.entropy + 1e-12


def test_larger_lambda_gives_higher_entropy():
    ents = [search_sgd(0.6, 8, lam=lam).entropy for lam in (0.0, 1e-4, 1e-3, 1e-2, 1e-1)]
    assert all(a < b for a, b in zip(ents, ents[1:])), ents


def test_sgd_approaches_maxent():
    sgd, exact = search_sgd(0.5, 8), search_maxent(0.5, 8)
    assert np.abs(np.array(sgd.probs) - np.array(exact.probs)).max() < 2e-3


@pytest.mark.parametrize("method", ["sgd", "maxent"])
def test_unreachable_rate_is_an_error(method):
    with pytest.raises(ValueError, match=r"cannot be reached.*max_dp to at least 6"):
        search(0.8, 4, method=method)


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.2])
def test_rate_outside_unit_interval(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        search(bad, 8)


def test_bad_hyperparameters_and_method():
    with pytest.raises(ValueError, match="unknown search method"):
        search(0.5, 8, method="adam")
    with pytest.raises(ValueError, match="max_dp"):
        search(0.5, 0)
    with pytest.raises(ValueError, match="lr > 0"):
        search_sgd(0.5, 8, lr=0.0)


def test_search_is_fast():
    # generous bound: the requirement is "well under a second" for N up to 64
    t = time.perf_counter()
    search_sgd(0.7, 64)
    search_maxent(0.7, 64)
    assert time.perf_counter() - t < 2.0
    assert math.isfinite(search_sgd(0.3, 64).entropy)
