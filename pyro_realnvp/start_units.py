r"""A location trained in the start's units: :math:`\mu = \mu_0 + \sigma_0 \delta`.

Adam moves every unconstrained value by about ``lr`` per step whatever its scale. A raw
location then moves by ``lr`` in the model's own units, which is thousands of posterior
standard deviations where a coordinate's posterior is narrow: on posteriordb's
kilpisjarvi_mod (a regression on the year, slope sd 3.6e-5) the first step of ``fit``
took the loss from 104 to 40,000, and where training ended depended on the seed
(-ELBO 103.5 to 118 over four seeds, k-hat 0.53 to 1.9). Stored as :math:`\delta` in
units of the start's standard deviations, every coordinate moves by about ``lr`` of its
own posterior width, as the flow's conditioners do (``ScaledLinear``): the same four
seeds ended at -ELBO 103.23 each, k-hat 0.21 to 0.69. Where the start's scale is 1
nothing changes.

The location stays a ``PyroParam`` named ``loc`` whose value is :math:`\mu`; only what
the optimizer steps, its unconstrained value, is :math:`\delta`.
"""

from __future__ import annotations

from torch import Tensor
from torch.distributions import biject_to, constraints, transform_to
from torch.distributions.transforms import AffineTransform

__all__ = ["StartUnits"]


class StartUnits(constraints.Constraint):
    """The real numbers, reached from unconstrained values ``delta`` as
    ``center + scale * delta`` (``biject_to`` and ``transform_to`` give that map).

    Example:
        >>> import torch
        >>> units = StartUnits(torch.tensor([10.0, 0.0]), torch.tensor([1e-3, 2.0]))
        >>> biject_to(units)(torch.tensor([1.0, 1.0]))
        tensor([10.0010,  2.0000])
    """

    is_discrete = False
    event_dim = 0

    def __init__(self, center: Tensor, scale: Tensor) -> None:
        self.center, self.scale = center, scale
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        return value == value  # every real number, NaN aside


@biject_to.register(StartUnits)
@transform_to.register(StartUnits)
def _start_units_transform(constraint: StartUnits) -> AffineTransform:
    return AffineTransform(constraint.center, constraint.scale)
