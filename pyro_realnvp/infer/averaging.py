r"""Iterate averaging: a run ends at an exponential moving average of its iterates.

:math:`\bar\theta_t = \bar\theta_{t-1} + (\theta_t - \bar\theta_{t-1}) / h`, with a time
constant of :math:`h` steps. Stochastic gradients leave the last iterate a random point
of a cloud about the optimum; its average is nearer, and for VI that shows most in the
tails, which the rare particles that reach them move the most (Polyak & Juditsky 1992;
for stochastic VI, Dhaka et al. 2020, "Robust, Accurate Stochastic Optimization for
Variational Inference"; what it did on Neal's funnel: docs/tuning.md, sixth round).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor
from torch.optim.swa_utils import get_ema_multi_avg_fn

from .loop import Step

__all__ = ["AVERAGE", "AveragedStep"]

#: ``fit``'s default time constant of the average, as a fraction of the run's steps (200
#: of 3000; docs/tuning.md, sixth round).
AVERAGE = 1 / 15


class AveragedStep:
    r"""``step``, keeping an exponential moving average of ``parameters()`` over the steps
    that updated them, with a time constant of ``horizon`` steps; :meth:`write` sets the
    parameters to it.

    The average starts at the first step's iterate; a step that raised (a non-finite
    loss, which updated nothing) does not enter it. Parameters are found at the first
    step, after which Pyro's ``SVI`` has created them. The update is one ``foreach``
    interpolation, outside the step's loss: nothing in a captured step changes.

    Example:
        >>> from pyro_realnvp.infer.loop import train
        >>> theta = torch.zeros(1)
        >>> class Count:
        ...     name = "count"
        ...     def __call__(self):
        ...         theta.add_(1.0)
        ...         return 0.0
        ...     def clear_grads(self):
        ...         pass
        >>> step = AveragedStep(Count(), lambda: [theta], horizon=2)
        >>> _ = train(step, 3, progress=False)
        >>> step.write()
        >>> theta  # 1, then 1 + (2 - 1) / 2, then 1.5 + (3 - 1.5) / 2
        tensor([2.2500])
    """

    def __init__(self, step: Step, parameters: Callable[[], Iterable[Tensor]], horizon: float):
        self.step, self.name, self._find = step, step.name, parameters
        self._update = get_ema_multi_avg_fn(1.0 - 1.0 / max(float(horizon), 1.0))
        self._params: list[Tensor] = []
        self._average: list[Tensor] = []

    def __call__(self) -> float:
        value = self.step()
        with torch.no_grad():
            if not self._average:  # both at once: an interrupt cannot leave them unpaired
                params = list(self._find())
                self._params, self._average = params, [p.detach().clone() for p in params]
            else:
                self._update(self._average, [param.detach() for param in self._params], None)
        return value

    def clear_grads(self) -> None:
        self.step.clear_grads()

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """Within the block, every parameter is at its average; after it, back where it was."""
        with torch.no_grad():
            current = [param.detach().clone() for param in self._params]
            try:
                self.write()
                yield
            finally:
                for param, value in zip(self._params, current, strict=True):
                    param.copy_(value)

    def write(self) -> None:
        """Set every parameter to its average (nothing before the first step)."""
        with torch.no_grad():
            for param, average in zip(self._params, self._average, strict=True):
                param.copy_(average)
