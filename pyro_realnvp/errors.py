"""The exceptions users catch, in one place; every layer raises them from here."""

from __future__ import annotations

__all__ = ["FastPathError", "NonFiniteLossError", "RankFailedError", "TrainingInterrupted"]


class NonFiniteLossError(RuntimeError):
    """A training step produced a NaN or infinite loss or gradient; no parameter was updated.

    When raised by a fit, ``history`` holds the losses of the steps that did run.

    Example:
        >>> issubclass(NonFiniteLossError, RuntimeError)
        True
    """

    history: list[float] | None = None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a fit between steps; ``history`` holds the losses so far.

    Every parameter is as the last completed step left it and no gradient is pending, so
    training can resume with another fit.

    Example:
        >>> error = TrainingInterrupted([1.0], num_steps=10)
        >>> isinstance(error, KeyboardInterrupt), len(error.history)
        (True, 1)
    """

    def __init__(self, history: list[float], num_steps: int) -> None:
        super().__init__(f"training interrupted after {len(history)} of {num_steps} steps")
        self.history = history


class FastPathError(ValueError):
    """The fast path cannot reproduce ``Trace_ELBO`` for this model; use ``fit``.

    Raised at set-up by :class:`~pyro_realnvp.FastELBO` (and ``fit(fast=True)``), naming
    what the captured density cannot replay: subsampling, learnable model parameters,
    discrete latents, structure that changes with the latent values.

    Example:
        >>> issubclass(FastPathError, ValueError)
        True
    """


class RankFailedError(RuntimeError):
    """A rank raised during a distributed step; every rank raises this instead of hanging.

    Example:
        >>> str(RankFailedError("rank 1 raised ValueError"))
        'rank 1 raised ValueError'
    """
