"""Posterior diagnostics of a fitted guide, on any model it can fit: the guide's draws
scored by the model (``draws``: vectorized where Pyro can, draw by draw otherwise), the
PSIS k-hat read with what makes it trustworthy (``khat``), importance-resampled draws
(``resample``), and ArviZ export
(``inference_data``). ArviZ is imported on the first call."""

from .draws import ImportanceDraws, importance_draws
from .inference_data import to_inference_data
from .khat import KHat, khat_reading, psis_khat
from .resample import importance_resample
from .weights import ResampledDraws, resample_draws, smoothed_weights

__all__ = [
    "ImportanceDraws",
    "KHat",
    "ResampledDraws",
    "importance_draws",
    "importance_resample",
    "khat_reading",
    "psis_khat",
    "resample_draws",
    "smoothed_weights",
    "to_inference_data",
]
