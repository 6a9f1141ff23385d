"""The guide: :class:`AutoRealNVP` and what it is made of. Its posterior and path gradient
(``posterior``), its summaries (``summaries``), the Laplace start (``laplace``) on the
model's potential (``potential``), the location's units (``units``), option and set-up
checks (``options``, ``checks``), and its side of Pyro's param store (``store``)."""

from .auto_realnvp import AutoRealNVP
from .laplace import GaussianStart, laplace_start, local_start
from .options import AUTO_LOWER_MAX_DIM, INPUT_BOUND, MAX_INIT_SCALE, MIN_QUANTILE_SAMPLES
from .posterior import PathGradientPosterior
from .potential import Potential
from .units import StartUnits

__all__ = [
    "AUTO_LOWER_MAX_DIM",
    "INPUT_BOUND",
    "MAX_INIT_SCALE",
    "MIN_QUANTILE_SAMPLES",
    "AutoRealNVP",
    "GaussianStart",
    "PathGradientPosterior",
    "Potential",
    "StartUnits",
    "laplace_start",
    "local_start",
]
