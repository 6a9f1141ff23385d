"""The conditioner network and the bound on its log-scale."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ScaledLinear", "conditioner", "soft_clamp"]


def soft_clamp(s: Tensor, bound: float) -> Tensor:
    """Smoothly bound a log-scale, :math:`\\tilde s = b \\tanh(s / b)`, so ``|s| < b``.

    Near zero it is the identity (slope 1), so a layer starts unbounded in effect; far
    out it saturates, so ``exp(s)`` can never overflow however large the network's output.

    Example:
        >>> soft_clamp(torch.tensor([0.0, 1e6]), bound=3.0)
        tensor([0., 3.])
    """
    return bound * torch.tanh(s / bound)


class ScaledLinear(nn.Linear):
    r"""``nn.Linear`` whose weight is stored divided by ``in_features``: :math:`W = w / n`.

    Adam moves every stored entry by about ``lr`` per step whatever its gradient, so a
    plain layer's output moves by up to ``lr * in_features`` per step: at ``lr=1e-2``
    and width 84 a coupling's log-scale can change by most of a unit in a few steps, and
    eight such layers compound until the flow overflows. Storing :math:`w = n W` makes
    the output move by about ``lr`` per step at any width (per-layer learning rates
    :math:`\propto 1/\text{fan-in}`, as muP prescribes for Adam), so in the user's own
    Adam loop the flow learns at the pace the affine part does. The initial function is
    torch's usual one.

    Example:
        >>> layer = ScaledLinear(84, 4)
        >>> torch.allclose(layer.effective_weight(), layer.weight / 84)
        True
    """

    def __init__(self, in_features: int, out_features: int, **kwargs) -> None:
        super().__init__(in_features, out_features, **kwargs)
        self.gain = 1.0 / max(in_features, 1)
        with torch.no_grad():
            self.weight.div_(self.gain)

    def effective_weight(self) -> Tensor:
        """The weight the layer applies, :math:`w / n`."""
        return self.weight * self.gain

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.effective_weight(), self.bias)


def conditioner(
    in_features: int,
    out_features: int,
    hidden_dims: Sequence[int] = (64, 64),
    *,
    activation: type[nn.Module] = nn.ELU,
    fan_in_scaling: bool = False,
    device=None,
    dtype: torch.dtype | None = None,
) -> nn.Sequential:
    """An MLP ``in_features -> hidden_dims -> out_features`` whose last layer starts at zero.

    The zero last layer makes a fresh coupling exactly the identity, so a new flow
    starts as its base distribution and SVI begins where a Gaussian guide would. With
    ``fan_in_scaling`` every layer is a :class:`ScaledLinear`, so under Adam the network's
    output moves by about ``lr`` per step at any width (what a guide trained in a plain
    ``Adam({"lr": 0.01})`` loop needs).

    Example:
        >>> net = conditioner(3, 6, hidden_dims=(8,))
        >>> net(torch.randn(2, 3)).abs().max().item()
        0.0
    """
    factory = {"device": device, "dtype": dtype}
    linear = ScaledLinear if fan_in_scaling else nn.Linear
    widths = [in_features, *hidden_dims]
    layers: list[nn.Module] = []
    with warnings.catch_warnings():
        # in_features == 0 (a one-coordinate flow) is valid: the network is then a
        # learned constant, and torch's warning about initialising an empty weight is noise.
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [linear(width_in, width_out, **factory), activation()]
    last = linear(widths[-1], out_features, **factory)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)
