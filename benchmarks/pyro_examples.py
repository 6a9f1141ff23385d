"""Models from Pyro's own examples, as written there, for the ELBO at equal particles.

They have no reference draws: only the ELBO and k-hat are read, and rivals are compared
at the particles ``fit`` gives AutoRealNVP.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from .targets import Target

__all__ = ["PYRO_EXAMPLES", "pyro_eight_schools"]

#: Rubin's eight schools: estimated effects and their standard errors.
_EIGHT_SCHOOLS_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
_EIGHT_SCHOOLS_SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)


def pyro_eight_schools_model(data: Tensor) -> None:
    """Pyro's ``examples/eight_schools/svi.py`` model: ``mu`` and ``tau`` are drawn inside
    the schools' plate, so each school has its own (24 latents, not 10)."""
    y, sigma = data[:, 0], data[:, 1]
    schools = len(y)
    with pyro.plate("data", schools):
        eta = pyro.sample("eta", dist.Normal(torch.zeros(schools), torch.ones(schools)))
        mu = pyro.sample("mu", dist.Normal(torch.zeros(1), 10 * torch.ones(1)))
        tau = pyro.sample("tau", dist.HalfCauchy(scale=25 * torch.ones(1)))
        pyro.sample("obs", dist.Normal(mu + tau * eta, sigma), obs=y)


def pyro_eight_schools() -> Target:
    """Pyro's eight schools example as a target without a reference."""
    data = torch.stack([torch.tensor(_EIGHT_SCHOOLS_Y), torch.tensor(_EIGHT_SCHOOLS_SIGMA)], 1)
    return Target(
        name="pyro_eight_schools",
        model=pyro_eight_schools_model,
        args=(data,),
        columns=(("eta", 8), ("mu", 8), ("tau", 8)),
        reference=None,
        ref_mean=None,
        ref_sd=None,
        notes="Pyro's examples/eight_schools/svi.py model, 24 latents; no reference",
        max_plate_nesting=1,
    )


#: Row label -> the target, for ``benchmarks.accuracy --examples``.
PYRO_EXAMPLES: dict[str, Callable[[], Target]] = {"pyro_eight_schools": pyro_eight_schools}
