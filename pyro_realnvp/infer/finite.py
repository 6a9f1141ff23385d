"""The non-finite policy for Pyro's ELBOs: a step whose loss or gradient is not finite
raises :class:`NonFiniteLossError` having updated nothing, saying which side failed."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.elbo import ELBO
from torch.distributions import biject_to
from torch.nn.utils import get_total_norm

from .._internal.compat import elbo_traces, unpack_latent
from .._internal.locate import first_line, model_raised, partial_trace, raised_at
from ..errors import NonFiniteLossError
from ..guide.initial import DefaultStartRejected
from ..guide.potential import sites_not_finite
from .flow_guide import FlowGuide

__all__ = ["FiniteELBO", "explain_non_finite", "rejected_draws_are_non_finite", "usability"]


_REJECTIONS = ("Expected parameter", "Expected value")
#: How a draw the model cannot score starts its message (see below).
REJECTED = "the model rejected the guide's draw"


@contextlib.contextmanager
def rejected_draws_are_non_finite() -> Iterator[None]:
    """Turn draws the model cannot score into :class:`~pyro_realnvp.NonFiniteLossError`.

    A draw whose value under- or overflowed (a scale of exactly 0, say) fails the model's
    argument validation, and a draw far in the tails can make a matrix the model factors
    numerically singular (a GP kernel with a tiny length scale): both are as non-finite
    as an inf loss. Other ValueErrors (shapes, the user's own) pass through.

    Example:
        >>> import pyro.distributions as dist
        >>> try:
        ...     with rejected_draws_are_non_finite():
        ...         dist.Normal(0.0, torch.tensor(0.0), validate_args=True)
        ... except NonFiniteLossError as error:
        ...     print(str(error)[:35])
        the model rejected the guide's draw
    """
    try:
        yield
    except torch.linalg.LinAlgError as error:
        raise NonFiniteLossError(
            f"the model's linear algebra failed at the guide's draw: {str(error).splitlines()[0]}"
        ) from error
    except ValueError as error:
        # Only a message that starts so: Pyro wraps a failing log_prob as "Error while
        # computing log_prob at site ...", which is the observed data's fault (a NaN in
        # the data, say), not the draw's, and redrawing cannot help.
        message = str(error)
        # A guide site's score (Pyro: "Error while computing score_parts at site ...")
        # fails when the guide's own draw overflowed: as non-finite as an inf loss.
        guide_side = message.startswith("Error while computing score_parts") and any(
            line.startswith(_REJECTIONS) for line in message.splitlines()
        )
        # The guide's set-up names the site and the values where the model rejected its
        # initial values, raising from the rejection: as rejected as a draw.
        named = any(isinstance(e, DefaultStartRejected) for e in (error, *_causes(error)))
        if not (message.startswith(_REJECTIONS) or guide_side or named):
            raise
        # The model's own statement, when it is the model that rejected the draw.
        where = "" if guide_side or named else raised_at(error)
        raise NonFiniteLossError(f"{REJECTED}{where}: {first_line(error)}") from error


def _causes(error: BaseException, depth: int = 3) -> list[BaseException]:
    """The exceptions ``error`` was raised from, nearest first (Pyro re-raises a model's
    error from itself with the trace's shapes appended)."""
    causes = []
    while error.__cause__ is not None and len(causes) < depth:
        error = error.__cause__
        causes.append(error)
    return causes


def explain_non_finite(model: Callable, guide: Callable, *args, **kwargs) -> str:
    """Re-run guide and model once and say which side's log-density is not finite.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     x = pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(x + float("inf"), 1.0), obs=torch.tensor(0.0))
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> explain_non_finite(model, guide).startswith("the model's log-density")
        True
    """
    with torch.no_grad(), poutine.block():
        try:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            bad_guide = sites_not_finite(guide_trace)
        except (ValueError, RuntimeError) as error:
            if isinstance(error, DefaultStartRejected):  # it says where, at which values
                return first_line(error)
            if getattr(guide, "prototype_trace", False) is None:  # an autoguide setting up
                init = getattr(guide, "init_loc_fn", None)  # the values it set up at
                started = model if init is None else InitMessenger(init)(model)
                partial = partial_trace(started, args, kwargs)
                return (
                    f"{model_raised(error, partial)}, while the guide set itself up on it: "
                    f"{first_line(error)}"
                )
            return f"the guide raised while re-running it: {first_line(error)}"
        if bad_guide:
            return f"the guide's log-density is not finite at site(s) {bad_guide}"
        tracer = poutine.trace(poutine.replay(model, trace=guide_trace))
        try:
            model_trace = tracer.get_trace(*args, **kwargs)
            bad_model = sites_not_finite(model_trace)
        except (ValueError, RuntimeError) as error:
            raised = model_raised(error, tracer.msngr.trace)
            return f"{raised}, at the guide's draw: {first_line(error)}"
    if bad_model:
        return (
            f"the model's log-density is not finite at site(s) {bad_model} "
            "(the guide's draws and log-density were finite)"
        )
    return "a fresh draw gave a finite loss, so the failure depends on the random draw"


def _guide_finite(guide: Callable | None, args: tuple = (), kwargs: dict | None = None) -> bool:
    """Whether an autoguide's median and draws are finite on every site: 4096 fixed-seed
    draws of an AutoRealNVP mapped to each support (``exp(u)`` overflows before ``u``
    does), 16 fresh draws of another autoguide. True for a guide without a median."""
    median, kwargs = getattr(guide, "median", None), kwargs or {}
    if median is None or getattr(guide, "prototype_trace", None) is None:
        return True
    try:
        with torch.no_grad(), poutine.block():
            values = list(median(*args, **kwargs).values())
            if isinstance(guide, FlowGuide):
                values += [
                    biject_to(site["fn"].support)(value)
                    for site, value in unpack_latent(guide, guide.latent_draws(4096, seed=0))
                ]
            else:
                values += [v for _ in range(16) for v in guide(*args, **kwargs).values()]
    except (ValueError, RuntimeError, TypeError, AttributeError):  # not an autoguide's shape
        return True
    return all(bool(torch.isfinite(torch.as_tensor(v)).all()) for v in values)


class FiniteELBO(ELBO):
    """Wrap an ELBO so a step whose loss or gradients are not finite raises, updating nothing.

    ``SVI.step`` applies the optimizer only after ``loss_and_grads`` returns, so raising
    here leaves every parameter (and the optimizer state) as it was; the gradients of
    the failed step are cleared so the next step does not inherit them. The check costs
    one host sync on the gradients, once per step.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer import SVI, Trace_ELBO
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), FiniteELBO(Trace_ELBO()))
        >>> isinstance(svi.step(), float)
        True
    """

    def __init__(self, elbo: ELBO | None = None) -> None:
        # Subclassing ELBO only makes SVI accept it; all the work is the wrapped ELBO's.
        self.elbo = Trace_ELBO() if elbo is None else elbo
        super().__init__(num_particles=self.elbo.num_particles)

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        try:
            with rejected_draws_are_non_finite():
                loss = self.elbo.loss(model, guide, *args, **kwargs)
        except NonFiniteLossError as error:
            self._raise(error, "", model, guide, args, kwargs)
        if not math.isfinite(loss):
            self._raise(loss, "", model, guide, args, kwargs)
        return loss

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        loss, params = self.loss_grads_and_params(model, guide, *args, **kwargs)
        _, grads_finite = gradient_norm(params)
        self.check(loss, grads_finite, params, model, guide, args, kwargs)
        return loss

    def loss_grads_and_params(
        self, model: Callable, guide: Callable, *args, **kwargs
    ) -> tuple[float, list[torch.Tensor]]:
        """The wrapped ELBO's ``loss_and_grads``, and the unconstrained parameters it met
        (in the order met); raises where the model rejected the draw, updating nothing."""
        capture = poutine.trace(param_only=True)
        try:
            with capture, rejected_draws_are_non_finite():
                loss = self.elbo.loss_and_grads(model, guide, *args, **kwargs)
        except NonFiniteLossError as error:
            params = params_met(capture.trace)
            _clear_grads(params, guide)
            self._raise(error, "", model, guide, args, kwargs, params)
        return loss, params_met(capture.trace)

    def check(self, loss: float, grads_finite: bool, params, model, guide, args, kwargs) -> None:
        """Raise, gradients cleared, where ``loss`` or the gradients are not finite."""
        if math.isfinite(loss) and grads_finite:
            return
        _clear_grads(params, guide)
        what = "" if not math.isfinite(loss) else " (the loss was finite, its gradients not)"
        self._raise(loss, what, model, guide, args, kwargs, params)

    def _get_trace(self, model, guide, args, kwargs):
        return elbo_traces(self.elbo, model, guide, args, kwargs)

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        return self.elbo.differentiable_loss(model, guide, *args, **kwargs)

    @staticmethod
    def _raise(loss, what, model, guide, args, kwargs, params=()):
        """``loss`` is the non-finite value, or the error of a draw the model rejected."""
        reason = explain_non_finite(model, guide, *args, **kwargs)
        head = f"ELBO loss is {loss}{what}"
        if isinstance(loss, NonFiniteLossError):
            cause = loss.__cause__
            # Where the re-run failed the same way its reason says all the rejection did,
            # and where (the site, the last site before it): say the error once.
            repeated = (
                str(loss).startswith(REJECTED)
                and cause is not None
                and reason.startswith("the model raised")
                # a rejected default start, re-run at other initial values: said once
                and (reason.endswith(first_line(cause)) or isinstance(cause, DefaultStartRejected))
            )
            head = REJECTED if repeated else str(loss)
            if reason.startswith("a fresh draw gave a finite loss"):
                reason += (
                    " (the model is undefined at some values its prior allows, such as a "
                    "square root or log of a latent that can be negative? then give that "
                    "latent a prior on the model's domain: HalfNormal, LogNormal, Beta)"
                )
        raise NonFiniteLossError(
            f"{head}: {reason}. No parameter was updated; "
            + usability(params, reason, guide, args, kwargs)
        )


def usability(
    params, reason: str = "", guide: Callable | None = None, args: tuple = (), kwargs=None
) -> str:
    """Say the guide is still usable only when it is: every parameter finite, and its
    own draws and log-density finite (``reason`` from :func:`explain_non_finite`).

    Example:
        >>> usability([torch.zeros(2)])
        'the guide is still usable.'
        >>> usability([torch.zeros(2)], "the guide's log-density is not finite at ['s']")[:30]
        'but the guide itself is not fi'
    """
    bad = sum(1 for p in params if not bool(torch.isfinite(p).all()))
    if bad:
        return (
            f"but {bad} parameter tensor(s) were already non-finite before this step, so the "
            "guide is not usable: start again with a smaller lr."
        )
    if reason.startswith("the guide") or not _guide_finite(guide, args, kwargs):
        return (
            "but the guide itself is not finite (its parameters are, its draws are not), so "
            "it is not usable: start again with a smaller lr."
        )
    if isinstance(guide, FlowGuide):
        return (
            "its parameters, median and 4096 fixed-seed draws are finite: the guide is still "
            "usable."
        )
    return "the guide is still usable."


def params_met(trace: poutine.Trace) -> list[torch.Tensor]:
    """The unconstrained tensors of a param-only trace's sites, each once, in order met."""
    met = (site["value"].unconstrained() for site in trace.nodes.values())
    return list({id(param): param for param in met}.values())


def gradient_norm(params) -> tuple[torch.Tensor | None, bool]:
    """The total norm of the gradients of ``params`` (``None`` where none has one) and
    whether every entry is finite: one pass, and one host sync; the entries are read
    only where the norm is not finite, which finite float32 gradients beyond about 1e19
    can make it."""
    grads = [param.grad for param in params if param.grad is not None]
    if not grads:
        return None, True
    norm = get_total_norm(grads)
    if math.isfinite(norm):
        return norm, True
    return norm, all(bool(torch.isfinite(grad).all()) for grad in grads)


def _clear_grads(params, guide: Callable) -> None:
    """Drop the gradients of ``params`` and of the guide's own parameters (a flow's,
    which Pyro sees as one flat tensor of which they are views)."""
    own = guide.parameters() if isinstance(guide, torch.nn.Module) else ()
    for param in {*params, *own}:
        param.grad = None
