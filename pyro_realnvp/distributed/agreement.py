"""How every rank agrees on a step: all finite and updated, or none updated and all raise.

torch's ``DistributedDataParallel`` broadcasts the initial parameters and averages the
gradients during the backward pass; it does not know that a rank's Pyro model may raise
or go non-finite. Here a rank whose model raises still joins the backward pass (with a
zero loss, :class:`GuardedELBO`), so no rank waits in a collective, and one flag per
step (:class:`FiniteStepFlag`) makes a step that failed on any rank update nothing on
every rank, which all raise the same error naming the ranks. DDP
(:mod:`~pyro_realnvp.distributed.ddp`) and Lightning
(:mod:`~pyro_realnvp.distributed.lightning`) both build on these.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as torch_dist
from pyro import poutine
from pyro.infer.elbo import ELBOModule
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from .._internal.compat import rng_state
from .._internal.flat import unpacked
from .._internal.locate import raised_at
from ..errors import NonFiniteLossError, RankFailedError
from ..infer.finite import FiniteELBO, explain_non_finite, rejected_draws_are_non_finite
from .ranks import comm_device, gather_objects, in_process_group, world_size

# The helpers without an example (GuardedELBO, backward_and_agree, ...) are this
# sub-package's own: ddp.py and lightning.py build on them.
__all__ = ["FiniteStepFlag", "setup_guide"]


def raise_if_any_raised(error: BaseException | None, during: str) -> None:
    """Share which ranks raised; if any did, raise on all of them, naming each error.

    Where every rank's error is a :class:`~pyro_realnvp.NonFiniteLossError` (a draw the
    model could not score, explained as ``fit`` explains it), every rank raises that,
    with each failed rank's explanation; otherwise a :class:`RankFailedError` naming each
    rank's error (:func:`describe`).
    """
    non_finite = isinstance(error, NonFiniteLossError)
    mine = None if error is None else (non_finite, str(error), describe(error))
    failed = {r: m for r, m in enumerate(gather_objects(mine)) if m is not None}
    if not failed:
        return
    if all(flag for flag, _, _ in failed.values()):
        text = "\n".join(f"rank {r} ({during}): {m}" for r, (_, m, _) in failed.items())
        raise NonFiniteLossError(text) from error
    text = "; ".join(f"rank {r} raised {m}" for r, (_, _, m) in failed.items())
    raise RankFailedError(f"{text}, during {during}") from error


class FiniteStepFlag:
    """Whether every rank's step was finite: one all-reduce of ``(loss, failed)`` per step.

    Built right after the forward pass, it starts an asynchronous ``all_reduce`` of this
    rank's loss and failure flag, which overlaps the backward pass (and the gradient
    all-reduce DDP runs during it). :meth:`mean_loss` then waits for it. All ranks reach
    the same verdict: the flags are summed over ranks, and ``grads_finite`` is checked on
    gradients that DDP has already averaged, so it is the same on every rank too. If any
    rank failed, every rank gathers each rank's :data:`report` and raises the same
    :class:`~pyro_realnvp.NonFiniteLossError` or :class:`RankFailedError`, naming the
    ranks, before anyone's optimizer steps. Without a process group it is one rank's check.

    Example:
        >>> FiniteStepFlag(loss=1.5, ok=True).mean_loss(grads_finite=True)
        1.5
        >>> flag = FiniteStepFlag(loss=float("nan"), ok=False)
        >>> try:
        ...     flag.mean_loss(grads_finite=True, report=lambda: {"non_finite": "a NaN"})
        ... except NonFiniteLossError as error:
        ...     print(str(error)[:72])
        the loss or its gradients were not finite on rank(s) [0] (rank 0: a NaN)
    """

    def __init__(self, loss: float, ok: bool) -> None:
        ok = ok and math.isfinite(loss)
        values = [loss if ok else 0.0, 0.0 if ok else 1.0]
        self.buffer = torch.tensor(values, dtype=torch.float64, device=comm_device())
        self._work = (
            torch_dist.all_reduce(self.buffer, async_op=True) if in_process_group() else None
        )

    def mean_loss(self, grads_finite: bool, report: Callable[[], dict] = dict) -> float:
        """The loss averaged over ranks; raise on every rank if any rank's step failed.

        ``report`` is called only after a failure, on every rank, and returns this rank's
        ``{"raised": repr(error)}`` or ``{"non_finite": reason}`` (``{}`` if it was fine).
        """
        if self._work is not None:
            self._work.wait()
        total, failed = self.buffer.tolist()
        if failed == 0 and grads_finite:
            return total / world_size()
        _raise_step_failure(gather_objects(report()))


def _raise_step_failure(reports: list[dict]) -> None:
    """Raise the error every rank raises after a failed step, from all ranks' reports."""
    raised = {r: rep["raised"] for r, rep in enumerate(reports) if rep.get("raised")}
    if raised:
        text = "; ".join(f"rank {r} raised {message}" for r, message in raised.items())
        raise RankFailedError(f"{text}, during an SVI step (no rank updated its parameters)")
    bad = {r: rep["non_finite"] for r, rep in enumerate(reports) if rep.get("non_finite")}
    if bad:
        reasons = "; ".join(f"rank {r}: {why}" for r, why in bad.items())
        what = f"the loss or its gradients were not finite on rank(s) {sorted(bad)} ({reasons})"
    else:
        what = (
            "the gradients averaged over ranks were not finite, though no rank saw a "
            "non-finite value of its own (the sum overflowed)"
        )
    raise NonFiniteLossError(f"{what}. No rank updated its parameters; the guide is still usable.")


@torch.no_grad()
def setup_guide(model: Callable, guide: Callable, *args, **kwargs) -> dict[str, Tensor]:
    """Create the parameters of ``guide`` and ``model``; return those they use, by name.

    ``AutoRealNVP`` builds its parameters at its first call, and DDP must see them
    before it wraps the guide. This runs the guide and the model once, without
    recording and leaving Pyro's RNG state as it found it. If it raises on any rank,
    every rank raises :class:`~pyro_realnvp.distributed.RankFailedError`, naming it, or
    where the model rejected each failed rank's draw, ``fit``'s
    :class:`~pyro_realnvp.NonFiniteLossError`, naming the site.

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
        params = _run_once(model, guide, args, kwargs)
    except Exception as caught:  # noqa: BLE001 - re-raised below on every rank
        error = caught
    raise_if_any_raised(error, "setting up the guide and model")
    return params


def _run_once(model: Callable, guide: Callable, args, kwargs) -> dict[str, Tensor]:
    """:func:`setup_guide`'s run of guide and model, on one rank. A draw the model cannot
    score raises ``fit``'s :class:`~pyro_realnvp.NonFiniteLossError`, which names the
    site and says why: :class:`~pyro_realnvp.FiniteELBO` re-runs the same draw (the RNG
    is where it was) and explains it."""
    with rng_state(), poutine.block():
        try:
            with poutine.trace(param_only=True) as capture, rejected_draws_are_non_finite():
                guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
                poutine.replay(model, trace=guide_trace)(*args, **kwargs)
        except NonFiniteLossError as rejected:
            failed = rejected
        else:
            return {
                name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()
            }
    with rng_state(), poutine.block():
        FiniteELBO().loss(model, guide, *args, **kwargs)  # raises as fit's first step does
    raise failed  # the same draw went through the second time: the first one's error


class GuardedELBO(nn.Module):
    """Pyro's ELBO module with a forward that never raises, so no rank leaves a collective."""

    def __init__(self, elbo_module: ELBOModule) -> None:
        super().__init__()
        self.elbo_module = elbo_module
        self.error: BaseException | None = None

    def forward(self, *args, **kwargs) -> Tensor:
        self.error = None
        try:
            with rejected_draws_are_non_finite():
                return self.elbo_module(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - reported on every rank after backward
            self.error = error
            # Every parameter still joins the backward pass (with a zero gradient), so
            # DDP's all-reduce on the other ranks is not left waiting for this one.
            return sum(p.sum() for p in self.parameters()) * 0.0


class LocalFinite:
    """DDP comm-hook state: whether this rank's own gradients were finite, before averaging."""

    def __init__(self) -> None:
        self.process_group = None  # the default group, as DDP's own hook uses
        self.checks: list[Tensor] = []

    def finite(self) -> bool | None:
        return bool(torch.stack(self.checks).all()) if self.checks else None


def finite_allreduce_hook(state: LocalFinite, bucket):
    """DDP's default all-reduce of one bucket, after noting whether it was finite here.

    ``bucket`` is a ``dist.GradBucket``, left unannotated: DDP checks the annotation's
    value, which ``from __future__ import annotations`` would turn into a string.
    """
    state.checks.append(bucket.buffer().isfinite().all())  # no host sync on the way
    return default_hooks.allreduce_hook(state.process_group, bucket)


def check_params_in_module(params: dict[str, Tensor], module: nn.Module) -> None:
    """DDP averages the gradients of module parameters only: refuse loose param-store ones
    (a flat tensor that stands for a flow's parameters is inside where they are)."""
    own = list(module.parameters())
    inside = {id(p) for p in own}
    loose = sorted(name for name, p in params.items()
                   if not all(id(q) in inside for q in unpacked([p], own)))  # fmt: skip
    if loose:
        raise ValueError(
            f"parameter(s) {loose[:4]} are in Pyro's param store but in no torch module of "
            "the model or guide, so DistributedDataParallel cannot average their gradients; "
            "declare them as PyroParam attributes of a PyroModule"
        )


def backward_and_agree(
    guarded: GuardedELBO,
    loss: Tensor,
    backward: Callable[[Tensor], None],
    local: LocalFinite | None,
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
            return {"raised": describe(error)}
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


def describe(error: BaseException) -> str:
    """``Type('message')`` and where in the model it was raised, without the trace-shape
    table Pyro appends to model errors."""
    message = str(error.args[0]) if type(error) is KeyError and error.args else str(error)
    message = message.split(chr(10) + "Trace Shapes:")[0]
    return f"{type(error).__name__}({message!r}){raised_at(error)}"


def explainer(model: Callable, guide: Callable, args, kwargs) -> Callable[[], str]:
    """Say which side failed, without moving this rank's RNG away from the others'."""

    def explain() -> str:
        with rng_state():
            return explain_non_finite(model, guide, *args, **kwargs)

    return explain
