"""``fit``: SVI for any guide, on the captured fast path when the model allows it.

``fit`` is :func:`fit_step`, which builds the step (Pyro's ``SVI`` with
:class:`~pyro_realnvp.FiniteELBO`, or the :class:`~pyro_realnvp.infer.fast.FastStep`),
then the one loop, :func:`~pyro_realnvp.infer.loop.train`.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
from collections.abc import Callable

import torch
from pyro.infer import Trace_ELBO
from pyro.infer.elbo import ELBO
from pyro.optim import PyroOptim

from ..errors import FastPathError
from ..guide.summaries import check_finite_params
from .averaging import AVERAGE, AveragedStep
from .fast import FastStep
from .flow_guide import FlowGuide
from .loop import History, Schedule, Step, check_training_args, train
from .losses import TAIL_BETA, check_beta, check_late_beta, tail_schedule
from .preflight import preflight
from .stopping import Converged, stop_rule
from .svi_step import ScheduledSVIStep, SVIStep

__all__ = ["CLIP_NORMS", "FLOW_LRS", "LR", "NUM_STEPS", "SVIStep", "fit", "fit_fast", "fit_step"]

logger = logging.getLogger(__package__)  # "pyro_realnvp.infer", the name users configure

#: ``fit``'s cap on its steps, what the published benchmarks run (docs/benchmarks.md), so
#: their tables are what ``fit()`` gives. With the stop rule it is a cap, not a cost: a
#: posterior a flow fits sooner stops sooner (corr_gauss_d20 at 500 steps); a curved one
#: gains from the whole schedule (banana_d8, seed 0: KL 1.85 at 2000 steps, 0.49 at 3000).
NUM_STEPS = 3000
#: ``fit``'s clip on the gradients' total norm where ``clip_norm=None``, per path: Pyro's
#: ``ClippedAdam``'s 10 on Pyro's ELBO; 100 on the fast path, whose largest gradients come
#: from the rare particles far in p's tails that teach q those tails (docs/tuning.md).
CLIP_NORMS = {"svi": 10.0, "fast": 100.0}
#: ``fit``'s ``lr`` where it is ``None``, per path, for an AutoRealNVP: on the fast path,
#: whose 32 particles' gradients are less noisy than one's, 0.02 reached further within
#: the steps on every exact target tried and on Pyro's eight schools (docs/tuning.md); on
#: Pyro's ELBO, one particle, the 0.01 of Pyro's examples, as for every other guide.
FLOW_LRS = {"svi": 1e-2, "fast": 2e-2}
#: ``fit``'s ``lr`` where it is ``None``, for any guide but an AutoRealNVP.
LR = 1e-2
#: ``fit``'s ``lr_decay`` where it is ``None``: AutoRealNVP, which starts at its Laplace
#: fit, ends on a tenfold decay (docs/tuning.md). Every other guide trains as in Pyro's own
#: loop (constant lr, unclipped, its last iterate), which ``fit`` must not make worse: a
#: decay or a clip at 10 left Gaussian guides short of it at 3000 steps (docs/tuning.md).
FLOW_LR_DECAY = 0.1
#: The modes of ``torch.compile`` that ``fit``'s ``compile`` may name.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def fit(
    model: Callable, guide: Callable, *args, num_steps: int = NUM_STEPS, lr: float | None = None,
    num_particles: int | None = None, progress: bool = True, loss: ELBO | None = None,
    optim: PyroOptim | None = None, lr_decay: float | None = None,
    clip_norm: float | None = None, max_redraws: int = 3, fast: bool | None = None,
    compile: bool | str = False, tail_beta: float | None = TAIL_BETA, tail_fraction: float = 1.0,
    late_tail_beta: float | str | None = "auto", average: float | str | None = "auto",
    stop: str | Converged | None = "auto", **kwargs,
) -> History:  # fmt: skip
    r"""Run SVI for up to ``num_steps`` and return the loss history (negative ELBO per step).

    Each step is :func:`fit_step`'s: Adam at ``lr`` decayed to ``lr * lr_decay`` by the
    last step, the gradients' total norm clipped
    (:class:`~pyro_realnvp.infer.loop.Schedule`; where ``None``, an AutoRealNVP's tuned
    decay and clip, another guide's Pyro's: constant, unclipped); for an
    :class:`~pyro_realnvp.AutoRealNVP` the captured fast path with tail-adaptive weights
    where the model allows, else Pyro's ``Trace_ELBO`` (``history.note`` says why). A
    run ends at the iterates' moving average (:class:`~pyro_realnvp.infer.averaging.AveragedStep`),
    ``stop`` once nothing is left to gain (:class:`~pyro_realnvp.infer.stopping.Converged`;
    ``"auto"``: for an AutoRealNVP; ``None``: every step; ``history.stopped``).

    Every step updates every parameter or none: a non-finite step is redrawn up to
    ``max_redraws`` times in a row (:class:`~pyro_realnvp.infer.loop.RedrawPolicy`), then
    raises :class:`~pyro_realnvp.NonFiniteLossError`. Ctrl-C stops after the current step
    with :class:`~pyro_realnvp.TrainingInterrupted`; both carry ``.history``.
    ``progress=False`` hides the bar.

    Args:
        model, guide: A Pyro model and guide; ``*args`` and ``**kwargs`` go to both.
        num_steps, progress, max_redraws, stop: The run, as above.
        lr, num_particles, loss, optim, lr_decay, clip_norm, fast, compile, tail_beta,
            tail_fraction, late_tail_beta, average: The step's options: see :func:`fit_step`.

    Returns:
        A :class:`~pyro_realnvp.History`: the losses, with ``.redraws``, ``.method``
        (``"fast"`` or ``"svi"``), ``.note`` and ``.stopped``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(3.0, 1.0))
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> losses = fit(model, guide, num_steps=300, lr=0.05, progress=False)
        >>> len(losses), round(guide.median()["x"].item()), losses.method
        (300, 3, 'svi')
    """
    _check(model, guide, loss, optim, num_steps=num_steps, lr=lr, num_particles=num_particles,
           lr_decay=lr_decay, clip_norm=clip_norm, max_redraws=max_redraws,
           tail_fraction=tail_fraction, average=average)  # fmt: skip
    rule = stop_rule(stop, isinstance(guide, FlowGuide))
    step, history = fit_step(
        model, guide, *args, num_steps=num_steps, lr=lr, num_particles=num_particles,
        loss=loss, optim=optim, lr_decay=lr_decay, clip_norm=clip_norm, fast=fast,
        compile=compile, tail_beta=tail_beta, tail_fraction=tail_fraction,
        late_tail_beta=late_tail_beta, average=average, **kwargs)  # fmt: skip
    history = train(step, num_steps, max_redraws=max_redraws, progress=progress,
                    history=history, stop=rule and rule.bind(step, num_steps))  # fmt: skip
    if isinstance(step, AveragedStep):  # not on interrupt: that run's average would lag
        step.write()
    return history


def fit_step(
    model: Callable, guide: Callable, *args, num_steps: int = NUM_STEPS, lr: float | None = None,
    num_particles: int | None = None, loss: ELBO | None = None, optim: PyroOptim | None = None,
    lr_decay: float | None = None, clip_norm: float | None = None, fast: bool | None = None,
    compile: bool | str = False, tail_beta: float | None = TAIL_BETA,
    tail_fraction: float = 1.0, late_tail_beta: float | str | None = "auto",
    average: float | str | None = "auto", **kwargs,
) -> tuple[Step, History]:  # fmt: skip
    """The step :func:`fit` runs for ``num_steps``, built but not yet run, and its history.

    ``lr=None``, ``lr_decay=None`` and ``clip_norm=None`` take the guide's defaults: for
    an AutoRealNVP the path's own lr (``FLOW_LRS``), ``FLOW_LR_DECAY`` and the path's own
    clip (``CLIP_NORMS``), for any other guide a constant ``LR``, unclipped, as in Pyro's
    own loop. The fast path
    (:class:`~pyro_realnvp.FastELBO`) is taken for an :class:`~pyro_realnvp.AutoRealNVP`
    with no ``loss`` or ``optim`` unless ``fast=False`` (``fast=True`` or ``compile``
    requires it); ``num_particles=None`` lets it choose (up to 32), 1 on Pyro's ELBO.
    There the particles' gradients carry tail-adaptive weights of exponent ``tail_beta``
    (:func:`~pyro_realnvp.particle_objective`; ``None``: reverse KL) for the first
    ``tail_fraction`` of the steps, and ``late_tail_beta`` over the last third of the run
    (``"auto"``: ``LATE_TAIL_GAIN * tail_beta``; ``None``: ``tail_beta`` throughout;
    :func:`~pyro_realnvp.infer.losses.tail_schedule`). ``average`` is the iterate
    average's time constant (``"auto"``: ``AVERAGE`` for an AutoRealNVP, none for another
    guide), a fraction of ``num_steps`` (``None`` or 0: the last iterate). docs/tuning.md
    says how each default was chosen.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_realnvp import AutoRealNVP
        >>> def model():
        ...     pyro.sample("x", dist.Normal(3.0, 1.0))
        >>> step, history = fit_step(model, AutoRealNVP(model, num_layers=2), num_steps=10)
        >>> history.method, len(train(step, 10, progress=False))
        ('fast', 10)
    """
    _check(model, guide, loss, optim, num_steps=num_steps, lr=lr, num_particles=num_particles,
           lr_decay=lr_decay, clip_norm=clip_norm, tail_fraction=tail_fraction,
           average=average)  # fmt: skip
    _check_switches(fast, compile)
    _check_spelling(model, kwargs)
    if isinstance(guide, torch.nn.Module) and getattr(guide, "prototype_trace", 1) is not None:
        check_finite_params(dict(guide.named_parameters()), "no step can train it")
    preflight(model, guide, args, kwargs, loss)
    lrs, lr_decay, clip_norms, average = _guide_defaults(guide, lr, lr_decay, clip_norm, average)
    schedules = _schedules(lrs, lr_decay, clip_norms, num_steps)
    fast = True if compile else fast
    betas = tail_schedule(check_beta(tail_beta, "tail_beta"), num_steps, fraction=tail_fraction,
                          late_beta=check_late_beta(late_tail_beta))  # fmt: skip
    step, note = _choose_step(model, guide, args, kwargs, loss, optim, num_particles, fast,
                              (schedules, compile, betas.pop(0), betas))  # fmt: skip
    fast = isinstance(step, FastStep)
    if fast:
        particles = step.elbo.num_particles
    else:
        particles = getattr(loss, "num_particles", 0) if loss is not None else num_particles or 1
    history = History(method="fast" if fast else "svi", note=note, num_particles=particles)
    return _averaged(step, average, num_steps), history


def _averaged(step: SVIStep | FastStep, average: float | None, num_steps: int) -> Step:
    """``step`` within an :class:`AveragedStep` whose time constant is ``average *
    num_steps`` steps, or as it is where that is one step or less."""
    if not average or average * num_steps <= 1:
        return step
    return AveragedStep(step, step.parameters, horizon=average * num_steps)


def _guide_defaults(guide, lr: float | None, lr_decay: float | None, clip_norm: float | None,
                    average: float | str | None) -> tuple:  # fmt: skip
    """``(lr by path, lr_decay, clip norms by path, average)``: the user's, else the guide's
    defaults (an AutoRealNVP's ``FLOW_LRS``, ``FLOW_LR_DECAY``, ``CLIP_NORMS`` and
    ``AVERAGE``; another guide's: Pyro's loop's, ``LR`` constant, unclipped, its last
    iterate)."""
    flow = isinstance(guide, FlowGuide)
    lrs = {path: (default if flow else LR) if lr is None else lr
           for path, default in FLOW_LRS.items()}  # fmt: skip
    if lr_decay is None:
        lr_decay = FLOW_LR_DECAY if flow else 1.0
    defaults = CLIP_NORMS if flow else dict.fromkeys(CLIP_NORMS, math.inf)
    norms = {path: default if clip_norm is None else clip_norm
             for path, default in defaults.items()}  # fmt: skip
    if isinstance(average, str) and average == "auto":
        average = AVERAGE if flow else None
    return lrs, lr_decay, norms, average


def _schedules(lrs: dict, lr_decay: float, clip_norms: dict, num_steps: int) -> dict:
    """``fit``'s schedule on each path (``"svi"``, ``"fast"``), at its lr, clipped at its norm."""
    return {
        path: Schedule(lr=lrs[path], lr_decay=lr_decay, num_steps=num_steps, clip_norm=norm)
        for path, norm in clip_norms.items()
    }


def _choose_step(model, guide, args, kwargs, loss, optim, num_particles, fast, how):
    """The fast step where asked or possible, else Pyro's; and why not fast, if not.
    ``how`` is ``(schedules, compile, beta, beta_changes)``, ``schedules`` by path."""
    schedules, compile, beta, beta_changes = how
    if fast is not False and isinstance(guide, FlowGuide) and loss is None and optim is None:
        try:
            step = FastStep.build(model, guide, args, kwargs, num_particles, schedules["fast"],
                                  compile, beta, beta_changes)  # fmt: skip
            return step, ""
        except FastPathError as error:
            if fast:
                raise
            # Set up for tail-adaptive weights it will not get: from the start reverse KL
            # would have taken instead (pyro_realnvp.guide.laplace.START_RULES).
            guide.restart_by_elbo()
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


def _check(model, guide, loss, optim, *, num_particles, clip_norm, **numbers) -> None:
    """Refuse, before any set-up and in one order, an argument of ``fit`` that is wrong."""
    _check_callables(model, guide, loss, optim)
    if numbers.get("lr_decay", 0.0) is None:
        numbers["lr_decay"] = FLOW_LR_DECAY
    if numbers.get("lr", 0.0) is None:
        numbers["lr"] = LR
    if isinstance(numbers.get("average"), str) and numbers["average"] == "auto":
        numbers["average"] = AVERAGE
    check_training_args(
        num_particles=1 if num_particles is None else num_particles,
        clip_norm=CLIP_NORMS["svi"] if clip_norm is None else clip_norm,
        **numbers,
    )


def _check_switches(fast, compile) -> None:
    """Refuse a ``fast`` that is not a bool (``"no"`` would read as true) or a ``compile``
    that names no mode of ``torch.compile``."""
    if fast is not None and not isinstance(fast, bool):
        raise TypeError(f"fast must be None (choose), True or False, got {fast!r}")
    if not isinstance(compile, bool) and compile not in COMPILE_MODES:
        raise ValueError(
            f"compile must be True, False or a torch.compile mode, one of {COMPILE_MODES}, "
            f"got {compile!r}"
        )


def _check_spelling(model: Callable, kwargs: dict) -> None:
    """Refuse a keyword close to one of ``fit``'s own options that the model does not
    take: ``fit`` passes every other keyword to the model, which would fail on it."""
    options = [name for name, parameter in inspect.signature(fit).parameters.items()
               if parameter.kind is parameter.KEYWORD_ONLY]  # fmt: skip
    for key in kwargs:
        close = difflib.get_close_matches(key, options, n=1, cutoff=0.8)
        if close and not _takes_keyword(model, key):
            raise TypeError(
                f"fit got {key}=, which is not one of its options and which the model does "
                f"not take: did you mean {close[0]}=? (fit passes keywords other than its "
                "own to the model and the guide)"
            )


def _takes_keyword(model: Callable, key: str) -> bool:
    """Whether ``model`` accepts the keyword ``key`` (``True`` where that cannot be told)."""
    try:
        parameters = inspect.signature(model).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == key or p.kind is p.VAR_KEYWORD for p in parameters)


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
    """The step on Pyro's ELBO: with the user's ``optim``, Pyro's ``SVI``; else ``fit``'s
    schedule in one fused Adam (:class:`~pyro_realnvp.infer.svi_step.ScheduledSVIStep`)."""
    num_particles = 1 if num_particles is None else num_particles
    if loss is None:
        loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)
    if optim is None:
        return ScheduledSVIStep(model, guide, loss, schedule, args, kwargs)
    return SVIStep(model, guide, loss, optim, args, kwargs)


def fit_fast(model: Callable, guide: Callable, *args, **kwargs) -> History:
    """:func:`fit` on the captured fast path only: ``fit(..., fast=True)``.

    Set-up raises :class:`~pyro_realnvp.FastPathError` where the model does not allow
    it; ``compile=True`` compiles the step. The model's arguments are fixed for the run.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_realnvp import AutoRealNVP
        >>> def model():
        ...     pyro.sample("x", dist.Normal(3.0, 1.0))
        >>> guide = AutoRealNVP(model, num_layers=2)
        >>> losses = fit_fast(model, guide, num_steps=300, lr=0.05, progress=False)
        >>> round(guide.median()["x"].item()), losses.method, len(losses) < 300
        (3, 'fast', True)
    """
    return fit(model, guide, *args, fast=True, **kwargs)
