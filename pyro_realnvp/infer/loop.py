"""The one training loop: progress, schedule, redraws, interrupts and argument checks.

A *step* is any object with ``__call__() -> float`` (one optimizer step; it raises
:class:`~pyro_realnvp.NonFiniteLossError` having updated nothing when its loss or
gradients are not finite), ``clear_grads()`` and a ``name`` for the progress bar.
``fit`` (Pyro's SVI or the captured fast path), ``fit_density`` and ``fit_distributed``
each build one and hand it to :func:`train`. A trainer that owns its own loop
(Lightning's ``SVIModule``) takes the same :class:`Schedule` and :class:`RedrawPolicy`,
so what a step may do and what a run promises is written once, here.
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

from .._internal.checks import is_int
from ..errors import NonFiniteLossError, TrainingInterrupted

__all__ = [
    "History",
    "NormClippedAdam",
    "RedrawPolicy",
    "Schedule",
    "Step",
    "check_training_args",
    "clip_total_norm",
    "train",
]


#: What a step says where the guide has nothing it can train.
NOTHING_TO_FIT = (
    "the guide has no trainable parameters (every parameter has requires_grad=False, e.g. "
    "frozen by requires_grad_(False)): nothing to fit; unfreeze it with requires_grad_()"
)


class History(list):
    """The loss of every step (a ``list`` of floats), and what the run did besides.

    Attributes:
        redraws: Steps redrawn after a non-finite loss (they updated nothing).
        method: What computed each step (``"fast"``, ``"svi"``, ...).
        note: Why that method, when it is not the first choice (empty otherwise).
        num_particles: Draws per step (0 where not known).
        stopped: Why the run ended before its step budget (empty where it took every step).

    Example:
        >>> history = History([3.0, 2.0], method="svi", num_particles=1)
        >>> history[-1], history.redraws, history.method, history.num_particles
        (2.0, 0, 'svi', 1)
    """

    def __init__(self, losses=(), *, redraws: int = 0, method: str = "", note: str = "",
                 num_particles: int = 0, stopped: str = ""):  # fmt: skip
        super().__init__(losses)
        self.redraws, self.method, self.note = redraws, method, note
        self.num_particles, self.stopped = num_particles, stopped


@dataclass(frozen=True)
class Schedule:
    """Every trainer's optimizer: Adam at ``lr`` decayed geometrically to ``lr * lr_decay``
    by step ``num_steps``, the gradients' total norm clipped at ``clip_norm`` first.

    One rule for every trainer (``fit``, its fast path, ``fit_density``, Lightning's
    ``SVIModule``): the total norm keeps each step's direction and only shortens a rare
    huge one, where clipping each entry (Pyro's ``ClippedAdam``) bends it (docs/tuning.md).

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

    def clipped_adam(self, params: list[Tensor]) -> _TorchClippedAdam:
        """Pyro's ``ClippedAdam`` over ``params`` with this decay, its entries unclipped:
        what :meth:`pyro_optim` steps, for a trainer that owns its optimizer (clip the
        total norm at ``clip_norm`` before its ``step()``)."""
        return _TorchClippedAdam(params, **_adam_options(self.lr, self.gamma))

    def torch_optimizer(
        self, params: list[Tensor], weight_decay: float = 0.0
    ) -> tuple[Optimizer, ExponentialLR]:
        """torch's ``Adam`` and its decay; call :meth:`clip` before ``optimizer.step()``."""
        # One fused kernel for all parameters: faster on the CPU too (docs/tuning.md).
        optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=weight_decay, fused=True)
        return optimizer, ExponentialLR(optimizer, gamma=self.gamma)

    def clip(self, params: list[Tensor]) -> None:
        """Scale the gradients so that their total norm is at most ``clip_norm``."""
        clip_total_norm(params, self.clip_norm)


def _adam_options(lr: float, lrd: float) -> dict:
    """``ClippedAdam``'s options: its entries unclipped, as every trainer clips the total norm."""
    return {"lr": lr, "lrd": lrd, "clip_norm": math.inf}


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
        super().__init__(_TorchClippedAdam, _adam_options(lr, lrd))
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
        >>> from pyro_realnvp.infer.svi import SVIStep
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
        ("num_steps", num_steps, is_int, is_int(num_steps) and num_steps >= 1,
         "an integer >= 1"),
        ("lr", lr, _number, _finite(lr) and lr > 0, "a finite number > 0"),
        ("num_particles", num_particles, is_int,
         is_int(num_particles) and num_particles >= 1, "an integer >= 1"),
        ("lr_decay", lr_decay, _number, _finite(lr_decay) and 0 < lr_decay <= 1,
         "a number in (0, 1] (the final lr is lr * lr_decay)"),
        ("clip_norm", clip_norm, _number, _real(clip_norm) and clip_norm > 0,
         "a number > 0 (math.inf for no clipping)"),
        ("max_redraws", max_redraws, is_int, is_int(max_redraws) and max_redraws >= 0,
         "an integer >= 0"),
        ("tail_fraction", tail_fraction, _number,
         _finite(tail_fraction) and 0 <= tail_fraction <= 1,
         "a number in [0, 1] (the fraction of steps with tail-adaptive weights)"),
        ("average", average, lambda v: v is None or _number(v),
         average is None or (_finite(average) and 0 <= average <= 1),
         "None or a number in [0, 1] (the average's time constant, a fraction of num_steps)"),
    ]  # fmt: skip
    for name, value, of_type, ok, accepted in checks:
        if not of_type(value):  # the wrong kind of thing: a TypeError, as Python's own
            raise TypeError(f"{name} must be {accepted}, got {value!r}")
        if not ok:
            raise ValueError(f"{name} must be {accepted}, got {value!r}")


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


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


class RedrawPolicy:
    """What a run does after a non-finite step: redraw it, up to ``max_redraws`` times in a
    row, then raise; and warn at the end of the run about the redraws it took.

    A step that raised :class:`~pyro_realnvp.NonFiniteLossError` updated nothing, so a
    redraw (the next step, on fresh noise or the next batch) loses nothing but time. A
    rare draw far in the guide's tails can overflow the model's density; many in a row
    mean the method is wrong, and the error says so.

    Example:
        >>> policy = RedrawPolicy(max_redraws=1)
        >>> policy.failed(NonFiniteLossError("loss is nan"))  # redrawn
        >>> try:
        ...     policy.failed(NonFiniteLossError("loss is nan"))
        ... except NonFiniteLossError as error:
        ...     print(error)
        loss is nan It stayed non-finite over 2 fresh draws.
    """

    def __init__(self, max_redraws: int) -> None:
        self.max_redraws = max_redraws
        self.in_a_row = 0
        self.total = 0

    def failed(self, error: NonFiniteLossError) -> None:
        """Count a step that raised ``error``; raise it, amended, once the redraws run out."""
        self.in_a_row += 1
        if self.in_a_row > self.max_redraws:
            if self.max_redraws:
                error.args = (f"{error} It stayed non-finite over {self.in_a_row} fresh draws.",)
            raise error

    def succeeded(self) -> int:
        """Count a step that went through; return how many redraws it took."""
        redraws, self.in_a_row = self.in_a_row, 0
        self.total += redraws
        return redraws

    def warn(self, num_steps: int, stacklevel: int = 2) -> None:
        """Warn, at the end of a run of ``num_steps``, about the redraws it took, if any."""
        if self.total:
            warnings.warn(
                f"{self.total} of {num_steps} SVI steps were redrawn after a non-finite "
                "loss; they updated nothing. Many redraws mean the guide's tails reach where "
                "the model's density overflows: try a smaller lr or float64.",
                UserWarning,
                stacklevel=stacklevel + 1,
            )


def _step_with_redraws(step: Step, policy: RedrawPolicy) -> tuple[float, int]:
    """One step, redrawn after a non-finite loss as ``policy`` says; the loss and redraws."""
    while True:
        try:
            loss = step()
        except NonFiniteLossError as error:
            policy.failed(error)
            continue
        return loss, policy.succeeded()


def _say_if_diverged(error: NonFiniteLossError, history: History) -> None:
    """Add to ``error`` where the run had diverged before it: its last losses above its
    first, so the guide is finite but far off, and what to do."""
    if len(history) < 2:
        return
    window = max(1, min(10, len(history) // 2))
    first, last = sorted(history[:window])[window // 2], sorted(history[-window:])[window // 2]
    # Over a few steps, single losses: only a rise far beyond their noise says diverged.
    if not last > first + (1.0 if window >= 3 else 1.0 + 10 * abs(first)):
        return
    said = str(error)
    for usable in ("; the guide is still usable.", ": the guide is still usable."):
        said = said.replace(usable, ".")
    error.args = (
        f"{said} Before it the loss rose from {first:.4g} (the first steps) to {last:.4g}: "
        "the run diverged, and the guide is far off. Fit again from a fresh guide "
        "(pyro.clear_param_store()) with a smaller lr, say a tenth.",
    )


def train(
    step: Step, num_steps: int, *, max_redraws: int = 3, progress: bool = True,
    monitor: Callable[[int, float], dict] | None = None, history: History | None = None,
    stop: Callable[[int], str] | None = None,
) -> History:  # fmt: skip
    """Run ``step`` up to ``num_steps`` times and return the :class:`History` of its losses.

    A non-finite step is redrawn up to ``max_redraws`` times in a row, and a warning at the
    end says how many were; one that stays non-finite raises :class:`NonFiniteLossError`
    (with ``.history``). Ctrl-C stops after the current step with
    :class:`TrainingInterrupted` (with ``.history``), gradients cleared. ``monitor(i,
    loss)`` runs after step ``i`` and returns extra fields for the progress bar; ``stop(n)``
    after the ``n``-th step returns why to end there (``""``: go on), kept as ``.stopped``.

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
    policy, every, extra = RedrawPolicy(max_redraws), max(1, num_steps // 100), {}
    bar = tqdm(total=num_steps, disable=None if progress else True, desc=step.name)
    step.clear_grads()  # gradients left by an earlier loop must not enter the first step
    with bar, _interrupt_between_steps() as interrupted:
        try:
            for index in range(num_steps):
                loss, redraws = _step_with_redraws(step, policy)
                history.append(loss)
                history.redraws += redraws
                if monitor is not None:
                    extra = monitor(index, loss) or extra
                if stop is not None:
                    history.stopped = stop(index + 1)
                if (index + 1) % every == 0 or index + 1 == num_steps or history.stopped:
                    bar.set_postfix(loss=f"{loss:.4g}", **extra, refresh=False)
                    bar.update(index + 1 - bar.n)
                if interrupted():  # pressed during this step: it finished, now stop
                    raise KeyboardInterrupt
                if history.stopped:
                    break
        except KeyboardInterrupt:
            step.clear_grads()
            raise TrainingInterrupted(history, num_steps) from None
        except NonFiniteLossError as error:
            error.history = history
            _say_if_diverged(error, history)
            raise
    step.clear_grads()  # nor the last step's gradients a later loop's first step
    policy.warn(num_steps, stacklevel=3)
    return history
