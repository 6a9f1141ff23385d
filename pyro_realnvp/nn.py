"""The conditioner network and the bound on its log-scale."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ScaledLinear", "conditioner", "mlp_call", "soft_clamp"]


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
    r"""``nn.Linear`` whose weight is stored times :math:`\sqrt n`: :math:`W = w / \sqrt n`.

    ``n`` is ``in_features``. torch initialises :math:`W` within :math:`\pm 1/\sqrt n`, so
    the stored :math:`w` starts within :math:`\pm 1` at every width, and Adam's step of
    about ``lr`` per entry is the same relative change in every layer. A plain layer's
    output can move by ``lr * n`` per step instead: at ``lr=1e-2`` and width 84 a
    coupling's log-scale moved by most of a unit in a few steps, and eight such layers
    compounded until the flow overflowed (docs/math.md). Scaling by :math:`1/n` (muP's
    rule for Adam) was stable too but learned too slowly within 3000 steps (10-d funnel
    KL 0.44 against 0.27, banana 0.78 against 0.64, seed 0). The initial function is
    torch's usual one.

    Example:
        >>> layer = ScaledLinear(64, 4)
        >>> torch.allclose(layer.effective_weight(), layer.weight / 8)
        True
    """

    def __init__(self, in_features: int, out_features: int, **kwargs) -> None:
        super().__init__(in_features, out_features, **kwargs)
        self.gain = max(in_features, 1) ** -0.5
        with torch.no_grad():
            self.weight.div_(self.gain)

    def effective_weight(self) -> Tensor:
        r"""The weight the layer applies, :math:`w / \sqrt n`."""
        return self.weight * self.gain

    def forward(self, x: Tensor) -> Tensor:
        return _linear(x, self.weight, self.bias, self.gain)


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


def is_plain_mlp(net: nn.Module) -> bool:
    """Linear layers between parameter-free modules, as :func:`conditioner` builds."""
    return isinstance(net, nn.Sequential) and all(
        isinstance(layer, nn.Linear) or not any(True for _ in layer.parameters()) for layer in net
    )


def mlp_call(net: nn.Module, x: Tensor, detach: bool = False, plain: bool | None = None) -> Tensor:
    """``net(x)``; with ``detach`` its parameters are constants while ``x`` keeps its gradient.

    Without ``detach`` this is the module call (its hooks run). With ``detach`` (the
    path-gradient estimator's inverse pass) a :func:`conditioner` runs as plain calls on
    detached weights, which also runs under ``torch.jit.trace`` (Pyro's JIT ELBOs); any
    other network goes through ``torch.func.functional_call`` on detached copies of its
    parameters. ``plain`` is whether ``net`` is such a conditioner, if the caller knows
    (checking walks its layers).

    Example:
        >>> net = conditioner(2, 2, (4,))
        >>> x = torch.randn(3, 2, requires_grad=True)
        >>> out = mlp_call(net, x, detach=True)
        >>> torch.equal(out, net(x)), out.requires_grad
        (True, True)
    """
    if not detach:
        return net(x)
    if not (is_plain_mlp(net) if plain is None else plain):
        params = {name: p.detach() for name, p in net.named_parameters()}
        return torch.func.functional_call(net, params, (x,))
    for layer in net:
        if isinstance(layer, nn.Linear):
            bias = None if layer.bias is None else layer.bias.detach()
            x = _linear(x, layer.weight.detach(), bias, getattr(layer, "gain", 1.0))
        else:
            x = layer(x)
    return x


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None, gain: float) -> Tensor:
    """``x (gain W)^T + b``; with a bias, one ``addmm`` scales the product by the gain
    instead of multiplying the weight at every call."""
    if bias is None or x.dim() < 2:
        return nn.functional.linear(x, weight * gain if gain != 1.0 else weight, bias)
    flat = x.flatten(0, -2) if x.dim() > 2 else x
    out = torch.addmm(bias, flat, weight.t(), alpha=gain)
    return out.reshape(*x.shape[:-1], weight.shape[0]) if x.dim() > 2 else out
