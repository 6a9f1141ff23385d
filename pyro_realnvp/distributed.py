"""Data-parallel SVI on ``torch.distributed``: shard the data, average the gradients.

Each rank holds a shard of the data and evaluates the model on it under a subsampling
``pyro.plate`` whose size is the full data size, so its loss is an unbiased estimate of
the full-data loss. :class:`DataParallelELBO` averages the losses and the gradients over
ranks between ``loss_and_grads`` and the optimizer step, so every rank applies the same
update and the parameters stay identical. With equal shards and the same base noise on
every rank, the averaged gradient *is* the full-data gradient of one process; with a
different seed per rank (:func:`seed_rank`) the ranks also split the particles.

Everything here works without a process group too (one process, world size 1), so the
same script runs under ``python`` and under ``torchrun``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pyro
import torch
import torch.distributed as dist
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.elbo import ELBO
from pyro.optim import PyroOptim
from pyro.util import get_rng_state, set_rng_state
from torch import Tensor

from .infer import NonFiniteLossError, explain_non_finite, fit

__all__ = [
    "DataParallelELBO",
    "RankFailedError",
    "broadcast_parameters",
    "data_plate",
    "fit_distributed",
    "is_main_process",
    "load_checkpoint",
    "max_parameter_divergence",
    "process_group",
    "rank",
    "save_checkpoint",
    "seed_rank",
    "shard",
    "world_size",
]

_OK, _NOT_FINITE, _RAISED = 0, 1, 2


class RankFailedError(RuntimeError):
    """A rank raised during a distributed step; every rank raises this instead of hanging.

    Example:
        >>> str(RankFailedError("rank 1 raised ValueError"))
        'rank 1 raised ValueError'
    """


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def _current_rank() -> int:
    return dist.get_rank() if _active() else 0


def _current_world_size() -> int:
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    """This process's rank in the default process group, ``0`` without one.

    Example:
        >>> rank()
        0
    """
    return _current_rank()


def world_size() -> int:
    """Number of processes in the default process group, ``1`` without one.

    Example:
        >>> world_size()
        1
    """
    return _current_world_size()


def is_main_process() -> bool:
    """Whether this rank writes checkpoints, logs and the progress bar (rank 0).

    Example:
        >>> is_main_process()
        True
    """
    return rank() == 0


def _comm_device() -> torch.device:
    """NCCL only moves CUDA tensors; gloo moves CPU ones."""
    if _active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def process_group(
    backend: str | None = None, *, timeout: timedelta = timedelta(minutes=5)
) -> Iterator[tuple[int, int]]:
    """Join the process group ``torchrun`` describes, or run alone; yield ``(rank, world_size)``.

    Under ``torchrun`` (the ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` environment) this calls
    ``torch.distributed.init_process_group`` with ``backend`` (default NCCL when CUDA is
    available, else gloo) and ``timeout``: a collective that waits longer than ``timeout``
    (say, on a rank that died outside a training step) raises instead of hanging. With
    NCCL each rank takes the GPU ``LOCAL_RANK``. Without that environment nothing is
    initialised and the body runs as rank 0 of 1. The group is destroyed on exit if this
    call created it.

    Example:
        >>> with process_group() as (r, n):
        ...     print(r, n)
        0 1
    """
    created = False
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not _active():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=timeout)
        created = True
    try:
        yield rank(), world_size()
    finally:
        if created:
            dist.destroy_process_group()


def seed_rank(seed: int, *, same_noise: bool = False) -> int:
    """Seed Pyro's RNGs with ``seed + rank`` (or ``seed`` with ``same_noise``); return it.

    Distinct seeds give each rank its own base noise, so the ranks' particles are
    independent and averaging over ``W`` ranks is a ``W``-times larger particle estimate.
    ``same_noise=True`` draws the same noise on every rank, which makes a run with equal
    shards reproduce one process on the full data.

    Example:
        >>> seed_rank(7)
        7
    """
    value = seed if same_noise else seed + rank()
    pyro.set_rng_seed(value)
    return value


def shard(*tensors: Tensor, rank: int | None = None, world_size: int | None = None):
    """This rank's contiguous slice (along dim 0) of each tensor, as a tuple.

    Slices differ in length by at most one; with ``len % world_size == 0`` they are equal,
    which makes the averaged loss exactly the full-data loss (otherwise it is unbiased).

    Example:
        >>> x, y = torch.arange(10.0).reshape(5, 2), torch.arange(5)
        >>> shard(x, y, rank=1, world_size=2)[1]
        tensor([3, 4])
    """
    r = _current_rank() if rank is None else rank
    w = _current_world_size() if world_size is None else world_size
    if not 0 <= r < w:
        raise ValueError(f"rank must be in [0, {w}), got {r}")
    if not tensors:
        raise ValueError("shard needs at least one tensor")
    lengths = {len(t) for t in tensors}
    if len(lengths) != 1:
        raise ValueError(f"tensors must share their first dimension, got lengths {lengths}")
    if lengths.pop() < w:
        raise ValueError(f"cannot shard {len(tensors[0])} rows over {w} ranks")
    return tuple(t.tensor_split(w)[r] for t in tensors)


def data_plate(
    name: str,
    num_data: int,
    shard_size: int,
    *,
    batch_size: int | None = None,
    dim: int | None = None,
    device: torch.device | str | None = None,
) -> pyro.plate:
    r"""A ``pyro.plate`` over this rank's shard, scaled to the full data size.

    Its indices index the *local* shard (``0 .. shard_size - 1``); the plate's size is
    ``num_data``, so Pyro scales the likelihood by :math:`N / n` and each rank's loss
    estimates the full-data loss. ``batch_size`` draws a random minibatch of the shard
    at each step instead of using all of it.

    Example:
        >>> import pyro.distributions as dist
        >>> y = torch.zeros(3)
        >>> def model():
        ...     with data_plate("data", num_data=12, shard_size=3) as idx:
        ...         pyro.sample("y", dist.Normal(0.0, 1.0), obs=y[idx])
        >>> pyro.poutine.trace(model).get_trace().nodes["y"]["scale"]
        4.0
    """
    if shard_size < 1 or num_data < shard_size:
        raise ValueError(
            f"need 1 <= shard_size <= num_data, got shard_size={shard_size}, num_data={num_data}"
        )
    if batch_size is None or batch_size >= shard_size:
        indices = torch.arange(shard_size, device=device)
    elif batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    else:
        indices = torch.randperm(shard_size, device=device)[:batch_size]
    return pyro.plate(name, size=num_data, subsample=indices, dim=dim, device=device)


def _gather(values: list[float]) -> Tensor:
    """Every rank's ``values``, shape ``(world_size, len(values))``, on every rank."""
    mine = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    if not _active():
        return mine[None].cpu()
    out = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(out, mine)
    return torch.stack(out).cpu()


def _gather_objects(obj) -> list:
    if not _active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _raise_if_any_raised(error: BaseException | None, during: str) -> None:
    """Share which ranks raised; if any did, raise on all of them, naming each error."""
    messages = _gather_objects(None if error is None else repr(error))
    failed = {r: m for r, m in enumerate(messages) if m is not None}
    if failed:
        text = "; ".join(f"rank {r} raised {m}" for r, m in failed.items())
        raise RankFailedError(f"{text}, during {during}") from error


class DataParallelELBO(ELBO):
    """Wrap an ELBO so ``loss_and_grads`` averages loss and gradients over all ranks.

    The gradients of every parameter the step touched are flattened, summed with one
    ``all_reduce`` per dtype and divided by the world size, before ``SVI`` hands them to
    the optimizer. Before that, each rank shares whether its step was finite and
    whether it raised: if any rank failed, *every* rank clears its gradients and raises
    (:class:`~pyro_realnvp.NonFiniteLossError` naming the ranks whose loss or gradients
    were not finite, or :class:`RankFailedError` with the failing rank's error), so no
    rank waits forever in a collective and no parameter is updated. Without a process
    group it behaves as the wrapped ELBO plus that check.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro.infer import SVI
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), DataParallelELBO())
        >>> isinstance(svi.step(), float)
        True
    """

    def __init__(self, elbo: ELBO | None = None) -> None:
        self.elbo = Trace_ELBO() if elbo is None else elbo
        super().__init__(num_particles=self.elbo.num_particles)

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        loss, error = self._local(self.elbo.loss, model, guide, args, kwargs)
        return self._agree(loss, True, 0, error, model, guide, args, kwargs)

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with poutine.trace(param_only=True) as capture:
            loss, error = self._local(self.elbo.loss_and_grads, model, guide, args, kwargs)
        params = [
            capture.trace.nodes[name]["value"].unconstrained()
            for name in sorted(capture.trace.nodes)
        ]
        grads = [p.grad for p in params if p.grad is not None]
        # One host sync for all gradients, not one per parameter.
        grads_finite = not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all())
        numel = sum(p.numel() for p in params)
        try:
            loss = self._agree(loss, grads_finite, numel, error, model, guide, args, kwargs)
        except RuntimeError:  # raised on every rank alike, so every rank clears its grads
            for param in params:
                param.grad = None
            raise
        _average_grads(params)
        return loss

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        return self.elbo.differentiable_loss(model, guide, *args, **kwargs)

    def _get_trace(self, model, guide, args, kwargs):
        return self.elbo._get_trace(model, guide, args, kwargs)

    @staticmethod
    def _local(step, model, guide, args, kwargs) -> tuple[float, BaseException | None]:
        # Catch everything: a rank that leaves the step early strands the others.
        try:
            return float(step(model, guide, *args, **kwargs)), None
        except Exception as error:  # noqa: BLE001 - re-raised by _agree on every rank
            return math.nan, error

    @staticmethod
    def _agree(loss, grads_finite, numel, error, model, guide, args, kwargs) -> float:
        """Share each rank's status; raise on every rank if any failed, else the mean loss."""
        finite = math.isfinite(loss) and grads_finite
        status = _RAISED if error is not None else _OK if finite else _NOT_FINITE
        table = _gather([status, loss if finite else 0.0, numel])
        statuses = [int(s) for s in table[:, 0]]
        if any(statuses):
            if _RAISED in statuses:
                _raise_if_any_raised(error, "an SVI step (no rank updated its parameters)")
            bad = [r for r, s in enumerate(statuses) if s == _NOT_FINITE]
            what = f"the loss or its gradients were not finite on rank(s) {bad}"
            if statuses[rank()] == _NOT_FINITE:
                what += (
                    f" (here, rank {rank()}: {explain_non_finite(model, guide, *args, **kwargs)})"
                )
            raise NonFiniteLossError(
                f"{what}. No rank updated its parameters; the guide is still usable."
            )
        sizes = [int(n) for n in table[:, 2]]
        if len(set(sizes)) != 1:
            raise RuntimeError(
                f"ranks hold different numbers of parameter elements {sizes}: every rank "
                "must run the same model and guide"
            )
        return float(table[:, 1].mean())


def _average_grads(params: list[Tensor]) -> None:
    """Replace each gradient by its mean over ranks (a missing gradient counts as zero)."""
    n = world_size()
    if n == 1:
        return
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    buckets: dict[tuple, list[Tensor]] = {}
    for param in params:
        buckets.setdefault((param.dtype, param.device), []).append(param)
    device = _comm_device()
    for group in buckets.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group]).to(device)
        dist.all_reduce(flat)
        flat /= n
        for param, grad in zip(group, flat.split([p.numel() for p in group]), strict=True):
            param.grad.copy_(grad.view_as(param))


def _store_params() -> list[tuple[str, Tensor]]:
    """The param store's unconstrained tensors, in an order every rank agrees on."""
    return sorted(pyro.get_param_store().named_parameters())


@torch.no_grad()
def broadcast_parameters(model: Callable, guide: Callable, *args, src: int = 0, **kwargs) -> None:
    """Create every parameter of ``guide`` and ``model``, then copy rank ``src``'s to all.

    ``AutoRealNVP`` builds its parameters at its first call, each rank from its own
    random state; this runs the guide and the model once (without recording, and
    leaving Pyro's RNG state as it found it) and broadcasts every tensor in the param
    store, so all ranks start from the same point. Ranks whose parameter names or shapes
    disagree get a clear error before any broadcast.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_realnvp import AutoRealNVP
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> guide = AutoRealNVP(model, num_layers=2)
        >>> broadcast_parameters(model, guide)
        >>> "AutoRealNVP.loc" in pyro.get_param_store()
        True
    """
    state = get_rng_state()
    error = None
    try:
        with poutine.block():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            poutine.replay(model, trace=guide_trace)(*args, **kwargs)
    except Exception as caught:  # noqa: BLE001 - re-raised below on every rank
        error = caught
    finally:
        set_rng_state(state)
    _raise_if_any_raised(error, "setting up the guide and model")
    params = _store_params()
    layouts = _gather_objects([(name, tuple(p.shape)) for name, p in params])
    for r, layout in enumerate(layouts):
        if layout != layouts[src]:
            raise RuntimeError(
                f"rank {r} and rank {src} hold different parameters "
                f"({sorted(set(layout) ^ set(layouts[src]))[:4]} ...): every rank must "
                "build the same model and guide"
            )
    if world_size() == 1:
        return
    device = _comm_device()
    for _, param in params:
        buffer = param.detach().to(device)
        dist.broadcast(buffer, src=src)
        param.copy_(buffer)


@torch.no_grad()
def max_parameter_divergence(src: int = 0) -> float:
    """Largest absolute difference between any rank's parameters and rank ``src``'s.

    Zero when the ranks are in sync; a cheap check to run now and then in a long job.

    Example:
        >>> pyro.param("a", torch.ones(3)) is not None
        True
        >>> max_parameter_divergence()
        0.0
    """
    if world_size() == 1:
        return 0.0
    device = _comm_device()
    worst = torch.zeros((), dtype=torch.float64, device=device)
    for _, param in _store_params():
        reference = param.detach().to(device).clone()
        dist.broadcast(reference, src=src)
        diff = (param.detach().to(device) - reference).abs().max().to(torch.float64)
        worst = torch.maximum(worst, diff)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


def _barrier() -> None:
    if _active():
        dist.barrier()


def save_checkpoint(path: str | os.PathLike, optim: PyroOptim | None = None) -> None:
    """Rank 0 writes the param store to ``path`` (and ``optim``'s state beside it).

    The file is Pyro's own param-store format, so
    ``pyro.get_param_store().load(path)`` reads it in any single process, and
    :func:`load_checkpoint` reads it in any number of them. Parameters are identical on
    every rank, so rank 0's copy is the model. All ranks wait until it is written.

    Example:
        >>> import tempfile
        >>> _ = pyro.param("a", torch.ones(2))
        >>> path = Path(tempfile.mkdtemp()) / "params.pt"
        >>> save_checkpoint(path)
        >>> pyro.clear_param_store(); load_checkpoint(path)
        >>> pyro.param("a")
        tensor([1., 1.], requires_grad=True)
    """
    path = Path(path)
    if is_main_process():
        partial = path.with_name(path.name + ".partial")
        pyro.get_param_store().save(str(partial))
        os.replace(partial, path)
        if optim is not None:
            optim.save(str(_optim_path(path)))
    _barrier()


def _optim_path(path: Path) -> Path:
    return path.with_name(path.name + ".optim")


@torch.no_grad()
def load_checkpoint(
    path: str | os.PathLike,
    optim: PyroOptim | None = None,
    *,
    map_location: str | torch.device | None = None,
) -> None:
    """Load a checkpoint from :func:`save_checkpoint` (or ``ParamStoreDict.save``) on this rank.

    Parameters already in the store (a guide that has run) are overwritten in place, so
    the guide's modules see the loaded values; the others are added and picked up when
    the guide is built. A parameter whose shape differs raises, naming it.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "params.pt"
        >>> _ = pyro.param("b", torch.zeros(3))
        >>> save_checkpoint(path)
        >>> with torch.no_grad():
        ...     _ = pyro.param("b").fill_(7.0)
        >>> load_checkpoint(path)
        >>> pyro.param("b")
        tensor([0., 0., 0.], requires_grad=True)
    """
    path = Path(path)
    state = torch.load(path, map_location=map_location, weights_only=False)
    store = pyro.get_param_store()
    existing = dict(store.named_parameters())
    new = {"params": {}, "constraints": {}}
    for name, value in state["params"].items():
        if name in existing:
            current = existing[name]
            if current.shape != value.shape:
                raise ValueError(
                    f"checkpoint parameter '{name}' has shape {tuple(value.shape)}, "
                    f"the guide's has {tuple(current.shape)}"
                )
            current.copy_(value)
        else:
            new["params"][name] = value.detach().requires_grad_()
            new["constraints"][name] = state["constraints"][name]
    store.set_state(new)
    if optim is not None and _optim_path(path).exists():
        optim.load(str(_optim_path(path)), map_location=map_location)


def fit_distributed(
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
    **kwargs,
) -> list[float]:
    """:func:`~pyro_realnvp.fit` on every rank, with parameters broadcast and gradients averaged.

    Call it on every rank with that rank's shard (the model should use
    :func:`data_plate`). It broadcasts rank 0's initial parameters, then runs ``fit``
    with the loss wrapped in :class:`DataParallelELBO`; only rank 0 shows the progress
    bar. ``num_particles`` is per rank. Returns the history of the rank-averaged loss,
    the same on every rank. Without a process group it is ``fit``.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(3.0, 1.0))
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> losses = fit_distributed(model, guide, num_steps=300, lr=0.05, progress=False)
        >>> len(losses), round(guide.median()["x"].item())
        (300, 3)
    """
    if loss is None:
        loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)
    broadcast_parameters(model, guide, *args, **kwargs)
    return fit(
        model,
        guide,
        *args,
        num_steps=num_steps,
        lr=lr,
        progress=progress and is_main_process(),
        loss=DataParallelELBO(loss),
        optim=optim,
        lr_decay=lr_decay,
        clip_norm=clip_norm,
        **kwargs,
    )
