r"""The posterior's mode in unconstrained space, :math:`\hat u = \arg\min_u U(u)`: L-BFGS
legs that go on past a stalled line search (:func:`find_mode`), and restarts around the
first start that keep the deepest mode found (:func:`best_mode`). The Laplace start
(:mod:`~pyro_realnvp.guide.laplace`) takes its curvature there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._internal.compat import count_elements

__all__ = ["MODE_GAIN", "MODE_RESTARTS", "RESTART_ELEMENTS", "RESTART_ITERS", "STALL_TRIALS",
           "best_mode", "deeper_mode", "find_mode", "restarts_pay"]  # fmt: skip

#: Searches for the mode from points around the first start, beside the first search
#: (:func:`best_mode`): few, since each costs a search (docs/tuning.md, issue 29).
MODE_RESTARTS = 3
#: How much lower, relative to ``1 + |U|``, a restart's mode must be to replace the first.
MODE_GAIN = 1e-6
#: L-BFGS iterations of a restart's first leg: one still above the first mode by then is
#: taken to share its basin; one already below is searched on to its own mode.
RESTART_ITERS = 30
#: Consecutive evaluations the model cannot score (raising, or not finite) that end a leg
#: of :func:`find_mode`: torch's strong-Wolfe line search interpolates them into NaN steps
#: and would spend the rest of its budget there (docs/tuning.md, issue 30).
STALL_TRIALS = 5
#: Tensor elements one evaluation of the potential may make for the restarts to be tried
#: whatever the first mode's Gaussian (:func:`restarts_pay`): above it they cost some 120
#: gradient evaluations, 0.7 s of a CPU core at 250 latents x 20,000 rows, and the Laplace
#: start tries them only where that Gaussian fits poorly (docs/tuning.md, issue 30).
RESTART_ELEMENTS = 2**21
#: What a model raises where it cannot score a point.
_FAILURES = (ValueError, RuntimeError, ArithmeticError)


def _value_and_grad(potential: Callable, u: Tensor) -> tuple[Tensor, Tensor]:
    """``U(u)`` and its gradient, or ``(inf, 0)`` where the model cannot score ``u``."""
    with torch.enable_grad():
        u = u.detach().requires_grad_(True)
        try:
            value = potential(u)
            (grad,) = torch.autograd.grad(value, u, allow_unused=True)
        except _FAILURES:
            return u.new_tensor(math.inf), torch.zeros_like(u)
    grad = torch.zeros_like(u) if grad is None else grad
    if not (torch.isfinite(value) and torch.isfinite(grad).all()):
        return u.new_tensor(math.inf), torch.zeros_like(u)
    return value.detach(), grad


class _Stalled(Exception):
    """Raised by a leg's closure after ``STALL_TRIALS`` failed evaluations in a row."""


def find_mode(
    potential: Callable[[Tensor], Tensor],
    init: Tensor,
    *,
    scale: Tensor | None = None,
    max_iter: int = 200,
) -> tuple[Tensor, bool]:
    r""":math:`\arg\min_u U(u)` by L-BFGS from ``init``: ``(mode, converged)``.

    L-BFGS runs on :math:`v`, :math:`u = \text{init} + \text{scale} \odot v`: a scale
    near the posterior's makes the problem better conditioned. A bounded budget of
    ``max_iter`` iterations; the best finite point seen is returned, so a model that fails
    or overflows on a line-search trial costs a shorter step, not the fit. A leg whose
    line search stalls where the model cannot score (``STALL_TRIALS`` failures in a row:
    a quasi-Newton step far out, where a scale underflows) is followed by a fresh one from
    the best point, with the iterations left, while the legs still descend. ``converged``
    is False where the budget ran out first or the last leg stalled.

    Example:
        >>> mode, converged = find_mode(lambda u: ((u - 3.0) ** 2).sum(), torch.zeros(2))
        >>> mode, converged
        (tensor([3., 3.]), True)
    """
    mode, converged, _ = _descend(potential, init, scale, max_iter)
    return mode, converged


def _descend(
    potential: Callable, init: Tensor, scale: Tensor | None, max_iter: int
) -> tuple[Tensor, bool, Tensor]:
    """:func:`find_mode`'s ``(mode, converged)`` and ``U`` there, as the search scored it."""
    init = init.detach()
    scale = torch.ones_like(init) if scale is None else scale.detach()
    best = {"value": _value_and_grad(potential, init)[0], "u": init.clone()}
    iterations = 0
    while True:
        before = best["value"]
        status, used = _search_leg(potential, best["u"], scale, max_iter - iterations, best)
        iterations += used
        if status != "stalled" or iterations >= max_iter or not best["value"] < before:
            return best["u"], status == "converged", best["value"]


def _search_leg(
    potential: Callable, origin: Tensor, scale: Tensor, max_iter: int, best: dict
) -> tuple[str, int]:
    """One L-BFGS run from ``origin``, keeping the best finite point in ``best``:
    ``("converged" | "budget" | "stalled", iterations run)``."""
    v = torch.zeros_like(origin, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [v], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-6, tolerance_change=1e-12,
    )  # fmt: skip
    failures = 0

    def closure() -> Tensor:
        nonlocal failures
        u = origin + scale * v.detach()
        value, grad = _value_and_grad(potential, u)
        v.grad = grad * scale
        failures = failures + 1 if value == math.inf else 0
        if failures >= STALL_TRIALS:
            raise _Stalled
        if value < best["value"]:
            best["value"], best["u"] = value, u
        return value

    try:
        optimizer.step(closure)
    except _Stalled:
        return "stalled", max(optimizer.state[v].get("n_iter", 0), 1)
    state = optimizer.state[v]
    max_eval = optimizer.param_groups[0]["max_eval"]
    stopped_early = state.get("n_iter", 0) < max_iter and state.get("func_evals", 0) < max_eval
    return ("converged" if stopped_early else "budget"), state.get("n_iter", 0)


def restarts_pay(potential: Callable[[Tensor], Tensor], u: Tensor) -> bool:
    """Whether one evaluation of ``U`` at ``u`` makes at most ``RESTART_ELEMENTS`` tensor
    elements: a model whose :func:`deeper_mode` costs little beside the rest of a start.

    Example:
        >>> restarts_pay(lambda u: (u**2).sum(), torch.zeros(3))
        True
    """
    try:
        with torch.no_grad():
            return count_elements(potential, u.detach()) <= RESTART_ELEMENTS
    except _FAILURES:
        return True


def deeper_mode(
    potential: Callable[[Tensor], Tensor],
    init: Tensor,
    lowest: Tensor,
    *,
    max_iter: int = 200,
    restarts: int = MODE_RESTARTS,
    seed: int = 0,
) -> tuple[Tensor, Tensor] | None:
    r"""``(mode, U there)`` of the deepest converged :func:`find_mode` from ``restarts``
    points :math:`\text{init} + \varepsilon`, :math:`\varepsilon \sim \mathcal N(0, I)` (a
    fixed-seed generator: set-up draws nothing from Pyro's random state), where it lies
    below ``lowest`` (the first search's ``U``) by more than ``MODE_GAIN``; else ``None``.

    Example:
        >>> def potential(u):  # a shallow well at -1, the deep one at 1
        ...     wells = torch.stack([-2 * (u + 1) ** 2 + math.log(0.3), -2 * (u - 1) ** 2])
        ...     return -torch.logsumexp(wells, 0).sum()
        >>> shallow = potential(torch.tensor([-1.0]))  # U at the first search's mode
        >>> mode, value = deeper_mode(potential, torch.tensor([-0.6]), shallow)
        >>> mode.round(decimals=2)
        tensor([1.])
    """
    deepest = None
    generator = torch.Generator(device=init.device).manual_seed(seed)
    for _ in range(restarts):
        start = init + torch.randn(init.shape, generator=generator, dtype=init.dtype,
                                   device=init.device)  # fmt: skip
        # A short search first: most restarts come back to the first basin, and a long
        # search there is a whole search's cost for nothing.
        candidate, ok, value = _descend(potential, start, None, min(RESTART_ITERS, max_iter))
        gain = MODE_GAIN * (1 + abs(float(lowest)))
        if not ok and value < lowest - gain:
            candidate, ok, value = _descend(potential, candidate, None, max_iter)
        # Deeper by more than rounding: the same mode found again keeps the first search's
        # point, so a unimodal model starts where it did without restarts.
        if ok and value < lowest - gain:
            deepest, lowest = (candidate, value), value
    return deepest


def best_mode(
    potential: Callable[[Tensor], Tensor],
    init: Tensor,
    *,
    max_iter: int = 200,
    restarts: int = MODE_RESTARTS,
    seed: int = 0,
) -> tuple[Tensor, bool]:
    r"""The lowest converged :func:`find_mode` from ``init`` and from the restarts of
    :func:`deeper_mode`: ``(mode, converged)``.

    A model with several modes may have its posterior's far from the first one found
    (Lotka-Volterra's ODE from its prior medians: docs/tuning.md). Where the search from
    ``init`` does not converge (a potential with no minimum there), no restart is tried.

    Example:
        >>> def potential(u):  # a shallow well at -1, the deep one at 1
        ...     wells = torch.stack([-2 * (u + 1) ** 2 + math.log(0.3), -2 * (u - 1) ** 2])
        ...     return -torch.logsumexp(wells, 0).sum()
        >>> find_mode(potential, torch.tensor([-0.6]))[0].round(decimals=2)
        tensor([-1.])
        >>> best_mode(potential, torch.tensor([-0.6]))[0].round(decimals=2)
        tensor([1.])
    """
    mode, converged, lowest = _descend(potential, init, None, max_iter)
    if not converged:
        return mode, converged
    deeper = deeper_mode(potential, init, lowest, max_iter=max_iter, restarts=restarts,
                         seed=seed)  # fmt: skip
    return (mode if deeper is None else deeper[0]), True
