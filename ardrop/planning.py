"""`plan`: a model's dropout sites, each with its searched distribution and its sequence.

Why one function: "find the structured sites, search a distribution for each site's rate
(sizes capped by its shape), build one shuffled sequence per site over the run" is what
every training loop does before its first step: the Lightning callback, the benchmark
and a user's own loop. Each step then sets the step's pattern on every site::

    dropout_plan = plan(model, total_steps=10_000, seed=0)
    for step, (x, y) in enumerate(loader):
        dropout_plan.set_step(step)
        ...forward, backward, optimizer step...
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ardrop.checks import check_int
from ardrop.nn.site import PatternSite
from ardrop.search import METHODS, resolve_max_dp, search
from ardrop.sequence import PatternSequence


def pattern_sites(module: torch.nn.Module) -> list[tuple[str, PatternSite]]:
    """Every dropout site of a model, by its module name (Bernoulli and none sites too)."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, PatternSite)]


def structured_sites(module: torch.nn.Module) -> list[tuple[str, PatternSite]]:
    """The sites with row or tile patterns: the ones that get a searched distribution."""
    return [(n, m) for n, m in pattern_sites(module) if m.structured]


@dataclass
class DropoutPlan:
    """Per structured site: the search result (``results[name]``, a dict) and its sequence."""

    sites: list[tuple[str, PatternSite]]
    sequences: dict[str, PatternSequence] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)

    def set_step(self, step: int) -> None:
        """Give every site the pattern of training step ``step``."""
        for name, site in self.sites:
            site.set_pattern(self.sequences[name][step])


# A plan's largest pattern N when the config names none: ``floor(1 / (1 - p)) + 1`` per site.
# Measured against the paper-style fixed N = 8 (docs/learning.md): MNIST 2048x2048 row at
# rate 0.7, 20 epochs, 98.55% against 98.27% test accuracy (Bernoulli 98.49%), and the
# LSTM test's tile gap to Bernoulli gone; the expected work is 1 - p for any N.
DEFAULT_PLAN_MAX_DP = "auto"


def check_search_cfg(search_cfg: Mapping | None) -> tuple[str, int | str, dict]:
    """``{method, max_dp, **hyperparameters}`` split and checked, before any site is searched.

    Called where the config enters (the callback's constructor) and by `plan`, so a typo in
    a hyperparameter's name fails at start, not after the data is loaded.
    """
    cfg = dict(search_cfg or {})
    method = cfg.pop("method", "sgd")
    max_dp = cfg.pop("max_dp", DEFAULT_PLAN_MAX_DP)
    if method not in METHODS:
        raise ValueError(f"unknown search.method {method!r}; choose one of {sorted(METHODS)}")
    if max_dp != "auto":
        check_int("search.max_dp", max_dp, hint=" or 'auto'")
    try:
        inspect.signature(METHODS[method]).bind(0.5, 8, **cfg)
    except TypeError as err:
        raise ValueError(f"search config for method {method!r}: {err}") from None
    return method, max_dp, cfg


def plan(model: torch.nn.Module, total_steps: int, seed: int = 0, search_cfg: Mapping | None = None,
         rate: float | None = None) -> DropoutPlan:
    """Search every structured site's distribution and build its sequence over ``total_steps``.

    ``search_cfg``: ``{method: sgd|maxent, max_dp: N|"auto", **hyperparameters}`` for
    `ardrop.search.search`; each site searches up to ``min(max_dp, site.max_dp)``.
    ``rate`` overrides the sites' own rates (the benchmark's sweep).
    """
    check_int("the number of steps to plan a pattern sequence over", total_steps)
    method, max_dp, cfg = check_search_cfg(search_cfg)
    sites = structured_sites(model)
    out = DropoutPlan(sites)
    for name, site in sites:
        site_rate = site.rate if rate is None else rate
        cap = min(resolve_max_dp(max_dp, site_rate), site.max_dp)
        try:
            res = search(site_rate, cap, method=method, **cfg)
        except ValueError as err:
            raise ValueError(
                f"dropout site {name}: {err} (search.max_dp={max_dp}; this site's shape allows "
                f"dp <= {site.max_dp}{f' with tile {site.tile}' if site.kind == 'tile' else ''}); "
                "lower the rate, or raise search.max_dp / lower dropout.tile"
            ) from None
        out.results[name] = {**res.as_dict(), "max_dp": cap}
        out.sequences[name] = PatternSequence(res.probs, total_steps=total_steps, seed=seed, site=name,
                                              kind=site.kind, tile=site.tile)
    return out
