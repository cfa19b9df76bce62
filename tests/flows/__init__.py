"""Shared helpers of the flow tests."""
import torch


def perturbed(module, scale, seed=0):
    """``module`` with ``scale * N(0, 1)`` added to every parameter (seeded): away from the identity init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module
