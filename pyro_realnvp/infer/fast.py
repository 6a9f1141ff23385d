"""A fast SVI step for AutoRealNVP: the model's log-density captured once as a torch graph.

``Trace_ELBO`` re-runs the guide and the model through Pyro's effect handlers at every
step, and for small models that Python overhead, not the arithmetic, is the step. Here the
model is run through the handlers only at set-up: its log-joint density, as a function of
the packed unconstrained latent of all particles, is recorded once by
:func:`torch.fx.experimental.proxy_tensor.make_fx` (as HMC's ``jit_compile`` records its
potential energy) into a graph of plain tensor operations. Each step then draws all
particles through the guide's own transform in one batched call and evaluates that graph.
The same capture refuses Python control flow on latent values, so a model it cannot
replay raises :class:`FastPathError` at set-up instead of training on a wrong density.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.nn.utils import get_total_norm

from .._internal.checks import check_int
from .._internal.compat import capture_graph, check_site_shape, count_elements
from .._internal.locate import first_line, raised_at
from ..errors import FastPathError, NonFiniteLossError
from ..guide.potential import Potential, subsampled_sites
from .finite import explain_non_finite, rejected_draws_are_non_finite, usability
from .flat import FlatParameters, unpacked
from .flow_guide import FlowGuide
from .loop import NOTHING_TO_FIT, Schedule, clip_total_norm
from .losses import check_beta, particle_objective

__all__ = ["FastELBO", "FastStep", "particles_for"]

#: Most particles per step the fast path chooses by itself, and the elements the model's
#: log-density may compute per step before more particles cost more than the flow's own
#: per-step overhead (docs/tuning.md): a step is overhead-bound below it.
MAX_PARTICLES = 32
PARTICLE_BUDGET = 2**21


def _structure(trace: poutine.Trace) -> list[tuple]:
    """What must not change between draws: sites, distributions, shapes, plates."""
    return [
        (
            name,
            site["type"],
            site.get("is_observed"),
            type(site.get("fn")).__name__,
            tuple(site["value"].shape) if torch.is_tensor(site.get("value")) else None,
            tuple((f.name, f.dim, f.size) for f in site.get("cond_indep_stack", ())),
        )
        for name, site in trace.nodes.items()
        if site["type"] in ("sample", "param")
    ]


def _check_trace(trace: poutine.Trace, guide: FlowGuide, max_plate_nesting: int) -> None:
    """Refuse what the captured density cannot reproduce, naming the site."""
    latents = {name for name, _ in guide.prototype_trace.iter_stochastic_nodes()}
    for name, site in trace.nodes.items():
        if site["type"] == "param":
            raise FastPathError(
                f"the model has a learnable pyro.param site '{name}'; the fast path trains "
                "only the guide: fit with fast=False"
            )
    subsampled = subsampled_sites(trace)
    if subsampled:
        name, plate = subsampled[0]
        raise FastPathError(
            f"site '{name}' is in subsampling plate '{plate.name}' (size {plate.size} of "
            f"{plate.full_size}); the fast path replays fixed data: fit with fast=False"
        )
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if not site["is_observed"] and name not in latents:
            kind = "discrete" if site["fn"].support.is_discrete else "unguided"
            raise FastPathError(
                f"site '{name}' is a {kind} latent the guide does not sample (enumerated or "
                "hidden); the fast path needs only continuous latents: fit with fast=False and "
                "TraceEnum_ELBO"
            )
        check_site_shape(site, max_plate_nesting + 1)
        if site["log_prob"].dim() > max_plate_nesting + 1:
            raise FastPathError(
                f"site '{name}' has log_prob shape {tuple(site['log_prob'].shape)}, with "
                "dimensions left of the particle plate: the model does not broadcast over "
                "particles (as Trace_ELBO(vectorize_particles=True) needs)"
            )


def particles_for(elements_per_particle: float, most: int = MAX_PARTICLES) -> int:
    """Particles per step: the largest power of two up to ``most`` whose log-density
    work, ``N * elements_per_particle``, stays within ``PARTICLE_BUDGET``; at least one.

    Example:
        >>> particles_for(200), particles_for(200_000), particles_for(5e6)
        (32, 8, 1)
    """
    affordable = min(most, PARTICLE_BUDGET / max(float(elements_per_particle), 1.0))
    return 2 ** int(math.floor(math.log2(max(affordable, 1.0))))


#: How Pyro's and torch's validation starts a message where a value is not allowed.
_REJECTIONS = ("Expected parameter", "Expected value", "Error while computing log_prob")


def _failed_at_draws(error: Exception) -> FastPathError:
    """Why the model could not be scored at the guide's draws: it rejected some of them
    (a density undefined there), or it does not broadcast over particles."""
    message = str(error)
    if message.startswith(_REJECTIONS):
        return FastPathError(
            f"the model rejected some of the guide's draws{raised_at(error)} "
            f"({first_line(error)}): where a model's density is undefined for some latent "
            "values (a square root of a negative, say), Pyro's ELBO redraws such a draw "
            "one particle at a time, where the fast path's many would all be redrawn: "
            "fit with fast=False"
        )
    return FastPathError(
        f"the model failed at the guide's draws ({message.splitlines()[0]}); the fast "
        "path needs a model that runs at them and broadcasts over a particle plate left of "
        "its own plates, as Trace_ELBO(vectorize_particles=True) does: fit with fast=False"
    )


def _agree_or_refuse(log_joints: Callable[[], tuple[Tensor, Tensor]], why: str) -> None:
    """Refuse the fast path, saying ``why``, unless the two log-joints agree."""
    try:
        with torch.no_grad():
            expected, got = log_joints()
    except (RuntimeError, ValueError) as error:
        raise _failed_at_draws(error) from error
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4, equal_nan=True):
        raise FastPathError(why)


def _set_up(guide: FlowGuide, args: tuple, kwargs: dict, beta: float | None,
            num_particles: int | None) -> None:  # fmt: skip
    """Set the guide up, its ``start_rule="auto"`` read for this objective (tail-adaptive
    weights, which need two particles or more, keep a proper mode's Laplace width); a
    model that rejects its initial values is Pyro's ELBO's case."""
    weighted = beta is not None and num_particles != 1
    try:
        with guide.auto_start_rule("proper" if weighted else "elbo"), torch.no_grad(), \
                poutine.block(), rejected_draws_are_non_finite():  # fmt: skip
            guide(*args, **kwargs)
    except NonFiniteLossError as error:
        raise FastPathError(
            f"at the guide's initial values, {error}: fit with fast=False, whose redraws and "
            "diagnosis handle it"
        ) from error


class FastELBO:
    r"""``Trace_ELBO`` for :class:`~pyro_realnvp.AutoRealNVP` with the model captured once.

    :math:`-\mathrm{ELBO} = -\frac1N \sum_n [\log p(x, T(u_n)) + \log|J_T(u_n)| - \log
    q(u_n)]`, :math:`u_n = \mu + L f(\varepsilon_n)`, where :math:`T` maps the packed
    unconstrained latent to each site's support (``biject_to``): the same loss and
    gradients as ``Trace_ELBO(num_particles=N, vectorize_particles=True)`` at the same
    noise. The model, its ``*args`` and ``**kwargs`` are fixed at set-up (the observed
    data become constants of the graph). Set-up raises :class:`FastPathError` for
    learnable model parameters, subsampling plates, discrete or unguided latents, and
    models whose structure or Python control flow depends on the latent values.

    Args:
        model: A Pyro model with continuous latents only.
        guide: An :class:`~pyro_realnvp.AutoRealNVP` of ``model``.
        *args, **kwargs: The model's arguments, fixed for every step.
        num_particles: Particles :math:`N` per step, drawn in one batched call. ``None``
            chooses them from the model's work (:func:`particles_for`): up to
            ``MAX_PARTICLES`` where a step costs its fixed overhead whatever :math:`N`,
            fewer where the model's own arithmetic grows with them.
        beta: Tail-adaptive weights on the particles' gradients, :math:`\rho_i \propto
            \hat F(w_i)^\beta` (:func:`~pyro_realnvp.infer.losses.particle_objective`); ``None``:
            each particle weighs :math:`1/N`, as ``Trace_ELBO``. The loss's value is the
            negative ELBO estimate either way.
        compile: Also ``torch.compile`` the loss and its backward pass, paying a one-off
            compile time (a minute or more on CPU) for a faster step. ``True`` picks mode
            ``"reduce-overhead"`` (CUDA graphs: shapes here are static) on a GPU and
            ``"default"`` on CPU; a string is passed to ``torch.compile`` as the mode.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_realnvp import AutoRealNVP
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> elbo = FastELBO(model, AutoRealNVP(model, num_layers=2), num_particles=8)
        >>> loss = elbo.loss()
        >>> loss.shape, loss.requires_grad
        (torch.Size([]), True)
    """

    def __init__(
        self,
        model: Callable,
        guide: FlowGuide,
        *args,
        num_particles: int | None = 1,
        beta: float | None = None,
        compile: bool | str = False,
        **kwargs,
    ) -> None:
        if not isinstance(guide, FlowGuide):
            raise TypeError(f"guide must be an AutoRealNVP, got {type(guide).__name__}")
        if num_particles is not None:
            num_particles = check_int("num_particles", num_particles, 1)
        beta = check_beta(beta)
        if guide.prototype_trace is None:
            _set_up(guide, args, kwargs, beta, num_particles)
        self.guide, self.num_particles, self.beta = guide, num_particles, beta
        self._replay = Potential(model, guide, args, kwargs)
        self._log_joint = self._capture()
        self._negative_elbo = None
        if compile:
            if compile is True:
                compile = "reduce-overhead" if guide.loc.is_cuda else "default"
            self._negative_elbo = torch.compile(self._negative_elbo_eager, mode=compile)
        self._params = [p for p in self._guide_parameters() if p.requires_grad]
        if not self._params:
            raise ValueError(NOTHING_TO_FIT)

    def _capture(self) -> Callable[[Tensor], Tensor]:
        """Check the model at two draws, then record its log-joint once as a graph."""
        replay, guide = self._replay, self.guide
        try:
            replay.set_max_plate_nesting()
            with torch.no_grad():
                traces = [replay.trace(self._draws(2, seed))[0] for seed in (1, 2)]
        except (RuntimeError, ValueError) as error:
            raise _failed_at_draws(error) from error
        for trace in traces:
            _check_trace(trace, guide, replay.max_plate_nesting)
        if _structure(traces[0]) != _structure(traces[1]):
            raise FastPathError(
                "the model's sites or shapes change with the latent values, so no single "
                "graph replays it: fit with fast=False"
            )
        self._check_particles_apart()
        if self.num_particles is None:
            self.num_particles = particles_for(self._elements_per_particle())
        graph = self._record(self._draws(self.num_particles, seed=3))
        check = self._draws(self.num_particles, seed=4)
        _agree_or_refuse(
            lambda: (replay.log_joint(check), graph(check)),
            "the captured log-density disagrees with the model at a fresh draw (hidden "
            "data-dependent behaviour): fit with fast=False",
        )
        return graph

    def _check_particles_apart(self) -> None:
        """Refuse a model whose particles meet: each draw's log-joint must be the same
        beside another draw as alone (``torch.stack([a, b]).sum()`` over the particle
        dimension passes Pyro's shape checks and would silently mix them)."""
        replay, draws = self._replay, self._draws(2, seed=5)
        _agree_or_refuse(
            lambda: (
                replay.log_joint(draws),
                torch.cat([replay.log_joint(draws[i : i + 1]) for i in range(2)]),
            ),
            "the model's log-density of one draw changes with the other draws beside it "
            "(an operation mixes the particle dimension, such as a sum over all of a "
            "latent's dimensions): fit with fast=False, or reduce over the model's own "
            "dimensions only (dim=-1, .sum(-1))",
        )

    def _record(self, example: Tensor) -> Callable[[Tensor], Tensor]:
        """The model's log-joint recorded at ``example`` as a graph of tensor operations."""
        replay = self._replay
        try:
            # Validation checks read tensor values; the eager runs already did them.
            with pyro.validation_enabled(False), torch.no_grad():
                return capture_graph(lambda u: replay.log_joint(u), example)
        except (RuntimeError, ValueError) as error:
            if "data-dependent" not in str(error):
                raise _failed_at_draws(error) from error
            raise FastPathError(
                "the model reads in Python (float(), int(), .item(), or an if on a tensor) "
                "the value of a latent or of a tensor computed from one, which a captured "
                "graph cannot replay (reads of the data alone are kept): fit with fast=False"
            ) from error

    def _elements_per_particle(self) -> float:
        """What one more particle adds to the log-density's work, in tensor elements: half
        the difference between four particles and two (two is what set-up checked, and
        the difference cancels work done once whatever the particles)."""
        counts = []
        try:
            for num_particles in (2, 4):
                draws = self._draws(num_particles, seed=5)
                with pyro.validation_enabled(False), torch.no_grad():
                    counts.append(count_elements(self._replay.log_joint, draws))
        except (RuntimeError, ValueError) as error:
            raise _failed_at_draws(error) from error
        return max((counts[1] - counts[0]) / 2, 1.0)

    def _draws(self, num_particles: int, seed: int) -> Tensor:
        """Fixed-seed guide draws of shape ``latent_shape(num_particles)``, for set-up checks."""
        with torch.no_grad():
            u = self.guide.latent_draws(num_particles, seed=seed)
        return u.reshape(self._replay.latent_shape(num_particles))

    def _guide_parameters(self) -> list[Tensor]:
        """The unconstrained leaves of every guide parameter, collected as ``SVI`` does;
        the one tensor Pyro sees for the flow (``guide.store.declare_flow``) stands for the
        flow's own, which this path trains: it runs the flow without the guide's call."""
        replay = self._replay
        with torch.no_grad(), poutine.block(), poutine.trace(param_only=True) as capture:
            self.guide(*replay.args, **replay.kwargs)
        leaves = (site["value"].unconstrained() for site in capture.trace.nodes.values())
        flow = self.guide.flow.parameters()
        return list({id(leaf): leaf for leaf in unpacked(leaves, flow)}.values())

    def parameters(self) -> list[Tensor]:
        """The tensors an optimizer should step (unconstrained guide parameters)."""
        return list(self._params)

    def sample_noise(self, generator: torch.Generator | None = None) -> Tensor:
        r"""Base noise :math:`\varepsilon`, shape ``(num_particles, latent_dim)``, from
        ``generator`` (``None``: torch's global one)."""
        loc = self.guide.loc
        shape = (self.num_particles, self.guide.latent_dim)
        return torch.randn(shape, generator=generator, device=loc.device, dtype=loc.dtype)

    def _densities(self, eps: Tensor, estimator: str | None = None) -> tuple[Tensor, Tensor]:
        """``(log q(u), log p(x, u))`` at the guide's draws ``u`` from noise ``eps``."""
        # The guide's own passes, without the flow's one-slot cache: an injected eps may
        # be the same tensor as last step's, whose cached y is stale.
        u, log_q = self.guide.draw(eps, estimator)
        return log_q, self._log_joint(u.reshape(self._replay.latent_shape(eps.shape[0])))

    def _negative_elbo_eager(self, eps: Tensor) -> Tensor:
        log_q, log_p = self._densities(eps)
        return particle_objective(log_q - log_p, self.beta)

    def loss(self, eps: Tensor | None = None) -> Tensor:
        r"""Differentiable :math:`-\mathrm{ELBO}` at noise ``eps`` (fresh if ``None``).

        No host synchronisation happens here: the result stays on the guide's device.
        """
        eps = self.sample_noise() if eps is None else eps
        if eps.shape != (self.num_particles, self.guide.latent_dim):
            raise ValueError(
                f"eps must have shape ({self.num_particles}, {self.guide.latent_dim}), "
                f"got {tuple(eps.shape)}"
            )
        step = self._negative_elbo or self._negative_elbo_eager
        # Validation reads tensor values (a host sync); set-up already checked the model.
        with pyro.validation_enabled(False):
            return step(eps)

    __call__ = loss

    @torch.no_grad()
    def log_weights(self, num_draws: int, generator: torch.Generator | None = None) -> Tensor:
        r""":math:`\log p(x, z) - \log q(z)` at ``num_draws`` fresh draws of the guide as it
        stands (rounded up to whole batches of ``num_particles``, the captured shape), the
        noise from ``generator`` (``None``: torch's global one)."""
        chunks = []
        with pyro.validation_enabled(False):
            for _ in range(-(-num_draws // self.num_particles)):
                log_q, log_p = self._densities(self.sample_noise(generator), "total")
                chunks.append(log_p - log_q)
        return torch.cat(chunks)

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        eps: Tensor | None = None,
        clip_norm: float = math.inf,
    ) -> float:
        """One optimizer step; a non-finite loss or gradient raises and updates nothing.

        The gradients' total norm is clipped at ``clip_norm`` after the check.
        The loss and the gradients' total norm are read in one host synchronisation.
        """
        return self._step(optimizer, eps, clip_norm, None)

    def _step(self, optimizer, eps, clip_norm: float, flat: FlatParameters | None) -> float:
        """:meth:`step`; with ``flat`` (bound, and what ``optimizer`` steps) its one
        gradient is zeroed in place and clipped, instead of each parameter's."""
        zero_grad = flat.zero_grad if flat else lambda: optimizer.zero_grad(set_to_none=True)
        zero_grad()
        loss = self.loss(eps)
        loss.backward()
        trained = [flat.flat] if flat else [p for p in self._params if p.grad is not None]
        norm = (
            get_total_norm([p.grad for p in trained]).to(loss.dtype)
            if trained
            else loss.new_zeros(())
        )
        value, grad_norm = torch.stack([loss.detach(), norm]).tolist()
        if not (math.isfinite(value) and math.isfinite(grad_norm)):
            zero_grad()
            what = "" if not math.isfinite(value) else " (the loss was finite, its gradients not)"
            raise NonFiniteLossError(f"fast ELBO loss is {value}{what}. No parameter was updated")
        clip_total_norm(trained, clip_norm, norm)
        optimizer.step()
        return value


class FastStep:
    """One :class:`FastELBO` step under a :class:`~pyro_realnvp.infer.loop.Schedule`.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_realnvp import AutoRealNVP
        >>> from pyro_realnvp.infer.loop import Schedule
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> schedule = Schedule(lr=0.01, lr_decay=0.1, clip_norm=10.0, num_steps=3)
        >>> step = FastStep.build(model, AutoRealNVP(model, num_layers=2), (), {}, 4, schedule)
        >>> isinstance(step(), float)
        True
    """

    name = "SVI (fast)"

    def __init__(
        self,
        elbo: FastELBO,
        schedule: Schedule,
        beta_changes: dict[int, float | None] | None = None,
    ) -> None:
        self.elbo, self.schedule = elbo, schedule
        # After so many updates the tail-adaptive exponent becomes the one given (None:
        # plain reverse KL; losses.tail_schedule): a host-side switch between steps,
        # nothing inside the captured loss.
        self.beta_changes, self.steps_taken = dict(beta_changes or {}), 0
        params = elbo.parameters()
        # One tensor for the optimizer where the parameters allow (one dtype and device)
        # and the loss is not compiled (its guards would see the parameters move).
        self.flat = None
        if elbo._negative_elbo is None and len({(p.dtype, p.device) for p in params}) == 1:
            self.flat = FlatParameters(params)
            params = [self.flat.flat]
        self.optimizer, self.decay = schedule.torch_optimizer(params)

    @classmethod
    def build(cls, model, guide, args, kwargs, num_particles, schedule, compile=False,
              beta=None, beta_changes=None):  # fmt: skip
        """Capture ``model`` for ``guide`` (raising :class:`FastPathError` if it cannot)."""
        elbo = FastELBO(model, guide, *args, num_particles=num_particles, beta=beta,
                        compile=compile, **kwargs)  # fmt: skip
        return cls(elbo, schedule, beta_changes)

    def __call__(self) -> float:
        if self.flat is not None:
            self.flat.bind()
        try:
            value = self.elbo._step(self.optimizer, None, self.schedule.clip_norm, self.flat)
        except NonFiniteLossError as error:
            self.clear_grads()
            raise self._explained(error) from error
        except BaseException:
            self.clear_grads()  # the parameters get their own storage back
            raise
        self.decay.step()
        self.steps_taken += 1
        if self.steps_taken in self.beta_changes:
            self.elbo.beta = self.beta_changes[self.steps_taken]
        return value

    def parameters(self) -> list[Tensor]:
        """The tensors this step trains."""
        return self.elbo.parameters()

    @property
    def num_particles(self) -> int:
        """Particles per step."""
        return self.elbo.num_particles

    def log_weights(self, num_draws: int, generator: torch.Generator | None = None) -> Tensor:
        """The guide's log importance weights at ``num_draws`` fresh draws
        (:meth:`FastELBO.log_weights`)."""
        return self.elbo.log_weights(num_draws, generator)

    def _explained(self, error: NonFiniteLossError) -> NonFiniteLossError:
        """``error`` with why the model's density is not finite, and what is left usable."""
        reason, replay = "", self.elbo._replay
        if "gradients not" not in str(error):
            reason = explain_non_finite(replay.model, self.elbo.guide, *replay.args,
                                        **replay.kwargs)  # fmt: skip
        said = f"; re-run through Pyro, {reason}" if reason else ""
        usable = usability(self.elbo.parameters(), reason, self.elbo.guide, replay.args,
                           replay.kwargs)  # fmt: skip
        return NonFiniteLossError(f"{error}{said}; {usable}")

    def clear_grads(self) -> None:
        """Drop the gradients; the parameters get their own storage back (the train loop
        calls this before its first step and after its last)."""
        if self.flat is not None:
            self.flat.release()
        self.optimizer.zero_grad(set_to_none=True)
