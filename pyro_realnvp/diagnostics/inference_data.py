"""A fitted guide's draws as an ArviZ ``InferenceData``, on the full data."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .._internal.checks import check_int
from .._internal.locate import warn_at_user
from .._internal.quiet import import_arviz
from .draws import ImportanceDraws, importance_draws
from .scored import is_data_site, is_factor_site
from .weights import resample_draws

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = ["to_inference_data"]


def _dim_names(site: dict, ndim: int) -> list[str]:
    """Name a site's first ``ndim`` dims after their plates, else ``<site>_dim_<i>``."""
    plates = {frame.dim: frame.name for frame in site["cond_indep_stack"] if frame.vectorized}
    batch_ndim = len(site["fn"].batch_shape)
    return [plates.get(i - batch_ndim, f"{site['name']}_dim_{i}") for i in range(ndim)]


def _groups(draws: ImportanceDraws, num_chains: int) -> tuple[dict, dict]:
    """InferenceData's groups, arrays ``(chains, draws, ...)`` by site, and the dims
    named after the model's plates."""

    def chains(value: Tensor):
        per_chain = value.shape[0] // num_chains  # not -1: a zero-sized site has no elements
        return value.reshape((num_chains, per_chain, *value.shape[1:])).cpu().numpy()

    groups = {
        "posterior": {name: chains(value) for name, value in draws.latent.items()},
        "posterior_predictive": {name: chains(v) for name, v in draws.predictive.items()},
        "log_likelihood": {name: chains(v) for name, v in draws.log_likelihood.items()},
        "observed_data": {name: value.cpu().numpy() for name, value in draws.observed.items()},
    }
    dims = {}
    for name, site in draws.sites.items():
        if is_factor_site(site):
            continue
        if not is_data_site(site):
            dims[name] = _dim_names(site, site["value"].dim())
        elif site["value"].shape == site["fn"].batch_shape + site["fn"].event_shape:
            # Batch dims only: ArviZ names event dims ``<site>_dim_<i>`` as we would.
            dims[name] = _dim_names(site, len(site["fn"].batch_shape))
    return groups, dims


@torch.no_grad()
def to_inference_data(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    num_chains: int = 4,
    max_plate_nesting: int | None = None,
    method: str | None = None,
    resample: bool = False,
    proposals: int = 4,
    **kwargs,
) -> InferenceData:
    r"""Draws of a fitted guide as an ArviZ ``InferenceData``, :math:`z_s \sim q`.

    Groups: ``posterior`` (every latent and ``pyro.deterministic`` site in its support,
    dims named after the model's plates, others ``<site>_dim_<i>``),
    ``posterior_predictive`` (each observed site drawn at each draw), ``observed_data``,
    ``log_likelihood`` (pointwise :math:`\log p(y \mid z_s)`) and ``sample_stats``
    (``log_weight``, :math:`\log p(x, z_s) - \log q(z_s)`, for ``az.psislw``). The draws
    are independent; they come as ``num_chains`` chains of ``num_samples`` so that ArviZ's
    summaries, which need two chains, work (r-hat is about 1 by construction). They are
    draws of q, not of the posterior: as good as :func:`psis_khat` says. Scored as there,
    on the full data, vectorized where the model allows and draw by draw otherwise.

    ``resample=True``: draws resampled from ``proposals`` times as many by their smoothed
    importance weights (:func:`~pyro_realnvp.diagnostics.importance_resample`), every
    group alike; ``sample_stats`` then holds ``proposal``, and ``attrs`` ``pareto_k``,
    ``importance_ess`` and ``num_proposals``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("obs", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> idata = to_inference_data(model, guide, torch.zeros(3), num_samples=100)
        >>> idata.posterior["mu"].shape, idata.posterior_predictive["y"].dims
        ((4, 100), ('chain', 'draw', 'obs'))
    """
    az = import_arviz()

    num_samples = check_int("num_samples", num_samples, 1)
    num_chains = check_int("num_chains", num_chains, 1)
    proposals = check_int("proposals", proposals, 1)
    attrs = {"inference_library": "pyro", "guide": type(guide).__name__}
    draws, stats = _draws_and_stats(
        model, guide, args, kwargs, num_samples * num_chains, (max_plate_nesting, method),
        proposals if resample else None, attrs,
    )  # fmt: skip
    stats = {name: value.reshape(num_chains, num_samples).cpu().numpy()
             for name, value in stats.items()}  # fmt: skip
    groups, dims = _groups(draws, num_chains)
    return az.from_dict(
        **{group: data or None for group, data in groups.items()},
        sample_stats=stats,
        dims=dims,
        attrs=attrs,
    )


def _draws_and_stats(
    model, guide, args, kwargs, num_draws: int, how: tuple, proposals: int | None, attrs: dict
) -> tuple[ImportanceDraws, dict]:
    """The draws (resampled from ``proposals`` times as many where given), their sample
    statistics by name, and what resampled draws rest on added to ``attrs``."""
    max_plate_nesting, method = how
    draws = importance_draws(model, guide, *args, num_samples=num_draws * (proposals or 1),
                             max_plate_nesting=max_plate_nesting, predictive=True,
                             method=method, caller="to_inference_data", **kwargs)  # fmt: skip
    if draws.unguided:
        warn_at_user(
            f"the guide does not draw the model's latent site(s) {list(draws.unguided)} "
            "(enumerated): their values in the posterior group are draws from their prior, "
            "not their posterior (pyro.infer.infer_discrete draws those), and sample_stats' "
            "log_weight is no importance weight"
        )
    if proposals is None:
        return draws, {"log_weight": draws.log_weights}
    resampled = resample_draws(draws, num_draws)
    attrs.update(pareto_k=resampled.khat, importance_ess=resampled.ess,
                 num_proposals=resampled.num_proposals)  # fmt: skip
    return resampled.draws, {"proposal": resampled.indices}
