"""RealNVP normalizing-flow posteriors for Pyro SVI."""

from .coupling import MaskedAffineCoupling, masked_affine_coupling
from .diagnostics import KHat, khat_reading, psis_khat, to_inference_data
from .flow import RealNVP, realnvp
from .guide import AutoRealNVP
from .infer import FiniteELBO, NonFiniteLossError, fit
from .masks import alternating_mask, coupling_masks, half_mask
from .plots import plot_loss, plot_pair

__all__ = [
    "AutoRealNVP",
    "FiniteELBO",
    "KHat",
    "MaskedAffineCoupling",
    "NonFiniteLossError",
    "RealNVP",
    "alternating_mask",
    "coupling_masks",
    "fit",
    "half_mask",
    "khat_reading",
    "masked_affine_coupling",
    "plot_loss",
    "plot_pair",
    "psis_khat",
    "realnvp",
    "to_inference_data",
]

__version__ = "0.1.0"
