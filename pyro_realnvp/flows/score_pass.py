r"""The flow's pass with its carried score as one autograd node, differentiated by hand.

:meth:`~pyro_realnvp.flows.realnvp.RealNVP.forward_with_score` runs every coupling's
conditioner under autograd: each linear layer records a node whose backward pass is a
dozen small operations (transposes, the fan-in gain, the accumulation of each parameter's
gradient). In Pyro's one-particle loop these tensors are a few dozen numbers, so the step
is counted in operations, not in flops. Here the whole pass is one
``torch.autograd.Function``: its forward pass is the same code without a graph, and its
backward pass walks the couplings back, carrying only the input's cotangent, then forms
the weights' gradients of all couplings at once, one batched product for each layer shape
(``bmm``), since every coupling's conditioner has the same shapes.

For a coupling :math:`y_f = x_f e^{s} + t`, :math:`s = B \tanh(o_s c/B)`, :math:`t = c\,o_t`
with :math:`o` the conditioner's output and :math:`c` its output gain, the cotangents are
:math:`\bar x_f = \bar y_f e^s`, :math:`\bar s = \bar y_f x_f e^s + \bar\ell` (:math:`\bar\ell`
the log-det's), :math:`\bar o = c\,(\bar s (1 - \tanh^2), \bar y_f)`, and through each layer
:math:`\bar h = g\,\bar z W`, :math:`\bar W = g\,\bar z^\top h`, :math:`\bar b = \sum \bar z`.
A graph of the gradients (``create_graph=True``) comes from the pass run again under
autograd; where the pass must be recorded operation by operation (a JIT trace,
``torch.compile``, autocast, ``torch.func``) the flow keeps the autograd pass
(:func:`applies`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .conditioner import _LINEARS, ACTIVATION_VJPS

__all__ = ["applies", "score_pass"]


def applies(x: Tensor) -> bool:
    """Whether the hand-differentiated pass may run: a graph is wanted, and nothing needs
    the pass recorded operation by operation (a JIT trace, ``torch.compile``, autocast,
    ``torch.func`` transforms).

    Example:
        >>> applies(torch.zeros(2, 3)), torch.no_grad()(applies)(torch.zeros(2, 3))
        (True, False)
    """
    return (
        torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled(x.device.type)
        and not torch._C._are_functorch_transforms_active()
    )


def score_pass(flow, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""``flow.forward_with_score(x, score)`` for a batch ``x`` of shape ``(N, D)``, as one
    autograd node: ``(y, log|det|, \nabla_y \log q_Y(y))``, the score a constant.

    Example:
        >>> from pyro_realnvp.flows import RealNVP
        >>> flow = RealNVP(3, num_layers=2, hidden_dims=(8,), fan_in_scaling=True)
        >>> x = torch.randn(4, 3)
        >>> y, log_det, _ = score_pass(flow, x, -x)
        >>> torch.equal(y, flow.forward_and_log_det(x)[0])
        True
    """
    params: list[Tensor] = []
    layouts = [_layout(coupling, params) for coupling in flow.layers]
    return _ScorePass.apply(flow, layouts, x, score, *params)


def _layout(coupling, params: list[Tensor]) -> list[tuple]:
    """A coupling's conditioner, last layer first: ``(gain, where its weight is in params,
    whether a bias follows it)`` for a linear layer (its parameters appended to
    ``params``), ``(vector-Jacobian product, layer)`` for an activation. Read from the
    modules' dictionaries: a module's attribute lookup costs as much as a small operation."""
    layout = []
    for layer in coupling.net:
        if type(layer) in _LINEARS:
            weight, bias = layer._parameters["weight"], layer._parameters["bias"]
            layout.append((layer.__dict__.get("gain", 1.0), len(params), bias is not None))
            params += [weight] if bias is None else [weight, bias]
        else:
            layout.append((ACTIVATION_VJPS[type(layer)], layer))
    return layout[::-1]


class _ScorePass(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flow, layouts: list, x: Tensor, score0: Tensor, *params: Tensor):
        ctx.set_materialize_grads(False)
        ctx.records = []
        y, log_det, score = flow._run(x, flow._groups, None, False, +1, score0, ctx.records)
        ctx.flow, ctx.layouts, ctx.like = flow, layouts, (y.shape, y.dtype, y.device)
        # Saved, so that a parameter changed in place before the backward pass is refused.
        ctx.save_for_backward(x, score0, *params)
        ctx.mark_non_differentiable(score)
        return y, log_det, score

    @staticmethod
    def backward(ctx, grad_y: Tensor | None, grad_log_det: Tensor | None, _):
        if torch.is_grad_enabled():  # create_graph: a graph of the gradients is wanted
            return _through_autograd(ctx, grad_y, grad_log_det)
        records, layouts, params = ctx.records, ctx.layouts, ctx.saved_tensors[2:]
        if grad_y is None:
            shape, dtype, device = ctx.like
            grad_y = torch.zeros(shape, dtype=dtype, device=device)
        grad_log_det = None if grad_log_det is None else grad_log_det.unsqueeze(-1)
        layer_grads: list[tuple] = []
        index = len(records)
        for group in reversed(ctx.flow._groups):
            kept, free = group[0]._split(grad_y)
            if len(group) % 2:
                kept, free = free, kept
            for coupling in reversed(group):
                index -= 1
                kept, free = _coupling_backward(
                    coupling, (layouts[index], params), records[index], (kept, free),
                    grad_log_det, layer_grads,
                )  # fmt: skip
            grad_y = group[0]._merge(kept, free)
        return None, None, grad_y, None, *_parameter_grads(layer_grads, ctx.needs_input_grad[4:])


def _through_autograd(ctx, grad_y: Tensor | None, grad_log_det: Tensor | None) -> tuple:
    """The gradients as autograd gives them through the pass run again with a graph, so
    that they can be differentiated once more (``create_graph=True``)."""
    x, score, *params = ctx.saved_tensors
    with torch.enable_grad():  # x as saved, its own graph on: the result's reaches it
        y, log_det, _ = ctx.flow._run(x, ctx.flow._groups, None, False, +1, score)
    pairs = [
        (out, grad) for out, grad in ((y, grad_y), (log_det, grad_log_det)) if grad is not None
    ]
    inputs = [x, *params]
    wanted = [t for t in inputs if t.requires_grad]
    found = iter(torch.autograd.grad([out for out, _ in pairs], wanted, [g for _, g in pairs],
                                     create_graph=True, allow_unused=True))  # fmt: skip
    grads = [next(found) if t.requires_grad else None for t in inputs]
    return None, None, grads[0], None, *grads[1:]


def _coupling_backward(coupling, weights, record, grads, grad_log_det, layer_grads):
    """The cotangents of a coupling's inputs ``(kept, free)`` from ``grads``, those of its
    outputs ``(moved, kept)``. Each linear layer's ``(where, z, h, scalar, gain, has a
    bias)`` is appended to ``layer_grads``: its output's cotangent is ``scalar * z``, so
    its weight's gradient ``scalar * gain * z^T h`` and its bias's ``scalar * sum(z)``."""
    (grad_moved, grad_kept), (tape, free), (layout, params) = grads, record, weights
    h, *inputs, tanh, scale = tape
    grad_free = grad_moved * scale
    if grad_log_det is None:  # the path gradient's draw: log|det| is left out of its loss
        grad_s = grad_free * free
    else:
        grad_s = torch.addcmul(grad_log_det, grad_free, free)
    cot = torch.cat([torch.ops.aten.tanh_backward(grad_s, tanh), grad_moved], dim=-1)
    outputs, inputs = inputs[::-1], [h, *inputs]
    scalar = coupling.output_gain
    for entry in layout:
        if len(entry) == 3:  # a linear layer
            gain, where, bias = entry
            layer_grads.append((where, cot, inputs.pop(), scalar, gain, bias))
            cot, scalar = cot.mm(params[where]), scalar * gain
        else:
            cot = entry[0](entry[1], cot, outputs.pop(0))
    bound = coupling.input_bound
    if bound < math.inf:
        cot = torch.ops.aten.hardtanh_backward(cot, h, -bound, bound)
    return torch.add(grad_kept, cot, alpha=scalar), grad_free


def _parameter_grads(layer_grads: list[tuple], needed: tuple[bool, ...]) -> list[Tensor | None]:
    """Every linear layer's weight and bias gradients, in the order of the parameters:
    layers of one shape and scalars stacked, their weights' gradients one batched
    product."""
    buckets: dict[tuple, list[tuple]] = {}
    for where, cot, h, scalar, gain, bias in layer_grads:
        key = (cot.shape[-1], h.shape[-1], scalar, gain)
        buckets.setdefault(key, []).append((where, cot, h, bias))
    grads: list[Tensor | None] = [None] * len(needed)
    for (_, _, scalar, gain), items in buckets.items():
        wheres, cots, inputs, biases = zip(*items, strict=True)
        cots = torch.stack(cots)
        weights = torch.bmm(cots.transpose(1, 2), torch.stack(inputs)).mul_(scalar * gain)
        bias_grads = cots.sum(1).mul_(scalar)
        for where, weight, bias, has_bias in zip(wheres, weights, bias_grads, biases, strict=True):
            grads[where] = weight
            if has_bias:
                grads[where + 1] = bias
    return [grad if want else None for grad, want in zip(grads, needed, strict=True)]
