"""Pattern sequences: exact counts, determinism, independence, continuation, state."""

import pytest
import torch

from ardrop.search import search_maxent
from ardrop.sequence import PatternSequence, largest_remainder_counts


def test_largest_remainder_counts_sum_exactly():
    probs = search_maxent(0.7, 8).probs
    for total in (1, 7, 100, 999, 60000):
        counts = largest_remainder_counts(probs, total)
        assert sum(counts) == total
        for c, p in zip(counts, probs):
            assert abs(c - p * total) < 1.0
    assert largest_remainder_counts([1 / 3] * 3, 10) == [4, 3, 3]


def test_sequence_counts_are_realised_exactly():
    probs = search_maxent(0.5, 8).probs
    seq = PatternSequence(probs, 1234, seed=3, site="a")
    dps = torch.tensor([seq[s].dp for s in range(1234)])
    assert torch.bincount(dps, minlength=9)[1:].tolist() == seq.counts
    offsets = torch.tensor([seq[s].offset for s in range(1234)])
    assert ((offsets >= 0) & (offsets < dps)).all()


def test_offsets_are_roughly_uniform():
    seq = PatternSequence([0, 0, 0, 1.0], 4000, seed=1, site="x")
    offs = torch.tensor([seq[s].offset for s in range(4000)])
    assert torch.bincount(offs).min() > 900


def test_pure_function_of_seed_site_step():
    probs = search_maxent(0.5, 8).probs
    a = PatternSequence(probs, 500, seed=7, site="mlp.0")
    b = PatternSequence(probs, 500, seed=7, site="mlp.0")
    # b is read in a different order, with a detour past T first
    _ = b[1700]
    assert [a[s] for s in range(500)] == [b[s] for s in reversed(range(500))][::-1]
    other_seed = PatternSequence(probs, 500, seed=8, site="mlp.0")
    other_site = PatternSequence(probs, 500, seed=7, site="mlp.1")
    assert [a[s] for s in range(500)] != [other_seed[s] for s in range(500)]
    assert [a[s] for s in range(500)] != [other_site[s] for s in range(500)]


def test_continues_past_total_steps_with_a_fresh_shuffle():
    probs = search_maxent(0.6, 8).probs
    seq = PatternSequence(probs, 300, seed=0, site=0)
    first = [seq[s] for s in range(300)]
    second = [seq[s] for s in range(300, 600)]
    assert first != second
    assert sorted(p.dp for p in first) == sorted(p.dp for p in second)
    assert seq[10**7].dp >= 1


def test_state_round_trip_continues_where_it_stopped():
    probs = search_maxent(0.4, 8).probs
    seq = PatternSequence(probs, 50, seed=11, site="lstm.sites.1", kind="tile", tile=16)
    for _ in range(37):
        seq.next_pattern()
    restored = PatternSequence.from_state_dict(seq.state_dict())
    assert [restored.next_pattern() for _ in range(40)] == [seq.next_pattern() for _ in range(40)]
    with pytest.raises(ValueError, match="missing the field"):
        PatternSequence.from_state_dict({"probs": probs})


@pytest.mark.parametrize(
    "probs, total, match",
    [([0.5, 0.4], 10, "sum to 1"), ([1.0], 0, "total steps"), ([-0.5, 1.5], 10, "non-negative")],
)
def test_bad_input(probs, total, match):
    with pytest.raises(ValueError, match=match):
        PatternSequence(probs, total)
