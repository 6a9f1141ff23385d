"""The conditioner network and the bound on its log-scale."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["conditioner", "soft_clamp"]


def soft_clamp(s: Tensor, bound: float) -> Tensor:
    """Smoothly bound a log-scale, :math:`\\tilde s = b \\tanh(s / b)`, so ``|s| < b``.

    Near zero it is the identity (slope 1), so a layer starts unbounded in effect; far
    out it saturates, so ``exp(s)`` can never overflow however large the network's output.

    Example:
        >>> soft_clamp(torch.tensor([0.0, 1e6]), bound=3.0)
        tensor([0., 3.])
    """
    return bound * torch.tanh(s / bound)


def conditioner(
    in_features: int,
    out_features: int,
    hidden_dims: Sequence[int] = (64, 64),
    *,
    activation: type[nn.Module] = nn.ELU,
    device=None,
    dtype: torch.dtype | None = None,
) -> nn.Sequential:
    """An MLP ``in_features -> hidden_dims -> out_features`` whose last layer starts at zero.

    The zero last layer makes a fresh coupling exactly the identity, so a new flow
    starts as its base distribution and SVI begins where a Gaussian guide would.

    Example:
        >>> net = conditioner(3, 6, hidden_dims=(8,))
        >>> net(torch.randn(2, 3)).abs().max().item()
        0.0
    """
    factory = {"device": device, "dtype": dtype}
    widths = [in_features, *hidden_dims]
    layers: list[nn.Module] = []
    with warnings.catch_warnings():
        # in_features == 0 (a one-coordinate flow) is valid: the network is then a
        # learned constant, and torch's warning about initialising an empty weight is noise.
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out, **factory), activation()]
    last = nn.Linear(widths[-1], out_features, **factory)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)
