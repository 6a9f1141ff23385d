"""Training helpers: an ELBO that refuses to write NaN, and ``fit`` with a progress bar."""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Callable

import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.elbo import ELBO
from pyro.optim import ClippedAdam, PyroOptim
from tqdm.auto import tqdm

__all__ = ["FiniteELBO", "NonFiniteLossError", "explain_non_finite", "fit"]


class NonFiniteLossError(RuntimeError):
    """A training step produced a NaN or infinite loss or gradient; no parameter was updated.

    Example:
        >>> issubclass(NonFiniteLossError, RuntimeError)
        True
    """


def _sites_not_finite(trace: poutine.Trace) -> list[str]:
    """Names of sample sites whose value or log-density is NaN or infinite."""
    trace.compute_log_prob()
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not (
            bool(torch.isfinite(torch.as_tensor(site["value"])).all())
            and bool(torch.isfinite(site["log_prob_sum"]))
        )
    ]


@contextlib.contextmanager
def _rejected_draws_are_non_finite():
    """Turn draws the model cannot score into :class:`NonFiniteLossError`.

    A draw whose value under- or overflowed (a scale of exactly 0, say) fails the model's
    argument validation, and a draw far in the tails can make a matrix the model factors
    numerically singular (a GP kernel with a tiny length scale): both are as non-finite
    as an inf loss. Other ValueErrors (shapes, the user's own) pass through.
    """
    try:
        yield
    except torch.linalg.LinAlgError as error:
        raise NonFiniteLossError(
            f"the model's linear algebra failed at the guide's draw: "
            f"{str(error).splitlines()[0]} No parameter was updated; the guide is still usable."
        ) from error
    except ValueError as error:
        message = str(error)
        if not message.startswith(("Expected parameter", "Expected value")):
            raise
        raise NonFiniteLossError(
            f"the model rejected the guide's draw: {message.splitlines()[0]}. No parameter "
            "was updated; the guide is still usable."
        ) from error


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
            bad_guide = _sites_not_finite(guide_trace)
        except (ValueError, RuntimeError) as error:
            return f"the guide raised while re-running it: {error}"
        if bad_guide:
            return f"the guide's log-density is not finite at site(s) {bad_guide}"
        try:
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
            bad_model = _sites_not_finite(model_trace)
        except (ValueError, RuntimeError) as error:
            return f"the model raised at the guide's draw: {error}"
    if bad_model:
        return (
            f"the model's log-density is not finite at site(s) {bad_model} "
            "(the guide's draws and log-density were finite)"
        )
    return "a fresh draw gave a finite loss, so the failure depends on the random draw"


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
        with _rejected_draws_are_non_finite():
            loss = self.elbo.loss(model, guide, *args, **kwargs)
        if not math.isfinite(loss):
            self._raise(loss, "", model, guide, args, kwargs)
        return loss

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with poutine.trace(param_only=True) as capture, _rejected_draws_are_non_finite():
            loss = self.elbo.loss_and_grads(model, guide, *args, **kwargs)
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        grads = [p.grad for p in params if p.grad is not None]
        grads_finite = not grads or bool(
            torch.stack([torch.isfinite(g).all() for g in grads]).all()
        )
        if math.isfinite(loss) and grads_finite:
            return loss
        for param in params:
            param.grad = None
        what = "" if not math.isfinite(loss) else " (the loss was finite, its gradients not)"
        self._raise(loss, what, model, guide, args, kwargs)

    def _get_trace(self, model, guide, args, kwargs):
        return self.elbo._get_trace(model, guide, args, kwargs)

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        return self.elbo.differentiable_loss(model, guide, *args, **kwargs)

    @staticmethod
    def _raise(loss, what, model, guide, args, kwargs):
        reason = explain_non_finite(model, guide, *args, **kwargs)
        raise NonFiniteLossError(
            f"ELBO loss is {loss}{what}: {reason}. No parameter was updated; "
            "the guide is still usable."
        )


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_training_args(
    *, num_steps, lr, num_particles, lr_decay, clip_norm, max_redraws: int = 0
) -> None:
    """Refuse, before any step, a training argument outside its range, naming it.

    Example:
        >>> check_training_args(num_steps=10, lr=float("nan"), num_particles=1,
        ...                     lr_decay=0.1, clip_norm=10.0)
        Traceback (most recent call last):
        ...
        ValueError: lr must be a finite number > 0, got nan
    """
    checks = [
        ("num_steps", num_steps, _is_int(num_steps) and num_steps >= 1, "an integer >= 1"),
        ("lr", lr, _finite(lr) and lr > 0, "a finite number > 0"),
        ("num_particles", num_particles, _is_int(num_particles) and num_particles >= 1,
         "an integer >= 1"),
        ("lr_decay", lr_decay, _finite(lr_decay) and 0 < lr_decay <= 1,
         "a number in (0, 1] (the final lr is lr * lr_decay)"),
        ("clip_norm", clip_norm, _real(clip_norm) and clip_norm > 0,
         "a number > 0 (math.inf for no clipping)"),
        ("max_redraws", max_redraws, _is_int(max_redraws) and max_redraws >= 0,
         "an integer >= 0"),
    ]  # fmt: skip
    for name, value, ok, accepted in checks:
        if not ok:
            raise ValueError(f"{name} must be {accepted}, got {value!r}")


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value


def _finite(value) -> bool:
    return _real(value) and math.isfinite(value)


def fit(
    model: Callable,
    guide: Callable,
    *args,
    num_steps: int = 2000,
    lr: float = 1e-2,
    num_particles: int = 1,
    progress: bool = True,
    loss: ELBO | None = None,
    optim: PyroOptim | None = None,
    lr_decay: float = 0.1,
    clip_norm: float = 10.0,
    max_redraws: int = 3,
    **kwargs,
) -> list[float]:
    """Run SVI for ``num_steps`` and return the loss history (negative ELBO per step).

    The default optimizer is Pyro's ``ClippedAdam`` at ``lr``, decayed geometrically to
    ``lr * lr_decay`` by the last step, with gradient norms clipped at ``clip_norm``.
    Particles are vectorized. The loss is wrapped in :class:`FiniteELBO`, so a step with a
    non-finite loss or gradient updates nothing. A rare draw far in the guide's tails can
    overflow the model's density (Neal's funnel in float32 does); such a step is redrawn,
    up to ``max_redraws`` times in a row, and a warning at the end says how many were. A
    step that stays non-finite raises :class:`NonFiniteLossError` saying which side failed,
    leaving the guide at its last finite state. The progress bar shows the loss; it is off
    with ``progress=False`` and when standard error is not a terminal.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(3.0, 1.0))
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> losses = fit(model, guide, num_steps=300, lr=0.05, progress=False)
        >>> len(losses), round(guide.median()["x"].item())
        (300, 3)
    """
    check_training_args(
        num_steps=num_steps, lr=lr, num_particles=num_particles, lr_decay=lr_decay,
        clip_norm=clip_norm, max_redraws=max_redraws,
    )  # fmt: skip
    if loss is None:
        loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)
    if optim is None:
        optim = ClippedAdam({"lr": lr, "lrd": lr_decay ** (1 / num_steps), "clip_norm": clip_norm})
    svi = SVI(model, guide, optim, FiniteELBO(loss))
    losses: list[float] = []
    redraws = 0
    every = max(1, num_steps // 100)
    with tqdm(total=num_steps, disable=None if progress else True, desc="SVI") as bar:
        for step in range(num_steps):
            loss_value, attempts = _step_with_redraws(svi, max_redraws, args, kwargs)
            losses.append(loss_value)
            redraws += attempts
            if (step + 1) % every == 0 or step + 1 == num_steps:
                bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
                bar.update(step + 1 - bar.n)
    if redraws:
        warnings.warn(
            f"{redraws} of {num_steps} SVI steps were redrawn after a non-finite loss; "
            "they updated nothing. Many redraws mean the guide's tails reach where the "
            "model's density overflows: try a smaller lr or float64.",
            UserWarning,
            stacklevel=2,
        )
    return losses


def _step_with_redraws(svi: SVI, max_redraws: int, args, kwargs) -> tuple[float, int]:
    """One SVI step, redrawn after a non-finite loss; returns the loss and the redraws."""
    for attempt in range(max_redraws + 1):
        try:
            return svi.step(*args, **kwargs), attempt
        except NonFiniteLossError as error:
            if attempt == max_redraws:
                raise NonFiniteLossError(
                    f"{error} It stayed non-finite over {max_redraws + 1} fresh draws."
                ) from error
    raise AssertionError("unreachable")
