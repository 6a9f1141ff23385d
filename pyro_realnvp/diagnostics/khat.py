r"""The PSIS k-hat of a fitted guide (Yao et al. 2018, "Yes, but did it work?"), read
with what makes it trustworthy.

:math:`\hat k` is the shape of a generalized Pareto fit to the largest importance weights
:math:`w = p(x, z) / q(z)`, :math:`z \sim q` (ArviZ's ``psislw``): below 0.5 the guide's
expectations can be trusted, up to 0.7 corrected by importance sampling, above it not.
One estimate from a few thousand draws scatters by 0.1-0.2 between repeats, so the
k-hat reported is the median over several independent sets of draws, with their spread;
beside it the importance sampling's relative effective sample size and the log-weights'
spread. A near-exact guide, whose weights are all within a few times each other, reads
good whatever the shape of their small tail.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch
from torch import Tensor

from .._internal.checks import check_int
from .draws import importance_draws
from .scored import KHAT_GOOD, KHAT_OK, refuse_non_finite, refuse_unguided
from .weights import BOUNDED_KHAT, constant_weights, smoothed_weights

__all__ = ["KHat", "khat_reading", "psis_khat"]

#: A guide is near exact where the log-weights' standard deviation is below the first and
#: the largest weight within the second times the median one: importance sampling then
#: moves no expectation noticeably, however a Pareto fit reads the weights' small tail.
NEAR_EXACT_SD, NEAR_EXACT_RATIO = 0.1, 4.0


def khat_reading(khat: float) -> str:
    """The usual reading of a Pareto k-hat: ``"good"`` (< 0.5), ``"ok"`` (<= 0.7) or ``"bad"``.

    A ``"bad"`` guide's importance weights have a tail too heavy for importance sampling
    to correct it: its posterior expectations are not to be trusted (unless the guide is
    near exact, which :class:`KHat` knows and a bare number does not).

    Example:
        >>> [khat_reading(k) for k in (0.2, 0.6, 0.9, float("inf"), float("-inf"))]
        ['good', 'ok', 'bad', 'bad', 'good']
    """
    if khat < KHAT_GOOD:
        return "good"
    return "ok" if khat <= KHAT_OK else "bad"


class KHat(float):
    """A PSIS k-hat: a ``float``, the median over sets of draws, that says how to read it.

    Attributes:
        sets: The k-hat of each independent set of draws.
        ess: The importance sampling's relative effective sample size (median over sets).
        log_weight_sd: The log-weights' standard deviation.
        max_weight_ratio: The largest weight over the median one (median over sets).
        num_samples: Draws per set.
        method: How the draws were scored, one of ``diagnostics.METHODS``.

    Example:
        >>> k = KHat(0.62)
        >>> k.reading, k.trustworthy, f"{k:.1f}"
        ('ok', True, '0.6')
    """

    def __new__(cls, value: float, **report) -> KHat:
        return super().__new__(cls, value)

    def __init__(self, value: float, *, sets: tuple[float, ...] = (), ess: float = math.nan,
                 log_weight_sd: float = math.nan, max_weight_ratio: float = math.nan,
                 num_samples: int = 0, method: str = "") -> None:  # fmt: skip
        self.sets, self.ess, self.num_samples, self.method = tuple(sets), ess, num_samples, method
        self.log_weight_sd, self.max_weight_ratio = log_weight_sd, max_weight_ratio

    @property
    def near_exact(self) -> bool:
        """Whether the weights are nearly uniform (see the module docstring)."""
        return self.log_weight_sd < NEAR_EXACT_SD and self.max_weight_ratio < NEAR_EXACT_RATIO

    @property
    def reading(self) -> str:
        """``"good"``, ``"ok"`` or ``"bad"``, see :func:`khat_reading`; ``"good"`` too
        for a near-exact guide."""
        return "good" if self.near_exact else khat_reading(self)

    @property
    def trustworthy(self) -> bool:
        """``True`` unless the reading is ``"bad"`` (k-hat above 0.7)."""
        return self.reading != "bad"

    @property
    def spread(self) -> tuple[float, float]:
        """The smallest and largest k-hat over the sets (the value itself for one set)."""
        return (min(self.sets), max(self.sets)) if self.sets else (float(self), float(self))

    def summary(self) -> str:
        """One line: the reading, why, and how sure it is.

        Example:
            >>> KHat(0.45, sets=(0.4, 0.45, 0.5), ess=0.61, num_samples=2000).summary()
            'k-hat 0.45 reads good (below 0.5); median of 3 sets of 2000 draws, 0.40-0.50; importance ESS 61%'
        """  # noqa: E501
        if self.near_exact:
            why = (f"near exact: log-weights' sd {self.log_weight_sd:.3f}, largest weight "
                   f"{self.max_weight_ratio:.1f}x the median")  # fmt: skip
        else:
            reading = khat_reading(self)
            why = {"good": "below 0.5", "ok": "0.5 to 0.7", "bad": "above 0.7"}[reading]
        text = f"k-hat {float(self):.2f} reads {self.reading} ({why})"
        if len(self.sets) > 1:
            low, high = self.spread
            text += f"; median of {len(self.sets)} sets of {self.num_samples} draws, "
            text += f"{low:.2f}-{high:.2f}"
        if math.isfinite(self.ess):  # a tenth of a percent where it is that small
            text += (
                f"; importance ESS {self.ess:.0%}"
                if self.ess >= 0.1
                else (f"; importance ESS {self.ess:.1%}")
            )
        return text

    def __repr__(self) -> str:
        return f"KHat({float(self):.3f}, reading={self.reading!r})"


def _pareto_khat(log_weights: Tensor) -> tuple[float, float]:
    """The PSIS k-hat of one set's log-weights (:func:`~.weights.smoothed_weights`), and
    its relative ESS, :math:`1 / (N \\sum_s \\tilde w_s^2)`; constant log-weights (an exact
    guide) read ``BOUNDED_KHAT`` and ESS 1."""
    if constant_weights(log_weights):
        return BOUNDED_KHAT, 1.0
    weights, khat = smoothed_weights(log_weights)
    return khat, float(1.0 / (len(weights) * (weights**2).sum()))


@torch.no_grad()
def psis_khat(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 2000,
    num_sets: int = 20,
    max_plate_nesting: int | None = None,
    method: str | None = None,
    **kwargs,
) -> KHat:
    r"""Pareto k-hat of a fitted guide's importance weights, :math:`w = p(x, z) / q(z)`:
    the median over ``num_sets`` independent sets of ``num_samples`` draws each.

    The draws are scored by :func:`~pyro_realnvp.diagnostics.draws.importance_draws`, on
    the full data, batched where the model allows (``method``) and one by one
    otherwise, on the model's device; ArviZ's ``psislw`` fits each set's tail. A
    NaN or infinite log-weight raises a ``ValueError`` naming the sites at fault.

    Args:
        model, guide: The model and a fitted guide; ``*args``, ``**kwargs`` go to both.
        num_samples: Draws per set, an integer >= 10.
        num_sets: Independent sets, an integer >= 1.
        max_plate_nesting: Plates nested in the model; measured if ``None``.
        method: How to score the draws, one of ``diagnostics.METHODS``, or ``None``
            for the fastest the model allows.

    Returns:
        A :class:`KHat`: a ``float`` with ``.reading``, ``.trustworthy``, ``.sets``,
        ``.ess``, ``.log_weight_sd`` and ``.summary()``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> guide = pyro.infer.autoguide.AutoNormal(model, init_scale=1.2)
        >>> psis_khat(model, guide, num_samples=500, num_sets=3).reading
        'good'
    """
    num_samples = check_int("num_samples", num_samples, 10)
    num_sets = check_int("num_sets", num_sets, 1)
    sets, ratios, pooled = [], [], []
    # One set at a time: its pointwise log-likelihoods (draws x rows) bound the memory.
    for _ in range(num_sets):
        draws = importance_draws(model, guide, *args, num_samples=num_samples,
                                 max_plate_nesting=max_plate_nesting, method=method,
                                 caller="psis_khat", **kwargs)  # fmt: skip
        refuse_unguided(draws)
        refuse_non_finite(draws)
        method = draws.method  # found once, for every set
        sets.append(_pareto_khat(draws.log_weights))
        ratios.append(_max_weight_ratio(draws.log_weights))
        pooled.append(draws.log_weights.double().cpu())
    finite = torch.cat(pooled)
    finite = finite[torch.isfinite(finite)]
    return KHat(
        statistics.median(k for k, _ in sets), sets=tuple(k for k, _ in sets),
        ess=statistics.median(e for _, e in sets), log_weight_sd=float(finite.std()),
        max_weight_ratio=statistics.median(ratios), num_samples=num_samples,
        method=draws.method,
    )  # fmt: skip


def _max_weight_ratio(log_weights: Tensor) -> float:
    """The largest weight of one set over its median weight: per set, not over all sets
    pooled, where it would grow with the number of sets."""
    finite = log_weights[torch.isfinite(log_weights)].double()
    return float((finite.max() - finite.median()).exp()) if len(finite) else math.inf
