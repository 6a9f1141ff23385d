"""The guide's initial values: ``init_loc_fn`` checked when the guide is built, and the
values it gives checked at set-up, each failure named by site.

Pyro's autoguides run the model once at ``init_loc_fn``'s values to learn its sites; a
value the model cannot take fails there, deep in a distribution's constructor, with a
message that names neither the site nor the value. These helpers re-run the model up to
the failure and say which site's initial value is wrong, or where the model failed and at
which values.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable

import torch
from pyro.infer.autoguide import initialization
from pyro.infer.autoguide.initialization import init_to_value
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from .._internal.locate import first_line, model_raised, partial_trace, raised_at

__all__ = [
    "DefaultStartRejected",
    "check_finite_init",
    "check_init_loc_fn",
    "check_init_value_names",
    "check_init_values",
    "format_values",
    "init_value_names",
    "init_values_error",
    "raised_by_init_strategy",
    "unsampleable_error",
]

#: Sites listed by :func:`format_values` before it says how many more there are.
MAX_LISTED_SITES = 8


def _latent_sites(trace) -> list[tuple[str, dict]]:
    return [
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def check_init_values(trace, shapes: bool = False) -> None:
    """Refuse an initial value that is not finite or lies outside its site's support
    (``biject_to`` would silently clamp or project it, and the guide start elsewhere than
    it was told), and with ``shapes`` one whose shape is not its site's.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro import poutine
        >>> model = lambda: pyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> trace = poutine.trace(poutine.condition(model, {"s": torch.tensor(-1.0)})).get_trace()
        >>> trace.nodes["s"]["is_observed"] = False  # as the initial value of a latent site
        >>> try:
        ...     check_init_values(trace)
        ... except ValueError as error:
        ...     print(str(error)[:51])
        init_loc_fn gave site 's' a value outside its suppo
    """
    for name, site in _latent_sites(trace):
        value, fn = site["value"], site["fn"]
        if not torch.is_tensor(value):
            continue  # Pyro's own checks say what is wrong with a value that is no tensor
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"init_loc_fn gave site '{name}' a non-finite value: {value}")
        if shapes and value.shape != fn.shape():
            raise ValueError(
                f"init_loc_fn gave site '{name}' a value of shape {tuple(value.shape)}, but "
                f"the site's shape is {tuple(fn.shape())}"
            )
        if not bool(torch.as_tensor(fn.support.check(value)).all()):
            raise ValueError(
                f"init_loc_fn gave site '{name}' a value outside its support {fn.support}: {value}"
            )


def _short(value) -> str:
    if not torch.is_tensor(value):
        return repr(value)[:40]
    value = value.detach()
    if value.numel() == 1:
        return f"{value.item():.4g}"
    if value.numel() <= 4:
        return "[" + ", ".join(f"{v:.4g}" for v in value.flatten().tolist()) + "]"
    return f"<tensor of shape {tuple(value.shape)}>"


def format_values(trace) -> str:
    """``"mu=0.5, s=1"``: each latent site's value, up to ``MAX_LISTED_SITES`` sites.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro import poutine
        >>> def model():
        ...     pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     pyro.sample("w", dist.Normal(torch.zeros(9), 1.0).to_event(1))
        >>> format_values(poutine.trace(model).get_trace()).split(", ")[1]
        'w=<tensor of shape (9,)>'
    """
    sites = _latent_sites(trace)
    text = ", ".join(f"{name}={_short(site['value'])}" for name, site in sites[:MAX_LISTED_SITES])
    if len(sites) > MAX_LISTED_SITES:
        text += f", ... ({len(sites) - MAX_LISTED_SITES} more)"
    return text or "(none: it failed before its first latent site)"


class DefaultStartRejected(ValueError):
    """The model refused the values the default ``init_to_median`` drew from its prior:
    as a rejected draw, another set-up draws others.

    Example:
        >>> isinstance(DefaultStartRejected("the model raised at site 'y'"), ValueError)
        True
    """


def init_values_error(model: Callable, error: BaseException, args: tuple, kwargs: dict,
                      default_init: bool = False) -> Exception:  # fmt: skip
    """The error to raise where ``model`` (wrapped in its ``InitMessenger``) failed while
    an autoguide set itself up: a bad initial value by its site's name if one is bad,
    else where the model failed and at which values (``default_init``: the default
    ``init_to_median``'s, drawn from the prior, which the model must take).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide.initialization import InitMessenger
        >>> def model():
        ...     v = pyro.sample("v", dist.Normal(0.0, 1.0))
        ...     pyro.factor("bad", v * torch.nan)
        >>> started = InitMessenger(init_to_value(values={"v": torch.tensor(0.5)}))(model)
        >>> try:
        ...     started()
        ... except ValueError as error:
        ...     message = str(init_values_error(started, error, (), {}))
        >>> message[:31], "(v=0.5)" in message
        ("the model raised at site 'bad' ", True)
    """
    trace = partial_trace(model, args, kwargs)
    if default_init:
        return DefaultStartRejected(
            f"{model_raised(error, trace)}, at the default initial values (init_to_median's "
            f"draws from the prior: {format_values(trace)}), while the guide set itself up: "
            f"{first_line(error)}. A model must be defined wherever its prior puts values; "
            "or start where it is, init_loc_fn=pyro.infer.autoguide.init_to_value(values="
            "{...})"
        )
    check_init_values(trace, shapes=True)
    return ValueError(
        f"{model_raised(error, trace)}, at init_loc_fn's values ({format_values(trace)}), "
        f"while the guide set itself up: {first_line(error)}. Check that each value has its "
        "site's shape and lies inside its support, and that the model is finite there"
    )


def raised_by_init_strategy(error: BaseException) -> bool:
    """Whether ``error`` was raised while Pyro's initialisation (``InitMessenger`` and its
    ``init_to_*`` strategies) ran, rather than by the model itself.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro.infer.autoguide import init_to_median
        >>> flat = dist.ImproperUniform(dist.constraints.real, (), ())
        >>> try:
        ...     init_to_median({"name": "o", "fn": flat, "value": None})
        ... except NotImplementedError as error:
        ...     print(raised_by_init_strategy(error))
        True
    """
    module = os.path.realpath(initialization.__file__)
    tb = error.__traceback__
    while tb is not None:
        if os.path.realpath(tb.tb_frame.f_code.co_filename) == module:
            return True
        tb = tb.tb_next
    return False


def _failed_init_site(error: BaseException) -> str | None:
    """The site Pyro's initialisation strategy was working on when ``error`` was raised."""
    module = os.path.realpath(initialization.__file__)
    tb, name = error.__traceback__, None
    while tb is not None:
        frame = tb.tb_frame
        site = (
            frame.f_locals.get("site")
            if os.path.realpath(frame.f_code.co_filename) == module
            else None
        )
        if isinstance(site, dict) and "name" in site:
            name = site["name"]
        tb = tb.tb_next
    return name


def unsampleable_error(error: NotImplementedError, default_init: bool) -> ValueError:
    """A site whose distribution cannot be sampled (``ImproperUniform``), which
    ``init_to_median``, ``init_to_sample`` and ``init_to_feasible`` all need: name it,
    and the one strategy that can give it a value.

    Example:
        >>> str(unsampleable_error(NotImplementedError("no sampling"), True))[:50]
        'the default init_to_median could not give an initi'
    """
    told = "the default init_to_median" if default_init else "init_loc_fn"
    name = _failed_init_site(error)
    where = raised_at(error) or (f" to site '{name}'" if name else "")
    example = f"{{'{name}': torch.tensor(...)}}" if name else "{...}"
    return ValueError(
        f"{told} could not give an initial value{where}: "
        f"{first_line(error)}. Its distribution cannot be sampled, and init_to_median, "
        "init_to_sample and init_to_feasible all draw a sample: pass its value, "
        f"init_loc_fn=pyro.infer.autoguide.init_to_value(values={example})"
    )


def init_value_names(init_loc_fn: Callable | None) -> frozenset[str]:
    """The site names of an ``init_to_value(values=...)``; empty for other strategies.

    Example:
        >>> sorted(init_value_names(init_to_value(values={"b": 1.0, "a": 2.0})))
        ['a', 'b']
    """
    if not (isinstance(init_loc_fn, functools.partial) and init_loc_fn.func is init_to_value):
        return frozenset()
    values = init_loc_fn.keywords.get("values") or {}
    return frozenset(values) if isinstance(values, dict) else frozenset()


def check_init_loc_fn(init_loc_fn) -> Callable | None:
    """``init_loc_fn`` if it is ``None`` or a strategy, with ``init_to_value``'s plain
    numbers made tensors (Pyro reads their ``.shape``); else a ``TypeError`` naming it.

    Example:
        >>> check_init_loc_fn(init_to_value(values={"x": 0.5})).keywords["values"]
        {'x': tensor(0.5000)}
    """
    if init_loc_fn is not None and not callable(init_loc_fn):
        raise TypeError(
            "init_loc_fn must be None (the Laplace start) or an init strategy such as "
            f"pyro.infer.autoguide.init_to_median, got {init_loc_fn!r}"
        )
    if not init_value_names(init_loc_fn):
        return init_loc_fn
    values = dict(init_loc_fn.keywords["values"])
    for name, value in values.items():
        if not isinstance(value, torch.Tensor):
            try:
                values[name] = torch.as_tensor(value, dtype=torch.get_default_dtype())
            except (TypeError, ValueError, RuntimeError) as error:
                raise TypeError(
                    f"init_to_value's value for site '{name}' must be a tensor or a number, "
                    f"got {value!r}"
                ) from error
    return functools.partial(init_to_value, *init_loc_fn.args,
                             **{**init_loc_fn.keywords, "values": values})  # fmt: skip


def check_init_value_names(names: Iterable[str], model: Callable, latents, args, kwargs):
    """Refuse ``init_to_value`` names that are no site of the model: Pyro ignores them, so
    a misspelt name silently leaves its site at the fallback's value.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> model = lambda: pyro.sample("mu", dist.Normal(0.0, 1.0))
        >>> try:
        ...     check_init_value_names({"muu"}, model, ["mu"], (), {})
        ... except ValueError as error:
        ...     print(str(error)[:40])
        init_to_value got values for ['muu'], wh
    """
    unknown = set(names) - set(latents)
    if not unknown:
        return
    every_site = set(partial_trace(model, args, kwargs).nodes)  # observed and hidden too
    unknown -= every_site
    if unknown:
        raise ValueError(
            f"init_to_value got values for {sorted(unknown)}, which are not sites of the "
            f"model; its latent sites are {sorted(latents)}"
        )


def check_finite_init(init_loc: Tensor, blocks: Iterable[tuple[dict, Tensor]]) -> None:
    """Refuse a non-finite initial latent, naming its sites from ``blocks``, each site with
    its part of ``init_loc``: so the training step itself needs no check.

    Example:
        >>> check_finite_init(torch.tensor([0.0, float("inf")]),
        ...                   [({"name": "a"}, torch.zeros(1)), ({"name": "b"}, torch.ones(1) / 0)])
        Traceback (most recent call last):
        ...
        ValueError: init_loc_fn gave non-finite unconstrained values at site(s) ['b']; try init_loc_fn=pyro.infer.autoguide.init_to_feasible
    """  # noqa: E501
    if bool(torch.isfinite(init_loc).all()):
        return
    bad = [site["name"] for site, value in blocks if not bool(torch.isfinite(value).all())]
    raise ValueError(
        f"init_loc_fn gave non-finite unconstrained values at site(s) {bad}; "
        "try init_loc_fn=pyro.infer.autoguide.init_to_feasible"
    )
