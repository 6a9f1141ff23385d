"""The math: masks, conditioner networks, the affine coupling, the stacked RealNVP, and
its conditional and image variants. Nothing here knows of Pyro's inference, the guide or
training: these are ``TransformModule``\\ s usable on their own."""

from .conditional import ConditionalRealNVP, ConditionedRealNVP, conditional_realnvp
from .coupling import MaskedAffineCoupling, check_mask, default_hidden_dims
from .image import ConvConditioner, channel_mask, checkerboard_mask, multiscale_realnvp, squeeze
from .masks import alternating_mask, bit_mask, coupling_masks, half_mask, separating_codes
from .realnvp import RealNVP, masked_affine_coupling, realnvp

__all__ = [
    "ConditionalRealNVP",
    "ConditionedRealNVP",
    "ConvConditioner",
    "MaskedAffineCoupling",
    "RealNVP",
    "alternating_mask",
    "bit_mask",
    "channel_mask",
    "check_mask",
    "checkerboard_mask",
    "conditional_realnvp",
    "coupling_masks",
    "default_hidden_dims",
    "half_mask",
    "masked_affine_coupling",
    "multiscale_realnvp",
    "realnvp",
    "separating_codes",
    "squeeze",
]
