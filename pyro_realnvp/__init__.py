"""RealNVP normalizing-flow posteriors for Pyro SVI."""

from .coupling import MaskedAffineCoupling, masked_affine_coupling
from .distributed import DataParallelELBO, RankFailedError, fit_distributed
from .fast import FastELBO, FastPathError, fit_fast
from .flow import RealNVP, realnvp
from .guide import AutoRealNVP
from .infer import FiniteELBO, NonFiniteLossError, fit
from .masks import alternating_mask, coupling_masks, half_mask

__all__ = [
    "AutoRealNVP",
    "DataParallelELBO",
    "FastELBO",
    "FastPathError",
    "FiniteELBO",
    "MaskedAffineCoupling",
    "NonFiniteLossError",
    "RankFailedError",
    "RealNVP",
    "alternating_mask",
    "coupling_masks",
    "fit",
    "fit_distributed",
    "fit_fast",
    "half_mask",
    "masked_affine_coupling",
    "realnvp",
]

__version__ = "0.1.0"
