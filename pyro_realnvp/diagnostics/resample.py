r"""Importance-resampled draws of a fitted guide: draws of q moved toward the posterior,
by their PSIS-smoothed importance weights (:mod:`~pyro_realnvp.diagnostics.weights`)."""

from __future__ import annotations

from collections.abc import Callable

from .._internal.checks import check_int
from .draws import importance_draws
from .weights import ResampledDraws, resample_draws

__all__ = ["importance_resample"]


def importance_resample(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    proposals: int = 4,
    max_plate_nesting: int | None = None,
    method: str | None = None,
    predictive: bool = False,
    **kwargs,
) -> ResampledDraws:
    r"""``num_samples`` draws resampled from ``proposals * num_samples`` draws of ``guide``
    by their PSIS-smoothed importance weights (see the module docstring).

    The proposals are scored by :func:`~pyro_realnvp.diagnostics.importance_draws` on the
    full data (all held at once: draws x rows pointwise log-likelihoods). Resampling uses
    Pyro's random state, so ``pyro.set_rng_seed`` repeats it. Warns where the weights'
    k-hat is above 0.7: the resampled draws are then no better founded than the guide's.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(1.0, 1.0))
        >>> guide = pyro.infer.autoguide.AutoNormal(model, init_scale=1.5)  # N(0, 1.5)
        >>> resampled = importance_resample(model, guide, num_samples=2000, proposals=8)
        >>> 0.9 < float(resampled.draws.latent["x"].mean()) < 1.1
        True
    """
    num_samples = check_int("num_samples", num_samples, 1)
    proposals = check_int("proposals", proposals, 1)
    draws = importance_draws(model, guide, *args, num_samples=num_samples * proposals,
                             max_plate_nesting=max_plate_nesting, predictive=predictive,
                             method=method, caller="importance_resample",
                             **kwargs)  # fmt: skip
    return resample_draws(draws, num_samples)
