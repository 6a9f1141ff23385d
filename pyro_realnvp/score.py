r"""The score of a flow's density, carried through its couplings beside the forward pass.

The path-gradient estimator needs :math:`\nabla_u \log q(u)` at its own draw
:math:`u = f(\varepsilon)`, with the flow's parameters held constant. Through an inverse
pass that costs a second run of every conditioner and a backward pass through it. A
coupling's inverse at its own output sees the very inputs its forward pass saw, so the
score can instead be pushed forward layer by layer from the base's,
:math:`\nabla_\varepsilon \log \mathcal N(\varepsilon) = -\varepsilon`, with one
vector-Jacobian product through each conditioner at what the forward pass recorded
(Vaitl et al. 2024, "Fast and unified path gradient estimators for normalizing flows").

For ``y_k = x_k``, ``y_f = x_f e^{s(x_k)} + t(x_k)`` and the score ``g`` at ``x``, the
score at ``y`` is ``w_f = e^{-s} g_f``, ``w_k = g_k - (1 + (y_f - t) w_f)^T \partial s /
\partial x_k - w_f^T \partial t / \partial x_k`` (docs/math.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

from .nn import ScaledLinear

__all__ = ["ACTIVATION_VJPS", "conditioner_vjp", "recorded_call", "supports_score"]

#: ``cotangent * activation'`` from the activation's output, as autograd computes it.
ACTIVATION_VJPS: dict[type, Callable[[nn.Module, Tensor, Tensor], Tensor]] = {
    nn.ELU: lambda layer, cot, out: torch.ops.aten.elu_backward(cot, layer.alpha, 1, 1, True, out),
    nn.ReLU: lambda layer, cot, out: torch.ops.aten.threshold_backward(cot, out, 0),
    nn.Tanh: lambda layer, cot, out: torch.ops.aten.tanh_backward(cot, out),
    # From the output, as for ELU: with a slope >= 0 its sign is the input's.
    nn.LeakyReLU: lambda layer, cot, out: torch.ops.aten.leaky_relu_backward(
        cot, out, layer.negative_slope, True
    ),
}
_LINEARS = (nn.Linear, ScaledLinear)


def supports_score(net: nn.Module) -> bool:
    """Whether ``net`` is a plain ``nn.Sequential`` of linear layers and activations of
    :data:`ACTIVATION_VJPS` (exact types, so no subclass changes the arithmetic) with no
    hooks on it, on its layers or on every module, so :func:`recorded_call` computes
    what :func:`conditioner_vjp` differentiates. Checked at every pass: a few dictionary
    lookups per layer, and a hook added or a layer swapped later is seen.

    Example:
        >>> from pyro_realnvp.nn import conditioner
        >>> supports_score(conditioner(2, 4, (8,))), supports_score(nn.Linear(2, 4))
        (True, False)
    """
    if type(net) is not nn.Sequential or _has_hooks(net) or _global_hooks():
        return False
    for layer in net:
        if _has_hooks(layer):
            return False
        if type(layer) in _LINEARS:
            continue
        if type(layer) not in ACTIVATION_VJPS or getattr(layer, "alpha", 1.0) <= 0:
            return False
        if getattr(layer, "negative_slope", 0.0) < 0:  # the output's sign is not the input's
            return False
    return True


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _global_hooks() -> bool:
    """Hooks registered for every module (``register_module_forward_hook``)."""
    return bool(
        getattr(_module, "_global_forward_hooks", None)
        or getattr(_module, "_global_forward_pre_hooks", None)
    )


def recorded_call(net: nn.Sequential, h: Tensor, tape: list[Tensor]) -> Tensor:
    """``net(h)``, each layer called as a module (its hooks run), appending every
    activation's output to ``tape`` for :func:`conditioner_vjp` (which reads them under
    ``no_grad``, so they need no detaching).

    Example:
        >>> from pyro_realnvp.nn import conditioner
        >>> net, tape = conditioner(3, 2, (5, 4)), []
        >>> h = torch.randn(6, 3)
        >>> torch.equal(recorded_call(net, h, tape), net(h)), [a.shape[-1] for a in tape]
        (True, [5, 4])
    """
    for layer in net:
        h = layer(h)
        if type(layer) not in _LINEARS:
            tape.append(h)
    return h


def conditioner_vjp(net: nn.Sequential, outputs: list[Tensor], cot: Tensor, gain: float) -> Tensor:
    r"""``gain * cot^T \partial net / \partial h`` at the pass whose activation outputs
    :func:`recorded_call` kept in ``outputs``; no autograd graph is built.

    The layers' scalar gains (:class:`~pyro_realnvp.nn.ScaledLinear`) are collected into
    one product, since they commute with the activations' elementwise derivatives.

    Example:
        >>> from pyro_realnvp.nn import conditioner
        >>> net = conditioner(3, 2, (5,), fan_in_scaling=True)
        >>> _ = torch.nn.init.normal_(net[-1].weight)
        >>> h, tape = torch.randn(4, 3, requires_grad=True), []
        >>> cot = torch.randn(4, 2)
        >>> out = recorded_call(net, h, tape)
        >>> auto = torch.autograd.grad(out, h, cot)[0]
        >>> torch.allclose(conditioner_vjp(net, tape, cot, 1.0), auto, atol=1e-6)
        True
    """
    outputs = iter(reversed(outputs))
    # list() first: reversed() on a Sequential indexes it layer by layer, far slower.
    for layer in reversed(list(net)):
        if type(layer) in _LINEARS:
            cot = cot.matmul(layer.weight)
            gain = gain * getattr(layer, "gain", 1.0)
        else:
            cot = ACTIVATION_VJPS[type(layer)](layer, cot, next(outputs))
    return cot * gain
