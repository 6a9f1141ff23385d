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

__all__ = [
    "LATE_TAIL_FRACTION",
    "LATE_TAIL_GAIN",
    "TAIL_BETA",
    "check_beta",
    "check_late_beta",
    "particle_objective",
    "tail_adaptive_weights",
    "tail_schedule",
]

#: The tail-adaptive exponent ``fit`` uses by default (docs/tuning.md says how it was chosen).
TAIL_BETA = -1.0
#: ``fit``'s exponent over the last ``LATE_TAIL_FRACTION`` of its steps, as a multiple of
#: ``TAIL_BETA``: once the bulk is fitted, the particles where p most exceeds q pull harder
#: (the funnel's neck; docs/tuning.md, issue 29).
LATE_TAIL_GAIN = 1.4
#: The fraction of ``fit``'s steps, at its end, that takes the late exponent.
LATE_TAIL_FRACTION = 1 / 3


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


def check_late_beta(late_beta: float | str | None) -> float | str | None:
    """``late_beta`` if ``"auto"``, else :func:`check_beta`'s reading of it, naming
    ``late_tail_beta``.

    Example:
        >>> check_late_beta("auto"), check_late_beta(-2)
        ('auto', -2.0)
    """
    if isinstance(late_beta, str) and late_beta == "auto":
        return late_beta
    return check_beta(late_beta, "late_tail_beta")


def tail_schedule(
    beta: float | None, num_steps: int, *, fraction: float = 1.0,
    late_beta: float | str | None = "auto",
) -> dict[int, float | None]:  # fmt: skip
    r"""The tail-adaptive exponent from each step where it changes, ``{step: beta}``
    (step 0 first; ``None``: plain reverse KL).

    ``beta`` over the first ``fraction`` of the ``num_steps``, then reverse KL; within
    those steps, ``late_beta`` over the last ``LATE_TAIL_FRACTION`` of the run
    (``"auto"``: ``LATE_TAIL_GAIN * beta``; ``None``: ``beta`` throughout).

    Example:
        >>> tail_schedule(-1.0, 3000)
        {0: -1.0, 2000: -1.4}
        >>> tail_schedule(-1.0, 3000, fraction=0.5, late_beta=None)
        {0: -1.0, 1500: None}
    """
    end = math.ceil(fraction * num_steps)
    if beta is None or end == 0:
        return {0: None}
    if isinstance(late_beta, str):
        late_beta = LATE_TAIL_GAIN * beta
    changes: dict[int, float | None] = {0: beta}
    late_start = round((1 - LATE_TAIL_FRACTION) * num_steps)
    if late_beta is not None and late_beta != beta and 0 < late_start < end:
        changes[late_start] = late_beta
    if end < num_steps:
        changes[end] = None
    return changes
