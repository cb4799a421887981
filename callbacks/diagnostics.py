"""`SiteDiagnostics`: per-site norms against the step's dp, for finding what breaks training.

Why: whether approximate dropout trains like Bernoulli dropout shows first in the sizes
of what flows through each dropout site: the inverted scale multiplies kept activations
by up to ``dp``, and with one pattern per step a kept weight's gradient is about ``dp``
times the dense one. Logged at Lightning's cadence (`log_every_n_steps`), per site:
``diag/<site>/dp``, the output norm of the layer the site drops from (or feeds), that
layer's weight-gradient norm, and for the whole model the gradient norm before clipping
and its ratio to ``gradient_clip_val`` (above 1: the step was clipped). Off by default
(`+callbacks.diagnostics._target_=callbacks.SiteDiagnostics`): it reads every gradient once more.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from ardrop.nn import PatternSite
from callbacks._cadence import logs_this_step


def _owner_layers(module: torch.nn.Module):
    """(site name, site, the module whose output and weight belong to it) for every structured site."""
    out = []
    for name, mod in module.named_modules():
        site = getattr(mod, "site", None)
        if isinstance(site, PatternSite):  # ApproxLinear: the site drops its output rows / tiles
            out.append((f"{name}.site", site, mod, mod.weight))
    lstm = [m for m in module.modules() if hasattr(m, "sites") and hasattr(m, "layers")]
    for net in lstm:  # ApproxLSTMLM: site k feeds layer k's W_ih, the last one the decoder
        prefix = next(n for n, m in module.named_modules() if m is net)
        consumers = [layer.weight_ih for layer in net.layers] + [net.decoder.weight]
        for k, site in enumerate(net.sites):
            out.append((f"{prefix}.sites.{k}", site, None, consumers[k]))
    return out


class SiteDiagnostics(pl.Callback):
    def __init__(self) -> None:
        self._sites = None
        self._outputs: dict[str, float] = {}
        self._hooks = []

    def on_fit_start(self, trainer, pl_module):
        self._sites = _owner_layers(pl_module)
        for name, _, mod, _ in self._sites:
            if mod is not None:
                self._hooks.append(mod.register_forward_hook(
                    lambda m, i, o, name=name: self._outputs.__setitem__(name, float(o.detach().float().norm()))))

    def on_fit_end(self, trainer, pl_module):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not logs_this_step(trainer) or not self._sites:
            return
        grads = [p.grad.detach() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        total = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        pl_module.log("diag/grad_norm", total, on_step=True, on_epoch=False, batch_size=1)
        clip = trainer.gradient_clip_val
        if clip:
            pl_module.log("diag/grad_norm_over_clip", total / float(clip), on_step=True, on_epoch=False, batch_size=1)
        for name, site, _, weight in self._sites:
            pattern = site.pattern if site.structured else None
            pl_module.log(f"diag/{name}/dp", float(pattern.dp if pattern is not None else 1), on_step=True,
                          on_epoch=False, batch_size=1)
            if weight.grad is not None:
                pl_module.log(f"diag/{name}/weight_grad_norm", float(weight.grad.detach().norm()), on_step=True,
                              on_epoch=False, batch_size=1)
            if name in self._outputs:
                pl_module.log(f"diag/{name}/output_norm", self._outputs[name], on_step=True, on_epoch=False,
                              batch_size=1)
