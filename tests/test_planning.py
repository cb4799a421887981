"""`ardrop.planning.plan`: the one place that turns a model's sites into searched sequences."""
import pytest

from ardrop.nn import ApproxLSTMLM, ApproxMLP
from ardrop.planning import plan
from ardrop.search import search
from ardrop.sequence import PatternSequence


def test_plan_equals_search_plus_sequence_per_site():
    model = ApproxMLP((20, 64, 48, 5), kind="row", rates=[0.3, 0.6])
    made = plan(model, total_steps=50, seed=3, search_cfg={"method": "maxent", "max_dp": 6})
    assert [n for n, _ in made.sites] == ["hidden.0.site", "hidden.1.site"]
    for (name, site), rate in zip(made.sites, (0.3, 0.6)):
        want = PatternSequence(search(rate, 6, method="maxent").probs, total_steps=50, seed=3, site=name, kind="row")
        got = made.sequences[name]
        assert [got[s] for s in range(50)] == [want[s] for s in range(50)]
        assert made.results[name]["max_dp"] == 6 and abs(made.results[name]["rate"] - rate) < 1e-6
    made.set_step(17)
    for name, site in made.sites:
        assert site.pattern == made.sequences[name][17]


def test_plan_caps_max_dp_by_the_site_shape_and_skips_unstructured_sites():
    model = ApproxLSTMLM(30, 6, 1, kind="tile", rates=0.5, tile=8)  # 6 wide, 8-wide tiles: few tile diagonals
    made = plan(model, total_steps=5, search_cfg={"max_dp": 8})
    for name, site in made.sites:
        assert made.results[name]["max_dp"] == min(8, site.max_dp) < 8


def test_plan_default_max_dp_is_auto_per_site_rate():
    """No max_dp given: N = floor(1 / (1 - p)) + 1 for each site's own rate (then the shape's cap)."""
    model = ApproxMLP((8, 64, 64, 2), kind="row", rates=[0.3, 0.7])
    made = plan(model, total_steps=5)
    assert [made.results[name]["max_dp"] for name, _ in made.sites] == [2, 4]
    assert plan(ApproxMLP((8, 8, 2), kind="bernoulli"), total_steps=5).sites == []


@pytest.mark.parametrize("kwargs, match", [(dict(total_steps=0), "steps"), (dict(total_steps=2.5), "steps"),
                                           (dict(total_steps=5, search_cfg={"method": "adam"}), "search.method")])
def test_plan_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan(ApproxMLP((8, 16, 2)), **kwargs)


def test_an_unreachable_rate_names_the_site():
    model = ApproxMLP((8, 16, 2), rates=0.9)
    with pytest.raises(ValueError, match="dropout site hidden.0.site"):
        plan(model, total_steps=5, search_cfg={"max_dp": 4})

