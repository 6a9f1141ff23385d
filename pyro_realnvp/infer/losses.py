"""How a step's particles make one objective: the plain mean, or tail-adaptive weights.

Each particle :math:`z_i \\sim q` gives :math:`d_i = \\log q(z_i) - \\log p(x, z_i)`, minus
its log importance weight :math:`\\log w_i`. Reverse KL averages the :math:`d_i`; it
costs q little to miss p's tails, so the weights' tail grows heavy (PSIS k-hat). The
tail-adaptive f-divergence (Wang, Liu & Liu 2018, "Variational Inference with
Tail-adaptive f-Divergence") weighs each particle's gradient by the rank of its weight,
:math:`\\rho_i \\propto \\hat F(w_i)^\\beta` with :math:`\\hat F(w_i)` the fraction of particles
whose weight is at least :math:`w_i`: with :math:`\\beta < 0` the particles where p most
exceeds q pull hardest, whatever the weights' tail, so q covers what it would miss.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = ["TAIL_BETA", "check_beta", "particle_objective", "tail_adaptive_weights"]

#: The tail-adaptive exponent ``fit`` uses by default (docs/tuning.md says how it was chosen).
TAIL_BETA = -1.0


def tail_adaptive_weights(log_w: Tensor, beta: float) -> Tensor:
    r""":math:`\rho_i = \hat F(w_i)^\beta / \sum_j \hat F(w_j)^\beta` over the last dimension.

    :math:`\hat F(w_i) = \operatorname{rank}_i / N` with rank 1 the largest weight; ties
    rank in the order :func:`torch.argsort` gives. Only ranks are used, so the weights
    are bounded (at most :math:`N^{-\beta}` times the smallest) however heavy the tail.

    Example:
        >>> tail_adaptive_weights(torch.tensor([0.0, 2.0, 1.0]), beta=-1.0)
        tensor([0.1818, 0.5455, 0.2727])
    """
    num = log_w.shape[-1]
    order = torch.argsort(log_w, dim=-1, descending=True)
    ranks = torch.argsort(order, dim=-1).to(log_w.dtype) + 1.0
    rho = (ranks / num) ** beta
    return rho / rho.sum(-1, keepdim=True)


def particle_objective(diff: Tensor, beta: float | None = None) -> Tensor:
    r"""The step's loss from :math:`d_i = \log q(z_i) - \log p(x, z_i)` over particles.

    Its value is always :math:`\frac1N \sum_i d_i`, the negative ELBO estimate (what
    progress bars, schedules and non-finite checks read). Its gradient is that of the
    mean (``beta=None``, reverse KL) or :math:`\sum_i \rho_i \nabla d_i` with
    :func:`tail_adaptive_weights` (``beta``). No host synchronisation: it captures in
    a CUDA graph.

    Example:
        >>> diff = torch.tensor([1.0, 3.0], requires_grad=True)
        >>> loss = particle_objective(diff, beta=-1.0)
        >>> loss.backward()
        >>> loss.item(), diff.grad
        (2.0, tensor([0.6667, 0.3333]))
    """
    mean = diff.mean()
    if beta is None or diff.shape[0] == 1:
        return mean
    rho = tail_adaptive_weights(-diff.detach(), beta)
    return mean.detach() + (rho * (diff - diff.detach())).sum()


def check_beta(beta: float | None, name: str = "beta") -> float | None:
    """``beta`` as a float if ``None`` or a finite real number, else an error naming it
    (``TypeError`` for what is not a number).

    Example:
        >>> check_beta(-1)
        -1.0
    """
    if beta is None:
        return None
    message = f"{name} must be a finite number or None, got {beta!r}"
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(message)
    if not math.isfinite(beta):
        raise ValueError(message)
    return float(beta)
