r"""A location trained in the start's units: :math:`\mu = \mu_0 + \sigma_0 \delta`.

Adam moves every unconstrained value by about ``lr`` per step whatever its scale. A raw
location then moves by ``lr`` in the model's own units, which is thousands of posterior
standard deviations where a coordinate's posterior is narrow (a regression on the year,
docs/tuning.md). Stored as :math:`\delta` in units of the start's standard deviations,
every coordinate moves by about ``lr`` of its own posterior width, as the flow's
conditioners do (``ScaledLinear``). Where the start's scale is 1 nothing changes.

The location stays a ``PyroParam`` named ``loc`` whose value is :math:`\mu`; only what
the optimizer steps, its unconstrained value, is :math:`\delta`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import biject_to, constraints, transform_to
from torch.distributions.transforms import AffineTransform

from .laplace import GaussianStart

__all__ = ["StartUnits", "loc_units"]


class StartUnits(constraints.Constraint):
    """The real numbers, reached from unconstrained values ``delta`` as
    ``center + scale * delta`` (``biject_to`` and ``transform_to`` give that map).

    ``sites``, the latent sites' names and shapes the location packs, travels with it
    in the param store, so that a guide of another model refuses to take it over.

    Example:
        >>> import torch
        >>> units = StartUnits(torch.tensor([10.0, 0.0]), torch.tensor([1e-3, 2.0]))
        >>> biject_to(units)(torch.tensor([1.0, 1.0]))
        tensor([10.0010,  2.0000])
    """

    is_discrete = False
    event_dim = 0
    sites: tuple | None = None  # a location stored before the sites were kept with it

    def __init__(self, center: Tensor, scale: Tensor, sites: tuple | None = None) -> None:
        self.center, self.scale, self.sites = center, scale, sites
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        return value == value  # every real number, NaN aside


@biject_to.register(StartUnits)
@transform_to.register(StartUnits)
def _start_units_transform(constraint: StartUnits) -> AffineTransform:
    return AffineTransform(constraint.center, constraint.scale)


def loc_units(start: GaussianStart, stored: object | None) -> tuple[Tensor, Tensor]:
    """``(center, scale)`` a location starting at ``start`` is trained in.

    Those of a loaded param store (``stored``, its constraint; units of 1 about 0 for one
    saved with a raw location); else the Laplace start's mode and width, where the
    location starts at the mode and moves little; else units of 1: from a local start, or
    where the curvature was not positive, the location may have far to go.

    Example:
        >>> start = GaussianStart(torch.ones(2), torch.diag(torch.tensor([0.1, 2.0])),
        ...                       torch.tensor([False, True]), kind="laplace")
        >>> loc_units(start, None)
        (tensor([1., 1.]), tensor([0.1000, 1.0000]))
    """
    loc = start.loc.detach()
    if isinstance(stored, StartUnits):
        return stored.center.detach().clone(), stored.scale.detach().clone()
    if stored is not None:
        return torch.zeros_like(loc), torch.ones_like(loc)
    if start.kind == "laplace":  # converged
        unit = torch.where(start.bad, 1.0, start.scale.detach())
        return loc.clone(), unit.to(loc.dtype)
    return loc.clone(), torch.ones_like(loc)
