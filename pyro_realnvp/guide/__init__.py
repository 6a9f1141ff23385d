"""The guide: :class:`AutoRealNVP` and what it is made of. Its posterior and path gradient
(``posterior``), its summaries (``summaries``), the Laplace start (``laplace``) at the
mode (``mode``) of the model's potential (``potential``), the location's units
(``units``), its options (``options``), the set-up checks of the model's sites
(``sites``), and its side of Pyro's param store (``store``)."""

from .auto_realnvp import AutoRealNVP
from .laplace import GaussianStart, laplace_start, local_start
from .options import AUTO_LOWER_MAX_DIM, INPUT_BOUND, MAX_INIT_SCALE, MIN_QUANTILE_SAMPLES
from .posterior import PathGradientPosterior
from .potential import Potential
from .store import raw_loc_of_older_states as _raw_loc_of_older_states
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

# Guides pickled before the split into sub-packages name their load_state_dict hook
# pyro_realnvp.guide._raw_loc_of_older_states: the old module's path is this package's.
_raw_loc_of_older_states = _raw_loc_of_older_states
