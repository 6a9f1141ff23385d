"""The set-up's checks of the model's observed sites, each refusal naming the site: data
that are finite, inside the support of their distribution, and shaped as its plates say.

Pyro checks none of these until a log-density is computed (and the first two not at all
with validation off); by then the ELBO is NaN, ``-inf`` or silently summed over rows, and
a plain ``SVI`` loop has turned the guide's parameters to NaN.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from torch import Tensor

from .._internal.compat import is_deterministic_site

__all__ = ["check_observed", "check_observed_finite"]


def _observed(trace: poutine.Trace):
    """``(name, site, value, unmasked)`` for each observed site holding a tensor;
    ``unmasked`` says which of its values count (``None``: all)."""
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"] or is_deterministic_site(site):
            continue
        if type(site["fn"]).__name__ == "Unit":  # a pyro.factor: no data
            continue
        value, mask = site["value"], site.get("mask")
        if not torch.is_tensor(value):
            continue
        unmasked = None
        if torch.is_tensor(mask) and mask.shape == value.shape:
            unmasked = mask.bool()
        yield name, site, value, unmasked


def check_observed(trace: poutine.Trace) -> None:
    """Refuse observed data that are not finite, lie outside their support, or do not
    broadcast with their distribution (under validation: reach beyond its plates).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        ...     with pyro.plate("rows", 2):
        ...         pyro.sample("y", dist.Exponential(rate), obs=torch.tensor([0.5, -1.0]))
        >>> try:
        ...     check_observed(poutine.trace(model).get_trace())
        ... except ValueError as error:
        ...     print(str(error)[:60])
        observed site 'y' holds 1 value(s) outside the support of it
    """
    check_observed_finite(trace)
    for name, site, value, unmasked in _observed(trace):
        _check_shape(name, site["fn"], value)
        _check_support(name, site["fn"], value, unmasked)


def check_observed_finite(trace: poutine.Trace) -> None:
    """Refuse observed values that are NaN or infinite where they are not masked out.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(float("nan")))
        >>> try:
        ...     check_observed_finite(poutine.trace(model).get_trace())
        ... except ValueError as error:
        ...     print(str(error)[:55])
        observed site 'y' holds 1 NaN or infinite value(s) of 1
    """
    for name, _, value, unmasked in _observed(trace):
        if not value.is_floating_point():
            continue
        bad = ~torch.isfinite(value)
        if unmasked is not None:
            bad = bad & unmasked
        if bool(bad.any()):
            where = bad.nonzero()[:3].tolist() if value.dim() else "()"
            kinds = " and ".join(
                kind for kind, found in (("NaN", value.isnan()), ("infinite", value.isinf()))
                if bool((found & bad).any())
            )  # fmt: skip
            raise ValueError(
                f"observed site '{name}' holds {int(bad.sum())} NaN or infinite value(s) of "
                f"{value.numel()} ({kinds}), at index {where}; the model's log-density is not "
                "finite there: remove those rows, or mask them (pyro.sample(..., "
                "obs_mask=...) or poutine.mask)"
            )


def _check_support(name: str, fn, value: Tensor, unmasked: Tensor | None) -> None:
    """Refuse values outside ``fn``'s support. With validation off, integer supports are
    left alone: relaxed (fractional) counts are a deliberate use of it."""
    try:
        support = fn.support
        if support.is_discrete and not is_validation_enabled():
            return
        inside = torch.as_tensor(support.check(value))
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        return  # a dependent or unusual support, or a shape the next check names
    outside = ~inside
    if unmasked is not None and outside.shape == unmasked.shape:
        outside = outside & unmasked
    if bool(outside.any()):
        such = f", such as {value[outside][0].item():.6g}" if outside.shape == value.shape else ""
        raise ValueError(
            f"observed site '{name}' holds {int(outside.sum())} value(s) outside the support "
            f"of its {type(fn).__name__} ({support}){such}; its "
            "log-density is undefined there: fix or remove those rows, or observe them with "
            "a distribution whose support holds them"
        )


def _check_shape(name: str, fn, value: Tensor) -> None:
    """Refuse data that do not broadcast with ``fn``'s batch shape and, under validation,
    data with more rows than its batch shape (and so its plates) holds."""
    event_dim = len(fn.event_shape)
    if value.dim() < event_dim:
        return
    data_shape = value.shape[: value.dim() - event_dim]
    try:
        joint = torch.broadcast_shapes(data_shape, fn.batch_shape)
    except RuntimeError:
        raise ValueError(
            f"observed site '{name}': data of batch shape {tuple(data_shape)} do not "
            f"broadcast with its distribution's batch shape {tuple(fn.batch_shape)}: check "
            "the size of each pyro.plate around it against the data's rows"
        ) from None
    if joint != fn.batch_shape and is_validation_enabled():
        raise ValueError(
            f"observed site '{name}': data of batch shape {tuple(data_shape)} reach beyond "
            f"its distribution's batch shape {tuple(fn.batch_shape)}, so its rows would be "
            "summed without a plate: observe them inside pyro.plate(name, size), or declare "
            "the dimensions an event with .to_event()"
        )
