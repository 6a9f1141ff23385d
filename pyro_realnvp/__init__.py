"""RealNVP normalizing-flow posteriors for Pyro SVI."""

from .coupling import MaskedAffineCoupling, masked_affine_coupling
from .flow import RealNVP, realnvp
from .guide import AutoRealNVP
from .infer import FiniteELBO, NonFiniteLossError, fit
from .masks import alternating_mask, coupling_masks, half_mask

__all__ = [
    "AutoRealNVP",
    "FiniteELBO",
    "MaskedAffineCoupling",
    "NonFiniteLossError",
    "RealNVP",
    "alternating_mask",
    "coupling_masks",
    "fit",
    "half_mask",
    "masked_affine_coupling",
    "realnvp",
]

__version__ = "0.1.0"
