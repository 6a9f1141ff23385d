r"""When a run may end before its step budget: once nothing is left to gain.

The ELBO can rise by at most :math:`\mathrm{KL}(q \| p) = \log Z - \mathrm{ELBO}`. Every
``every`` steps :class:`Converged` draws ``num_draws`` fresh particles from the guide at
the parameters the run would end on (the iterate average, where there is one) and
estimates that KL twice: :math:`\log \frac1K \sum_k w_k - \frac1K \sum_k \log w_k`
(importance sampling, low where the draws miss mass) and :math:`\frac12 \operatorname{Var}
\log w` (exact for Gaussian log weights, wide at a single far draw). The run stops when
the larger is below ``tol`` at ``checks`` checks in a row. It does not stop where the
guide has merely stopped improving: a decaying lr and the iterate average still gain
there, and a rule on the loss's fall stopped banana_d2 at a fifth of its way
(docs/tuning.md, issue 30).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..guide.laplace import kl_estimate
from .averaging import AveragedStep
from .loop import Step

__all__ = ["STOP", "Converged", "stop_rule"]


@dataclass(frozen=True)
class Converged:
    r"""Stop once :math:`\mathrm{KL}(q \| p)`, read from fresh draws, is below ``tol`` nats
    at ``checks`` checks in a row (the module's docstring says how it is read).

    ``tol`` = 1e-3 nats is far below what a sample can show: two sets of a thousand draws,
    one from q and one from p, tell them apart only where :math:`1000\,\mathrm{KL}
    \gtrsim 1`. ``every`` ``None`` checks 30 times over the budget (at least every 10
    steps); ``num_draws`` ``None`` is four batches of the step's particles, at least 64.
    The checks draw from their own generator, so the run's steps are the same with or
    without them, up to where it stops.

    Example:
        >>> Converged().reason(400, 2.0e-4)
        'converged at step 400: KL(q||p) read below 0.001 nats at 2 checks in a row (last 0.0002)'
    """

    tol: float = 1e-3
    checks: int = 2
    every: int | None = None
    num_draws: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.tol, float | int) and math.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f"Converged's tol must be a finite number > 0, got {self.tol!r}")
        for name in ("checks", "every", "num_draws"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"Converged's {name} must be an int >= 1, got {value!r}")

    def reason(self, done: int, kl: float) -> str:
        """What ``History.stopped`` says of a run stopped after ``done`` steps at ``kl``."""
        return (
            f"converged at step {done}: KL(q||p) read below {self.tol:g} nats at "
            f"{self.checks} checks in a row (last {kl:.2g})"
        )

    def bind(self, step: Step, num_steps: int) -> Callable[[int], str] | None:
        """The rule over ``step``'s run of ``num_steps``: ``(steps done) -> reason`` (``""``:
        go on, as on Pyro's ELBO where it cannot vectorize the model or the model subsamples
        its data); ``None`` where the step draws no log weights."""
        averaged = step.averaged if isinstance(step, AveragedStep) else contextlib.nullcontext
        step = step.step if isinstance(step, AveragedStep) else step
        if not hasattr(step, "log_weights"):
            return None
        every = self.every or max(10, num_steps // 30)
        num_draws = self.num_draws or max(64, 4 * step.num_particles)
        generator, below = _generator(step), 0

        def check(done: int) -> str:
            nonlocal below
            if done % every or done >= num_steps:
                return ""
            with averaged():
                log_w = step.log_weights(num_draws, generator)
            if log_w is None:  # Pyro cannot vectorize the model: nothing to read
                return ""
            kl = max(kl_estimate(log_w), float(log_w.double().var()) / 2)
            below = below + 1 if kl < self.tol else 0
            return self.reason(done, kl) if below >= self.checks else ""

        return check


def _generator(step: Step) -> torch.Generator:
    """A generator on the step's device, seeded without drawing from torch's own."""
    device = next(iter(step.parameters()), torch.zeros(())).device
    return torch.Generator(device=device).manual_seed(torch.initial_seed() % 2**63 + 1)


#: ``fit``'s ``stop`` by name: ``"converged"`` is :class:`Converged` at its defaults;
#: ``"auto"`` is that for an AutoRealNVP and no rule for another guide (Pyro's loop runs
#: every step, and ``fit`` trains other guides as it does).
STOP = ("auto", "converged")


def stop_rule(stop: str | Converged | None, flow: bool) -> Converged | None:
    """``fit``'s ``stop`` as a rule: ``None`` (every step), ``"converged"``, ``"auto"``
    (``"converged"`` where ``flow``, the guide an AutoRealNVP) or a :class:`Converged`.

    Example:
        >>> stop_rule("auto", flow=True), stop_rule("auto", flow=False)
        (Converged(tol=0.001, checks=2, every=None, num_draws=None), None)
    """
    if stop is None or isinstance(stop, Converged):
        return stop
    if isinstance(stop, str) and stop in STOP:
        return Converged() if stop == "converged" or flow else None
    raise ValueError(
        f"stop must be None (every step), 'auto', 'converged' or a Converged(...), got {stop!r}"
    )
