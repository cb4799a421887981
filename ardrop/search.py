"""Choosing how often each pattern size ``dp`` is used (SPEC section 1, Algorithm 1).

A distribution ``K`` over ``dp = 1..N`` has expected drop rate ``K . v`` with
``v_k = (k-1)/k``. Many distributions hit a given rate; the entropy term prefers the
spread-out ones because they train more distinct sub-models.

Two methods:
- ``search_sgd``: the paper's Algorithm 1, gradient descent on softmax logits.
- ``search_maxent``: the exact optimum of the constrained problem, the maximum-entropy
  distribution with mean ``p``, ``K_k ∝ exp(beta * v_k)``, beta found by bisection.

Both run in float64 NumPy: a few thousand tiny vector steps, well under a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ardrop.checks import check_int, check_rate

# Defaults chosen so the paper's method lands within 1e-3 of any rate in 0.1..0.8 for
# N up to 64: the stationary point has rate error lambda * beta / 2, so lambda must be
# small; a large lr is safe because the gradient through the softmax is tiny.
DEFAULT_MAX_DP = 8
SGD_DEFAULTS = {"lam": 1e-4, "lr": 20.0, "eps": 1e-13, "max_iters": 20000}


@dataclass(frozen=True)
class SearchResult:
    """A distribution over ``dp = 1..N`` (``probs[k-1] = P(dp = k)``) and how well it fits."""

    probs: tuple[float, ...]
    target: float
    rate: float
    error: float
    entropy: float
    method: str
    iters: int

    @property
    def max_dp(self) -> int:
        return len(self.probs)

    def as_dict(self) -> dict:
        return {
            "probs": list(self.probs),
            "target": self.target,
            "rate": self.rate,
            "error": self.error,
            "entropy": self.entropy,
            "method": self.method,
            "iters": self.iters,
        }


def pattern_rates(max_dp: int) -> np.ndarray:
    """``v_k = (k-1)/k`` for ``k = 1..N``: the drop rate of each pattern size."""
    k = np.arange(1, max_dp + 1, dtype=np.float64)
    return (k - 1.0) / k


def auto_max_dp(rate: float) -> int:
    """The smallest N that reaches ``rate`` with some spread: ``floor(1 / (1 - rate)) + 1``.

    Why (docs/learning.md): a step with pattern ``dp`` scales kept units by ``dp``, and
    Bernoulli dropout's per-element scale is ``1 / (1 - rate)``. With N = 8 at rate 0.7
    the searched distribution puts 14% on dp = 8 and E[dp] = 4.8 against Bernoulli's
    3.3; the sparse steps' losses and gradients dominate and the LM trains slower. This
    N keeps every dp within one of ``1 / (1 - rate)`` from above (0.3 -> 2, 0.5 -> 3,
    0.7 -> 4) while the search still spreads the mass over 1..N.
    """
    rate = check_rate(rate)
    return math.floor(1.0 / (1.0 - rate)) + 1


def resolve_max_dp(max_dp, rate: float) -> int:
    """``"auto"`` -> `auto_max_dp`; an integer is taken as given (validated by the search)."""
    return auto_max_dp(rate) if max_dp == "auto" else max_dp


def _validate(rate: float, max_dp: int) -> float:
    rate = check_rate(rate)
    check_int("max_dp (the largest pattern N)", max_dp)
    reachable = (max_dp - 1) / max_dp
    if rate > reachable + 1e-15:
        raise ValueError(
            f"rate {rate} cannot be reached with patterns up to dp={max_dp}: the highest rate is "
            f"(N-1)/N = {reachable:.6g}; raise max_dp to at least {math.floor(1 / (1 - rate)) + 1}"
        )
    return rate


def _entropy(probs: np.ndarray) -> float:
    nz = probs[probs > 0]
    return float(-(nz * np.log(nz)).sum())


def _result(probs: np.ndarray, rate: float, method: str, iters: int) -> SearchResult:
    achieved = float(probs @ pattern_rates(len(probs)))
    return SearchResult(
        probs=tuple(float(x) for x in probs),
        target=rate,
        rate=achieved,
        error=achieved - rate,
        entropy=_entropy(probs),
        method=method,
        iters=iters,
    )


def _softmax(theta: np.ndarray) -> np.ndarray:
    e = np.exp(theta - theta.max())
    return e / e.sum()


def search_sgd(
    rate: float,
    max_dp: int = DEFAULT_MAX_DP,
    lam: float = SGD_DEFAULTS["lam"],
    lr: float = SGD_DEFAULTS["lr"],
    eps: float = SGD_DEFAULTS["eps"],
    max_iters: int = SGD_DEFAULTS["max_iters"],
) -> SearchResult:
    """Algorithm 1: minimise ``(K.v - p)^2 + lam * sum(K log K)`` over softmax logits."""
    rate = _validate(rate, max_dp)
    if lam < 0 or lr <= 0 or eps < 0:
        raise ValueError(f"need lam >= 0, lr > 0 and eps >= 0; got lam={lam}, lr={lr}, eps={eps}")
    check_int("max_iters", max_iters)
    v = pattern_rates(max_dp)
    theta = np.zeros(max_dp)
    previous = math.inf
    it = 0
    for it in range(1, max_iters + 1):
        k = _softmax(theta)
        logk = np.log(np.maximum(k, 1e-300))
        err = k @ v - rate
        loss = err * err + lam * float(k @ logk)
        if abs(previous - loss) < eps:
            break
        previous = loss
        grad_k = 2.0 * err * v + lam * (logk + 1.0)
        theta -= lr * k * (grad_k - k @ grad_k)  # chain rule through the softmax
    return _result(_softmax(theta), rate, "sgd", it)


def search_maxent(rate: float, max_dp: int = DEFAULT_MAX_DP, tol: float = 1e-13) -> SearchResult:
    """The exact max-entropy distribution with mean rate ``p`` (the limit Algorithm 1 approximates)."""
    rate = _validate(rate, max_dp)
    v = pattern_rates(max_dp)
    if rate == 0.0 or max_dp == 1:
        probs = np.zeros(max_dp)
        probs[0] = 1.0
        return _result(probs, rate, "maxent", 0)
    if rate >= v[-1]:
        probs = np.zeros(max_dp)
        probs[-1] = 1.0
        return _result(probs, rate, "maxent", 0)

    def mean(beta: float) -> float:
        return float(_softmax(beta * v) @ v)

    lo, hi = -1.0, 1.0
    while mean(lo) > rate:
        lo *= 2.0
    while mean(hi) < rate:
        hi *= 2.0
    it = 0
    for it in range(1, 400):
        mid = 0.5 * (lo + hi)
        m = mean(mid)
        if abs(m - rate) < tol or hi - lo < 1e-15 * max(1.0, abs(mid)):
            break
        if m < rate:
            lo = mid
        else:
            hi = mid
    return _result(_softmax(0.5 * (lo + hi) * v), rate, "maxent", it)


METHODS = {"sgd": search_sgd, "maxent": search_maxent}


def search(rate: float, max_dp: int = DEFAULT_MAX_DP, method: str = "sgd", **hyper) -> SearchResult:
    """Dispatch by name, so configs can pick the method."""
    if method not in METHODS:
        raise ValueError(f"unknown search method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method](rate, max_dp, **hyper)


def main(argv: list[str] | None = None) -> None:
    """``python -m ardrop.search``: compare both methods' distributions for some rates."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--max-dp", type=int, default=DEFAULT_MAX_DP)
    args = parser.parse_args(argv)
    header = "rate  method  achieved    error      entropy  " + " ".join(f"dp={k:<3d}" for k in range(1, args.max_dp + 1))
    print(header)
    for rate in args.rates:
        for method in ("sgd", "maxent"):
            r = search(rate, args.max_dp, method)
            probs = " ".join(f"{p:6.3f}" for p in r.probs)
            print(f"{rate:<5} {method:<7} {r.rate:.6f}  {r.error:+.2e}  {r.entropy:.4f}   {probs}")


if __name__ == "__main__":
    main()
