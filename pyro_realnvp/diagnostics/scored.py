"""What a guide's draws scored by a model are, whichever way they were scored."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from .._internal.compat import is_deterministic_site

__all__ = ["ImportanceDraws"]

#: Upper ends of the "good" and "ok" readings of k-hat (Yao et al., 2018).
KHAT_GOOD, KHAT_OK = 0.5, 0.7
#: Seconds of scoring draws one by one before a progress bar shows.
PROGRESS_DELAY = 3.0
#: Tensor elements one batched pass may compute: its draws are chunked to stay within.
CHUNK_ELEMENTS = 2**25


@dataclass
class ImportanceDraws:
    """``num_samples`` draws of a guide, scored by the model on the full data.

    Attributes:
        log_weights: :math:`\\log p(x, z_s) - \\log q(z_s)`, shape ``(N,)``.
        latent: Each latent and ``pyro.deterministic`` site's values, ``(N, *shape)``.
        log_likelihood: Each observed site's pointwise log-likelihood, ``(N, *batch)``.
        predictive: Each observed site drawn at each :math:`z_s` (where asked for).
        observed: Each observed site's values.
        sites: The model's sites at one draw: their shapes and plates.
        method: ``"vectorized"`` (a draws plate), ``"vmap"`` or ``"draw by draw"``.
        note: Why not vectorized, where it is not.
        non_finite: How many draws each site's log-density was not finite at.
        unguided: The model's latent sites the guide does not draw (enumerated ones):
            their values are the prior's, and the weights are not importance weights.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro_realnvp.diagnostics import importance_draws
        >>> model = lambda: pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> draws = importance_draws(model, AutoNormal(model), num_samples=5)
        >>> draws.log_weights.shape, draws.method
        (torch.Size([5]), 'vectorized')
    """

    log_weights: Tensor
    latent: dict[str, Tensor]
    log_likelihood: dict[str, Tensor]
    predictive: dict[str, Tensor]
    observed: dict[str, Tensor]
    sites: dict[str, dict]
    method: str = "vectorized"
    note: str = ""
    non_finite: dict[str, int] = field(default_factory=dict)
    unguided: tuple[str, ...] = ()


def sample_sites(trace: poutine.Trace) -> dict[str, dict]:
    """The trace's sample sites, but a plate's own index sites."""
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    }


def unguided_sites(guide_trace: poutine.Trace, model_trace: poutine.Trace) -> tuple[str, ...]:
    """The model's latent sites that the guide's trace lacks."""
    return tuple(
        name for name, site in sample_sites(model_trace).items()
        if not site["is_observed"] and name not in guide_trace.nodes
    )  # fmt: skip


def is_factor_site(site: dict) -> bool:
    """A ``pyro.factor`` site: a term of the log-density, with no data to record."""
    return site["is_observed"] and type(site["fn"]).__name__ == "Unit"


def is_data_site(site: dict) -> bool:
    """An observed sample site that is neither a ``pyro.deterministic`` nor a
    ``pyro.factor`` one."""
    return site["is_observed"] and not is_deterministic_site(site) and not is_factor_site(site)


def _first_lines(error: BaseException) -> str:
    """An error's first line, with the next where the first ends in a colon (Pyro's
    "Error while ... at site 'y':" prefix), without the trace tables that follow."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]


class _Vectorization(Exception):
    """Why the draws cannot be scored in one vectorized pass; ``error`` is what to raise
    where they must be (that ``method`` named, or a ``max_plate_nesting`` that is too small)."""

    def __init__(self, error: Exception, nesting_too_small: bool = False) -> None:
        super().__init__(_first_lines(error))
        self.error, self.nesting_too_small = error, nesting_too_small


def refuse_unguided(draws: ImportanceDraws) -> None:
    """Refuse weights over latents the guide does not draw: with an enumerated site drawn
    from its prior, :math:`p(x, z, c) / q(z)` is no importance weight of the guide."""
    if draws.unguided:
        raise ValueError(
            f"the guide does not draw the model's latent site(s) {list(draws.unguided)} "
            "(enumerated, left to TraceEnum_ELBO), so the draws' weights p(x, z) / q(z) "
            "cannot be formed and no k-hat can be read; read the k-hat of a guide of the "
            "model with those sites marginalized out (pyro.infer.config_enumerate and "
            "a guide over the rest, then infer_discrete for their posterior)"
        )


def refuse_non_finite(draws: ImportanceDraws) -> None:
    """Name the sites whose log-density was NaN or infinite at some draws: a NaN or +inf
    log-weight has no place in a Pareto fit (-inf, a draw the model gives no density,
    has: its weight is 0)."""
    log_weights = draws.log_weights
    bad = int((torch.isnan(log_weights) | (log_weights == math.inf)).sum())
    if not bad:
        return
    sites = ", ".join(f"{site} at {count}" for site, count in draws.non_finite.items())
    raise ValueError(
        f"{bad} of {len(log_weights)} draws have a NaN or infinite log-weight, so no k-hat "
        f"can be read: the log-density of {sites or 'no single site'} draw(s) is not "
        "finite (NaN in the observed data? a guide whose draws leave the model's support?)"
    )
