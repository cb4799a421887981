"""`PatternCallback`: owns every dropout site's pattern sequence during `fit`.

At fit start it searches a distribution for each structured site (row/tile) and builds its
sequence over `trainer.estimated_stepping_batches` steps; before every training batch it
sets the pattern of step `trainer.global_step` on each site. Because a sequence is a pure
function of (seed, site, step), DDP ranks agree without communicating and a resumed run
continues exactly; the sequences' state still goes into checkpoints so that a resume with
a changed config (e.g. more epochs) keeps the original plan instead of silently re-planning.
Bernoulli (baseline) sites get a per-step mask seed from the same (seed, site, step), so a
resumed baseline run also replays the uninterrupted one.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info

from ardrop.planning import check_search_cfg, pattern_sites, plan
from ardrop.search import resolve_max_dp
from ardrop.sequence import PatternSequence, stable_seed
from callbacks._cadence import logs_this_step


class PatternCallback(pl.Callback):
    """Args:
        search: `{method: sgd|maxent, max_dp: N, **hyperparameters}` for `ardrop.search.search`;
            each site searches up to `min(max_dp, site.max_dp)`.
        seed: sequence seed (the training seed by default in the configs).
        verify_ranks: under DDP, all-gather each epoch's patterns and fail if ranks differ.
    """

    def __init__(self, search: Mapping | None = None, seed: int = 0, verify_ranks: bool = False):
        cfg = OmegaConf.to_container(search, resolve=True) if isinstance(search, DictConfig) else dict(search or {})
        self.method, self.max_dp, self.hyper = check_search_cfg(cfg)
        self.seed = int(seed)
        self.verify_ranks = verify_ranks
        self.sequences: dict[str, PatternSequence] = {}
        self.results: dict[str, dict] = {}
        self.realized: dict[str, list[float]] = {}  # site -> [sum of drop rates, steps]
        self._restored: dict | None = None
        self._epoch_dps: dict[str, list[int]] = {}
        self._epoch_offsets: dict[str, list[int]] = {}
        self._sites: list = []  # every site of the module being fitted, found once at fit start

    # -- planning ---------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module):
        self._sites = pattern_sites(pl_module)
        sites = [(n, s) for n, s in self._sites if s.structured]
        if self._restored is not None:
            self._restore(sites)
        else:
            total = trainer.estimated_stepping_batches
            if not math.isfinite(total) or total < 1:
                raise ValueError(
                    f"cannot plan a pattern sequence over {total} steps: set trainer.max_epochs or trainer.max_steps"
                )
            made = plan(pl_module, int(total), self.seed, {"method": self.method, "max_dp": self.max_dp, **self.hyper})
            self.sequences, self.results = made.sequences, made.results
            self.realized = {name: [0.0, 0] for name in made.sequences}
        self._log_distributions(trainer)
        rank_zero_info(self.plan_summary(trainer, pl_module))

    def plan_summary(self, trainer, pl_module) -> str:
        """The short block printed at fit start: what this run trains, with which dropout plan."""
        sites = self._sites
        kinds = sorted({s.kind for _, s in sites}) or ["none"]
        opts = [type(o).__name__ for o in trainer.optimizers] or ["(none)"]
        lrs = [g["lr"] for o in trainer.optimizers for g in o.param_groups][:1]
        lines = [
            "ardrop plan",
            f"  model      {type(pl_module).__name__} ({sum(p.numel() for p in pl_module.parameters()):,} parameters)",
            f"  dropout    {', '.join(kinds)} at {len(sites)} site(s)"
            + (f", groups={sites[0][1].groups}" if sites and sites[0][1].structured else ""),
            f"  optimizer  {', '.join(opts)}" + (f" lr {lrs[0]:g}" if lrs else "")
            + (f", clip {trainer.gradient_clip_val}" if trainer.gradient_clip_val else ""),
            f"  steps      {trainer.estimated_stepping_batches}",
        ]
        for name, site in sites:
            res = self.results.get(name)
            if res is None:
                lines.append(f"  {name:<10} {site.kind} rate {site.rate:g}")
                continue
            lines.append(
                f"  {name:<10} {site.kind} rate {site.rate:g}: N={len(res['probs'])}, P(dp=1)={res['probs'][0]:.3f}, "
                f"entropy {res['entropy']:.3f}, achieved rate {res['rate']:.4f} ({res['method']})"
            )
        return "\n".join(lines)

    def _restore(self, sites) -> None:
        state, self._restored = self._restored, None
        saved = set(state["sequences"])
        names = {n for n, _ in sites}
        if saved != names:
            raise ValueError(
                f"checkpoint has pattern sequences for sites {sorted(saved)} but the model has {sorted(names)}; "
                "resume with the model/dropout config the checkpoint was trained with"
            )
        changed = []
        for name, site in sites:
            seq = PatternSequence.from_state_dict(state["sequences"][name])
            if seq.kind != site.kind:
                raise ValueError(f"checkpoint site {name} used {seq.kind} patterns, the model now uses {site.kind}")
            saved_res = state["results"].get(name, {})
            now_max_dp = min(resolve_max_dp(self.max_dp, site.rate), site.max_dp)
            for what, then, now in (
                ("rate", saved_res.get("target"), site.rate),
                ("search.max_dp (largest dp)", len(seq.probs), now_max_dp),
                ("search.method", saved_res.get("method"), self.method),
                ("seed", seq.seed, self.seed),
                ("dropout.tile", seq.tile if site.kind == "tile" else None, site.tile if site.kind == "tile" else None),
            ):
                same = (abs(then - now) <= 1e-12) if isinstance(then, float) and isinstance(now, float) else then == now
                if then is not None and not same:
                    changed.append(f"{name}: {what} was {then}, now {now}")
            self.sequences[name] = seq
        if changed:
            raise ValueError(
                "the checkpoint's dropout plan differs from this config, and a resume continues the checkpoint's "
                "pattern sequence:\n  " + "\n  ".join(changed) + "\nResume with the checkpoint's settings, or "
                "start a new run (without ckpt_path) to train with the new ones."
            )
        self.results = dict(state["results"])
        self.realized = {k: list(v) for k, v in state["realized"].items()}

    # -- per step ---------------------------------------------------------------------
    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_dps = {n: [] for n in self.sequences}
        self._epoch_offsets = {n: [] for n in self.sequences}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        log_now = logs_this_step(trainer)  # Lightning's own cadence: a log call costs per call
        for name, site in self._sites:  # found at fit start: no module walk per step
            if site.kind == "bernoulli":  # the baseline's masks resume exactly too
                site.set_step_seed(stable_seed("ardrop-bernoulli", self.seed, name, step))
            if not site.structured:
                continue
            pattern = self.sequences[name][step]
            site.set_pattern(pattern)
            self.sequences[name].position = step + 1
            rate = pattern.nominal_rate
            acc = self.realized[name]
            acc[0] += rate
            acc[1] += 1
            # (setdefault: a mid-epoch resume starts here without on_train_epoch_start)
            self._epoch_dps.setdefault(name, []).append(pattern.dp)
            self._epoch_offsets.setdefault(name, []).append(pattern.offset)
            if log_now:
                pl_module.log(f"pattern/{name}/drop_rate", rate, on_step=True, on_epoch=False, batch_size=1)
                pl_module.log(f"pattern/{name}/realized_rate", acc[0] / acc[1], on_step=True, on_epoch=False,
                              batch_size=1)

    def on_train_epoch_end(self, trainer, pl_module):
        for tb in self._tensorboards(trainer):
            for name, dps in self._epoch_dps.items():
                if dps:
                    tb.experiment.add_histogram(f"pattern/{name}/dp_used", torch.tensor(dps), trainer.global_step)
        if self.verify_ranks and trainer.world_size > 1:
            self._verify_ranks(trainer)

    def _verify_ranks(self, trainer) -> None:
        for name in sorted(self._epoch_dps):
            mine = torch.tensor([self._epoch_dps[name], self._epoch_offsets[name]], dtype=torch.long)
            every = trainer.strategy.all_gather(mine)
            if not all(torch.equal(every[0], every[r]) for r in range(every.shape[0])):
                raise RuntimeError(f"DDP ranks used different dropout patterns at site {name}")

    # -- logging ------------------------------------------------------------------------
    @staticmethod
    def _tensorboards(trainer) -> list[TensorBoardLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]

    def _log_distributions(self, trainer) -> None:
        if trainer.global_rank != 0:
            return
        for tb in self._tensorboards(trainer):
            w = tb.experiment
            for name, res in self.results.items():
                probs = torch.tensor(res["probs"], dtype=torch.float64)
                dps = torch.arange(1, len(probs) + 1, dtype=torch.float64)
                # A histogram with one bucket per dp, weighted by its searched probability.
                w.add_histogram_raw(
                    f"pattern/{name}/searched_distribution",
                    min=1.0, max=float(len(probs)), num=1.0, sum=float(probs @ dps),
                    sum_squares=float(probs @ dps**2), bucket_limits=(dps + 0.5).tolist(),
                    bucket_counts=probs.tolist(), global_step=0,
                )
                for key in ("target", "rate", "error", "entropy"):
                    w.add_scalar(f"pattern/{name}/search_{key}", res[key], 0)
                rows = "\n".join(f"| {k} | {p:.6f} |" for k, p in enumerate(res["probs"], start=1))
                w.add_text(f"pattern/{name}/distribution",
                           f"method {res['method']}, target {res['target']}, achieved {res['rate']:.6f}\n\n"
                           f"| dp | P(dp) |\n|---|---|\n{rows}", 0)

    # -- checkpoint state ---------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "sequences": {n: s.state_dict() for n, s in self.sequences.items()},
            "results": self.results,
            "realized": self.realized,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = state_dict
