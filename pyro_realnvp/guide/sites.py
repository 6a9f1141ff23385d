"""The guide's set-up checks of the model's latent sites: it refuses, by site, latents
the guide cannot pack (supports with no bijection from the reals or that move with another
latent, locals in a subsampling plate, mixed devices or dtypes), and warns of angles and
of a mode whose curvature it could not use. (Initial values: :mod:`.initial`.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from pyro.util import get_rng_state, set_rng_state
from torch import Tensor
from torch.distributions import biject_to

from .._internal.compat import rng_state
from .._internal.locate import partial_trace, warn_at_user
from .initial import (
    check_init_value_names,
    check_init_values,
    init_values_error,
    raised_by_init_strategy,
    unsampleable_error,
)
from .potential import subsampled_sites

__all__ = [
    "argument_shapes",
    "bad_curvature_warning",
    "check_latent_shapes",
    "check_one_device_and_dtype",
    "check_prototype",
    "failures_named",
    "refuse_delta_latents",
    "name_unsupported_site",
    "refuse_dependent_supports",
    "refuse_local_subsampled",
    "warn_circular",
]


#: How torch's argument validation starts: a distribution refused a value at set-up.
VALIDATION_ERRORS = ("Expected parameter", "Expected value argument")


@contextlib.contextmanager
def failures_named(guide, default_init: bool, args: tuple, kwargs: dict) -> Iterator[None]:
    """Within, the guide's prototype trace; a failure re-raised naming its site: a support
    it cannot guide, a site no strategy can sample, or an initial value the model cannot
    take, re-run at the same values to say where.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_realnvp import AutoRealNVP
        >>> flat = dist.ImproperUniform(dist.constraints.real, (), ())
        >>> guide = AutoRealNVP(lambda: pyro.sample("o", flat))
        >>> try:
        ...     with failures_named(guide, True, (), {}):
        ...         guide._setup_prototype()
        ... except ValueError as error:
        ...     print(str(error)[:55])
        the default init_to_median could not give an initial va
    """
    rng = get_rng_state()
    try:
        yield
    except NotImplementedError as error:
        name_unsupported_site(guide.prototype_trace, error)
        if raised_by_init_strategy(error):  # a site that cannot be sampled
            raise unsampleable_error(error, default_init) from error
        raise
    except RuntimeError as error:  # after NotImplementedError, a RuntimeError itself
        _name_zero_sized(guide.prototype_trace, error)
        raise
    except (ValueError, TypeError) as error:
        if default_init and not str(error).startswith(VALIDATION_ERRORS):
            raise  # the model's own error, at values drawn from its prior: its own words
        set_rng_state(rng)  # init_to_median draws: re-run at the same values
        raise init_values_error(guide.model, error, args, kwargs, default_init) from error


def _name_zero_sized(trace: poutine.Trace | None, error: RuntimeError) -> None:
    """Where Pyro found no latent variables but the model has zero-sized ones, name them."""
    names = [name for name, _ in trace.iter_stochastic_nodes()] if trace is not None else []
    if names and "found no latent variables" in str(error):
        raise RuntimeError(
            f"AutoRealNVP found no latent variables with any elements: site(s) {names} are "
            "zero-sized (a shape with a 0 in it), so there is nothing to guide; check the "
            "sizes the model builds them from, or use an empty guide"
        ) from error


def refuse_delta_latents(trace: poutine.Trace) -> None:
    """Refuse a latent site whose distribution is a ``Delta``: it has no density a guide
    could approach (every other value has log-density -inf).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> model = lambda: pyro.sample("d", dist.Delta(torch.tensor(1.0)))
        >>> try:
        ...     refuse_delta_latents(poutine.trace(model).get_trace())
        ... except ValueError as error:
        ...     print(str(error)[:39])
        latent site 'd' is a Delta distribution
    """
    for name, site in trace.iter_stochastic_nodes():
        if isinstance(_dist(site["fn"]), dist.Delta):
            raise ValueError(
                f"latent site '{name}' is a Delta distribution: it has no density to guide "
                "(any other value has log-density -inf). Record a value computed from "
                f"others with pyro.deterministic('{name}', value), or observe it with obs="
            )


def check_prototype(trace: poutine.Trace, model: Callable, names: frozenset[str], given: bool,
                    args: tuple, kwargs: dict) -> None:  # fmt: skip
    """The checks of a guide's prototype ``trace``: no latent in a subsampling plate, or
    with a support that moves with another latent; with values ``given`` by
    ``init_loc_fn``, each on its support; every name of an ``init_to_value`` (``names``) a
    site of the model; and a warning of angles guided on the line.

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
    refuse_delta_latents(trace)
    if given:
        check_init_values(trace)
    if names:
        latents = [name for name, _ in trace.iter_stochastic_nodes()]
        check_init_value_names(names, model, latents, args, kwargs)
    refuse_dependent_supports(model, trace, args, kwargs)
    warn_circular(trace)


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
    value = sites[0][1]["value"]
    if not value.is_floating_point():
        raise ValueError(f"latent values must be floating point, got {places}")
    if value.dtype in (torch.float16, torch.bfloat16):
        raise ValueError(
            f"latent site(s) {[name for name, _ in sites]} are {value.dtype}: AutoRealNVP "
            "needs float32 or float64 latents (its start factors a Hessian, which half "
            "precision cannot): define the model's priors in float32, and autocast where "
            "the model's own arithmetic should run in float16"
        )


def bad_curvature_warning(bad: Tensor, shapes: dict[str, torch.Size]) -> str:
    """What to say where the Hessian at the mode was unusable at coordinates ``bad`` of
    the packed latent whose sites have ``shapes``: the sites, and how they start.

    Example:
        >>> shapes = {"a": torch.Size([]), "b": torch.Size([])}
        >>> bad_curvature_warning(torch.tensor([False, True]), shapes).split(", so")[0][-5:]
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
        f"{sites}, so those coordinates start uncorrelated, at the diagonal curvature's "
        "scale (or 1), and training takes it from there; where a scale's posterior piles "
        "up at 0 (a hierarchical model's), a non-centred parameterization fits better"
    )


def _dist(fn):
    """The distribution under ``Independent``, ``expand`` and masking wrappers."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def warn_circular(trace: poutine.Trace) -> None:
    """Warn, naming them, of ``VonMises`` latents: angles whose support torch declares
    real, so the guide learns them on the line and their draws are not wrapped.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> import warnings
        >>> model = lambda: pyro.sample("phi", dist.VonMises(3.0, 4.0))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_circular(poutine.trace(model).get_trace())
        >>> str(caught[0].message)[:40]
        "site 'phi' is a VonMises angle: AutoReal"
    """
    for name, site in trace.iter_stochastic_nodes():
        if isinstance(_dist(site["fn"]), torch.distributions.VonMises):
            warn_at_user(
                f"site '{name}' is a VonMises angle: AutoRealNVP guides it as a real number "
                "(torch declares its support real), so its draws and summaries are not "
                "wrapped to [-pi, pi), and a posterior near +-pi is split across the cut: "
                "wrap them (torch.remainder(x + pi, 2 * pi) - pi), or sample a 2-d "
                "direction instead of the angle"
            )


def _support_tensors(support) -> list[Tensor]:
    """The tensors a constraint is built from (bounds, nested constraints' bounds)."""
    found = []
    for value in vars(support).values():
        if torch.is_tensor(value):
            found.append(value)
        elif isinstance(value, torch.distributions.constraints.Constraint):
            found += _support_tensors(value)
    return found


def refuse_dependent_supports(model: Callable, trace, args: tuple, kwargs: dict) -> None:
    """Refuse a latent whose support moves with another latent (``b ~ Uniform(a, a + 1)``):
    the guide maps each site to its support by one ``biject_to`` map, set up once, so
    ``b``'s draws would keep the first ``a``'s interval and fail the model's validation.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     a = pyro.sample("a", dist.Normal(0.0, 1.0))
        ...     pyro.sample("b", dist.Uniform(a, a + 1))
        >>> try:
        ...     refuse_dependent_supports(model, poutine.trace(model).get_trace(), (), {})
        ... except ValueError as error:
        ...     print(str(error)[:56])
        site 'b' has a support that depends on other latent site
    """
    latents = dict(trace.iter_stochastic_nodes())
    values = {
        name: site["value"].detach().clone().requires_grad_(site["value"].is_floating_point())
        for name, site in latents.items()
    }
    try:
        with torch.enable_grad(), poutine.block():
            rerun = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    except (ValueError, RuntimeError, TypeError, NotImplementedError):
        return  # the set-up's other checks say what is wrong with such a model
    for name in latents:
        support = rerun.nodes[name]["fn"].support if name in rerun.nodes else None
        if support is not None and any(t.requires_grad for t in _support_tensors(support)):
            raise ValueError(
                f"site '{name}' has a support that depends on other latent sites ({support}): "
                "AutoRealNVP maps each site to its support with one bijection, set up once, "
                "so such a site is not supported; reparameterize it on a fixed support, e.g. "
                "b = a + pyro.sample('b_unit', dist.Uniform(0, 1)) for b ~ Uniform(a, a + 1)"
            )


def argument_shapes(args: tuple, kwargs: dict) -> tuple:
    """The shapes of the tensors among a call's arguments: what a latent's shape can
    follow (a local latent has one value per row of the data).

    Example:
        >>> argument_shapes((torch.zeros(3), 2.0), {"y": torch.zeros(3, 2)})
        ((3,), None, ('y', (3, 2)))
    """
    positional = tuple(tuple(a.shape) if torch.is_tensor(a) else None for a in args)
    named = tuple((k, tuple(v.shape)) for k, v in sorted(kwargs.items()) if torch.is_tensor(v))
    return positional + named


def check_latent_shapes(model: Callable, prototype: poutine.Trace, args: tuple,
                        kwargs: dict) -> None:  # fmt: skip
    """Refuse arguments with which ``model`` gives a latent site another shape than the
    guide was set up for: the guide would hand it values of the old shape.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x):
        ...     with pyro.plate("rows", len(x)):
        ...         pyro.sample("t", dist.Normal(0.0, 1.0))
        >>> prototype = poutine.trace(model).get_trace(torch.zeros(3))
        >>> try:
        ...     check_latent_shapes(model, prototype, (torch.zeros(5),), {})
        ... except ValueError as error:
        ...     print(str(error)[:49])
        the guide was set up for latent site 't' of shape
    """
    with rng_state(), torch.no_grad(), poutine.block():
        trace = partial_trace(model, args, kwargs)
    for name, site in prototype.iter_stochastic_nodes():
        node = trace.nodes.get(name)
        if site_is_subsample(site) or node is None:
            continue
        if node["value"].shape != site["value"].shape:
            raise ValueError(
                f"the guide was set up for latent site '{name}' of shape "
                f"{tuple(site['value'].shape)}, but with these arguments the model gives it "
                f"shape {tuple(node['value'].shape)}: a latent whose size follows the data "
                "needs a guide set up with these data (a new AutoRealNVP(model)), or an "
                "amortized guide"
            )
