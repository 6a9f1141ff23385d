"""Posterior diagnostics of a fitted guide, on any model it can fit: the guide's draws
scored by the model (``draws``: vectorized where Pyro can, draw by draw otherwise), the
PSIS k-hat read with what makes it trustworthy (``khat``), and ArviZ export
(``inference_data``). ArviZ is imported on the first call."""

from .draws import ImportanceDraws, importance_draws
from .inference_data import to_inference_data
from .khat import KHat, khat_reading, psis_khat

__all__ = [
    "ImportanceDraws",
    "KHat",
    "importance_draws",
    "khat_reading",
    "psis_khat",
    "to_inference_data",
]
