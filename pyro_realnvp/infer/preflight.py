"""What ``fit`` checks of the model and the guide before any step, naming the site: the
observed data are finite, in their support and plated (:mod:`~pyro_realnvp.guide.observed`),
and the guide was built for this model."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.infer.autoguide import AutoGuide, AutoGuideList
from pyro.infer.elbo import ELBO
from pyro.poutine.util import site_is_subsample

from .._internal.compat import rng_state
from .._internal.locate import warn_at_user
from ..guide.observed import check_observed

__all__ = ["preflight"]


def preflight(model: Callable, guide: Callable, args: tuple, kwargs: dict,
              loss: ELBO | None = None) -> None:  # fmt: skip
    """Run the model once (leaving the random state as it was) and check it and the guide.

    A model that cannot be run so (say, a latent that cannot be sampled) is left to the
    guide's set-up, whose errors name the site.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model(y):
        ...     pyro.sample("y", dist.Normal(pyro.sample("mu", dist.Normal(0, 1)), 1), obs=y)
        >>> preflight(model, AutoNormal(model), (torch.tensor(float("nan")),), {})
        Traceback (most recent call last):
        ...
        ValueError: observed site 'y' holds 1 NaN or infinite value(s) of 1 (NaN), at index (); the model's log-density is not finite there: remove those rows, or mask them (pyro.sample(..., obs_mask=...) or poutine.mask)
    """  # noqa: E501
    try:
        with rng_state(), torch.no_grad(), poutine.block():
            trace = poutine.trace(model).get_trace(*args, **kwargs)
    except Exception:  # noqa: BLE001 - any failure is the set-up's or the step's to report
        return
    check_observed(trace)
    check_guide_fits_model(trace, guide, model, args, kwargs)
    warn_unenumerated(trace, loss)


def warn_unenumerated(trace: poutine.Trace, loss: ELBO | None) -> None:
    """Warn where sites marked for enumeration meet an ELBO that does not enumerate: each
    step would draw them from their prior, unguided (Pyro says only "Found vars in model
    but not guide")."""
    marked = [
        name for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
        and site["infer"].get("enumerate")
    ]  # fmt: skip
    if marked and not isinstance(loss, TraceEnum_ELBO):
        warn_at_user(
            f"site(s) {marked} are marked for enumeration, which "
            f"{type(loss).__name__ if loss is not None else 'the default Trace_ELBO'} "
            "ignores: each step would draw them from their prior. Pass loss=pyro.infer."
            "TraceEnum_ELBO(max_plate_nesting=...) to sum them out"
        )


def _latents(trace: poutine.Trace) -> dict[str, tuple[int, ...]]:
    """The trace's latent sites the guide draws, with their shapes."""
    return {
        name: tuple(site["value"].shape)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        and not site["infer"].get("enumerate")
    }  # fmt: skip


def _describe(latents: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"'{name}' {shape}" for name, shape in sorted(latents.items()))


def check_guide_fits_model(trace: poutine.Trace, guide: Callable, model: Callable, args,
                           kwargs) -> None:  # fmt: skip
    """Refuse an autoguide built for other latent sites or shapes than the model's: it
    would sample sites this model lacks, or give the wrong shapes, and leave this model's
    to their priors. Where the model itself gives those sites at other values, say that
    its sites change with its latent values instead."""
    if not isinstance(guide, AutoGuide) or isinstance(guide, AutoGuideList):
        return
    prototype = getattr(guide, "prototype_trace", None)
    if prototype is None:
        try:
            with rng_state(), torch.no_grad(), poutine.block():
                prototype = poutine.trace(guide.model).get_trace(*args, **kwargs)
        except Exception:  # noqa: BLE001 - its set-up will say why
            return
    guided, latents = _latents(prototype), _latents(trace)
    if all(latents.get(name) == shape for name, shape in guided.items()):
        return
    if _gives(model, guided, args, kwargs):
        raise ValueError(
            "the model's latent sites change with its latent values: one run gives "
            f"{_describe(latents)}, another {_describe(guided)}. An autoguide learns one "
            "fixed set of sites and shapes: write the model so that its sites and their shape "
            "do not depend on latent values (mask a site instead of skipping it)"
        )
    raise ValueError(
        f"the guide was built for a model whose latent sites are {_describe(guided)}, but "
        f"this model's, with these arguments, are {_describe(latents)} (name and shape): "
        "build the guide from this model and these data (AutoRealNVP(model)), with a fresh "
        "param store if the names are the same"
    )


def _gives(model: Callable, latents: dict, args, kwargs, tries: int = 10) -> bool:
    """Whether some of ``tries`` runs of ``model`` (random state kept) have ``latents``."""
    with rng_state(), torch.no_grad(), poutine.block():
        for _ in range(tries):
            try:
                if _latents(poutine.trace(model).get_trace(*args, **kwargs)) == latents:
                    return True
            except Exception:  # noqa: BLE001 - a run that fails gives nothing
                continue
    return False
