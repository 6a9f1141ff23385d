"""RealNVP normalizing-flow posteriors for Pyro SVI."""

from .conditional import ConditionalRealNVP, ConditionedRealNVP, conditional_realnvp
from .coupling import MaskedAffineCoupling, masked_affine_coupling
from .ddp import DataParallelELBO, fit_distributed
from .density import anomaly_scores, bits_per_dim, dequantize, fit_density, flow_distribution
from .diagnostics import KHat, khat_reading, psis_khat, to_inference_data
from .distributed import RankFailedError
from .fast import FastELBO, FastPathError
from .flow import RealNVP, realnvp
from .guide import AutoRealNVP
from .image import ConvConditioner, channel_mask, checkerboard_mask, multiscale_realnvp, squeeze
from .infer import FiniteELBO, NonFiniteLossError, fit, fit_fast
from .losses import particle_objective, tail_adaptive_weights
from .masks import alternating_mask, bit_mask, coupling_masks, half_mask, separating_codes
from .plots import plot_loss, plot_pair
from .train import History, TrainingInterrupted

__all__ = [
    "AutoRealNVP",
    "ConditionalRealNVP",
    "ConditionedRealNVP",
    "ConvConditioner",
    "DataParallelELBO",
    "FastELBO",
    "FastPathError",
    "FiniteELBO",
    "History",
    "KHat",
    "MaskedAffineCoupling",
    "NonFiniteLossError",
    "RankFailedError",
    "RealNVP",
    "TrainingInterrupted",
    "alternating_mask",
    "anomaly_scores",
    "channel_mask",
    "checkerboard_mask",
    "bit_mask",
    "bits_per_dim",
    "conditional_realnvp",
    "coupling_masks",
    "dequantize",
    "fit",
    "fit_density",
    "fit_distributed",
    "fit_fast",
    "flow_distribution",
    "half_mask",
    "khat_reading",
    "masked_affine_coupling",
    "multiscale_realnvp",
    "particle_objective",
    "plot_loss",
    "plot_pair",
    "psis_khat",
    "realnvp",
    "separating_codes",
    "squeeze",
    "tail_adaptive_weights",
    "to_inference_data",
]

__version__ = "0.1.0"
