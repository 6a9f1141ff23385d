r"""Importance resampling of scored draws: draws of q moved toward the posterior.

:math:`z_s \sim q`, :math:`s = 1..M`, weighted by their PSIS-smoothed importance weights
:math:`\tilde w_s \propto p(x, z_s) / q(z_s)` (Vehtari et al. 2024, "Pareto smoothed
importance sampling") and resampled with replacement in proportion to them. Expectations
over the resampled draws are self-normalised importance sampling estimates, which gained
over plain flow VI on every model in Agrawal, Sheldon and Domke (2020, "Advances in
black-box VI: normalizing flows, importance weighting, and optimization"). How far they can
be trusted is the weights' k-hat (below 0.7) and their effective sample size,
:math:`1 / \sum_s \tilde w_s^2` of the M proposals: resampling draws no more distinct
values than that.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from .._internal.locate import warn_at_user
from .._internal.quiet import import_arviz
from .scored import KHAT_OK, ImportanceDraws, refuse_non_finite, refuse_unguided

__all__ = ["ResampledDraws", "constant_weights", "resample_draws", "smoothed_weights"]

#: Log-weights within this relative spread are constant to float32 rounding (a guide
#: equal to its posterior), and read k-hat ``BOUNDED_KHAT``: the generalized Pareto
#: shape of a uniform tail, the bounded limit a Pareto fit of ties cannot reach.
CONSTANT_SPREAD, BOUNDED_KHAT = 1e-5, -1.0


@dataclass
class ResampledDraws:
    """Draws resampled by their smoothed importance weights, and what they rest on.

    Attributes:
        draws: The resampled draws: every per-draw field of the proposals'
            :class:`~pyro_realnvp.diagnostics.scored.ImportanceDraws` at ``indices``.
        indices: Which of the proposals each resampled draw is, ``(N,)``.
        weights: The proposals' normalised smoothed weights, ``(M,)``.
        khat: The Pareto k-hat of the proposals' weights (one set of M draws).
        ess: The weights' effective sample size, :math:`1 / \\sum_s \\tilde w_s^2`, in draws.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> model = lambda: pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> guide = pyro.infer.autoguide.AutoNormal(model, init_scale=1.0)
        >>> from pyro_realnvp.diagnostics import importance_draws
        >>> draws = importance_draws(model, guide, num_samples=400)
        >>> resampled = resample_draws(draws, 100)
        >>> resampled.num_proposals, resampled.draws.latent["x"].shape
        (400, torch.Size([100]))
    """

    draws: ImportanceDraws
    indices: Tensor
    weights: Tensor
    khat: float
    ess: float

    @property
    def num_proposals(self) -> int:
        return len(self.weights)

    @property
    def distinct(self) -> int:
        """How many different proposals the resampled draws are."""
        return len(torch.unique(self.indices))


def constant_weights(log_weights: Tensor) -> bool:
    """Whether the finite ``log_weights`` are equal to float32 rounding (a guide equal to
    its posterior): no tail to fit, where ArviZ's fit of their rounding ties reads inf.

    Example:
        >>> constant_weights(torch.full((5,), -3.2)), constant_weights(torch.arange(5.0))
        (True, False)
    """
    finite = log_weights.detach().double()[torch.isfinite(log_weights)]
    return bool(len(finite)) and float(finite.max() - finite.min()) <= CONSTANT_SPREAD * max(
        1.0, float(finite.abs().max())
    )


def smoothed_weights(log_weights: Tensor) -> tuple[Tensor, float]:
    r"""Normalised PSIS-smoothed weights :math:`\tilde w` of ``log_weights`` (ArviZ's
    ``psislw``), and the k-hat of their tail; constant log-weights
    (:func:`constant_weights`) give equal weights to the finite ones and k-hat
    ``BOUNDED_KHAT``, a uniform tail's shape.

    Example:
        >>> weights, khat = smoothed_weights(torch.zeros(100))
        >>> float(weights.sum()), bool(torch.allclose(weights.float(), torch.full((100,), 0.01)))
        (1.0, True)
    """
    values = log_weights.detach().double().cpu()
    if constant_weights(values):
        finite = torch.isfinite(values).double()
        return finite / finite.sum(), BOUNDED_KHAT
    az = import_arviz()
    with np.errstate(over="ignore"):  # ArviZ's tail-length fit overflows harmlessly
        smoothed, khat = az.psislw(values.numpy())
    weights = torch.as_tensor(smoothed).exp()
    return weights / weights.sum(), float(khat)


def take(draws: ImportanceDraws, indices: Tensor) -> ImportanceDraws:
    """The draws at ``indices`` (with repeats): every per-draw field indexed alike."""

    def at(values: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: value[indices.to(value.device)] for name, value in values.items()}

    return replace(
        draws,
        log_weights=draws.log_weights[indices.to(draws.log_weights.device)],
        latent=at(draws.latent),
        log_likelihood=at(draws.log_likelihood),
        predictive=at(draws.predictive),
    )


def resample_draws(draws: ImportanceDraws, num_samples: int) -> ResampledDraws:
    """``num_samples`` of ``draws`` resampled with replacement in proportion to their
    PSIS-smoothed weights, with Pyro's (torch's) random state. Warns where the weights'
    k-hat is above 0.7: the resampled draws are then no better founded than the guide's.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_realnvp.diagnostics import importance_draws
        >>> model = lambda: pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> guide = pyro.infer.autoguide.AutoNormal(model, init_scale=1.0)
        >>> resample_draws(importance_draws(model, guide, num_samples=50), 10).indices.shape
        torch.Size([10])
    """
    refuse_unguided(draws)
    refuse_non_finite(draws)
    weights, khat = smoothed_weights(draws.log_weights)
    indices = torch.multinomial(weights.float(), num_samples, replacement=True)
    ess = float(1.0 / (weights**2).sum())
    if khat > KHAT_OK:
        warn_at_user(
            f"the importance weights' k-hat is {khat:.2f} (above {KHAT_OK}): the guide "
            "misses part of the posterior, and resampling cannot restore what it never "
            f"draws (effective sample size {ess:.0f} of {len(weights)})"
        )
    return ResampledDraws(take(draws, indices), indices, weights, khat, ess)
