"""``fit``: SVI for any guide, on the captured fast path when the model allows it."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.elbo import ELBO
from pyro.optim import PyroOptim

from .averaging import AVERAGE, AveragedStep
from .fast import FastPathError, FastStep
from .finite import FiniteELBO, explain_non_finite
from .guide import AutoRealNVP
from .losses import TAIL_BETA, check_beta
from .train import History, NonFiniteLossError, Schedule, check_training_args, train

__all__ = ["FiniteELBO", "NonFiniteLossError", "SVIStep", "explain_non_finite", "fit", "fit_fast"]

logger = logging.getLogger(__name__)

#: ``fit``'s clip on the gradients' total norm where ``clip_norm=None``: 10 on Pyro's ELBO,
#: as Pyro's ``ClippedAdam``; 100 on the fast path, whose largest gradients come from the
#: rare particles far in p's tails, the only ones that teach q those tails (clipped at
#: 10, the funnel's PSIS k-hat read 0.59; at 100, 0.48). Unclipped, one early gradient
#: of norm 5200 swelled Adam's second moment and stalled a start far out (docs/tuning.md).
CLIP_NORMS = {"svi": 10.0, "fast": 100.0}


class SVIStep:
    """One ``SVI`` step with :class:`FiniteELBO`: Pyro's ELBO, any guide, any model.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro_realnvp.train import train
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> step = SVIStep(model, AutoNormal(model), Trace_ELBO(),
        ...                pyro.optim.Adam({"lr": 0.01}), (), {})
        >>> len(train(step, 3, progress=False))
        3
    """

    name = "SVI"

    def __init__(self, model, guide, loss: ELBO, optim: PyroOptim, args, kwargs) -> None:
        self.svi = SVI(model, guide, optim, FiniteELBO(loss))
        self.guide, self.args, self.kwargs = guide, args, kwargs
        self._trained: list[torch.Tensor] = []

    def __call__(self) -> float:
        if self._trained:
            return self.svi.step(*self.args, **self.kwargs)
        # Until a step succeeds: what SVI steps, the unconstrained values of the param sites
        # it meets, which a step that raised need not have met yet.
        with poutine.trace(param_only=True) as capture:
            loss = self.svi.step(*self.args, **self.kwargs)
        trained = (site["value"].unconstrained() for site in capture.trace.nodes.values())
        self._trained = list({id(p): p for p in trained}.values())
        return loss

    def parameters(self) -> list[torch.Tensor]:
        """The unconstrained tensors the first successful step trained (none before it)."""
        return list(self._trained)

    def clear_grads(self) -> None:
        # Pyro zeroes gradients only after its update; an interrupt before it leaves them.
        params = [p for _, p in pyro.get_param_store().named_parameters()]
        if isinstance(self.guide, torch.nn.Module):
            params += list(self.guide.parameters())
        for param in params + self._trained:
            param.grad = None


def fit(
    model: Callable,
    guide: Callable,
    *args,
    num_steps: int = 2000,
    lr: float = 1e-2,
    num_particles: int | None = None,
    progress: bool = True,
    loss: ELBO | None = None,
    optim: PyroOptim | None = None,
    lr_decay: float = 0.1,
    clip_norm: float | None = None,
    max_redraws: int = 3,
    fast: bool | None = None,
    compile: bool | str = False,
    tail_beta: float | None = TAIL_BETA,
    tail_fraction: float = 1.0,
    average: float | None = AVERAGE,
    **kwargs,
) -> History:
    """Run SVI for ``num_steps`` and return the loss history (negative ELBO per step).

    Adam at ``lr``, decayed geometrically to ``lr * lr_decay`` by the last step, the
    gradients' total norm clipped at ``clip_norm`` (:class:`~pyro_realnvp.train.Schedule`);
    ``None`` (the default) clips at 10 on Pyro's ELBO and at 100 on the fast path
    (``CLIP_NORMS``), where a rare particle far in p's tails makes the large gradient that
    teaches q those tails.
    Particles are vectorized. For an :class:`~pyro_realnvp.AutoRealNVP` with no ``loss``
    or ``optim`` given, each step is the captured :class:`~pyro_realnvp.FastELBO` step
    with up to 32 particles (``fast.MAX_PARTICLES``; fewer where the model's own arithmetic
    grows with them, see :func:`~pyro_realnvp.fast.particles_for`) unless told otherwise;
    where the model does not allow it (subsampling, ``pyro.param`` sites, discrete
    latents, data-dependent structure, arithmetic that mixes the particles) it falls back
    to Pyro's ``Trace_ELBO`` with 1 particle, and ``history.note`` and a log line on the
    ``pyro_realnvp.infer`` logger say why.
    ``fast=True`` requires the fast path, ``fast=False`` never takes it. ``compile``
    (implies ``fast=True``) compiles the fast step: see :class:`~pyro_realnvp.FastELBO`.
    On the fast path the particles' gradients carry tail-adaptive weights with exponent
    ``tail_beta`` (:func:`~pyro_realnvp.losses.particle_objective`), so q covers p's tails
    (PSIS k-hat below 0.5 where reverse KL left 0.6-0.9, docs/tuning.md); ``None``
    trains plain reverse KL, as Pyro's ``Trace_ELBO``. With ``tail_fraction`` below 1
    the weights apply to that first fraction of the steps only, plain reverse KL to the
    rest: 0.5 cut KL(q‖p) on the funnel and banana_d8 two- to fourfold, but k-hat rose
    where reverse KL thins q's tails (gp_pois_regr 0.68 to 0.73, docs/tuning.md), so the
    default stays 1. The loss reported is the negative ELBO either way.

    A whole run ends at an exponential moving average of the iterates, with a time
    constant of ``average * num_steps`` steps (:class:`~pyro_realnvp.averaging.AveragedStep`,
    Polyak averaging): the last iterate is a noisy point about the optimum, and its
    average cut the funnel's k-hat from 0.62 to 0.51 at the worst of five seeds. ``None``
    or 0 ends at the last iterate, as Pyro's ``SVI`` loop does, and so does a run stopped
    early (Ctrl-C, a step that stayed non-finite), whose average would lag behind it. The
    losses are those of the iterates either way.

    Every step either updates every parameter or none: a step with a non-finite loss or
    gradient is redrawn, up to ``max_redraws`` times in a row (a rare draw far in the
    guide's tails can overflow the model's density), and a warning at the end says how
    many were. A step that stays non-finite raises :class:`NonFiniteLossError` saying
    which side failed. Ctrl-C stops after the current step with
    :class:`~pyro_realnvp.train.TrainingInterrupted`; both errors carry ``.history``. The
    progress bar shows the loss; it is off with ``progress=False`` and when standard
    error is not a terminal.

    Returns:
        A :class:`~pyro_realnvp.train.History`: the losses, a ``list``, with ``.redraws``,
        ``.method`` (``"fast"`` or ``"svi"``) and ``.note``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(3.0, 1.0))
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> losses = fit(model, guide, num_steps=300, lr=0.05, progress=False)
        >>> len(losses), round(guide.median()["x"].item()), losses.method
        (300, 3, 'svi')
    """
    _check_callables(model, guide, loss, optim)
    schedules = _schedules(lr, lr_decay, clip_norm, num_steps)
    check_training_args(
        num_steps=num_steps, lr=lr, num_particles=1 if num_particles is None else num_particles,
        lr_decay=lr_decay, clip_norm=schedules["svi"].clip_norm, max_redraws=max_redraws,
        tail_fraction=tail_fraction, average=average,
    )  # fmt: skip
    fast = True if compile else fast
    tail = _tail(check_beta(tail_beta, "tail_beta"), tail_fraction, num_steps)
    step, note = _choose_step(model, guide, args, kwargs, loss, optim, num_particles, fast,
                              (schedules, compile, *tail))  # fmt: skip
    history = History(method="fast" if isinstance(step, FastStep) else "svi", note=note)
    step = _averaged(step, average, num_steps)
    history = train(step, num_steps, max_redraws=max_redraws, progress=progress, history=history)
    if isinstance(step, AveragedStep):  # only after a whole run: one stopped early is
        step.write()  # still on its way, and its average would lag behind it
    return history


def _averaged(
    step: SVIStep | FastStep, average: float | None, num_steps: int
) -> SVIStep | FastStep | AveragedStep:
    """``step`` as ``fit`` runs it: within an :class:`AveragedStep` whose time constant is
    ``average * num_steps`` steps, or as it is where that is one step or less."""
    if not average or average * num_steps <= 1:
        return step
    return AveragedStep(step, step.parameters, horizon=average * num_steps)


def _tail(beta: float | None, fraction: float, num_steps: int) -> tuple:
    """``(beta, steps)``: the tail-adaptive exponent and how many first steps it weighs
    (``None``: all), from ``fit``'s ``tail_beta`` and ``tail_fraction`` (checked by
    :func:`~pyro_realnvp.train.check_training_args`)."""
    steps = math.ceil(fraction * num_steps)
    if beta is None or steps == 0:
        return None, None
    return beta, None if steps >= num_steps else steps


def _schedules(
    lr: float, lr_decay: float, clip_norm: float | None, num_steps: int
) -> dict[str, Schedule]:
    """``fit``'s schedule on each path (``"svi"``, ``"fast"``): clipped at ``clip_norm``,
    or where it is ``None`` at the path's own (``CLIP_NORMS``)."""
    return {
        path: Schedule(lr=lr, lr_decay=lr_decay, num_steps=num_steps,
                       clip_norm=default if clip_norm is None else clip_norm)
        for path, default in CLIP_NORMS.items()
    }  # fmt: skip


def _choose_step(model, guide, args, kwargs, loss, optim, num_particles, fast, how):
    """The fast step where asked or possible, else Pyro's; and why not fast, if not.
    ``how`` is ``(schedules, compile, beta, tail_steps)``, ``schedules`` by path."""
    schedules, compile, beta, tail_steps = how
    if fast is not False and isinstance(guide, AutoRealNVP) and loss is None and optim is None:
        try:
            step = FastStep.build(model, guide, args, kwargs, num_particles, schedules["fast"],
                                  compile, beta, tail_steps)  # fmt: skip
            return step, ""
        except FastPathError as error:
            if fast:
                raise
            # Set up for tail-adaptive weights it will not get: from the start reverse KL
            # would have taken instead (pyro_realnvp.laplace.START_RULES).
            guide._restart_by_elbo()
            note = f"Pyro's Trace_ELBO, not the fast path: {error}"
            logger.info("fit: %s", note)
    elif fast:
        raise FastPathError(
            "fast=True (or compile) needs an AutoRealNVP guide and no loss or optim, got "
            f"a {type(guide).__name__}{' and a loss' if loss is not None else ''}"
            f"{' and an optim' if optim is not None else ''}"
        )
    else:
        note = ""
    step = _svi_step(model, guide, args, kwargs, loss, optim, num_particles, schedules["svi"])
    return step, note


def _check_callables(model, guide, loss, optim) -> None:
    """Refuse, naming it, a model or guide that cannot be called, or a loss or optim class."""
    for name, value in (("model", model), ("guide", guide)):
        if not callable(value):
            raise TypeError(f"{name} must be a callable Pyro {name}, got {value!r}")
    if loss is not None and not isinstance(loss, ELBO):
        raise TypeError(f"loss must be an ELBO instance such as Trace_ELBO(), got {loss!r}")
    if optim is not None and not isinstance(optim, PyroOptim):
        raise TypeError(f"optim must be a Pyro optimizer such as Adam({{...}}), got {optim!r}")


def _svi_step(model, guide, args, kwargs, loss, optim, num_particles, schedule) -> SVIStep:
    num_particles = 1 if num_particles is None else num_particles
    if loss is None:
        loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)
    if optim is None:
        optim = schedule.pyro_optim()
    return SVIStep(model, guide, loss, optim, args, kwargs)


def fit_fast(model: Callable, guide: AutoRealNVP, *args, **kwargs) -> History:
    """:func:`fit` on the captured fast path only: ``fit(..., fast=True)``.

    Set-up raises :class:`~pyro_realnvp.FastPathError` where the model does not allow
    it; ``compile=True`` compiles the step. The model's arguments are fixed for the run.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(3.0, 1.0))
        >>> guide = AutoRealNVP(model, num_layers=2)
        >>> losses = fit_fast(model, guide, num_steps=300, lr=0.05, progress=False)
        >>> len(losses), round(guide.median()["x"].item()), losses.method
        (300, 3, 'fast')
    """
    return fit(model, guide, *args, fast=True, **kwargs)
