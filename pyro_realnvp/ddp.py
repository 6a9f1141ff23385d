"""Data-parallel SVI on torch's ``DistributedDataParallel`` around Pyro's ELBO module.

``Trace_ELBO()(model, guide)`` is an ``nn.Module`` whose forward is the differentiable
loss. :class:`DataParallelELBO` wraps it in ``DistributedDataParallel`` (DDP), which
broadcasts rank 0's parameters once and averages the gradients in buckets while the
backward pass still runs. Pyro needs three things on top, and they are all that is
here: the guide is set up before wrapping (its parameters are created lazily); a rank
whose model raises still joins the backward pass (with a zero loss), so no rank waits in
a collective; and one flag per step
(:class:`~pyro_realnvp.distributed.FiniteStepFlag`) makes a step that is not finite on
any rank update nothing on every rank. A DDP communication hook notes, before the
averaging, whether each rank's own gradients were finite, so the error names the rank.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.elbo import ELBO, ELBOModule
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from ._compat import elbo_traces, rng_state
from .distributed import (
    FiniteStepFlag,
    _active,
    _raise_if_any_raised,
    is_main_process,
)
from .finite import _rejected_draws_are_non_finite, explain_non_finite
from .infer import fit
from .train import History, NonFiniteLossError, check_training_args

__all__ = ["DataParallelELBO", "fit_distributed", "setup_guide"]


@torch.no_grad()
def setup_guide(model: Callable, guide: Callable, *args, **kwargs) -> dict[str, Tensor]:
    """Create the parameters of ``guide`` and ``model``; return those they use, by name.

    ``AutoRealNVP`` builds its parameters at its first call, and DDP must see them
    before it wraps the guide. This runs the guide and the model once, without
    recording and leaving Pyro's RNG state as it found it. If it raises on any rank,
    every rank raises :class:`~pyro_realnvp.distributed.RankFailedError`, naming it.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_realnvp import AutoRealNVP
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> params = setup_guide(model, AutoRealNVP(model, num_layers=2))
        >>> params["AutoRealNVP.loc"].shape
        torch.Size([1])
    """
    error, params = None, {}
    try:
        with rng_state(), poutine.block(), poutine.trace(param_only=True) as capture:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            poutine.replay(model, trace=guide_trace)(*args, **kwargs)
        params = {
            name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()
        }
    except Exception as caught:  # noqa: BLE001 - re-raised below on every rank
        error = caught
    _raise_if_any_raised(error, "setting up the guide and model")
    return params


class _GuardedELBO(nn.Module):
    """Pyro's ELBO module with a forward that never raises, so no rank leaves a collective."""

    def __init__(self, elbo_module: ELBOModule) -> None:
        super().__init__()
        self.elbo_module = elbo_module
        self.error: BaseException | None = None

    def forward(self, *args, **kwargs) -> Tensor:
        self.error = None
        try:
            with _rejected_draws_are_non_finite():
                return self.elbo_module(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - reported on every rank after backward
            self.error = error
            # Every parameter still joins the backward pass (with a zero gradient), so
            # DDP's all-reduce on the other ranks is not left waiting for this one.
            return sum(p.sum() for p in self.parameters()) * 0.0


class _LocalFinite:
    """DDP comm-hook state: whether this rank's own gradients were finite, before averaging."""

    def __init__(self) -> None:
        self.process_group = None  # the default group, as DDP's own hook uses
        self.checks: list[Tensor] = []

    def finite(self) -> bool | None:
        return bool(torch.stack(self.checks).all()) if self.checks else None


def _finite_allreduce_hook(state: _LocalFinite, bucket):
    """DDP's default all-reduce of one bucket, after noting whether it was finite here.

    ``bucket`` is a ``dist.GradBucket``, left unannotated: DDP checks the annotation's
    value, which ``from __future__ import annotations`` would turn into a string.
    """
    state.checks.append(bucket.buffer().isfinite().all())  # no host sync on the way
    return default_hooks.allreduce_hook(state.process_group, bucket)


#: The flow's buffers (masks) never change, so DDP need not broadcast them at every
#: forward; torch 2.13 renamed the option that says so.
_NO_BUFFER_SYNC_IN_FORWARD = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def _distribute(module: nn.Module, **options) -> tuple[nn.Module, _LocalFinite | None]:
    """``module`` in DDP with the finite-noting hook, or as it is without a process group."""
    if not _active():
        return module, None
    device = next(module.parameters()).device
    ddp = DistributedDataParallel(
        module,
        device_ids=[device] if device.type == "cuda" else None,
        **_NO_BUFFER_SYNC_IN_FORWARD,
        **options,
    )
    local = _LocalFinite()
    ddp.register_comm_hook(local, _finite_allreduce_hook)
    return ddp, local


def _check_params_in_module(params: dict[str, Tensor], module: nn.Module) -> None:
    """DDP averages the gradients of module parameters only: refuse loose param-store ones."""
    inside = {id(p) for p in module.parameters()}
    loose = sorted(name for name, p in params.items() if id(p) not in inside)
    if loose:
        raise ValueError(
            f"parameter(s) {loose[:4]} are in Pyro's param store but in no torch module of "
            "the model or guide, so DistributedDataParallel cannot average their gradients; "
            "declare them as PyroParam attributes of a PyroModule"
        )


def _backward_and_agree(
    guarded: _GuardedELBO,
    loss: Tensor,
    backward: Callable[[Tensor], None],
    local: _LocalFinite | None,
    explain: Callable[[], str],
) -> float:
    """Backward (DDP averages the gradients), then agree on every rank whether all was finite.

    Returns the loss averaged over ranks; after a failure on any rank every rank clears
    its gradients and raises (see :class:`~pyro_realnvp.distributed.FiniteStepFlag`).
    """
    error = guarded.error
    value = math.nan if error is not None else float(loss.detach())
    flag = FiniteStepFlag(value, ok=error is None)
    backward(loss)
    grads = [p.grad for p in guarded.parameters() if p.grad is not None]
    grads_finite = not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all())

    def report() -> dict:
        if error is not None and not isinstance(error, NonFiniteLossError):
            return {"raised": _describe(error)}
        if error is not None:
            return {"non_finite": str(error).split(" No parameter was updated")[0]}
        if not math.isfinite(value):
            return {"non_finite": f"loss {value}, {explain()}"}
        if local is not None and local.finite() is False:
            return {"non_finite": "its gradients were not finite, though its loss was"}
        return {}

    try:
        return flag.mean_loss(grads_finite, report)
    except RuntimeError:  # raised on every rank alike, so every rank clears its gradients
        for param in guarded.parameters():
            param.grad = None
        raise


def _describe(error: BaseException) -> str:
    """``Type('message')``, without the trace-shape table Pyro appends to model errors."""
    return f"{type(error).__name__}({str(error).split(chr(10) + 'Trace Shapes:')[0]!r})"


def _explainer(model: Callable, guide: Callable, args, kwargs) -> Callable[[], str]:
    """Say which side failed, without moving this rank's RNG away from the others'."""

    def explain() -> str:
        with rng_state():
            return explain_non_finite(model, guide, *args, **kwargs)

    return explain


@dataclass
class _Wrapped:
    model: Callable
    guide: Callable
    guarded: _GuardedELBO
    module: nn.Module
    local: _LocalFinite | None


class DataParallelELBO(ELBO):
    """An ELBO for Pyro's ``SVI`` whose gradients ``DistributedDataParallel`` averages.

    At its first call it sets the guide up (:func:`setup_guide`), builds Pyro's ELBO
    module ``elbo(model, guide)`` and wraps it in DDP, which copies rank 0's parameters
    to every rank. ``loss_and_grads`` runs the forward pass through DDP and the backward
    pass, during which DDP averages the gradients; the loss averaged over ranks travels
    in one small all-reduce with a failure flag. If the step raised or was not finite on
    any rank, every rank clears its gradients and raises the same
    :class:`~pyro_realnvp.NonFiniteLossError` or
    :class:`~pyro_realnvp.distributed.RankFailedError`, naming the ranks, so ``SVI``
    updates nothing anywhere. Every parameter must live in a torch module (a guide, or a
    ``PyroModule`` model). Without a process group it is the wrapped ELBO plus that
    check. One instance serves one (model, guide) pair; ``ddp_options`` go to DDP.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer import SVI
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), DataParallelELBO())
        >>> isinstance(svi.step(), float)
        True
    """

    def __init__(self, elbo: ELBO | None = None, **ddp_options) -> None:
        self.elbo = Trace_ELBO() if elbo is None else elbo
        super().__init__(num_particles=self.elbo.num_particles)
        self.ddp_options = ddp_options
        self._wrapped: _Wrapped | None = None

    def module(self, model: Callable, guide: Callable, *args, **kwargs) -> nn.Module:
        """The DDP-wrapped ELBO module for ``(model, guide)``, built at the first call."""
        return self._wrap(model, guide, args, kwargs).module

    def _wrap(self, model, guide, args, kwargs) -> _Wrapped:
        wrapped = self._wrapped
        if wrapped is not None and wrapped.model is model and wrapped.guide is guide:
            return wrapped
        params = setup_guide(model, guide, *args, **kwargs)
        guarded = _GuardedELBO(self.elbo(model, guide))
        _check_params_in_module(params, guarded)
        self._wrapped = _Wrapped(model, guide, guarded, *_distribute(guarded, **self.ddp_options))
        return self._wrapped

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        wrapped = self._wrap(model, guide, args, kwargs)
        if wrapped.local is not None:
            wrapped.local.checks.clear()
        loss = wrapped.module(*args, **kwargs)
        explain = _explainer(model, guide, args, kwargs)
        return _backward_and_agree(wrapped.guarded, loss, Tensor.backward, wrapped.local, explain)

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        wrapped = self._wrap(model, guide, args, kwargs)
        with torch.no_grad():
            loss = wrapped.guarded(*args, **kwargs)
        error = wrapped.guarded.error
        flag = FiniteStepFlag(math.nan if error else float(loss), ok=error is None)
        return flag.mean_loss(True, lambda: {"raised": _describe(error)} if error else {})

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        return self.elbo.differentiable_loss(model, guide, *args, **kwargs)

    def _get_trace(self, model, guide, args, kwargs):
        return elbo_traces(self.elbo, model, guide, args, kwargs)


def fit_distributed(
    model: Callable,
    guide: Callable,
    *args,
    loss: ELBO | None = None,
    num_particles: int = 1,
    progress: bool = True,
    **kwargs,
) -> History:
    """:func:`~pyro_realnvp.fit` on every rank, its ELBO wrapped in :class:`DataParallelELBO`.

    Call it on every rank with that rank's shard (the model should use
    :func:`~pyro_realnvp.distributed.data_plate`). It sets the guide up and wraps the
    ELBO module in DDP (rank 0's initial parameters go to every rank), then runs ``fit``:
    the same optimizer, clipping, learning-rate decay and redraw policy, a redraw being
    taken on every rank at once. Only rank 0 shows the progress bar. ``num_particles``
    is per rank; the other keyword arguments are ``fit``'s, then the model's. ``loss``
    may be a :class:`DataParallelELBO` already built for this model and guide. Returns
    the history of the rank-averaged loss, the same on every rank.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> guide = pyro.infer.autoguide.AutoNormal(lambda: pyro.sample("x", dist.Normal(3, 1)))
        >>> losses = fit_distributed(guide.model, guide, num_steps=300, lr=0.05, progress=False)
        >>> round(guide.median()["x"].item()), losses.method  # one process: no process group
        (3, 'svi')
    """
    check_training_args(num_particles=num_particles)
    if loss is None:
        loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)
    elbo = loss if isinstance(loss, DataParallelELBO) else DataParallelELBO(loss)
    options = {name: kwargs.pop(name) for name in _FIT_OPTIONS & kwargs.keys()}
    elbo.module(model, guide, *args, **kwargs)  # set up and wrap now, before the loop
    progress = progress and is_main_process()
    return fit(model, guide, *args, loss=elbo, progress=progress, **options, **kwargs)


#: ``fit``'s own keyword arguments; every other keyword goes to the model.
_FIT_OPTIONS = {
    name
    for name, parameter in inspect.signature(fit).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
}
