"""The one training loop: progress, redraws, interrupts and argument checks, for every fit.

A *step* is any object with ``__call__() -> float`` (one optimizer step; it raises
:class:`NonFiniteLossError` having updated nothing when its loss or gradients are not
finite), ``clear_grads()`` and a ``name`` for the progress bar. ``fit`` (Pyro's SVI or
the captured fast path), ``fit_fast``, ``fit_density`` and ``fit_distributed`` each
build one and hand it to :func:`train`, so what a step may do and what a run promises is
written once, here.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import pyro
import torch
from pyro.optim import PyroOptim
from pyro.optim.clipped_adam import ClippedAdam as _TorchClippedAdam
from torch import Tensor
from torch.nn.utils import clip_grads_with_norm_, get_total_norm
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ExponentialLR
from tqdm.auto import tqdm

from ._checks import is_int

__all__ = [
    "History",
    "NonFiniteLossError",
    "NormClippedAdam",
    "Schedule",
    "Step",
    "TrainingInterrupted",
    "check_training_args",
    "clip_total_norm",
    "train",
]


class NonFiniteLossError(RuntimeError):
    """A training step produced a NaN or infinite loss or gradient; no parameter was updated.

    When raised by a fit, ``history`` holds the losses of the steps that did run.

    Example:
        >>> issubclass(NonFiniteLossError, RuntimeError)
        True
    """

    history: History | None = None


class History(list):
    """The loss of every step (a ``list`` of floats), and what the run did besides.

    Attributes:
        redraws: Steps redrawn after a non-finite loss (they updated nothing).
        method: What computed each step (``"fast"``, ``"svi"``, ...).
        note: Why that method, when it is not the first choice (empty otherwise).

    Example:
        >>> history = History([3.0, 2.0], method="svi")
        >>> history[-1], history.redraws, history.method
        (2.0, 0, 'svi')
    """

    def __init__(self, losses=(), *, redraws: int = 0, method: str = "", note: str = ""):
        super().__init__(losses)
        self.redraws, self.method, self.note = redraws, method, note


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a fit between steps; ``history`` holds the losses so far.

    Every parameter is as the last completed step left it and no gradient is pending, so
    training can resume with another fit.

    Example:
        >>> error = TrainingInterrupted(History([1.0]), num_steps=10)
        >>> isinstance(error, KeyboardInterrupt), len(error.history)
        (True, 1)
    """

    def __init__(self, history: History, num_steps: int) -> None:
        super().__init__(f"training interrupted after {len(history)} of {num_steps} steps")
        self.history = history


@dataclass(frozen=True)
class Schedule:
    """Every fit's optimizer: Adam at ``lr`` decayed geometrically to ``lr * lr_decay`` by
    step ``num_steps``, the gradients' total norm clipped at ``clip_norm`` first.

    One rule for every loop (``fit``, its fast path, ``fit_density``, Lightning): the
    total norm keeps each step's direction and only shortens a rare huge one. Clipping
    each entry instead, as Pyro's ``ClippedAdam`` does, bends the direction: density
    estimation lost to a 10-component GMM on two moons that way (docs/tuning.md). By
    default ``fit`` clips its fast path at 100, not 10 (``pyro_realnvp.infer.CLIP_NORMS``).

    Example:
        >>> Schedule(lr=0.01, lr_decay=0.1, clip_norm=10.0, num_steps=2).gamma
        0.31622776601683794
    """

    lr: float
    lr_decay: float
    clip_norm: float
    num_steps: int

    @property
    def gamma(self) -> float:
        """The per-step factor of the learning rate."""
        return self.lr_decay ** (1 / self.num_steps)

    def pyro_optim(self) -> NormClippedAdam:
        """The schedule as a Pyro optimizer, for ``SVI``."""
        return NormClippedAdam(self.lr, self.gamma, self.clip_norm)

    def torch_optimizer(
        self, params: list[Tensor], weight_decay: float = 0.0
    ) -> tuple[Optimizer, ExponentialLR]:
        """torch's ``Adam`` and its decay; call :meth:`clip` before ``optimizer.step()``."""
        # One fused kernel for all parameters: on the CPU too it was 4-5x faster than the
        # default loop (48 tensors of 40x40: 0.23 against 1.18 ms, one thread).
        optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=weight_decay, fused=True)
        return optimizer, ExponentialLR(optimizer, gamma=self.gamma)

    def clip(self, params: list[Tensor]) -> None:
        """Scale the gradients so that their total norm is at most ``clip_norm``."""
        clip_total_norm(params, self.clip_norm)


def clip_total_norm(params, clip_norm: float, total_norm: Tensor | None = None) -> None:
    """Scale the gradients of ``params`` so that their total norm is at most ``clip_norm``.

    Example:
        >>> p = torch.zeros(2, requires_grad=True)
        >>> p.grad = torch.tensor([3.0, 4.0])
        >>> clip_total_norm([p], 1.0)
        >>> p.grad
        tensor([0.6000, 0.8000])
    """
    params = [p for p in params if p.grad is not None]
    if not params or not math.isfinite(clip_norm):
        return
    total_norm = get_total_norm([p.grad for p in params]) if total_norm is None else total_norm
    clip_grads_with_norm_(params, clip_norm, total_norm)


class NormClippedAdam(PyroOptim):
    """Pyro's ``ClippedAdam`` with its learning-rate decay ``lrd``, the gradients' total
    norm clipped at ``clip_norm`` over all parameters of the step first (not each entry).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer import SVI, Trace_ELBO
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> svi = SVI(model, AutoNormal(model), NormClippedAdam(0.01, 1.0, 10.0), Trace_ELBO())
        >>> isinstance(svi.step(), float)
        True
    """

    def __init__(self, lr: float, lrd: float, clip_norm: float) -> None:
        super().__init__(_TorchClippedAdam, {"lr": lr, "lrd": lrd, "clip_norm": math.inf})
        self.clip_norm = clip_norm

    def __call__(self, params, *args, **kwargs) -> None:
        # SVI passes a set: summed in the store's name order, the norm is the same on
        # every rank of a data-parallel run, to the last bit.
        store = pyro.get_param_store()
        params = sorted(params, key=lambda p: store.param_name(p) or "")
        clip_total_norm(params, self.clip_norm)
        super().__call__(params, *args, **kwargs)


class Step(Protocol):
    """One optimizer step that either updates every parameter or none.

    ``__call__`` returns the loss, or raises :class:`NonFiniteLossError` having updated
    nothing; ``clear_grads`` drops gradients an interrupted step may have left.

    Example:
        >>> from pyro_realnvp.infer import SVIStep
        >>> isinstance(SVIStep, type) and all(hasattr(SVIStep, a) for a in ("name", "clear_grads"))
        True
    """

    name: str

    def __call__(self) -> float: ...

    def clear_grads(self) -> None: ...


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value


def _finite(value) -> bool:
    return _real(value) and math.isfinite(value)


def check_training_args(
    *, num_steps=1, lr=1e-2, num_particles=1, lr_decay=0.1, clip_norm=10.0, max_redraws=0,
    tail_fraction=1.0, average=None,
) -> None:  # fmt: skip
    """Refuse, before any step, a training argument outside its range, naming it.

    Example:
        >>> check_training_args(num_steps=10, lr=float("nan"))  # the others default as valid
        Traceback (most recent call last):
        ...
        ValueError: lr must be a finite number > 0, got nan
    """
    checks = [
        ("num_steps", num_steps, is_int(num_steps) and num_steps >= 1, "an integer >= 1"),
        ("lr", lr, _finite(lr) and lr > 0, "a finite number > 0"),
        ("num_particles", num_particles, is_int(num_particles) and num_particles >= 1,
         "an integer >= 1"),
        ("lr_decay", lr_decay, _finite(lr_decay) and 0 < lr_decay <= 1,
         "a number in (0, 1] (the final lr is lr * lr_decay)"),
        ("clip_norm", clip_norm, _real(clip_norm) and clip_norm > 0,
         "a number > 0 (math.inf for no clipping)"),
        ("max_redraws", max_redraws, is_int(max_redraws) and max_redraws >= 0,
         "an integer >= 0"),
        ("tail_fraction", tail_fraction, _finite(tail_fraction) and 0 <= tail_fraction <= 1,
         "a number in [0, 1] (the fraction of steps with tail-adaptive weights)"),
        ("average", average, average is None or (_finite(average) and 0 <= average <= 1),
         "None or a number in [0, 1] (the average's time constant, a fraction of num_steps)"),
    ]  # fmt: skip
    for name, value, ok, accepted in checks:
        if not ok:
            raise ValueError(f"{name} must be {accepted}, got {value!r}")


@contextlib.contextmanager
def _interrupt_between_steps() -> Iterator[Callable[[], bool]]:
    """Yield "was Ctrl-C pressed?": the first press waits for the step to end.

    An interrupt inside a step could land between the backward pass and the optimizer's
    update, or halfway through the update. So the first SIGINT is only recorded and the
    loop stops after the step; a second one raises at once, for a step that hangs.
    Signal handlers can only be set from the main thread; elsewhere Ctrl-C is immediate.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    pressed: list[bool] = []

    def record(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(True)

    previous = signal.signal(signal.SIGINT, record)
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)


def _step_with_redraws(step: Step, max_redraws: int) -> tuple[float, int]:
    """One step, redrawn after a non-finite loss; returns the loss and the redraws."""
    for attempt in range(max_redraws):
        try:
            return step(), attempt
        except NonFiniteLossError:
            continue
    try:
        return step(), max_redraws
    except NonFiniteLossError as error:
        if max_redraws:
            error.args = (f"{error} It stayed non-finite over {max_redraws + 1} fresh draws.",)
        raise


def train(
    step: Step,
    num_steps: int,
    *,
    max_redraws: int = 3,
    progress: bool = True,
    monitor: Callable[[int, float], dict] | None = None,
    history: History | None = None,
) -> History:
    """Run ``step`` ``num_steps`` times and return the :class:`History` of its losses.

    A non-finite step is redrawn up to ``max_redraws`` times in a row, and a warning at the
    end says how many were; one that stays non-finite raises :class:`NonFiniteLossError`
    (with ``.history``). Ctrl-C stops after the current step with
    :class:`TrainingInterrupted` (with ``.history``), gradients cleared. ``monitor(i,
    loss)`` runs after step ``i`` and returns extra fields for the progress bar.

    Example:
        >>> class Halve:
        ...     name, value = "halve", 8.0
        ...     def __call__(self):
        ...         self.value /= 2
        ...         return self.value
        ...     def clear_grads(self):
        ...         pass
        >>> train(Halve(), 3, progress=False)
        [4.0, 2.0, 1.0]
    """
    history = History() if history is None else history
    every, extra = max(1, num_steps // 100), {}
    bar = tqdm(total=num_steps, disable=None if progress else True, desc=step.name)
    step.clear_grads()  # gradients left by an earlier loop must not enter the first step
    with bar, _interrupt_between_steps() as interrupted:
        try:
            for index in range(num_steps):
                loss, redraws = _step_with_redraws(step, max_redraws)
                history.append(loss)
                history.redraws += redraws
                if monitor is not None:
                    extra = monitor(index, loss) or extra
                if (index + 1) % every == 0 or index + 1 == num_steps:
                    bar.set_postfix(loss=f"{loss:.4g}", **extra, refresh=False)
                    bar.update(index + 1 - bar.n)
                if interrupted():  # pressed during this step: it finished, now stop
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            step.clear_grads()
            raise TrainingInterrupted(history, num_steps) from None
        except NonFiniteLossError as error:
            error.history = history
            raise
    step.clear_grads()  # nor the last step's gradients a later loop's first step
    _warn_redraws(history, num_steps)
    return history


def _warn_redraws(history: History, num_steps: int) -> None:
    if history.redraws:
        warnings.warn(
            f"{history.redraws} of {num_steps} SVI steps were redrawn after a non-finite "
            "loss; they updated nothing. Many redraws mean the guide's tails reach where the "
            "model's density overflows: try a smaller lr or float64.",
            UserWarning,
            stacklevel=4,
        )
