"""Distances between a guide's draws and exact or reference posterior draws."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["moment_errors", "sliced_w1", "standardize"]


def standardize(draws: Tensor, mean: Tensor, sd: Tensor) -> Tensor:
    """Columns in units of the reference posterior's sd, so no coordinate dominates."""
    return (draws - mean) / sd


def sliced_w1(a: Tensor, b: Tensor, num_projections: int = 256, seed: int = 0) -> float:
    r"""Sliced Wasserstein-1, :math:`\mathbb E_u W_1(u^\top a, u^\top b)`, u uniform on the sphere.

    ``a`` and ``b`` are ``(n, D)`` with the same ``n``; the 1-d distance between two
    equal-size samples is the mean absolute difference of their sorted values.

    Example:
        >>> x = torch.randn(2000, 3)
        >>> sliced_w1(x, x + 1.0) > sliced_w1(x, x.flip(0))
        True
    """
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], num_projections, generator=generator, dtype=a.dtype)
    directions = directions / directions.norm(dim=0)
    pa, _ = torch.sort(a @ directions, dim=0)
    pb, _ = torch.sort(b @ directions, dim=0)
    return float((pa - pb).abs().mean())


def moment_errors(draws: Tensor, mean: Tensor, sd: Tensor) -> tuple[float, float, float]:
    """``max_i |mean_i - ref mean_i| / ref sd_i`` and the range of ``sd_i / ref sd_i``.

    Example:
        >>> x = torch.randn(4000, 2) * torch.tensor([1.0, 2.0])
        >>> err, low, high = moment_errors(x, torch.zeros(2), torch.tensor([1.0, 1.0]))
        >>> round(low, 1), round(high, 1)
        (1.0, 2.0)
    """
    ratio = draws.std(0) / sd
    error = ((draws.mean(0) - mean).abs() / sd).max()
    return float(error), float(ratio.min()), float(ratio.max())
