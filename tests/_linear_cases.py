"""Shared helpers for the functional / layer tests (not collected: no ``test_`` prefix)."""

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs error relative to the reference's magnitude (b is the float64 reference)."""
    a, b = a.double(), b.double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def grads(out: torch.Tensor, inputs, seed: int = 0):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    return torch.autograd.grad(out, [t for t in inputs if t is not None], g)
