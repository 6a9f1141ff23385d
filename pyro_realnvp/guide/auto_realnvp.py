"""AutoRealNVP: a RealNVP flow as a Pyro posterior family over all continuous latents."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import ComposeTransform
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median
from pyro.nn import PyroParam
from torch import Tensor, nn

from .._internal.compat import prototype_hide_fn, stored_constraint, unpack_latent
from ..flows.realnvp import RealNVP
from . import initial, sites, store, summaries
from .host_reads import warn_host_reads
from .laplace import START_RULES, GaussianStart
from .observed import check_observed
from .options import AUTO_LOWER_MAX_DIM, check_options, flow_options
from .posterior import (
    Affine,
    affine_transform,
    inverse_log_density,
    path_gradient_draw,
    path_posterior,
    standard_normal,
    total_gradient_draw,
)
from .potential import prototype_run
from .start import gaussian_start
from .units import StartUnits, loc_units

__all__ = ["AutoRealNVP"]

#: What AutoRealNVP's set-up creates, and reading it before then says so.
SET_UP_NAMES = frozenset({"flow", "loc", "scale", "scale_tril", "start_loc", "start_scale"})

_log = logging.getLogger(__package__)  # "pyro_realnvp.guide", as before the split


def _hide_enumerated(msg: dict) -> bool:
    """Hide what the prototype must not see, and sites an ELBO will enumerate."""
    return prototype_hide_fn(msg) or bool(msg.get("infer", {}).get("enumerate"))


class AutoRealNVP(AutoContinuous):
    r"""RealNVP posterior over the unconstrained latents, :math:`z = \mu + L f(\varepsilon)`.

    :math:`\varepsilon \sim \mathcal N(0, I)`; :math:`f` is a :class:`~pyro_realnvp.RealNVP`
    that starts as the identity; :math:`L = \operatorname{diag}(\sigma)\,U`, :math:`U` unit
    lower-triangular (``affine="lower"``) or the identity (``"diagonal"``). It starts as
    the Gaussian of :mod:`~pyro_realnvp.guide.laplace` (``self.start``); ``biject_to``
    maps each site to its support. Parameters are made at the first call, on the device
    and dtype of the model's latents, in Pyro's param store under the guide's name
    (sharing, saving, loading: docs/index.md). Enumerated sites are left to the ELBO.

    Args:
        model: A Pyro model with continuous latent sites (none in a subsampling plate).
        num_layers: Coupling layers in the flow, an integer >= 2 (even, for balance).
        hidden_dims: Conditioner widths; default two of ``4 * latent_dim`` in [32, 256].
        init_loc_fn: ``None`` for the Laplace start, or an ``init_to_*`` strategy to start
            at its point (values off their support, or naming no site, are refused).
        init_scale: ``"auto"``, the start's scales and correlations; or a number in
            :math:`(0, 10^6]` for every :math:`\sigma` (and :math:`U = I`).
        scale_bound, activation: Each coupling's log-scale bound and hidden activation.
        affine: ``"lower"``, ``"diagonal"``, or ``"auto"`` (``"lower"`` up to
            ``AUTO_LOWER_MAX_DIM`` latents).
        estimator: ``"path"`` (sticking the landing, :meth:`path_draw`) or ``"total"``
            (Pyro's; for ``RenyiELBO``): the same loss value.
        num_quantile_samples: Fixed-seed draws (>= 100) behind :meth:`quantiles`.
        start_rule: ``laplace_start``'s rule, or ``"auto"`` (see :meth:`auto_start_rule`).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     pyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> guide = AutoRealNVP(model, num_layers=2)
        >>> sorted(guide().keys()), guide.latent_dim
        (['s', 'x'], 2)
    """

    _prototype_hide_fn = staticmethod(_hide_enumerated)

    def __init__(
        self,
        model: Callable,
        *,
        num_layers: int = 6,
        hidden_dims: Sequence[int] | None = None,
        init_loc_fn: Callable | None = None,
        init_scale: float | str = "auto",
        scale_bound: float = 5.0,
        activation: type[nn.Module] = nn.ELU,
        affine: str = "auto",
        estimator: str = "path",
        num_quantile_samples: int = 4096,
        start_rule: str = "auto",
    ) -> None:
        check_options(
            num_layers=num_layers, hidden_dims=hidden_dims, init_scale=init_scale,
            scale_bound=scale_bound, affine=affine, estimator=estimator,
            num_quantile_samples=num_quantile_samples, activation=activation,
            start_rule=start_rule,
        )  # fmt: skip
        init_loc_fn = initial.check_init_loc_fn(init_loc_fn)
        self._flow_options = flow_options(num_layers, hidden_dims, scale_bound, activation)
        self._init_scale = init_scale if init_scale == "auto" else float(init_scale)
        self._find_mode = init_loc_fn is None
        self._init_value_names = initial.init_value_names(init_loc_fn)
        self._affine = affine
        self.estimator = estimator
        self.start_rule = start_rule
        self._auto_start_rule = "elbo"  # what "auto" reads at set-up (auto_start_rule)
        self.num_quantile_samples = num_quantile_samples
        self.start: GaussianStart | None = None
        self._requires_grad = True
        self._init_loc_fn = init_to_median if init_loc_fn is None else init_loc_fn
        super().__init__(model, init_loc_fn=self._init_loc_fn)
        self._bare_model = (model,)  # without init_loc_fn: what the potential reads
        self.register_load_state_dict_pre_hook(store.raw_loc_of_older_states)
        self.register_state_dict_post_hook(store.own_storage)

    @property
    def _dense(self) -> bool:
        """Whether the affine has a learnable lower-triangular factor."""
        return self._affine == "lower" or (
            self._affine == "auto" and self.latent_dim <= AUTO_LOWER_MAX_DIM
        )

    def _setup_prototype(self, *args, **kwargs) -> None:
        try:
            self._build(*args, **kwargs)
        except BaseException:
            # A failed or interrupted set-up (Ctrl-C in the mode search, say) must not
            # leave a half-built guide: the next call sets it up from scratch.
            self.prototype_trace = None
            raise

    def _build(self, *args, **kwargs) -> None:
        run = self._trace_prototype(*args, **kwargs)
        sites.check_one_device_and_dtype(self.prototype_trace)
        fingerprint = tuple((n, tuple(s)) for n, s in self._unconstrained_shapes.items())
        stored = stored_constraint(self._pyro_get_fullname("loc"))
        store.check_stored_sites(stored, fingerprint, self._pyro_get_fullname("loc"))
        init_loc = self._init_loc()
        initial.check_finite_init(init_loc, unpack_latent(self, init_loc))
        chosen = self.__dict__.pop("_next_start", None)  # set by restart_by_elbo
        self.start = start = chosen or gaussian_start(self, init_loc, run, args, kwargs)
        self._argument_shapes = {sites.argument_shapes(args, kwargs)}
        scale, unit = start.scale, start.scale_tril / start.scale[:, None]
        if self._init_scale != "auto":
            scale = torch.full_like(scale, self._init_scale)
            unit = torch.eye(self.latent_dim, dtype=scale.dtype, device=scale.device)
        # Trained in the start's units (guide.units); buffers, so that a state_dict
        # carries them with the unconstrained value they give meaning to.
        center, width = loc_units(start, stored)
        self.register_buffer("start_loc", center)
        self.register_buffer("start_scale", width)
        units = StartUnits(self.start_loc, self.start_scale, fingerprint)
        self.loc = PyroParam(start.loc.detach().clone(), units)
        stored_constraint(self._pyro_get_fullname("loc"), units)  # one object for both
        self.scale = PyroParam(scale.detach().clone(), constraints.softplus_positive)
        if self._dense:
            self.scale_tril = PyroParam(unit.detach().clone(), constraints.unit_lower_cholesky)
        # Each site a mask group: a scale and what it scales are split by as many pairs
        # of layers as the mask bits allow (flows.masks.coupling_masks).
        groups = [n for n in map(torch.Size.numel, self._unconstrained_shapes.values()) if n]
        factory = {"device": init_loc.device, "dtype": init_loc.dtype}
        self.flow = RealNVP(self.latent_dim, **self._flow_options, groups=groups, **factory)
        if not self._requires_grad:  # frozen before set-up: before the store sees them
            nn.Module.requires_grad_(self, False)
        self._register_flow()

    def _trace_prototype(self, *args, **kwargs) -> pyro.poutine.Trace:
        """Pyro's prototype trace at ``init_loc_fn``'s values, its failures named by site;
        its latent and observed sites checked; and a run of the model with them all."""
        with sites.failures_named(self, self._find_mode, args, kwargs):
            super()._setup_prototype(*args, **kwargs)
        sites.check_prototype(self.prototype_trace, self._bare, self._init_value_names,
                              not self._find_mode, args, kwargs)  # fmt: skip
        run = prototype_run(self._bare, self._init_loc_fn, self.prototype_trace, args, kwargs)
        check_observed(run)
        warn_host_reads(self._bare, self.prototype_trace, args, kwargs)
        return run

    @property
    def _bare(self) -> Callable:
        """The model without init_loc_fn's messenger, whose every run redraws its values."""
        return (self.__dict__.get("_bare_model") or (self.model,))[0]

    @contextlib.contextmanager
    def auto_start_rule(self, rule: str) -> Iterator[AutoRealNVP]:
        """Within, a set-up reads ``start_rule="auto"`` as ``rule``; outside, as ``"elbo"``.

        ``"proper"`` for an objective that covers p's tails (tail-adaptive weights): the
        Laplace width wherever the mode is proper; ``"elbo"`` for Pyro's reverse KL.

        Example:
            >>> import pyro.distributions as dist
            >>> guide = AutoRealNVP(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
            >>> with guide.auto_start_rule("proper"):
            ...     _ = guide()
            >>> guide.start.kind
            'laplace'
        """
        if rule not in START_RULES:
            raise ValueError(f"rule must be one of {START_RULES}, got {rule!r}")
        self._auto_start_rule = rule
        try:
            yield self
        finally:
            self._auto_start_rule = "elbo"

    def restart_by_elbo(self) -> None:
        """Undo a set-up whose ``start_rule`` took another start than the ELBO's rule would,
        so that the next call sets the guide up from that one: for ``fit``, where the set-up
        for tail-adaptive weights falls back on Pyro's reverse KL before any step."""
        start = self.start
        if self.prototype_trace is None or start is None or start.elbo_choice is None:
            return
        store.forget(self._pyro_get_fullname(""))
        for name in list(self._pyro_params):
            delattr(self, name)
        self._modules.pop("flow", None)
        self.__dict__.pop("_packed_flow", None)
        for name in ("start_loc", "start_scale"):
            self._buffers.pop(name, None)
        self.prototype_trace, self.start = None, None
        self._next_start = start.elbo_choice

    @property
    def flow(self) -> RealNVP:
        """The flow :math:`f`, built at the first call (reading it declares nothing)."""
        try:
            return self._modules["flow"]
        except KeyError:
            raise AttributeError("the guide builds its flow at its first call") from None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in SET_UP_NAMES and self.__dict__.get("prototype_trace") is None:
                raise AttributeError(
                    f"AutoRealNVP has no {name} yet: it sets its parameters up at its first "
                    "call, guide(*args, **kwargs), with the model's arguments"
                ) from None
            raise

    def forward(self, *args, **kwargs) -> dict[str, Tensor]:
        flat = None
        if self.prototype_trace is not None:  # set-up registers the flow it builds
            flat = self._register_flow()
            self._check_arguments(args, kwargs)
        traced = flat is not None and torch.jit.is_tracing()
        try:
            shapes = self.__dict__["_packed_flow"].shapes if traced else None
            with (
                store.flow_reading(self.flow, flat, shapes) if traced else contextlib.nullcontext()
            ):
                return super().forward(*args, **kwargs)
        except ValueError:  # only on failure, so no host sync on the way: a NaN parameter?
            if self.prototype_trace is not None:
                summaries.check_finite_params(dict(self.named_parameters()), "its draws are NaN")
            raise

    def _check_arguments(self, args: tuple, kwargs: dict) -> None:
        """Once for each new shape of the arguments, check that the latents keep theirs."""
        shapes = sites.argument_shapes(args, kwargs)
        known = self.__dict__.setdefault("_argument_shapes", {shapes})
        if shapes not in known and self._model is not None:
            sites.check_latent_shapes(self._bare, self.prototype_trace, args, kwargs)
        known.add(shapes)

    def _register_flow(self) -> Tensor | None:
        """Declare the flow to Pyro as one flat parameter (``guide.store.declare_flow``);
        its value, which a JIT trace must compute the flow from."""
        # The packing is derived state, rebuilt after pickling: outside the attributes.
        name, packed = self._pyro_get_fullname("flow"), self.__dict__.get("_packed_flow")
        hooks = self.estimator != "path"  # the path's draws sync the gradients themselves
        self.__dict__["_packed_flow"], flat = store.declare_flow(self.flow, name, packed, hooks)
        return flat

    def requires_grad_(self, requires_grad: bool = True) -> AutoRealNVP:
        """``nn.Module.requires_grad_``, remembered for the parameters set-up creates."""
        self._requires_grad = bool(requires_grad)
        return super().requires_grad_(requires_grad)

    @property
    def model(self) -> Callable:
        """The model, as given (wrapped to start at ``init_loc_fn``'s values)."""
        if self._model is None:
            raise RuntimeError(
                "this guide was loaded (unpickled) without its model: Pyro's autoguides do "
                "not save the model with the guide (it is often an unpicklable closure). "
                "Re-attach it with guide.model = model; median(), quantiles() and calls "
                "of the set-up guide work without it"
            )
        return self._model[0]

    @model.setter
    def model(self, model: Callable) -> None:
        # As AutoContinuous.__init__ does: the model starts at init_loc_fn's values (a
        # loaded guide's were not saved; it is set up, so they matter only to a new set-up).
        self._model = (InitMessenger(self._init_loc_fn or init_to_median)(model),)
        self._bare_model = (model,)

    def __getstate__(self) -> dict:
        # Pyro's AutoGuide.__getstate__ drops the model (often an unpicklable closure) from
        # the state by deleting it from the guide itself: give it back to the original.
        model, master = self._model, self.master
        state = dict(super().__getstate__())
        self._model, self.master = model, master
        # As unpicklable as the model can be; it set up already.
        state["_init_loc_fn"] = state["_bare_model"] = None
        state.pop("_packed_flow", None)  # the next call packs the flow again
        if "flow" in state["_modules"]:  # its parameters are views of one tensor: one each
            state["_modules"] = {**state["_modules"], "flow": store.compact_copy(self.flow)}
        return state

    def __deepcopy__(self, memo: dict) -> AutoRealNVP:
        """A deep copy that keeps the (shared, not copied) model, which pickling drops."""
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        copied.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        copied._model, copied._init_loc_fn = self._model, self._init_loc_fn
        copied._bare_model = self._bare_model
        return copied

    def get_base_dist(self) -> dist.Distribution:
        return standard_normal(self.loc)

    def _affine_transform(self, detach: bool = False) -> Affine:
        loc, scale = self.loc, self.scale  # in this order: Pyro's order of param sites
        unit = self.scale_tril if "scale_tril" in self._pyro_params else None
        return affine_transform(loc, scale, unit, detach)

    def get_transform(self, *args, **kwargs) -> ComposeTransform:
        return ComposeTransform([self.flow, self._affine_transform()], cache_size=1)

    def get_posterior(self, *args, **kwargs) -> dist.TransformedDistribution:
        """:math:`q(u)`; with ``estimator="path"`` its ``log_prob`` is the path-gradient one."""
        base, transform = self.get_base_dist(), self.get_transform(*args, **kwargs)
        if self.estimator == "total":
            return dist.TransformedDistribution(base, transform)
        watch = store.draw_watch(self.__dict__.get("_packed_flow"))
        return path_posterior(base, transform, self.flow, self.log_density_detached, watch)

    def log_density_detached(self, u: Tensor) -> Tensor:
        r""":math:`\log q(u)` with every guide parameter detached: a gradient reaches them
        only through ``u`` (:func:`~pyro_realnvp.guide.posterior.inverse_log_density`).

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> guide = AutoRealNVP(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
            >>> _ = guide()
            >>> u = guide.get_posterior().rsample((3,))
            >>> q = dist.TransformedDistribution(guide.get_base_dist(), guide.get_transform())
            >>> torch.allclose(guide.log_density_detached(u), q.log_prob(u))
            True
        """
        return inverse_log_density(self.flow, self._affine_transform(detach=True), u)

    def path_draw(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        r"""``(u, log q(u))`` at base noise ``eps``: ``log q`` has the value
        :math:`\log q(u)` and only the path gradient :math:`\nabla_u \log q(u) \cdot
        \partial u / \partial \theta` (:func:`~pyro_realnvp.guide.posterior.path_gradient_draw`).

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> guide = AutoRealNVP(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
            >>> _ = guide()
            >>> u, log_q = guide.path_draw(torch.randn(3, 1))
            >>> torch.allclose(log_q, guide.log_density_detached(u))
            True
        """
        return path_gradient_draw(self.flow, self._affine_transform(), eps,
                                  self.log_density_detached)  # fmt: skip

    def draw(self, eps: Tensor, estimator: str | None = None) -> tuple[Tensor, Tensor]:
        """``(u, log q(u))`` at base noise ``eps``, ``(N, latent_dim)``, with ``estimator``'s
        gradient (``None``: the guide's; ``"total"``: one forward pass, the cheapest).

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> guide = AutoRealNVP(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
            >>> _ = guide()
            >>> [tuple(t.shape) for t in guide.draw(torch.randn(4, 1))]
            [(4, 1), (4,)]
        """
        if (estimator or self.estimator) == "path":
            return self.path_draw(eps)
        return total_gradient_draw(self.flow, self._affine_transform(), self.get_base_dist(), eps)

    def latent_draws(self, num_samples: int, seed: int = 0) -> Tensor:
        """Fixed-seed draws of the packed unconstrained latent, shape ``(num_samples, D)``.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> guide = AutoRealNVP(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
            >>> _ = guide()
            >>> torch.equal(guide.latent_draws(5), guide.latent_draws(5))
            True
        """
        summaries.check_finite_params(dict(self.named_parameters()), "its draws are NaN")
        loc = self.loc.detach()
        generator = torch.Generator(device=loc.device).manual_seed(seed)
        eps = torch.randn(
            (num_samples, self.latent_dim), generator=generator, device=loc.device, dtype=loc.dtype
        )
        return self.get_transform()(eps)

    @torch.no_grad()
    def quantiles(self, quantiles: Sequence[float] | Tensor, *args, **kwargs) -> dict[str, Tensor]:
        r"""Marginal quantiles of each latent site's coordinates, in its support, as tensors
        of shape ``quantiles.shape + site_shape`` (:mod:`~pyro_realnvp.guide.summaries`):
        exact while the flow is the identity, from fixed-seed draws after.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> guide = AutoRealNVP(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
            >>> q = guide.quantiles([0.25, 0.5, 0.75])["x"]
            >>> q.shape, bool(q[0] < q[1] < q[2])
            (torch.Size([3]), True)
        """
        packed = summaries.packed_posterior(self, args, kwargs)
        return summaries.marginal_quantiles(packed, summaries.check_levels(quantiles, packed.loc))

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, Tensor]:
        r"""Each latent site at :math:`T(\operatorname{med} u)`, the unconstrained median
        mapped to its support: :math:`\mu` before training (``init_loc_fn``'s values,
        where given), the marginal median for elementwise supports, else a point on it.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> from pyro.infer.autoguide import init_to_value
            >>> start = init_to_value(values={"s": torch.tensor(2.0)})
            >>> guide = AutoRealNVP(lambda: pyro.sample("s", dist.LogNormal(0.0, 1.0)),
            ...                     init_loc_fn=start)
            >>> guide.median()["s"]
            tensor(2.)
        """
        return summaries.median(summaries.packed_posterior(self, args, kwargs))
