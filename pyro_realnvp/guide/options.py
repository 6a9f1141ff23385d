"""AutoRealNVP's options: their ranges, checked when the guide is built, by name."""

from __future__ import annotations

import math
import numbers
import warnings

from torch import nn

from .._internal.checks import check_hidden_dims, check_int
from .laplace import START_RULES

__all__ = [
    "AFFINE_CHOICES",
    "AUTO_LOWER_MAX_DIM",
    "ESTIMATORS",
    "INPUT_BOUND",
    "MAX_INIT_SCALE",
    "MIN_QUANTILE_SAMPLES",
    "START_RULE_CHOICES",
    "check_options",
    "flow_options",
]

AFFINE_CHOICES = ("auto", "lower", "diagonal")
ESTIMATORS = ("path", "total")
START_RULE_CHOICES = ("auto", *START_RULES)
#: Up to this latent size, ``affine="auto"`` learns a dense lower-triangular scale.
AUTO_LOWER_MAX_DIM = 256
#: The largest ``init_scale``: a standard deviation in the unconstrained space, where a
#: positive or bounded site is ``exp`` or ``sigmoid`` of its coordinate, so a few tens
#: already overflow its draws (``exp(89)`` is inf in float32); a real site whose
#: posterior is wider than this calls for rescaling the model instead.
MAX_INIT_SCALE = 1e6
#: The fewest ``num_quantile_samples``: with fewer, a 5% or 95% quantile rests on under
#: five draws (with one draw every quantile is the same number).
MIN_QUANTILE_SAMPLES = 100
#: Clamp on what AutoRealNVP's conditioners read, in the Laplace start's standardized
#: units (``MaskedAffineCoupling``'s ``input_bound``); docs/tuning.md says why 100.
INPUT_BOUND = 100.0


def flow_options(num_layers: int, hidden_dims, scale_bound: float, activation) -> dict:
    """The keyword options of AutoRealNVP's :class:`~pyro_realnvp.RealNVP`.

    Its conditioners are ``ScaledLinear`` (``fan_in_scaling``), so that Adam moves them at
    the affine's pace, and read inputs clamped at ``INPUT_BOUND`` (docs/math.md).

    Example:
        >>> flow_options(4, [16], 5.0, nn.ELU)["hidden_dims"]
        (16,)
    """
    return {
        "num_layers": num_layers,
        "hidden_dims": None if hidden_dims is None else tuple(hidden_dims),
        "scale_bound": scale_bound,
        "activation": activation,
        "fan_in_scaling": True,
        "input_bound": INPUT_BOUND,
    }


def check_options(*, num_layers, hidden_dims, init_scale, scale_bound, affine, estimator,
                  num_quantile_samples, activation, start_rule) -> None:  # fmt: skip
    """Refuse an AutoRealNVP option outside its range, naming it; warn on an odd depth.

    Example:
        >>> check_options(num_layers=1, hidden_dims=None, init_scale="auto", scale_bound=5.0,
        ...               affine="auto", estimator="path", num_quantile_samples=4096,
        ...               activation=nn.ELU, start_rule="auto")
        Traceback (most recent call last):
        ...
        ValueError: num_layers must be an integer >= 2 (one coupling leaves half the coordinates unchanged), got 1
    """  # noqa: E501
    if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
        raise TypeError(f"activation must be a torch.nn.Module class such as nn.ELU, got "
                        f"{activation!r}")  # fmt: skip
    check_int("num_layers", num_layers, 2,
               " (one coupling leaves half the coordinates unchanged)")  # fmt: skip
    if hidden_dims is not None:
        check_hidden_dims(hidden_dims)
    _check_scales(init_scale, scale_bound)
    for name, value, choices in (("affine", affine, AFFINE_CHOICES),
                                 ("estimator", estimator, ESTIMATORS),
                                 ("start_rule", start_rule, START_RULE_CHOICES)):  # fmt: skip
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    check_int("num_quantile_samples", num_quantile_samples, MIN_QUANTILE_SAMPLES,
               " (fewer draws cannot tell a 5% quantile from a 95% one)")  # fmt: skip
    if num_layers % 2:
        warnings.warn(
            f"num_layers={num_layers} is odd: one half of the coordinates passes through one "
            "coupling fewer than the other; an even number balances them",
            UserWarning,
            stacklevel=3,
        )


def _check_scales(init_scale, scale_bound) -> None:
    numeric_scale = isinstance(init_scale, numbers.Real) and not isinstance(init_scale, bool)
    if init_scale != "auto" and not (numeric_scale and 0 < init_scale <= MAX_INIT_SCALE):
        raise ValueError(
            f"init_scale must be 'auto' or a number in (0, {MAX_INIT_SCALE:g}] (a standard "
            f"deviation in the unconstrained space), got {init_scale!r}"
        )
    message = f"scale_bound must be a finite number > 0, got {scale_bound!r}"
    if isinstance(scale_bound, bool) or not isinstance(scale_bound, numbers.Real):
        raise TypeError(message)
    if not 0 < scale_bound < math.inf:
        raise ValueError(message)
