"""The guide's set-up checks: latent sites it can guide, and initial values the model takes.

Pyro's autoguides run the model once at ``init_loc_fn``'s values to learn its sites; a
value the model cannot take fails there, deep in a distribution's constructor, with a
message that names neither the site nor the value. These helpers re-run the model up to
the failure and say which site's initial value is wrong, or where the model failed and
at which values; and they refuse, by site, latents the guide cannot pack: supports with
no bijection from the reals, locals in a subsampling plate, mixed devices or dtypes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable

import torch
from pyro import poutine
from pyro.infer.autoguide import initialization
from pyro.infer.autoguide.initialization import init_to_value
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to

from .._internal.locate import first_line, model_raised, partial_trace, raised_at
from .potential import subsampled_sites

__all__ = [
    "bad_curvature_warning",
    "check_finite_init",
    "check_init_value_names",
    "check_init_values",
    "check_one_device_and_dtype",
    "check_prototype",
    "format_values",
    "init_value_names",
    "init_values_error",
    "name_unsupported_site",
    "raised_by_init_strategy",
    "refuse_local_subsampled",
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


def init_values_error(model: Callable, error: BaseException, args: tuple, kwargs: dict):
    """The error to raise where ``model`` (wrapped in its ``InitMessenger``) failed while
    an autoguide set itself up: a bad initial value by its site's name if one is bad,
    else where the model failed and at which values.

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


def unsampleable_error(error: NotImplementedError, default_init: bool) -> ValueError:
    """A site whose distribution cannot be sampled (``ImproperUniform``), which
    ``init_to_median`` (and ``init_to_sample``) need: name it and what to pass instead.

    Example:
        >>> str(unsampleable_error(NotImplementedError("no sampling"), True))[:50]
        'the default init_to_median could not give the mode'
    """
    told = "the default init_to_median" if default_init else "init_loc_fn"
    return ValueError(
        f"{told} could not give the model a value{raised_at(error)}: {error}. An initial "
        "value that does not sample the site is needed: pass "
        "init_loc_fn=pyro.infer.autoguide.init_to_feasible, or init_to_value(values=...) "
        "with a value for that site"
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


def check_prototype(trace: poutine.Trace, model: Callable, names: frozenset[str], given: bool,
                    args: tuple, kwargs: dict) -> None:  # fmt: skip
    """The checks of a guide's prototype ``trace``: no latent in a subsampling plate; with
    values ``given`` by ``init_loc_fn``, each on its support; every name of an
    ``init_to_value`` (``names``) a site of the model.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> model = lambda: pyro.sample("mu", dist.Normal(0.0, 1.0))
        >>> trace = poutine.trace(model).get_trace()
        >>> check_prototype(trace, model, frozenset({"nu"}), False, (), {})
        Traceback (most recent call last):
        ...
        ValueError: init_to_value got values for ['nu'], which are not sites of the model; its latent sites are ['mu']
    """  # noqa: E501
    refuse_local_subsampled(trace)
    if given:
        check_init_values(trace)
    if names:
        latents = [name for name, _ in trace.iter_stochastic_nodes()]
        check_init_value_names(names, model, latents, args, kwargs)


def refuse_local_subsampled(trace: poutine.Trace) -> None:
    """Refuse a latent inside a subsampling plate: packed into the one vector that
    AutoRealNVP learns, it would have the minibatch's size, so each of its coordinates
    would stand for whichever row lands in that slot (Pyro's ``AutoContinuous`` trains
    it so, silently).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     with pyro.plate("rows", 100, subsample_size=10):
        ...         pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> try:
        ...     refuse_local_subsampled(poutine.trace(model).get_trace())
        ... except ValueError as error:
        ...     print(str(error)[:56])
        latent site 'z' is in subsampling plate 'rows' (10 of 10
    """
    latents = {name for name, _ in trace.iter_stochastic_nodes()}
    for name, plate in subsampled_sites(trace):
        if name in latents:
            raise ValueError(
                f"latent site '{name}' is in subsampling plate '{plate.name}' ({plate.size} "
                f"of {plate.full_size}): AutoRealNVP packs every latent into one vector, so "
                "it would learn one value per minibatch slot, not per row. Guide the local "
                "sites per row with AutoNormal, e.g. AutoGuideList with "
                f"AutoRealNVP(poutine.block(model, hide=['{name}'])) and "
                f"AutoNormal(poutine.block(model, expose=['{name}']))"
            )


def name_unsupported_site(trace: poutine.Trace | None, error: NotImplementedError) -> None:
    """Raise a ValueError naming the latent site whose support has no ``biject_to``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> model = lambda: pyro.sample("k", dist.Binomial(3, 0.5))
        >>> name_unsupported_site(poutine.trace(model).get_trace(), NotImplementedError())
        Traceback (most recent call last):
        ...
        ValueError: site 'k' has support IntegerInterval(lower_bound=0, upper_bound=3.0), which has no bijection from the reals (biject_to): AutoRealNVP cannot guide it; reparameterize it (e.g. a Cholesky factor with LKJCholesky) or guide it separately
    """  # noqa: E501
    for name, site in [] if trace is None else trace.iter_stochastic_nodes():
        try:
            biject_to(site["fn"].support)
        except NotImplementedError:
            raise ValueError(
                f"site '{name}' has support {site['fn'].support}, which has no bijection "
                "from the reals (biject_to): AutoRealNVP cannot guide it; reparameterize "
                "it (e.g. a Cholesky factor with LKJCholesky) or guide it separately"
            ) from error


def check_one_device_and_dtype(trace: poutine.Trace) -> None:
    """Refuse latents on several devices or dtypes, or not floating point, naming them:
    packing them into one vector would fail or silently cast.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("a", dist.Normal(0.0, 1.0))
        ...     pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        >>> try:
        ...     check_one_device_and_dtype(poutine.trace(model).get_trace())
        ... except ValueError as error:
        ...     print(str(error)[:60])
        AutoRealNVP needs all latent sites on one device with one dt
    """
    sites = list(trace.iter_stochastic_nodes())
    places = {(site["value"].device, site["value"].dtype) for _, site in sites}
    if len(places) > 1:
        found = ", ".join(
            f"'{name}' on {site['value'].device} as {site['value'].dtype}" for name, site in sites
        )
        raise ValueError(
            "AutoRealNVP needs all latent sites on one device with one dtype; found " + found
        )
    if not sites[0][1]["value"].is_floating_point():
        raise ValueError(f"latent values must be floating point, got {places}")


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


def bad_curvature_warning(bad: Tensor, shapes: dict[str, torch.Size]) -> str:
    """What to say where the Hessian at the mode was unusable at coordinates ``bad`` of
    the packed latent whose sites have ``shapes``: the sites, and how they start.

    Example:
        >>> shapes = {"a": torch.Size([]), "b": torch.Size([])}
        >>> bad_curvature_warning(torch.tensor([False, True]), shapes).split("; ")[0][-5:]
        "['b']"
    """
    sites, position = [], 0
    for name, shape in shapes.items():
        size = shape.numel()
        if bool(bad[position : position + size].any()):
            sites.append(name)
        position += size
    return (
        f"the Hessian at the posterior's mode is not positive definite at site(s) "
        f"{sites}; their coordinates start uncorrelated, at the diagonal curvature's "
        "scale (or 1 where that is not positive)"
    )
