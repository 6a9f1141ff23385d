r"""The conditioner network: its layers, its calls, and its vector-Jacobian product by hand.

A coupling's ``s`` and ``t`` come from an MLP on the kept coordinates (:func:`conditioner`)
whose last layer starts at zero. The path-gradient estimator needs the density's score
:math:`\nabla_u \log q(u)` at its own draw with the flow's parameters held constant.
Through an inverse pass that costs a second run of every conditioner and a backward pass
through it; instead the score is pushed forward layer by layer from the base's,
:math:`\nabla_\varepsilon \log \mathcal N(\varepsilon) = -\varepsilon`, with one
vector-Jacobian product through each conditioner at what the forward pass recorded
(:func:`recorded_call`, :func:`conditioner_vjp`; Vaitl et al. 2024, "Fast and unified path
gradient estimators for normalizing flows"; the coupling's part is in docs/math.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

__all__ = [
    "ACTIVATION_VJPS",
    "ScaledLinear",
    "conditioner",
    "conditioner_vjp",
    "is_plain_mlp",
    "mlp_call",
    "recorded_call",
    "soft_clamp",
    "supports_score",
    "unscaled_vjp",
]


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
    about ``lr`` per entry is the same relative change in every layer, where a plain
    layer's output can move by ``lr * n`` per step (docs/math.md; why not :math:`1/n`:
    docs/tuning.md). The initial function is torch's usual one.

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
    _check_activation(activation)
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


def _check_activation(activation: Callable[[], nn.Module]) -> None:
    """Refuse, naming it, an ``activation`` that is not a ``nn.Module`` class (or a factory
    of modules taking no argument, such as ``functools.partial(nn.LeakyReLU, 0.2)``)."""
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return
    message = (
        "activation must be a torch.nn.Module class such as nn.ELU (or a factory of modules "
        f"taking no argument), got {activation!r}"
    )
    if isinstance(activation, (type, nn.Module)) or not callable(activation):
        hint = "; pass the class, not an instance" if isinstance(activation, nn.Module) else ""
        raise TypeError(message + hint)
    try:
        made = activation()
    except TypeError:  # a function of a tensor, such as torch.tanh
        made = None
    if not isinstance(made, nn.Module):
        raise TypeError(message)


def is_plain_mlp(net: nn.Module) -> bool:
    """Linear layers between parameter-free modules, as :func:`conditioner` builds.

    Example:
        >>> is_plain_mlp(conditioner(2, 4, (8,))), is_plain_mlp(nn.Conv1d(2, 4, 1))
        (True, False)
    """
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
    instead of multiplying the weight at every call. Of no inputs (the conditioner of a
    one-coordinate coupling) it is the bias: TorchScript cannot differentiate a product
    with an empty factor (Pyro's JIT ELBOs)."""
    if weight.shape[-1] == 0:
        # The empty weight's row sums are zeros, which keep it in the graph: every
        # parameter gets a gradient, as DistributedDataParallel asks.
        out = weight.sum(-1) if bias is None else bias + weight.sum(-1)
        return out.expand(*x.shape[:-1], weight.shape[0])
    if bias is None or x.dim() < 2:
        return nn.functional.linear(x, weight * gain if gain != 1.0 else weight, bias)
    flat = x.flatten(0, -2) if x.dim() > 2 else x
    out = torch.addmm(bias, flat, weight.t(), alpha=gain)
    return out.reshape(*x.shape[:-1], weight.shape[0]) if x.dim() > 2 else out


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
        # From __dict__: getattr of an attribute a module lacks raises inside torch's
        # __getattr__, which costs as much as a small operation, and this runs every pass.
        options = layer.__dict__
        if type(layer) not in ACTIVATION_VJPS or options.get("alpha", 1.0) <= 0:
            return False
        if options.get("negative_slope", 0.0) < 0:  # the output's sign is not the input's
            return False
    return True


def _has_hooks(module: nn.Module) -> bool:
    """Hooks that a module call runs and :func:`recorded_call` does not."""
    return bool(module._forward_hooks or module._forward_pre_hooks
                or module._backward_hooks or module._backward_pre_hooks)  # fmt: skip


def _global_hooks() -> bool:
    """Hooks registered for every module (``register_module_forward_hook`` and the like)."""
    hooks = _module
    return bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks
                or hooks._global_backward_hooks or hooks._global_backward_pre_hooks)  # fmt: skip


def recorded_call(net: nn.Sequential, h: Tensor, tape: list[Tensor]) -> Tensor:
    """``net(h)`` for a ``net`` that :func:`supports_score` accepts, appending every
    activation's output to ``tape`` for :func:`conditioner_vjp` (which reads them under
    ``no_grad``, so they need no detaching). Each layer's ``forward`` runs without the
    module call around it, whose hook checks cost as much as a small layer: such a net
    has no hooks to run.

    Example:
        >>> net, tape = conditioner(3, 2, (5, 4)), []
        >>> h = torch.randn(6, 3)
        >>> torch.equal(recorded_call(net, h, tape), net(h)), [a.shape[-1] for a in tape]
        (True, [5, 4])
    """
    for layer in net:
        h = layer.forward(h)
        if type(layer) not in _LINEARS:
            tape.append(h)
    return h


def conditioner_vjp(net: nn.Sequential, outputs: list[Tensor], cot: Tensor, gain: float) -> Tensor:
    r"""``gain * cot^T \partial net / \partial h`` at the pass whose activation outputs
    :func:`recorded_call` kept in ``outputs``; no autograd graph is built.

    The layers' scalar gains (:class:`ScaledLinear`) are collected into
    one product, since they commute with the activations' elementwise derivatives.

    Example:
        >>> net = conditioner(3, 2, (5,), fan_in_scaling=True)
        >>> _ = torch.nn.init.normal_(net[-1].weight)
        >>> h, tape = torch.randn(4, 3, requires_grad=True), []
        >>> cot = torch.randn(4, 2)
        >>> out = recorded_call(net, h, tape)
        >>> auto = torch.autograd.grad(out, h, cot)[0]
        >>> torch.allclose(conditioner_vjp(net, tape, cot, 1.0), auto, atol=1e-6)
        True
    """
    cot, gain = unscaled_vjp(net, outputs, cot, gain)
    return cot * gain


def unscaled_vjp(
    net: nn.Sequential, outputs: list[Tensor], cot: Tensor, gain: float
) -> tuple[Tensor, float]:
    """:func:`conditioner_vjp` as ``(v, g)``, the product ``g * v`` left to the caller,
    which may fold it into its next operation (``torch.sub(a, v, alpha=g)``).

    Example:
        >>> net, tape = conditioner(3, 2, (5,), fan_in_scaling=True), []
        >>> _ = recorded_call(net, torch.randn(4, 3), tape)
        >>> cot = torch.randn(4, 2)
        >>> v, g = unscaled_vjp(net, tape, cot, 2.0)
        >>> torch.allclose(g * v, conditioner_vjp(net, tape, cot, 2.0))
        True
    """
    outputs = iter(reversed(outputs))
    # list() first: reversed() on a Sequential indexes it layer by layer, far slower.
    for layer in reversed(list(net)):
        if type(layer) in _LINEARS:
            cot = cot.matmul(layer.weight)
            gain = gain * layer.__dict__.get("gain", 1.0)  # a plain Linear has none
        else:
            cot = ACTIVATION_VJPS[type(layer)](layer, cot, next(outputs))
    return cot, gain
