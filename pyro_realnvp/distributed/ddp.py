"""Data-parallel SVI on torch's ``DistributedDataParallel`` around Pyro's ELBO module.

``Trace_ELBO()(model, guide)`` is an ``nn.Module`` whose forward is the differentiable
loss. :class:`DataParallelELBO` wraps it in ``DistributedDataParallel`` (DDP), which
broadcasts rank 0's parameters once and averages the gradients in buckets while the
backward pass still runs. Pyro needs three things on top (:mod:`.agreement`): the guide
set up before wrapping (its parameters are created lazily), a rank whose model raises
still joining the backward pass, and one flag per step so that a step not finite on any
rank updates nothing on every rank. A DDP communication hook notes, before the
averaging, whether each rank's own gradients were finite, so the error names the rank.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro.infer import Trace_ELBO
from pyro.infer.elbo import ELBO
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .._internal.compat import elbo_traces
from ..infer.flow_guide import FlowGuide
from ..infer.loop import History, check_training_args
from ..infer.preflight import preflight
from ..infer.svi import fit
from .agreement import (
    FiniteStepFlag,
    GuardedELBO,
    LocalFinite,
    backward_and_agree,
    check_params_in_module,
    describe,
    explainer,
    finite_allreduce_hook,
    raise_if_any_raised,
    setup_guide,
)
from .ranks import in_process_group, is_main_process

__all__ = ["DataParallelELBO", "fit_distributed"]


#: The flow's buffers (masks) never change, so DDP need not broadcast them at every
#: forward; torch 2.13 renamed the option that says so.
_NO_BUFFER_SYNC_IN_FORWARD = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def _distribute(module: nn.Module, **options) -> tuple[nn.Module, LocalFinite | None]:
    """``module`` in DDP with the finite-noting hook, or as it is without a process group."""
    if not in_process_group():
        return module, None
    if options.get("gradient_as_bucket_view") and any(
        isinstance(m, FlowGuide) for m in module.modules()
    ):
        raise ValueError(
            "gradient_as_bucket_view=True is not supported with AutoRealNVP: its flow's "
            "gradients are views of the one tensor Pyro's optimizer steps, and DDP would "
            "make them views of its buckets instead; leave it False (the default)"
        )
    device = next(module.parameters()).device
    ddp = DistributedDataParallel(
        module,
        device_ids=[device] if device.type == "cuda" else None,
        **_NO_BUFFER_SYNC_IN_FORWARD,
        **options,
    )
    local = LocalFinite()
    ddp.register_comm_hook(local, finite_allreduce_hook)
    return ddp, local


def _check_elbo(name: str, value) -> None:
    """Refuse, naming the argument, what is neither ``None`` nor an ELBO instance."""
    if value is None or isinstance(value, ELBO):
        return
    if isinstance(value, type) and issubclass(value, ELBO):
        raise TypeError(
            f"{name} must be an ELBO instance such as Trace_ELBO(), got the class "
            f"{value.__name__}: call it, {value.__name__}()"
        )
    raise TypeError(f"{name} must be an ELBO instance such as Trace_ELBO(), got {value!r}")


@dataclass
class _Wrapped:
    model: Callable
    guide: Callable
    guarded: GuardedELBO
    module: nn.Module
    local: LocalFinite | None


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
        _check_elbo("elbo", elbo)
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
        guarded = GuardedELBO(self.elbo(model, guide))
        check_params_in_module(params, guarded)
        self._wrapped = _Wrapped(model, guide, guarded, *_distribute(guarded, **self.ddp_options))
        return self._wrapped

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        wrapped = self._wrap(model, guide, args, kwargs)
        if wrapped.local is not None:
            wrapped.local.checks.clear()
        loss = wrapped.module(*args, **kwargs)
        explain = explainer(model, guide, args, kwargs)
        return backward_and_agree(wrapped.guarded, loss, Tensor.backward, wrapped.local, explain)

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        wrapped = self._wrap(model, guide, args, kwargs)
        with torch.no_grad():
            loss = wrapped.guarded(*args, **kwargs)
        error = wrapped.guarded.error
        flag = FiniteStepFlag(math.nan if error else float(loss), ok=error is None)
        return flag.mean_loss(True, lambda: {"raised": describe(error)} if error else {})

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
    for name, value in (("model", model), ("guide", guide)):
        if not callable(value):
            raise TypeError(f"{name} must be a callable Pyro {name}, got {value!r}")
    _check_elbo("loss", loss)
    check_training_args(num_particles=num_particles)
    if loss is None:
        loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)
    elbo = loss if isinstance(loss, DataParallelELBO) else DataParallelELBO(loss)
    options = {name: kwargs.pop(name) for name in _FIT_OPTIONS & kwargs.keys()}
    elbo.module(model, guide, *args, **kwargs)  # set up and wrap now, before the loop
    # fit's checks of the data and the guide, once more on every rank, so that a shard's
    # NaN stops every rank, where fit's own would stop one and leave the rest waiting.
    error = None
    try:
        preflight(model, guide, args, kwargs)
    except Exception as caught:  # noqa: BLE001 - re-raised below on every rank
        error = caught
    raise_if_any_raised(error, "checking the data and the guide")
    progress = progress and is_main_process()
    return fit(model, guide, *args, loss=elbo, progress=progress, **options, **kwargs)


#: ``fit``'s own keyword arguments; every other keyword goes to the model.
_FIT_OPTIONS = {
    name
    for name, parameter in inspect.signature(fit).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
}
