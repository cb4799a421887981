"""The argument checks every public entry point shares: integers, drop rates, per-site rates.

Why one module: each value is checked where it enters (a layer's constructor, the config),
with one wording, so the same mistake reads the same wherever it is made. Imports: stdlib only.
"""
from __future__ import annotations

import math
import numbers


def check_int(name: str, value, low: int = 1, hint: str = "") -> int:
    """``value`` as an int >= ``low``; bools and floats (even 2.0) are refused, not truncated."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}{hint}, got {value!r}")
    return int(value)


def check_rate(rate, name: str = "rate") -> float:
    """A drop rate in [0, 1): dropout of 1.0 would drop everything and is never allowed."""
    if isinstance(rate, bool):
        raise ValueError(f"{name} must be a number in [0, 1), got {rate!r}")
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1), got {rate!r}") from None
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
    return value


def site_rates(rates, n_sites: int | None, name: str = "rates", sites: str = "") -> list[float]:
    """One rate for every site, or exactly one per site in data-flow order, each checked.

    ``rates`` may be any sequence (list, tuple, array, OmegaConf ListConfig). With
    ``n_sites=None`` (the config, before the model says how many sites it has) only the
    values are checked. ``sites`` names the sites in the error, e.g. "(hidden1, hidden2)".
    """
    if isinstance(rates, numbers.Real) and not isinstance(rates, bool):
        return [check_rate(rates, name)] * (n_sites or 1)
    if isinstance(rates, (str, bytes)) or not (hasattr(rates, "__len__") and hasattr(rates, "__iter__")):
        count = "per dropout site" if n_sites is None else f"for each of the {n_sites} dropout sites"
        raise ValueError(f"{name} must be a number or a sequence of numbers, one {count}, got {rates!r}")
    if n_sites is not None and len(rates) != n_sites:
        raise ValueError(
            f"{name} has {len(rates)} values but this model has {n_sites} dropout sites{sites}; "
            f"give one rate for all sites or exactly {n_sites}"
        )
    return [check_rate(r, f"{name}[{i}]") for i, r in enumerate(rates)]
