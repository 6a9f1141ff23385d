"""The model's potential at a packed unconstrained latent: one module, used everywhere.

:math:`U(u) = -\\log p(x, T(u)) - \\log|\\det J_T(u)|`, where :math:`T` maps the guide's
packed unconstrained latent ``u`` to each site's support with ``biject_to``. The Laplace
start (:mod:`pyro_realnvp.guide.laplace`), the fast path (:mod:`pyro_realnvp.infer.fast`) and the
guide's set-up all read the model through this one object.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to

from .._internal.compat import count_elements, full_data_plates, rng_state, unpack_latent
from .._internal.locate import partial_trace
from .._internal.plates import plate_nesting

__all__ = [
    "Potential",
    "finite_start",
    "hold_hidden",
    "non_finite_sites",
    "prototype_run",
    "sites_not_finite",
    "subsampled_sites",
]

_PARTICLES = "_potential_particles"
#: Tensor elements of log-density work in one batched call (latents times the model's
#: elements per latent): bounds what :meth:`Potential.batched` scores at once.
BATCH_BUDGET = 2**21
_NOT_ASKED = object()


def _per_particle(log_prob: Tensor, particle_dims: int) -> Tensor:
    """Sum a log-density over all but its particle dimension: shape ``(N,)``, ``(1,)`` or ``()``.

    ``particle_dims`` counts the particle dimension and the plate dimensions right of it.
    """
    if log_prob.dim() < particle_dims:
        return log_prob.sum()
    return log_prob.reshape(log_prob.shape[: log_prob.dim() - particle_dims + 1] + (-1,)).sum(-1)


def subsampled_sites(trace: poutine.Trace) -> list[tuple[str, CondIndepStackFrame]]:
    r"""Each sample site inside a plate that holds fewer indices than its full size.

    :math:`\{(s, p) : s \in p,\ |p| < N_p\}`, one pair per site (its first such plate):
    what a full-data computation has to switch off, or refuse when it cannot.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     with pyro.plate("data", 100, subsample_size=10):
        ...         pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.zeros(10))
        >>> [(name, plate.name, plate.size) for name, plate in subsampled_sites(
        ...     poutine.trace(model).get_trace())]
        [('y', 'data', 10)]
    """
    found = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        frames = site["cond_indep_stack"]
        plate = next((f for f in frames if f.full_size not in (None, f.size)), None)
        if plate is not None:
            found.append((name, plate))
    return found


class Potential:
    r"""The model's log-joint at packed unconstrained latents of an ``AutoContinuous`` guide.

    ``potential(u)`` for one latent of shape ``(D,)`` is :math:`U(u)`; :meth:`log_joint`
    takes a batch of shape :meth:`latent_shape` (particles left of the model's plates, as
    ``Trace_ELBO(vectorize_particles=True)`` lays them out) and gives
    :math:`\log p(x, T(u_n)) + \log|\det J_T(u_n)|` per particle.

    Args:
        model: The Pyro model.
        guide: A set-up ``AutoContinuous`` guide of ``model`` (it says how ``u`` splits
            into sites).
        args, kwargs: The model's arguments.
        full_data: Switch subsampling plates off, so the potential is the full-data one
            (what a mode, a curvature or a diagnostic needs), not a random minibatch's.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoDiagonalNormal
        >>> def model():
        ...     pyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> guide = AutoDiagonalNormal(model); _ = guide()
        >>> potential = Potential(model, guide)
        >>> round(potential(torch.zeros(1)).item(), 4)  # -log N(0; 0, 1)
        0.9189
    """

    def __init__(
        self,
        model: Callable,
        guide: AutoContinuous,
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        full_data: bool = False,
    ) -> None:
        self.model, self.guide = model, guide
        self.args, self.kwargs = args, kwargs or {}
        self.full_data = full_data
        self.max_plate_nesting = 0
        self._batched = _NOT_ASKED

    def latent_shape(self, num_particles: int) -> tuple[int, ...]:
        """Shape of a batch of packed latents: particles left of every plate."""
        return (num_particles,) + (1,) * self.max_plate_nesting + (self.guide.latent_dim,)

    def _values(self, u: Tensor, batch: int | None) -> tuple[dict, Tensor]:
        """Constrained site values at ``u`` and ``log|det J_T|`` (per particle if batched)."""
        values, log_det = {}, u.new_zeros(() if batch is None else (batch,))
        for site, unconstrained in unpack_latent(self.guide, u):
            transform = biject_to(site["fn"].support)
            values[site["name"]] = value = transform(unconstrained)
            jacobian = transform.log_abs_det_jacobian(unconstrained, value)
            log_det = log_det + (
                jacobian.sum() if batch is None else jacobian.reshape(batch, -1).sum(-1)
            )
        return values, log_det

    def trace(self, u: Tensor) -> tuple[poutine.Trace, Tensor]:
        """The model conditioned on ``u`` (one latent, or a batch), and ``log|det J_T|``."""
        batch = None if u.dim() == 1 else u.shape[0]
        values, log_det = self._values(u, batch)
        with contextlib.ExitStack() as stack:
            stack.enter_context(poutine.block())
            if self.full_data:
                stack.enter_context(full_data_plates())
            if batch is not None:
                dim = -(self.max_plate_nesting + 1)
                stack.enter_context(pyro.plate(_PARTICLES, batch, dim=dim))
            model = poutine.condition(self.model, data=values)
            trace = poutine.trace(model).get_trace(*self.args, **self.kwargs)
        trace.compute_log_prob()
        return trace, log_det

    def log_joint(self, u: Tensor) -> Tensor:
        r""":math:`\log p(x, T(u)) + \log|\det J_T(u)|` per particle, shape ``(N,)``."""
        trace, total = self.trace(u)
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                total = total + _per_particle(site["log_prob"], self.max_plate_nesting + 1)
        return total

    def __call__(self, u: Tensor) -> Tensor:
        """:math:`U(u)` at one packed latent of shape ``(D,)``: a scalar."""
        trace, log_det = self.trace(u)
        return -(trace.log_prob_sum() + log_det)

    def batched(self, u: Tensor) -> tuple[Callable[[Tensor], Tensor], int] | None:
        """``(U at a batch of latents, (K, D) -> (K,); the most latents per call)`` where
        the model scores many latents at once through the particle plate, else ``None``.

        Asked once (a Laplace start asks up to four times): at ``u`` and a point beside
        it, the batch must score as each latent alone, and one latent's work must leave
        room for two within ``BATCH_BUDGET`` elements.
        """
        if self._batched is _NOT_ASKED:
            self._batched = self._check_batched(u.detach())
        return self._batched

    def _check_batched(self, u: Tensor) -> tuple[Callable[[Tensor], Tensor], int] | None:
        def batched(latents: Tensor) -> Tensor:
            return -self.log_joint(latents.reshape(self.latent_shape(len(latents))))

        pair, scored = torch.stack([u, u + 0.1 * torch.ones_like(u)]), []
        try:
            self.set_max_plate_nesting()
            with torch.no_grad():
                single = torch.stack([self(point) for point in pair])
                # Every element the model makes for two latents, the one-off work included.
                elements = count_elements(lambda x: scored.append(batched(x)), pair)
        except (ValueError, RuntimeError, ArithmeticError):
            return None
        tolerance = 1e-4 * (1 + single.abs())
        both = scored[0]
        if both.shape != (2,) or not bool(((both - single).abs() <= tolerance).all()):
            return None
        most = BATCH_BUDGET // max(elements // 2, 1)
        # A latent's work alone fills the budget: one at a time is as good.
        return (batched, most) if most >= 2 else None

    def set_max_plate_nesting(self) -> int:
        """Read how many plates the model nests (particles go left of them) and keep it."""
        data = {n: s["value"] for n, s in self.guide.prototype_trace.iter_stochastic_nodes()}
        with torch.no_grad(), poutine.block():
            model = poutine.condition(self.model, data=data)
            trace = poutine.trace(model).get_trace(*self.args, **self.kwargs)
        self.max_plate_nesting = plate_nesting(trace)
        return self.max_plate_nesting


def sites_not_finite(trace: poutine.Trace) -> list[str]:
    """Names of the trace's sample sites (not a plate's indices) whose value or
    log-density is NaN or infinite; log-densities are computed where they are not yet.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     x = pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(x, 0.0 * x + 1.0), obs=torch.tensor(float("inf")))
        >>> sites_not_finite(poutine.trace(model).get_trace())
        ['y']
    """
    trace.compute_log_prob()
    return [
        name for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
        and not (bool(torch.isfinite(torch.as_tensor(site["value"])).all())
                 and bool(torch.isfinite(site["log_prob_sum"])))
    ]  # fmt: skip


def non_finite_sites(potential: Potential, u: Tensor) -> list[str]:
    """The sample sites whose log-density is not finite at the packed latent ``u`` (all of
    them, ``["the model"]``, where the model raises there); empty where all are finite.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoDiagonalNormal
        >>> def model():
        ...     x = pyro.sample("x", dist.Normal(0.0, 30.0))
        ...     pyro.sample("y", dist.Poisson(torch.exp(10 * x)), obs=torch.tensor(3.0))
        >>> guide = AutoDiagonalNormal(model); _ = guide()
        >>> non_finite_sites(Potential(model, guide), torch.tensor([-12.0]))
        ['y']
    """
    try:
        with torch.no_grad():
            trace, log_det = potential.trace(u)
    except (ValueError, RuntimeError, TypeError) as error:
        return [f"the model ({type(error).__name__} there)"]
    bad = sites_not_finite(trace)
    return bad if bad or bool(torch.isfinite(log_det)) else ["the change of variables"]


def finite_start(potential: Potential, init: Tensor) -> tuple[Tensor, list[str]]:
    """Where a mode search can start: ``init``, or where the model's log-density is not
    finite there (``init_to_median``'s draw deep in a tail where a rate overflows, say)
    the unconstrained origin, ``init_to_feasible``'s point, if it is finite there; and
    the sites that were not finite at ``init`` (empty where all were).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoDiagonalNormal
        >>> def model():  # at log-scale -800 the scale underflows to 0, which Normal refuses
        ...     scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(0.0, scale), obs=torch.tensor(1.0))
        >>> guide = AutoDiagonalNormal(model); _ = guide()
        >>> finite_start(Potential(model, guide), torch.tensor([-800.0]))
        (tensor([0.]), ['the model (ValueError there)'])
    """
    bad = non_finite_sites(potential, init)
    if not bad:
        return init, []
    origin = torch.zeros_like(init)
    return (init if non_finite_sites(potential, origin) else origin), bad


def prototype_run(model: Callable, init_loc_fn: Callable, prototype, args: tuple,
                  kwargs: dict) -> poutine.Trace:  # fmt: skip
    """One run of ``model``: the guided latents at the ``prototype``'s values, the others
    (enumerated ones, which the prototype hides) at ``init_loc_fn``'s; the random state
    left as it was. What the set-up checks of the observed sites, and what
    :func:`hold_hidden` holds.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import init_to_median
        >>> def model():
        ...     x = pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor(0.5))
        >>> prototype = poutine.trace(model).get_trace()
        >>> run = prototype_run(model, init_to_median, prototype, (), {})
        >>> bool(run.nodes["x"]["value"] == prototype.nodes["x"]["value"])
        True
    """
    # Replayed inside init_loc_fn's messenger: it draws no value for the guided sites
    # again, and a model without hidden sites costs no init draws at all.
    started = InitMessenger(init_loc_fn)(poutine.replay(model, trace=prototype))
    with rng_state():  # the guide's set-up draws no more random numbers than Pyro's
        return partial_trace(started, args, kwargs)


def hold_hidden(model: Callable, run: poutine.Trace, prototype: poutine.Trace) -> Callable:
    """``model`` with the latent sites the guide leaves to the ELBO (enumerated discrete
    ones) held at their values in ``run`` (:func:`prototype_run`), so that the start's
    potential is a function of the guide's latents alone; ``model`` itself where there
    are none.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import init_to_median
        >>> def model():
        ...     pyro.sample("k", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        >>> run = prototype_run(model, init_to_median, poutine.Trace(), (), {})
        >>> held = hold_hidden(model, run, poutine.Trace())
        >>> poutine.trace(held).get_trace().nodes["k"]["is_observed"]
        True
    """
    guided = {name for name, _ in prototype.iter_stochastic_nodes()}
    hidden = {
        name: site["value"]
        for name, site in run.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and name not in guided
        and not site_is_subsample(site)
    }  # fmt: skip
    return poutine.condition(model, data=hidden) if hidden else model
