"""Steps on Pyro's ELBO: ``SVI`` with any Pyro optimizer, or ``fit``'s schedule in one
fused Adam. Either raises :class:`~pyro_realnvp.NonFiniteLossError` having updated
nothing where the loss or a gradient is not finite (:class:`~pyro_realnvp.FiniteELBO`)."""

from __future__ import annotations

import functools
import math

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.elbo import ELBO
from pyro.infer.importance import vectorized_importance_weights
from pyro.optim import PyroOptim
from torch import Tensor

from .._internal.plates import plate_nesting
from ..guide.potential import subsampled_sites
from .finite import FiniteELBO, gradient_norm, params_met
from .loop import NOTHING_TO_FIT, Schedule, clip_total_norm

__all__ = ["SVIStep", "ScheduledSVIStep"]


def _refuse_if_frozen(trained: list[Tensor]) -> None:
    if trained and not any(p.requires_grad for p in trained):  # it would move nothing
        raise ValueError(NOTHING_TO_FIT)


class SVIStep:
    """One ``SVI`` step with :class:`~pyro_realnvp.FiniteELBO`: Pyro's ELBO, any guide, any
    model, any Pyro optimizer.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer import Trace_ELBO
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro_realnvp.infer.loop import train
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> step = SVIStep(model, AutoNormal(model), Trace_ELBO(),
        ...                pyro.optim.Adam({"lr": 0.01}), (), {})
        >>> len(train(step, 3, progress=False))
        3
    """

    name = "SVI"

    def __init__(self, model, guide, loss: ELBO, optim: PyroOptim, args, kwargs) -> None:
        self.model, self.elbo = model, FiniteELBO(loss)
        self.svi = SVI(model, guide, optim, self.elbo)
        self.guide, self.args, self.kwargs = guide, args, kwargs
        self._trained: list[Tensor] = []

    def __call__(self) -> float:
        if self._trained:
            return self.svi.step(*self.args, **self.kwargs)
        # Until a step succeeds: what SVI steps, the unconstrained values of the param sites
        # it meets, which a step that raised need not have met yet.
        with poutine.trace(param_only=True) as capture:
            loss = self.svi.step(*self.args, **self.kwargs)
        trained = params_met(capture.trace)
        _refuse_if_frozen(trained)
        self._trained = trained
        return loss

    def parameters(self) -> list[Tensor]:
        """The unconstrained tensors the first successful step trained (none before it)."""
        return list(self._trained)

    @property
    def num_particles(self) -> int:
        """Particles per step."""
        return self.elbo.num_particles

    def log_weights(
        self, num_draws: int, generator: torch.Generator | None = None
    ) -> Tensor | None:
        """The guide's log importance weights at ``num_draws`` fresh draws, through Pyro's
        vectorized ones; ``None`` where Pyro cannot vectorize the model over draws, or where
        the model subsamples its data (the weights would read one random minibatch, scaled
        up: their spread says nothing of KL(q||p), and each reading cost a hundred steps on
        the stability bench's hierarchical model). The draws are seeded from ``generator``;
        torch's own generator is left as it was."""
        device = getattr(generator, "device", torch.device("cpu"))
        seed = int(torch.randint(2**62, (1,), generator=generator, device=device))
        model, guide, args, kwargs = self.model, self.guide, self.args, self.kwargs
        try:
            if self._layout[1]:
                return None
            with torch.random.fork_rng(), torch.no_grad(), pyro.validation_enabled(False):
                torch.manual_seed(seed)
                nesting = self._plate_nesting()
                return vectorized_importance_weights(
                    model, guide, *args, num_samples=num_draws, max_plate_nesting=nesting,
                    **kwargs,
                )[0].detach()  # fmt: skip
        except (RuntimeError, ValueError, NotImplementedError, AssertionError):
            return None

    def _plate_nesting(self) -> int:
        """The model's plates: Pyro's guess where its ELBO made one (it does for vectorized
        particles), else read once from a draw of the guide and the model on it."""
        nesting = self.elbo.elbo.max_plate_nesting
        return int(nesting) if math.isfinite(nesting) else self._layout[0]

    @functools.cached_property
    def _layout(self) -> tuple[int, bool]:
        """The plates' nesting, and whether a site lies in a subsampling plate, from one draw
        of the guide and the model replayed on it (drawn aside: torch's generator is left
        as it was)."""
        model, guide, args, kwargs = self.model, self.guide, self.args, self.kwargs
        with poutine.block(), torch.random.fork_rng(), torch.no_grad():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            replayed = poutine.trace(poutine.replay(model, trace=guide_trace))
            traces = guide_trace, replayed.get_trace(*args, **kwargs)
        return plate_nesting(*traces), any(subsampled_sites(trace) for trace in traces)

    def clear_grads(self) -> None:
        # Pyro zeroes gradients only after its update; an interrupt before it leaves them.
        params = [p for _, p in pyro.get_param_store().named_parameters()]
        if isinstance(self.guide, torch.nn.Module):
            params += list(self.guide.parameters())
        for param in params + self._trained:
            param.grad = None


class ScheduledSVIStep(SVIStep):
    """One step of Pyro's ELBO under ``fit``'s :class:`~pyro_realnvp.infer.loop.Schedule`:
    the gradients' total norm is the finiteness check and the clip's norm at once (one
    pass over them), and one fused torch ``Adam`` steps every parameter, its lr decayed
    by ``ExponentialLR``, as on the fast path.

    What ``SVI`` with :meth:`Schedule.pyro_optim` does, in fewer passes: Pyro's optimizer
    runs a Python ``ClippedAdam`` per parameter tensor, and the check and the clip each
    read every gradient (docs/tuning.md, issue 30).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer import Trace_ELBO
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro_realnvp.infer.loop import train
        >>> def model():
        ...     pyro.sample("x", dist.Normal(3.0, 1.0))
        >>> schedule = Schedule(lr=0.05, lr_decay=0.1, clip_norm=10.0, num_steps=500)
        >>> guide = AutoNormal(model)
        >>> _ = train(ScheduledSVIStep(model, guide, Trace_ELBO(), schedule, (), {}), 500,
        ...           progress=False)
        >>> round(guide.median()["x"].item())
        3
    """

    def __init__(self, model, guide, loss: ELBO, schedule: Schedule, args, kwargs) -> None:
        self.model, self.elbo, self.schedule = model, FiniteELBO(loss), schedule
        self.guide, self.args, self.kwargs = guide, args, kwargs
        self._trained: list[Tensor] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.decay = None
        self._held: set[int] = set()

    def __call__(self) -> float:
        model, guide, args, kwargs = self.model, self.guide, self.args, self.kwargs
        loss, params = self.elbo.loss_grads_and_params(model, guide, *args, **kwargs)
        norm, finite = gradient_norm(params)
        self.elbo.check(loss, finite, params, model, guide, args, kwargs)
        if not self._trained:
            _refuse_if_frozen(params)
            self._trained = list(params)
        clip_total_norm(params, self.schedule.clip_norm, norm)
        optimizer = self._optimizer_for(params)
        if optimizer is not None:  # None: a guide with no parameters yet
            optimizer.step()
            self.decay.step()
        for param in params:  # None, not zeros: the next backward pass writes, not adds
            param.grad = None
        return loss

    def _optimizer_for(self, params: list[Tensor]) -> torch.optim.Optimizer | None:
        """The one Adam, holding every parameter met so far: one met later (a guide that
        creates some lazily) joins at the lr the others have decayed to."""
        new = [p for p in params if p.requires_grad and id(p) not in self._held]
        if new and self.optimizer is None:
            self.optimizer, self.decay = self.schedule.torch_optimizer(new)
        elif new:
            self.optimizer.add_param_group({"params": new, "lr": self.decay.get_last_lr()[0]})
        self._held.update(id(p) for p in new)
        return self.optimizer
