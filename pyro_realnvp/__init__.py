"""RealNVP normalizing-flow posteriors for Pyro SVI.

The package is in layers, each importing only those below it (docs/architecture.md):
``flows`` (the transforms), ``guide`` (:class:`AutoRealNVP`), ``infer`` (``fit`` and the
one training loop), ``distributed`` (data-parallel training), and the use cases
``density``, ``diagnostics`` and ``plots``; ``errors`` holds what users catch.
"""

from ._internal.moved import moved_module as _moved_module
from .density import anomaly_scores, bits_per_dim, dequantize, fit_density, flow_distribution
from .diagnostics import KHat, importance_resample, khat_reading, psis_khat, to_inference_data
from .distributed.ddp import DataParallelELBO, fit_distributed
from .errors import FastPathError, NonFiniteLossError, RankFailedError, TrainingInterrupted
from .flows.conditional import ConditionalRealNVP, ConditionedRealNVP, conditional_realnvp
from .flows.coupling import MaskedAffineCoupling
from .flows.image import (
    ConvConditioner,
    channel_mask,
    checkerboard_mask,
    multiscale_realnvp,
    squeeze,
)
from .flows.masks import alternating_mask, bit_mask, coupling_masks, half_mask, separating_codes
from .flows.realnvp import RealNVP, masked_affine_coupling, realnvp
from .guide.auto_realnvp import AutoRealNVP
from .infer.fast import FastELBO
from .infer.finite import FiniteELBO
from .infer.loop import History
from .infer.losses import particle_objective, tail_adaptive_weights
from .infer.svi import fit, fit_fast
from .plots import plot_loss, plot_pair

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
    "importance_resample",
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

#: Modules of the flat layout before 0.2, each an alias (that warns) of where it moved.
_MOVED = {
    "averaging": "infer.averaging",
    "conditional": "flows.conditional",
    "coupling": "flows.coupling",
    "ddp": "distributed.ddp",
    "fast": "infer.fast",
    "finite": "infer.finite",
    "flat": "infer.flat",
    "flow": "flows.realnvp",
    "image": "flows.image",
    "init_checks": "guide.initial",
    "laplace": "guide.laplace",
    "lightning": "distributed.lightning",
    "losses": "infer.losses",
    "masks": "flows.masks",
    "nn": "flows.conditioner",
    "one_pass": "flows.one_pass",
    "potential": "guide.potential",
    "score": "flows.conditioner",
    "start_units": "guide.units",
    "train": "infer.loop",
}


def __getattr__(name: str):
    # ``pyro_realnvp.ddp`` and the like, as attributes, after a plain ``import pyro_realnvp``
    # (the old package imported them eagerly; never lightning, an optional extra).
    if name in _MOVED and name != "lightning":
        return _moved_module(f"{__name__}.{name}", _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
