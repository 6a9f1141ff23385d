"""Posterior diagnostics: the PSIS k-hat of a fitted guide, and export to ArviZ.

Both are built on Pyro's importance weights :math:`\\log w = \\log p(x, z) - \\log q(z)`,
:math:`z \\sim q`, computed in one vectorized pass (``pyro.infer.importance``), for any
guide. Both read the full data: subsampling plates are switched off (as for the
:class:`~pyro_realnvp.guide.potential.Potential` of the Laplace start), so a minibatch never
stands in for the model; where that cannot be done they refuse, naming the plate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoContinuous, AutoGuideList
from pyro.infer.importance import vectorized_importance_weights
from pyro.poutine.util import site_is_subsample

from ._internal.checks import check_int
from ._internal.compat import full_data_plates, is_deterministic_site
from .guide.potential import subsampled_sites

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = ["KHat", "khat_reading", "psis_khat", "to_inference_data"]

#: Upper ends of the "good" and "ok" readings of k-hat (Yao et al., 2018).
KHAT_GOOD, KHAT_OK = 0.5, 0.7
#: Name of the plate that vectorizes the draws, as in ``pyro.infer.importance``.
_DRAWS_PLATE = "num_particles_vectorized"


def khat_reading(khat: float) -> str:
    """The usual reading of a Pareto k-hat: ``"good"`` (< 0.5), ``"ok"`` (<= 0.7) or ``"bad"``.

    A ``"bad"`` guide's importance weights have a tail too heavy for importance sampling
    to correct it: its posterior expectations are not to be trusted. ``-inf`` (constant
    weights, see :func:`psis_khat`) reads ``"good"``.

    Example:
        >>> [khat_reading(k) for k in (0.2, 0.6, 0.9, float("inf"), float("-inf"))]
        ['good', 'ok', 'bad', 'bad', 'good']
    """
    if khat < KHAT_GOOD:
        return "good"
    return "ok" if khat <= KHAT_OK else "bad"


class KHat(float):
    """A PSIS k-hat: a ``float`` that also says how to read it.

    Example:
        >>> k = KHat(0.62)
        >>> k.reading, k.trustworthy, f"{k:.1f}"
        ('ok', True, '0.6')
    """

    @property
    def reading(self) -> str:
        """``"good"``, ``"ok"`` or ``"bad"``, see :func:`khat_reading`."""
        return khat_reading(self)

    @property
    def trustworthy(self) -> bool:
        """``True`` unless the reading is ``"bad"`` (k-hat above 0.7)."""
        return self.reading != "bad"

    def __repr__(self) -> str:
        return f"KHat({float(self):.3f}, reading={self.reading!r})"


def _ensure_setup(guide: Callable, args: tuple, kwargs: dict) -> None:
    """Build an autoguide's parameters outside any vectorizing plate, once."""
    if getattr(guide, "prototype_trace", False) is None:
        with poutine.block():
            guide(*args, **kwargs)


def _plate_nesting(model: Callable, args: tuple, kwargs: dict, given: int | None) -> int:
    """``given``, else the deepest plate of one run of the model (static structure)."""
    if given is not None:
        return given
    with poutine.block():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    dims = [
        -frame.dim
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


@contextlib.contextmanager
def _blame_small_nesting(model: Callable, args: tuple, kwargs: dict, given: int | None):
    """Where a ``max_plate_nesting`` the user gave is less than the model's plates, name
    it: Pyro's error (a shape that does not broadcast) says nothing of it."""
    try:
        yield
    except (ValueError, RuntimeError) as error:
        if given is None:
            raise
        try:
            needed = _plate_nesting(model, args, kwargs, None)
        except (ValueError, RuntimeError):
            needed = given  # the model cannot be measured either: its own error stands
        if needed <= given:
            raise
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
        first = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]  # Pyro's prefix
        raise ValueError(
            f"max_plate_nesting={given} is less than the {needed} plate(s) the model nests, "
            f"so its draws could not be vectorized ({first}): pass max_plate_nesting="
            f"{needed}, or leave it None to have it measured"
        ) from error


def _refuse_packed_subsample(guide: Callable, caller: str) -> None:
    """An ``AutoContinuous`` guide packs a local latent at its subsample's size: refuse.

    Its latent vector has the minibatch's length, so it cannot be drawn for every row,
    and scoring it on a minibatch is the silent subsample this module never does.
    """
    parts = list(guide) if isinstance(guide, AutoGuideList) else [guide]
    for part in parts:
        if not isinstance(part, AutoContinuous):
            continue
        for name, plate in subsampled_sites(part.prototype_trace):
            raise ValueError(
                f"{caller} scores the guide on the full data, but latent site '{name}' is "
                f"in subsampling plate '{plate.name}' ({plate.size} of {plate.full_size}) "
                f"and {type(part).__name__} packs it at the subsample's size, so it has no "
                "value for the other rows: use a guide that keeps one value per row (e.g. "
                "AutoNormal), or diagnose the model without subsampling"
            )


def _refuse_subsample_left(traces, caller: str) -> None:
    """A plate still subsampled inside ``full_data_plates`` (explicit indices): refuse."""
    for trace in traces:
        for name, plate in subsampled_sites(trace):
            raise ValueError(
                f"{caller} scores the guide on the full data, but site '{name}' is in plate "
                f"'{plate.name}' given explicit indices ({plate.size} of {plate.full_size}), "
                "which cannot be switched off: call the model with all its rows"
            )


def _check_nesting(max_plate_nesting) -> int | None:
    """``max_plate_nesting`` if it is ``None`` or an integer >= 0, else an error naming it."""
    if max_plate_nesting is None:
        return None
    try:
        return check_int("max_plate_nesting", max_plate_nesting, 0)
    except (TypeError, ValueError) as error:
        message = f"max_plate_nesting must be None or an integer >= 0, got {max_plate_nesting!r}"
        raise type(error)(message) from None


def _equal_up_to_rounding(log_weights: torch.Tensor) -> bool:
    """Whether the log-weights' spread is within rounding error of their magnitude.

    A guide equal to the posterior gives ``log w = log p(x)`` for every draw, up to the
    rounding of ``log p(x, z) - log q(z)``: a few ulps of terms about ``|log w|`` in size
    (1e-6 at ``|log w| = 1.4`` in float32, ten ulps). The tolerance, ``1000 eps`` times
    ``max(1, |max log w|)``, is 1.2e-4 relative in float32 and 2.2e-13 in float64: far
    above that rounding, and far below any spread that matters (weights within a factor
    ``e^{1.2e-4}`` of each other are as good as constant for importance sampling).
    """
    top, bottom = log_weights.max(), log_weights.min()
    tolerance = 1000 * torch.finfo(log_weights.dtype).eps * max(1.0, abs(float(top)))
    return float(top - bottom) <= tolerance  # False for NaN or all-infinite weights


def _log_weights(model, guide, args, kwargs, num_samples, nesting):
    """Importance log-weights of ``num_samples`` guide draws, and the traces they came from."""
    with poutine.block():
        return vectorized_importance_weights(
            model, guide, *args, num_samples=num_samples, max_plate_nesting=nesting, **kwargs
        )


@torch.no_grad()
def psis_khat(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    max_plate_nesting: int | None = None,
    **kwargs,
) -> KHat:
    r"""Pareto k-hat of the importance weights of a fitted guide, :math:`w = p(x, z) / q(z)`.

    The diagnostic of Yao et al. (2018), "Yes, but did it work?", as Pyro's
    ``psis_diagnostic`` computes it: Pyro draws the log-weights in one vectorized pass
    (``vectorized_importance_weights``), on the model's device; they are moved to the CPU
    and ArviZ's ``psislw`` fits the Pareto tail (Pyro's own fit builds its grid on the
    CPU, so it cannot take CUDA weights). Below 0.5 the guide is good, up to 0.7 usable,
    above 0.7 its posterior is not trustworthy. Constant weights (q equal to p up to
    rounding) have no tail: k-hat is -inf, read ``"good"`` (a Pareto fit to them returns
    inf). The estimate is noisy near the
    thresholds: on a 10-D funnel fitted by ``AutoNormal`` it scatters from 0.6 to 1.1
    over seeds at 2000 samples; use ten thousand or more to compare guides. ArviZ is
    imported on the first call.

    Model and guide run on the full data: subsampling plates yield every index, with
    scale 1. A latent inside a subsampling plate that the guide packs at the subsample's
    size (an ``AutoContinuous`` guide such as ``AutoRealNVP``), or a plate given explicit
    ``subsample=`` indices, raises a ``ValueError`` naming the plate and the site.

    Args:
        model: The Pyro model; ``*args`` and ``**kwargs`` are passed to it and the guide.
        guide: A fitted guide with static structure, vectorizable over draws.
        num_samples: Draws from the guide, all at once: an integer >= 10.
        max_plate_nesting: Plates nested in the model (an integer >= 0); guessed by
            running it if ``None``.

    Returns:
        The k-hat as a :class:`KHat`, a ``float`` with ``.reading`` and ``.trustworthy``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> guide = pyro.infer.autoguide.AutoNormal(model, init_scale=1.2)
        >>> psis_khat(model, guide, num_samples=500).reading
        'good'
    """
    import arviz as az

    num_samples = check_int("num_samples", num_samples, 10)
    max_plate_nesting = _check_nesting(max_plate_nesting)
    _ensure_setup(guide, args, kwargs)
    _refuse_packed_subsample(guide, "psis_khat")
    with full_data_plates(), _blame_small_nesting(model, args, kwargs, max_plate_nesting):
        nesting = _plate_nesting(model, args, kwargs, max_plate_nesting)
        log_weights, *traces = _log_weights(model, guide, args, kwargs, num_samples, nesting)
    _refuse_subsample_left(traces, "psis_khat")
    log_weights = log_weights.detach()
    if _equal_up_to_rounding(log_weights):
        return KHat(float("-inf"))
    _, khat = az.psislw(log_weights.double().cpu().numpy())
    return KHat(khat)


def _dim_names(site: dict, ndim: int) -> list[str]:
    """Name a site's first ``ndim`` dims after their plates, else ``<site>_dim_<i>``."""
    plates = {frame.dim: frame.name for frame in site["cond_indep_stack"] if frame.vectorized}
    batch_ndim = len(site["fn"].batch_shape)
    return [plates.get(i - batch_ndim, f"{site['name']}_dim_{i}") for i in range(ndim)]


def _one_draw_trace(model: Callable, guide: Callable, args: tuple, kwargs: dict):
    """A trace of the model at one guide draw: the per-draw shapes and plates of each site."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        return poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)


def _full_data_traces(model, guide, args, kwargs, num_samples, max_plate_nesting):
    """Log-weights, the vectorized model trace, its resampled observations and one draw's
    trace, all on the full data."""
    _refuse_packed_subsample(guide, "to_inference_data")
    with full_data_plates(), _blame_small_nesting(model, args, kwargs, max_plate_nesting):
        nesting = _plate_nesting(model, args, kwargs, max_plate_nesting)
        log_weights, model_trace, guide_trace = _log_weights(
            model, guide, args, kwargs, num_samples, nesting
        )
        with poutine.block(), pyro.plate(_DRAWS_PLATE, num_samples, dim=-(nesting + 1)):
            replayed = poutine.replay(poutine.uncondition(model), trace=guide_trace)
            predictive_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
        one_draw = _one_draw_trace(model, guide, args, kwargs)
    _refuse_subsample_left([model_trace, guide_trace], "to_inference_data")
    return log_weights, model_trace, predictive_trace, one_draw


def _sites(trace) -> dict:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    }


@torch.no_grad()
def to_inference_data(
    model: Callable,
    guide: Callable,
    *args,
    max_plate_nesting: int | None = None,
    num_samples: int = 1000,
    **kwargs,
) -> InferenceData:
    r"""Draws of a fitted guide as an ArviZ ``InferenceData``, :math:`z_s \sim q`, one chain.

    Groups:

    - ``posterior``: every latent (and ``pyro.deterministic``) site in its constrained
      space, shape ``(1, num_samples, ...)``; dims are named after the model's plates,
      other dims ``<site>_dim_<i>``.
    - ``posterior_predictive``: each observed site resampled at each draw.
    - ``observed_data``: the observed values.
    - ``log_likelihood``: pointwise :math:`\log p(y \mid z_s)` of each observed site.
    - ``sample_stats``: ``log_weight``, the importance log-weight
      :math:`\log p(x, z_s) - \log q(z_s)` of each draw, for ``az.psislw``.

    The draws come from ``q``, not from the posterior: ``az.summary`` describes the guide,
    and tools that assume posterior draws (``az.loo``) are as good as the guide's
    :func:`psis_khat`. ArviZ is imported on the first call. As there, the model runs on
    the full data (every row of a subsampling plate, scale 1), or the call refuses.

    Args:
        model: The Pyro model; ``*args`` and ``**kwargs`` are passed to it and the guide.
        guide: A fitted guide with static structure, vectorizable over draws.
        num_samples: Draws from the guide, an integer >= 1.
        max_plate_nesting: Plates nested in the model (an integer >= 0); guessed by
            running it if ``None``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("obs", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> idata = to_inference_data(model, guide, torch.zeros(3), num_samples=100)
        >>> idata.posterior["mu"].shape, idata.posterior_predictive["y"].dims
        ((1, 100), ('chain', 'draw', 'obs'))
    """
    import arviz as az

    num_samples = check_int("num_samples", num_samples, 1)
    max_plate_nesting = _check_nesting(max_plate_nesting)
    _ensure_setup(guide, args, kwargs)
    log_weights, *traces = _full_data_traces(
        model, guide, args, kwargs, num_samples, max_plate_nesting
    )
    groups, dims = _groups(*traces, num_samples)
    return az.from_dict(
        **{group: data or None for group, data in groups.items()},
        sample_stats={"log_weight": log_weights.reshape(1, num_samples).cpu().numpy()},
        dims=dims,
        attrs={"inference_library": "pyro", "guide": type(guide).__name__},
    )


def _groups(model_trace, predictive_trace, one_draw, num_samples: int) -> tuple[dict, dict]:
    """InferenceData's groups of arrays ``(1, num_samples, ...)`` by site, and the dims
    named after plates, from the vectorized traces and one draw's (its per-draw shapes)."""
    shapes = _sites(one_draw)
    groups: dict[str, dict] = {
        "posterior": {},
        "posterior_predictive": {},
        "log_likelihood": {},
        "observed_data": {},
    }
    dims: dict[str, list[str]] = {}

    def per_draw(value: torch.Tensor, shape: torch.Size):
        # The draws plate leaves singleton dims left of each site's own shape.
        return value.detach().reshape((1, num_samples) + tuple(shape)).cpu().numpy()

    for name, site in _sites(model_trace).items():
        one = shapes[name]
        if not site["is_observed"] or is_deterministic_site(site):
            groups["posterior"][name] = per_draw(site["value"], one["value"].shape)
            dims[name] = _dim_names(one, one["value"].dim())
            continue
        batch_shape = one["fn"].batch_shape
        groups["observed_data"][name] = one["value"].detach().cpu().numpy()
        groups["posterior_predictive"][name] = per_draw(
            predictive_trace.nodes[name]["value"], batch_shape + one["fn"].event_shape
        )
        groups["log_likelihood"][name] = per_draw(site["fn"].log_prob(site["value"]), batch_shape)
        if one["value"].shape == batch_shape + one["fn"].event_shape:
            # Batch dims only: ArviZ names event dims ``<site>_dim_<i>`` as we would.
            dims[name] = _dim_names(one, len(batch_shape))
    return groups, dims
