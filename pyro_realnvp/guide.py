"""AutoRealNVP: a RealNVP flow as a Pyro posterior family over all continuous latents."""

from __future__ import annotations

import copy
import logging
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import (
    AffineTransform,
    ComposeTransform,
    LowerCholeskyAffine,
)
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median
from pyro.nn import PyroParam
from pyro.params.param_store import param_with_module_name
from pyro.poutine.runtime import effectful
from pyro.util import get_rng_state, set_rng_state
from torch import Tensor, nn
from torch.distributions import biject_to
from torch.distributions.transforms import IndependentTransform, Transform

from ._checks import check_hidden_dims, is_int
from ._compat import prototype_hide_fn, stored_constraint, unpack_latent
from .flow import RealNVP
from .init_checks import (
    check_init_value_names,
    check_init_values,
    init_value_names,
    init_values_error,
    raised_by_init_strategy,
    unsampleable_error,
)
from .laplace import START_RULES, GaussianStart, laplace_start, local_start
from .potential import Potential, subsampled_sites
from .start_units import StartUnits

__all__ = ["AutoRealNVP"]

_AFFINE_CHOICES = ("auto", "lower", "diagonal")
_ESTIMATORS = ("path", "total")
_START_RULE_CHOICES = ("auto", *START_RULES)
_log = logging.getLogger(__name__)
#: Up to this latent size, ``affine="auto"`` learns a dense lower-triangular scale.
AUTO_LOWER_MAX_DIM = 256
#: The largest ``init_scale``: a standard deviation in the unconstrained space, where a
#: positive or bounded site is ``exp`` or ``sigmoid`` of its coordinate, so a few tens
#: already overflow its draws (``exp(89)`` is inf in float32); a real site whose
#: posterior is wider than this calls for rescaling the model instead.
MAX_INIT_SCALE = 1e6
#: The fewest ``num_quantile_samples``: with fewer, a 5% or 95% quantile rests on under
#: five draws (with one draw every quantile is the same number).
MIN_QUANTILE_SAMPLES = 100


#: Clamp on what AutoRealNVP's conditioners read, in the Laplace start's standardized
#: units (MaskedAffineCoupling's ``input_bound``). From the Laplace start a banana's arms
#: reach about 60 of them, and at 30 its conditioners went blind there (docs/math.md).
INPUT_BOUND = 100.0


def _hide_enumerated(msg: dict) -> bool:
    """Hide what the prototype must not see, and sites an ELBO will enumerate."""
    return prototype_hide_fn(msg) or bool(msg.get("infer", {}).get("enumerate"))


def _elementwise_sign(transform: Transform) -> Tensor | int | None:
    """The sign of ``transform``'s derivative where it acts elementwise (``+1``, ``-1``
    or one per element); ``None`` where it mixes elements (stick-breaking, ordering,
    Cholesky factors) or its sign is not known.

    Example:
        >>> from torch.distributions import constraints
        >>> [_elementwise_sign(biject_to(c)) for c in (constraints.positive,
        ...  constraints.less_than(1.0), constraints.simplex)]
        [1, -1, None]
    """
    if isinstance(transform, IndependentTransform):
        return _elementwise_sign(transform.base_transform)
    if isinstance(transform, ComposeTransform):
        sign = 1
        for part in transform.parts:
            part_sign = _elementwise_sign(part)
            if part_sign is None:
                return None
            sign = sign * part_sign
        return sign
    if transform.domain.event_dim or transform.codomain.event_dim:
        return None
    try:
        return transform.sign
    except NotImplementedError:
        return None


class AutoRealNVP(AutoContinuous):
    r"""RealNVP posterior over the unconstrained latents, :math:`z = \mu + L f(\varepsilon)`.

    :math:`\varepsilon \sim \mathcal N(0, I)`, :math:`f` is a :class:`~pyro_realnvp.RealNVP`
    flow and :math:`L = \operatorname{diag}(\sigma)\,U` an affine scale: with
    ``affine="lower"`` :math:`U` is a learnable unit lower-triangular matrix (so linear
    correlations are captured exactly, as by ``AutoMultivariateNormal``), with
    ``"diagonal"`` it is the identity; ``"auto"`` picks ``"lower"`` up to
    ``AUTO_LOWER_MAX_DIM`` latent dimensions. The flow works in standardised coordinates
    and starts as the identity, so the guide starts as the Gaussian
    :math:`\mathcal N(\mu, LL^T)` of :mod:`pyro_realnvp.laplace`: the Laplace
    approximation at the posterior's mode, or a local Gaussian at ``init_to_median``, by
    ``start_rule`` (``self.start`` says which). Its conditioners are
    :class:`~pyro_realnvp.nn.ScaledLinear`, so Adam moves the flow at the affine's pace.
    Each latent site is then mapped to its support with ``biject_to``; Pyro's
    ``AutoContinuous`` adds the log-det of that map to the ELBO.

    All parameters are created at the first call on the device and dtype of the model's
    latent values in the prototype trace, so a CUDA (or float64) model trains with no
    global default device and no ``.to()``. Sites marked for enumeration
    (``infer={"enumerate": ...}``, e.g. by ``config_enumerate``) are left to the ELBO.
    A latent inside a subsampling plate is refused at set-up: packed into one vector it
    would have the minibatch's size (Pyro's ``AutoContinuous`` trains it so, silently);
    guide such local sites with ``AutoNormal`` beside this guide in an ``AutoGuideList``.

    As in every Pyro autoguide, the parameters live in Pyro's global param store under
    the guide's name (``AutoRealNVP.loc``, ``AutoRealNVP.flow$$$layers.0...``), and at
    each call the guide takes what the store holds there. So two guides, or a guide and
    its deep copy, with the same name share their parameters once called; a copy is
    independent until then. Give one another name before its first call
    (``guide._pyro_name = "second"``, or make the guides submodules of a ``PyroModule``
    such as ``AutoGuideList``), or use ``pyro.settings.set(module_local_params=True)``.
    A guide saved whole (``torch.save``, ``pickle``) shares its parameters with the store
    in the same way once loaded: :meth:`median`, :meth:`quantiles` and calls take what the
    store holds under its name, so clear the store before loading to use the file's
    values. As in Pyro, the model is not saved: set ``guide.model = model`` to re-attach
    it (docs/index.md, "Saving and loading"). A guide frozen by ``requires_grad_(False)``,
    before or after its first call, calls without warnings and is not trained.

    Args:
        model: A Pyro model with continuous latent sites.
        num_layers: Coupling layers in the flow.
        hidden_dims: Conditioner widths; default two layers of ``4 * latent_dim``
            kept within ``[32, 256]``.
        init_loc_fn: ``None`` (the default) for the Laplace start above; a per-site
            initialisation, as for Pyro's autoguides, to start at its point instead
            (no mode search; scale from the curvature there, capped at 1). A value
            outside its site's support, and a name in ``init_to_value(values=...)``
            that is no site of the model (Pyro ignores it), are refused at set-up.
        init_scale: ``"auto"`` (the default) takes the start's scale and correlations;
            a number in :math:`(0, 10^6]` (``MAX_INIT_SCALE``) sets every coordinate's
            :math:`\sigma` (and :math:`U = I`).
        scale_bound: Bound on each coupling's log-scale.
        activation: Hidden activation of the conditioners.
        affine: ``"auto"``, ``"lower"`` or ``"diagonal"`` (see above).
        estimator: ``"path"`` (the default): the sticking-the-landing gradient, with
            :math:`\log q` evaluated through the inverse pass with detached parameters
            (:meth:`log_density_detached`); ``"total"``: Pyro's total gradient. The loss
            value is the same; use ``"total"`` with ``RenyiELBO``.
        num_quantile_samples: Fixed-seed draws (at least ``MIN_QUANTILE_SAMPLES``, 100)
            behind :meth:`quantiles` and :meth:`median` once the flow has left the
            identity (before that they are exact), and behind the quantiles of supports
            that are not elementwise.
        start_rule: How the Laplace start is chosen over the local one:
            ``"elbo"``, the higher Monte-Carlo ELBO; ``"proper"``, the Laplace Gaussian
            wherever the mode is proper (:func:`~pyro_realnvp.laplace.laplace_start`);
            ``"auto"`` (the default), ``"proper"`` when a tail-adaptive objective sets the
            guide up (``fit``'s fast path, ``FastELBO(beta=...)`` with two particles or
            more), else ``"elbo"``: Pyro's reverse KL narrows a wide start it cannot yet
            bend to and stays there (a banana's x1, docs/math.md). Where ``fit`` falls
            back on Pyro's ELBO after its fast path set the guide up, it sets the guide up
            again from the ELBO's choice. Unused with ``init_loc_fn``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     pyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> guide = AutoRealNVP(model, num_layers=2)
        >>> sorted(guide().keys())
        ['s', 'x']
        >>> guide.latent_dim
        2
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
        _check_options(
            num_layers=num_layers, hidden_dims=hidden_dims, init_scale=init_scale,
            scale_bound=scale_bound, affine=affine, estimator=estimator,
            num_quantile_samples=num_quantile_samples, activation=activation,
            start_rule=start_rule,
        )  # fmt: skip
        self._flow_options = {
            "num_layers": num_layers,
            "hidden_dims": None if hidden_dims is None else tuple(hidden_dims),
            "scale_bound": scale_bound,
            "activation": activation,
            # Adam moves each weight by ~lr per step: without this a plain Adam(0.01) loop
            # lets the conditioners grow until the flow overflows (docs/math.md).
            "fan_in_scaling": True,
            # The flow works in the Laplace start's standardized coordinates: 30 leaves a
            # banana's arms (out to about 25 there) alone and stops a far-tail draw
            # feeding ever larger shifts to the next layer (docs/math.md).
            "input_bound": INPUT_BOUND,
        }
        self._init_scale = init_scale if init_scale == "auto" else float(init_scale)
        self._find_mode = init_loc_fn is None
        self._init_value_names = init_value_names(init_loc_fn)
        self._affine = affine
        self.estimator = estimator
        self.start_rule = start_rule
        # What "auto" means at set-up: "proper" while a tail-adaptive objective sets the
        # guide up (pyro_realnvp.fast), "elbo" for Pyro's reverse KL.
        self._auto_start_rule = "elbo"
        self.num_quantile_samples = num_quantile_samples
        self.start: GaussianStart | None = None
        self._requires_grad = True
        self._init_loc_fn = init_to_median if init_loc_fn is None else init_loc_fn
        super().__init__(model, init_loc_fn=self._init_loc_fn)
        self.register_load_state_dict_pre_hook(_raw_loc_of_older_states)

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
        self._trace_prototype(*args, **kwargs)
        self._check_one_device_and_dtype()
        init_loc = self._init_loc()
        self._check_finite(init_loc)
        factory = {"device": init_loc.device, "dtype": init_loc.dtype}
        self.start = start = self._gaussian_start(init_loc, *args, **kwargs)
        scale = start.scale
        if self._init_scale != "auto":
            scale = torch.full_like(scale, self._init_scale)
        # Trained in the units of the start (pyro_realnvp.start_units). They are buffers:
        # a state_dict carries them with the unconstrained value they give meaning to.
        center, unit = self._loc_units(start)
        self.register_buffer("start_loc", center)
        self.register_buffer("start_scale", unit)
        units = StartUnits(self.start_loc, self.start_scale)
        self.loc = PyroParam(start.loc.detach().clone(), units)
        stored_constraint(self._pyro_get_fullname("loc"), units)  # one object for both
        self.scale = PyroParam(scale.detach().clone(), constraints.softplus_positive)
        if self._dense:
            unit = start.scale_tril / start.scale[:, None]
            if self._init_scale != "auto":
                unit = torch.eye(self.latent_dim, **factory)
            self.scale_tril = PyroParam(unit.detach().clone(), constraints.unit_lower_cholesky)
        # Sites as mask groups: coordinates of different sites (a scale and what it
        # scales) are split by as many pairs of layers as the mask bits allow, and only a
        # site's own coordinates may share every layer (pyro_realnvp.masks.coupling_masks).
        sites = [shape.numel() for shape in self._unconstrained_shapes.values()]
        self.flow = RealNVP(self.latent_dim, **self._flow_options, groups=sites, **factory)
        if not self._requires_grad:  # frozen before set-up: before the store sees them
            nn.Module.requires_grad_(self, False)
        self._register_flow()

    def _loc_units(self, start: GaussianStart) -> tuple[Tensor, Tensor]:
        """``(center, scale)`` the location is trained in: those of a loaded param store
        (units of 1 about 0 for one saved with a raw location); else the Laplace start's
        mode and width, where the location starts at the mode and moves little; else
        units of 1: from a local start, a mode search that hit its budget, or where the
        curvature was not positive, the location may have far to go."""
        stored = stored_constraint(self._pyro_get_fullname("loc"))
        loc = start.loc.detach()
        if isinstance(stored, StartUnits):
            return stored.center.detach().clone(), stored.scale.detach().clone()
        if stored is not None:
            return torch.zeros_like(loc), torch.ones_like(loc)
        if start.kind == "laplace":  # converged
            unit = torch.where(start.bad, 1.0, start.scale.detach())
            return loc.clone(), unit.to(loc.dtype)
        return loc.clone(), torch.ones_like(loc)

    def _trace_prototype(self, *args, **kwargs) -> None:
        """Pyro's prototype trace at ``init_loc_fn``'s values, its failures named by site."""
        rng = get_rng_state()
        try:
            super()._setup_prototype(*args, **kwargs)
        except NotImplementedError as error:
            _name_unsupported_site(self.prototype_trace, error)
            if raised_by_init_strategy(error):  # a site that cannot be sampled
                raise unsampleable_error(error, self._find_mode) from error
            raise
        except (ValueError, TypeError) as error:
            if self._find_mode:  # our own init: the model's failure is its own
                raise
            set_rng_state(rng)  # init_to_median draws: re-run at the same values
            raise init_values_error(self.model, error, args, kwargs) from error
        _refuse_local_subsampled(self.prototype_trace)
        if not self._find_mode:
            check_init_values(self.prototype_trace)
        if self._init_value_names:
            latents = [name for name, _ in self.prototype_trace.iter_stochastic_nodes()]
            check_init_value_names(self._init_value_names, self.model, latents, args, kwargs)

    def _potential(self, *args, **kwargs) -> Potential:
        """The model's full-data potential (see :class:`~pyro_realnvp.potential.Potential`);
        set-up has refused latents in subsampling plates, which would need the minibatch."""
        return Potential(self.model, self, args, kwargs, full_data=True)

    def _gaussian_start(self, init_loc: Tensor, *args, **kwargs) -> GaussianStart:
        """Where the affine starts: the Laplace start, or a local one at ``init_loc``."""
        chosen = self.__dict__.pop("_next_start", None)
        if chosen is not None:  # set by _restart_by_elbo
            return chosen
        potential = self._potential(*args, **kwargs)
        if not self._find_mode:
            return local_start(potential, init_loc)
        rule = getattr(self, "start_rule", "auto")  # a guide pickled before it had one
        if rule == "auto":
            rule = getattr(self, "_auto_start_rule", "elbo")
        start = laplace_start(potential, init_loc, dense=self._dense, rule=rule)
        _log.info("AutoRealNVP starts from the %s Gaussian (ELBO %.4g)", start.kind, start.elbo)
        if start.kind.startswith("laplace") and bool(start.bad.any()):
            self._warn_bad_curvature(start.bad)
        return start

    def _restart_by_elbo(self) -> None:
        """Undo the set-up where ``start_rule`` took the Laplace start over the ELBO's
        choice, so that the next call sets the guide up from that choice. For ``fit``,
        whose fast path set the guide up for tail-adaptive weights and then fell back on
        Pyro's reverse KL: not for a guide that has trained."""
        start = self.start
        if self.prototype_trace is None or start is None or start.elbo_choice is None:
            return
        prefix = self._pyro_get_fullname("")
        store = pyro.get_param_store()
        for name in [name for name in store.keys() if name.startswith(prefix)]:
            del store[name]
        for name in list(self._pyro_params):
            delattr(self, name)
        self._modules.pop("flow", None)
        for name in ("start_loc", "start_scale"):
            self._buffers.pop(name, None)
        self.prototype_trace, self.start = None, None
        self._next_start = start.elbo_choice

    def _warn_bad_curvature(self, bad: Tensor) -> None:
        sites, position = [], 0
        for name, shape in self._unconstrained_shapes.items():
            size = shape.numel()
            if bool(bad[position : position + size].any()):
                sites.append(name)
            position += size
        warnings.warn(
            f"the Hessian at the posterior's mode is not positive definite at site(s) "
            f"{sites}; their coordinates start uncorrelated, at the diagonal curvature's "
            "scale (or 1 where that is not positive)",
            UserWarning,
            stacklevel=5,
        )

    @property
    def flow(self) -> RealNVP:
        """The flow :math:`f`, built at the first call.

        A property, so that reading it is not ``PyroModule``'s implicit ``pyro.module``
        statement: each call of the guide declares the flow once, in :meth:`_register_flow`.
        """
        try:
            return self._modules["flow"]
        except KeyError:
            raise AttributeError("the guide builds its flow at its first call") from None

    def forward(self, *args, **kwargs) -> dict[str, Tensor]:
        if self.prototype_trace is not None:  # set-up registers the flow it builds
            self._register_flow()
        return super().forward(*args, **kwargs)

    def _register_flow(self) -> None:
        """Declare the flow's parameters to Pyro, as ``pyro.module(...,
        update_module_params=True)`` does, with two differences that make the flow behave
        like ``loc`` and ``scale``: a parameter frozen by ``requires_grad_(False)`` and not
        in the store is skipped without a warning (``pyro.module`` warns at every call),
        and where the store holds another tensor under this guide's name (a store loaded
        from disk, or the original of a same-named deep copy) the flow takes it.
        """
        prefix = self._pyro_get_fullname("flow")
        if pyro.settings.get("module_local_params"):
            # As PyroModule does in this mode: statements for handlers, no global store.
            for name, param in self.flow.named_parameters():
                full_name = param_with_module_name(prefix, name)
                effectful(type="param")(lambda *_, _p=param, **__: _p)(
                    full_name, param, constraint=constraints.real, name=full_name
                )
            return
        store = pyro.get_param_store()
        for module_name, module in self.flow.named_modules():
            for leaf, param in list(module._parameters.items()):
                full_name = param_with_module_name(prefix, f"{module_name}.{leaf}".lstrip("."))
                if param is None or (full_name not in store and not param.requires_grad):
                    continue  # frozen and never stored: nothing to train or to load
                self._check_stored_shape(full_name, param)
                pyro.param(full_name, param)  # the statement SVI collects parameters from
                stored = store[full_name]
                if stored is not param:
                    module._parameters[leaf] = stored

    @staticmethod
    def _check_stored_shape(full_name: str, param: Tensor) -> None:
        store = pyro.get_param_store()
        if torch.jit.is_tracing():  # shapes are fixed by then; comparing them would warn
            return
        if full_name in store and store[full_name].shape != param.shape:
            raise ValueError(
                f"the param store holds '{full_name}' with shape "
                f"{tuple(store[full_name].shape)}, but this model needs "
                f"{tuple(param.shape)}: call pyro.clear_param_store() or give this "
                "guide's model a different latent layout"
            )

    def requires_grad_(self, requires_grad: bool = True) -> AutoRealNVP:
        """``nn.Module.requires_grad_``, remembered for the parameters set-up creates:
        before the first call there are none to freeze, and the request would be lost."""
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

    def __getstate__(self) -> dict:
        # Pyro's AutoGuide.__getstate__ drops the model (often an unpicklable closure) from
        # the state by deleting it from the guide itself: give it back to the original.
        model, master = self._model, self.master
        state = dict(super().__getstate__())
        self._model, self.master = model, master
        state["_init_loc_fn"] = None  # as unpicklable as the model can be; it set up already
        return state

    def __deepcopy__(self, memo: dict) -> AutoRealNVP:
        """A deep copy that keeps the (shared, not copied) model, which pickling drops."""
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        copied.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        copied._model, copied._init_loc_fn = self._model, self._init_loc_fn
        return copied

    def _check_one_device_and_dtype(self) -> None:
        """Set-up time check (packing mixed latents would fail or silently cast)."""
        sites = list(self.prototype_trace.iter_stochastic_nodes())
        places = {(site["value"].device, site["value"].dtype) for _, site in sites}
        if len(places) > 1:
            found = ", ".join(
                f"'{name}' on {site['value'].device} as {site['value'].dtype}"
                for name, site in sites
            )
            raise ValueError(
                "AutoRealNVP needs all latent sites on one device with one dtype; found " + found
            )
        if not sites[0][1]["value"].is_floating_point():
            raise ValueError(f"latent values must be floating point, got {places}")

    def _check_finite(self, init_loc: Tensor) -> None:
        """Set-up time check, so the training step itself needs none."""
        if bool(torch.isfinite(init_loc).all()):
            return
        bad = [
            site["name"]
            for site, value in unpack_latent(self, init_loc)
            if not bool(torch.isfinite(value).all())
        ]
        raise ValueError(
            f"init_loc_fn gave non-finite unconstrained values at site(s) {bad}; "
            "try init_loc_fn=pyro.infer.autoguide.init_to_feasible"
        )

    def get_base_dist(self) -> dist.Distribution:
        zeros = torch.zeros_like(self.loc)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def _affine_transform(self, detach: bool = False) -> LowerCholeskyAffine | AffineTransform:
        r""":math:`u = \mu + L x`; with ``detach`` its parameters carry no gradient."""
        loc, scale = self.loc, self.scale
        if detach:
            loc, scale = loc.detach(), scale.detach()
        if "scale_tril" in self._pyro_params:
            unit = self.scale_tril.detach() if detach else self.scale_tril
            return LowerCholeskyAffine(loc, scale[..., None] * unit, cache_size=1)
        return AffineTransform(loc, scale, event_dim=1, cache_size=1)

    def get_transform(self, *args, **kwargs) -> ComposeTransform:
        return ComposeTransform([self.flow, self._affine_transform()], cache_size=1)

    def get_posterior(self, *args, **kwargs) -> dist.TransformedDistribution:
        """:math:`q(u)`; with ``estimator="path"`` its ``log_prob`` is the path-gradient one."""
        base, transform = self.get_base_dist(), self.get_transform(*args, **kwargs)
        if self.estimator == "total":
            return dist.TransformedDistribution(base, transform)
        return PathGradientPosterior(base, transform, self.log_density_detached, self.path_draw)

    def log_density_detached(self, u: Tensor) -> Tensor:
        r""":math:`\log q(u)` with every guide parameter detached: a gradient reaches them
        only through ``u``.

        One inverse pass, :math:`x = L^{-1}(u - \mu)`, :math:`\varepsilon = f^{-1}(x)`,
        :math:`\log q(u) = \log \mathcal N(\varepsilon) - \log|\det J_f(\varepsilon)|
        - \log|\det L|`. This is the "sticking the landing" estimator's term (see
        docs/math.md): its value is :math:`\log q(u)`, its score-function part is dropped.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> guide = AutoRealNVP(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
            >>> _ = guide()
            >>> u = guide.get_posterior().rsample((3,))
            >>> q = dist.TransformedDistribution(guide.get_base_dist(), guide.get_transform())
            >>> torch.allclose(guide.log_density_detached(u), q.log_prob(u))
            True
        """
        affine = self._affine_transform(detach=True)
        x = affine.inv(u)
        eps, flow_log_det = self.flow._backward(x, detach=True)
        log_det = flow_log_det + affine.log_abs_det_jacobian(x, u)
        return _standard_normal_log_prob(eps) - log_det

    def path_draw(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        r"""``(u, log q(u))`` at base noise ``eps``, ``log q`` as :meth:`log_density_detached`
        gives it: its value :math:`\log q(u)`, its gradient :math:`\nabla_u \log q(u)
        \cdot \partial u / \partial \theta` with :math:`\nabla_u \log q` a constant.

        Where the flow allows (:meth:`~pyro_realnvp.RealNVP.supports_score`) the score is
        carried through the draw's own forward pass, :math:`\nabla_u \log q = L^{-T}
        \nabla_x \log q_X(x)` from :math:`\nabla_\varepsilon = -\varepsilon`, so no
        inverse pass runs; otherwise this is the draw and :meth:`log_density_detached`.
        Without gradients (``torch.no_grad``) only the value is computed, from the draw.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> guide = AutoRealNVP(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
            >>> _ = guide()
            >>> u, log_q = guide.path_draw(torch.randn(3, 1))
            >>> torch.allclose(log_q, guide.log_density_detached(u))
            True
        """
        affine = self._affine_transform()
        score = None
        if torch.is_grad_enabled() and self.flow.supports_score():
            x, flow_log_det, score = self.flow._forward_with_score(eps, -eps)
        else:
            x, flow_log_det = self.flow._forward(eps)
        u = affine(x)
        if torch.is_grad_enabled() and score is None:
            return u, self.log_density_detached(u)
        # detach() as well as no_grad: torch.jit.trace (Pyro's JIT ELBOs) does not record
        # no_grad, and its replay would differentiate through these constants.
        with torch.no_grad():
            log_q = _standard_normal_log_prob(eps) - flow_log_det
            log_q = (log_q - affine.log_abs_det_jacobian(x, u)).detach()
            if score is None:
                return u, log_q
            score = _affine_score(affine, score).detach()
        return u, log_q + ((u - u.detach()) * score).sum(-1)

    def _latent_draws(self, num_samples: int, seed: int = 0) -> Tensor:
        """Fixed-seed draws of the packed unconstrained latent, shape ``(num_samples, D)``."""
        loc = self.loc.detach()
        generator = torch.Generator(device=loc.device).manual_seed(seed)
        eps = torch.randn(
            (num_samples, self.latent_dim), generator=generator, device=loc.device, dtype=loc.dtype
        )
        return self.get_transform()(eps)

    def _flow_is_identity(self) -> bool:
        """Whether :math:`f` is exactly the identity: every conditioner's last layer is
        zero, as built (a trained or loaded flow fails this at its first nonzero weight)."""
        return all(
            isinstance(layer.net, nn.Sequential)
            and not any(bool(p.any()) for p in layer.net[-1].parameters())
            for layer in self.flow.layers
        )

    def _unconstrained_quantiles(self, levels: Tensor) -> Tensor:
        r"""Marginal quantiles of :math:`u` at 1-d ``levels``, shape ``(len(levels), D)``.

        While :math:`f` is the identity :math:`u \sim \mathcal N(\mu, LL^T)`, whose
        marginals are :math:`\mathcal N(\mu_i, \lVert L_{i\cdot}\rVert)`: exact, and the
        median is :math:`\mu` itself. Otherwise from ``num_quantile_samples`` fixed-seed
        draws, so repeated calls agree.
        """
        if not self._flow_is_identity():
            return torch.quantile(self._latent_draws(self.num_quantile_samples), levels, dim=0)
        loc, sd = self.loc.detach(), self.scale.detach()
        if "scale_tril" in self._pyro_params:
            sd = sd * self.scale_tril.detach().norm(dim=-1)
        return loc + sd * torch.special.ndtri(levels)[:, None]

    def _site_values(self, latent: Tensor) -> Iterator[tuple[dict, Tensor]]:
        """Each latent site and its block of ``latent`` (``(N, D)``) as ``(N,) + shape``."""
        position = 0
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            shape = self._unconstrained_shapes[name]
            block = latent[:, position : position + shape.numel()]
            yield site, block.reshape(latent.shape[:1] + shape)
            position += shape.numel()

    def _constrained_draws(self) -> dict[str, Tensor]:
        """``num_quantile_samples`` fixed-seed draws of each site, mapped to its support."""
        draws = self._latent_draws(self.num_quantile_samples)
        return {
            site["name"]: biject_to(site["fn"].support)(value)
            for site, value in self._site_values(draws)
        }

    def _take_stored_params(self) -> None:
        """Take what the param store holds under this guide's names, as a call does, so
        that :meth:`median` and :meth:`quantiles` agree before and after one (a loaded
        guide's own values give way to the store's, see the class docstring)."""
        with pyro.poutine.block(), self._pyro_context:
            for name in self._pyro_params:
                getattr(self, name)  # PyroModule syncs a parameter with the store on access
            self._register_flow()

    def _check_finite_params(self) -> None:
        """Refuse to summarise a guide whose parameters are not finite: every quantile
        would be NaN, which says nothing of which parameter (or why)."""
        params = {name: getattr(self, name) for name in self._pyro_params}
        params.update({f"flow.{n}": p for n, p in self.flow.named_parameters()})
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in params.values()])
        if bool(finite.all()):
            return
        bad = [name for name, ok in zip(params, finite.tolist(), strict=True) if not ok]
        raise ValueError(
            f"the guide's parameter(s) {bad} hold NaN or infinite values, so its median and "
            "quantiles would be NaN: fit it again from a fresh guide (and "
            "pyro.clear_param_store()), or load a saved one"
        )

    def _levels(self, quantiles: Sequence[float] | Tensor, *args, **kwargs) -> Tensor:
        """``quantiles`` as a tensor like ``loc``, checked; sets the guide up if need be."""
        if self.prototype_trace is None:
            with pyro.poutine.block():
                self(*args, **kwargs)
        else:
            self._take_stored_params()
        self._check_finite_params()
        loc = self.loc.detach()
        try:
            levels = torch.as_tensor(quantiles, dtype=loc.dtype, device=loc.device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"quantiles must be numbers in [0, 1], got {quantiles!r}") from error
        if levels.numel() == 0:
            raise ValueError(f"quantiles must hold at least one level, got {quantiles!r}")
        if not bool(((levels >= 0) & (levels <= 1)).all()):
            raise ValueError(f"quantiles must lie in [0, 1], got {quantiles}")
        return levels

    @torch.no_grad()
    def quantiles(self, quantiles: Sequence[float] | Tensor, *args, **kwargs) -> dict[str, Tensor]:
        r"""Marginal posterior quantiles of each latent site's coordinates, in its support.

        :math:`Q_{z_i}(q) = T_i(Q_{u_i}(q))` for a support whose ``biject_to`` map
        :math:`T` acts elementwise (real, positive, intervals, ...), with :math:`1 - q`
        where :math:`T` decreases (``less_than``); :math:`Q_{u_i}` is exact while the
        flow is the identity (see :meth:`median`), else taken from
        ``num_quantile_samples`` fixed-seed draws. For other supports (simplex, ordered,
        Cholesky factors) :math:`T` mixes coordinates, so each coordinate's quantiles are
        taken from the same draws mapped to the support: they increase with :math:`q`,
        but a row of them need not lie on the support (a simplex's medians need not sum
        to 1; :meth:`median` gives a point that does).

        Returns a dict of tensors of shape ``quantiles.shape + site_shape``.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> guide = AutoRealNVP(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
            >>> q = guide.quantiles([0.25, 0.5, 0.75])["x"]
            >>> q.shape, bool(q[0] < q[1] < q[2])
            (torch.Size([3]), True)
        """
        levels = self._levels(quantiles, *args, **kwargs)
        flat = levels.reshape(-1)
        u = self._unconstrained_quantiles(torch.cat([flat, 1 - flat]))
        at_q, at_complement = u[: len(flat)], u[len(flat) :]
        draws, result = None, {}
        for (site, value), (_, complement) in zip(
            self._site_values(at_q), self._site_values(at_complement), strict=True
        ):
            transform = biject_to(site["fn"].support)
            sign = _elementwise_sign(transform)
            if sign is None:
                draws = self._constrained_draws() if draws is None else draws
                site_draws = draws[site["name"]]
                value = torch.quantile(site_draws.reshape(len(site_draws), -1), flat, dim=0)
                value = value.reshape(flat.shape + site_draws.shape[1:])
            else:
                decreasing = torch.as_tensor(sign, device=flat.device) < 0
                value = torch.where(decreasing, transform(complement), transform(value))
            result[site["name"]] = value.reshape(levels.shape + value.shape[1:])
        return result

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, Tensor]:
        r"""Each latent site at :math:`T(\operatorname{med} u)`: the coordinate-wise
        median of the unconstrained latent, mapped to the site's support.

        While the flow is the identity (before training) :math:`\operatorname{med} u =
        \mu` exactly, so this is where the guide starts: ``init_loc_fn``'s values when
        one is given, as for Pyro's autoguides. For elementwise supports it is the
        marginal median, ``quantiles([0.5])``; for the others (simplex, ordered,
        Cholesky factors) it is a point on the support, where ``quantiles([0.5])`` gives
        each coordinate's own median instead.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> from pyro.infer.autoguide import init_to_value
            >>> def model():
            ...     pyro.sample("s", dist.LogNormal(0.0, 1.0))
            >>> start = init_to_value(values={"s": torch.tensor(2.0)})
            >>> guide = AutoRealNVP(model, init_loc_fn=start)
            >>> guide.median()["s"]
            tensor(2.)
        """
        levels = self._levels([0.5], *args, **kwargs)
        u = self._unconstrained_quantiles(levels)
        return {
            site["name"]: biject_to(site["fn"].support)(value[0])
            for site, value in self._site_values(u)
        }


def _raw_loc_of_older_states(module, state_dict, prefix, *args) -> None:
    """A state saved before the location was trained in the start's units holds the raw
    location as its unconstrained value: read it in units of 1 about 0."""
    raw = state_dict.get(prefix + "loc_unconstrained")
    if raw is not None and prefix + "start_loc" not in state_dict:
        state_dict[prefix + "start_loc"] = torch.zeros_like(raw)
        state_dict[prefix + "start_scale"] = torch.ones_like(raw)


def _affine_score(affine: LowerCholeskyAffine | AffineTransform, score: Tensor) -> Tensor:
    """The score at ``u = loc + L x`` from the score at ``x``: :math:`L^{-T} g`."""
    if not isinstance(affine, LowerCholeskyAffine):
        return score / affine.scale
    # As rows, g^T L^{-1}; solve_triangular wants a matrix, so one draw becomes a row.
    rows = score.unsqueeze(-2) if score.dim() == 1 else score
    rows = torch.linalg.solve_triangular(affine.scale_tril, rows, upper=False, left=False)
    return rows.squeeze(-2) if score.dim() == 1 else rows


def _standard_normal_log_prob(eps: Tensor) -> Tensor:
    """``get_base_dist().log_prob(eps)`` in three operations, not a distribution's dozen:
    it runs at every step of the path-gradient estimator."""
    return -0.5 * (eps.pow(2).sum(-1) + eps.shape[-1] * math.log(2 * math.pi))


def _positive_int(value) -> bool:
    return is_int(value) and value >= 1


def _refuse_local_subsampled(trace) -> None:
    """Refuse a latent inside a subsampling plate: packed into the one vector that
    AutoRealNVP learns, it would have the minibatch's size, so each of its coordinates
    would stand for whichever row lands in that slot (Pyro's ``AutoContinuous`` trains
    it so, silently)."""
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


def _name_unsupported_site(trace, error: NotImplementedError) -> None:
    """Raise a ValueError naming the latent site whose support has no ``biject_to``."""
    for name, site in [] if trace is None else trace.iter_stochastic_nodes():
        try:
            biject_to(site["fn"].support)
        except NotImplementedError:
            raise ValueError(
                f"site '{name}' has support {site['fn'].support}, which has no bijection "
                "from the reals (biject_to): AutoRealNVP cannot guide it; reparameterize "
                "it (e.g. a Cholesky factor with LKJCholesky) or guide it separately"
            ) from error


def _check_options(*, num_layers, hidden_dims, init_scale, scale_bound, affine, estimator,
                   num_quantile_samples, activation, start_rule) -> None:  # fmt: skip
    """Refuse an AutoRealNVP option outside its range, naming it; warn on an odd depth."""
    if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
        raise TypeError(f"activation must be a torch.nn.Module class such as nn.ELU, got "
                        f"{activation!r}")  # fmt: skip
    if not (_positive_int(num_layers) and num_layers >= 2):
        raise ValueError(
            f"num_layers must be an integer >= 2 (one coupling leaves half the coordinates "
            f"unchanged), got {num_layers!r}"
        )
    if hidden_dims is not None:
        check_hidden_dims(hidden_dims)
    numeric_scale = isinstance(init_scale, numbers.Real) and not isinstance(init_scale, bool)
    if init_scale != "auto" and not (numeric_scale and 0 < init_scale <= MAX_INIT_SCALE):
        raise ValueError(
            f"init_scale must be 'auto' or a number in (0, {MAX_INIT_SCALE:g}] (a standard "
            f"deviation in the unconstrained space), got {init_scale!r}"
        )
    if isinstance(scale_bound, bool) or not (
        isinstance(scale_bound, numbers.Real) and 0 < scale_bound < math.inf
    ):
        raise ValueError(f"scale_bound must be a finite number > 0, got {scale_bound!r}")
    if affine not in _AFFINE_CHOICES:
        raise ValueError(f"affine must be one of {_AFFINE_CHOICES}, got {affine!r}")
    if estimator not in _ESTIMATORS:
        raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
    if start_rule not in _START_RULE_CHOICES:
        raise ValueError(f"start_rule must be one of {_START_RULE_CHOICES}, got {start_rule!r}")
    if not (_positive_int(num_quantile_samples) and num_quantile_samples >= MIN_QUANTILE_SAMPLES):
        raise ValueError(
            f"num_quantile_samples must be an integer >= {MIN_QUANTILE_SAMPLES} (fewer draws "
            f"cannot tell a 5% quantile from a 95% one), got {num_quantile_samples!r}"
        )
    if num_layers % 2:
        warnings.warn(
            f"num_layers={num_layers} is odd: one half of the coordinates passes through one "
            "coupling fewer than the other; an even number balances them",
            UserWarning,
            stacklevel=3,
        )


class PathGradientPosterior(dist.TransformedDistribution):
    r"""A ``TransformedDistribution`` whose ``log_prob`` treats its parameters as constants.

    Sampling is the usual reparameterised :math:`u = T_\phi(\varepsilon)`; ``log_prob(u)``
    is ``log_density(u)``, the same value with :math:`\phi` detached, so in an ELBO the
    gradient of :math:`\log q_\phi(u)` is only the path term :math:`\nabla_u \log q
    \cdot \partial u/\partial\phi` (Roeder et al., 2017).
    """

    arg_constraints: dict = {}

    def __init__(self, base_distribution, transforms, log_density, draw=None, validate_args=None):
        super().__init__(base_distribution, transforms, validate_args=validate_args)
        self._log_density, self._draw = log_density, draw
        self._last_draw: tuple[Tensor, int, Tensor] | None = None

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(PathGradientPosterior, _instance)
        new = super().expand(batch_shape, _instance=new)
        new._log_density, new._draw, new._last_draw = self._log_density, self._draw, None
        return new

    def rsample(self, sample_shape=()) -> Tensor:
        """A draw; with ``draw`` (:meth:`AutoRealNVP.path_draw`) its ``log_prob`` is kept,
        so an ELBO scoring this very draw next needs no inverse pass."""
        if self._draw is None:
            return super().rsample(sample_shape)
        value, log_prob = self._draw(self.base_dist.rsample(sample_shape))
        self._last_draw = (value, value._version, log_prob)
        return value

    def log_prob(self, value: Tensor) -> Tensor:
        last = self._last_draw
        if last is not None and value is last[0] and value._version == last[1]:
            # The draw itself, unmodified; without gradients, a constant as the inverse
            # pass would give.
            log_prob = last[2] if torch.is_grad_enabled() else last[2].detach()
        else:
            log_prob = self._log_density(value)
        return log_prob.expand(torch.broadcast_shapes(log_prob.shape, self.batch_shape))
