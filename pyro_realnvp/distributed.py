"""What data-parallel SVI needs beyond DistributedDataParallel: shards, one flag, checkpoints.

torch's ``DistributedDataParallel`` (:mod:`pyro_realnvp.ddp`, or Lightning's
``strategy="ddp"``, :mod:`pyro_realnvp.lightning`) broadcasts the initial parameters and
averages the gradients during the backward pass. What it does not know about is Pyro's
side: each rank holds a shard of the data and evaluates the model on it under a
subsampling ``pyro.plate`` whose size is the full data size (:func:`data_plate`,
:func:`shard`), so its loss is an unbiased estimate of the full-data loss; and a step
that is not finite on one rank must update nothing on every rank
(:class:`FiniteStepFlag`). Checkpoints are Pyro's param-store files.

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
from pyro.optim import PyroOptim
from torch import Tensor
from torch.distributions import transform_to

from .start_units import StartUnits
from .train import NonFiniteLossError

__all__ = [
    "Blocks",
    "FiniteStepFlag",
    "RankFailedError",
    "data_plate",
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


class Blocks(torch.utils.data.Dataset):
    """Contiguous blocks of rows of ``tensors`` as the items of a dataset, for data loaders.

    Item ``i`` is the tuple of rows ``i * block_size`` to ``(i + 1) * block_size`` of each
    tensor (the last block may be shorter): slices, with no per-row indexing or stacking,
    so ``DataLoader(Blocks(x, y, block_size=b), batch_size=None)`` costs nothing per
    step, where ``DataLoader(TensorDataset(x, y), batch_size=b)`` stacks ``b`` rows one
    by one. Under Lightning's ``strategy="ddp"`` the ``DistributedSampler`` deals whole
    blocks to the ranks; with ``block_size = N // W`` and no shuffling, rank ``r`` gets
    block ``r`` at every step, which is :func:`shard`'s slice.

    Example:
        >>> x, y = torch.arange(10.0).reshape(5, 2), torch.arange(5)
        >>> blocks = Blocks(x, y, block_size=2)
        >>> len(blocks), blocks[2]
        (3, (tensor([[8., 9.]]), tensor([4])))
    """

    def __init__(self, *tensors: Tensor, block_size: int) -> None:
        if not tensors:
            raise ValueError("Blocks needs at least one tensor")
        lengths = {len(t) for t in tensors}
        if len(lengths) != 1:
            raise ValueError(f"tensors must share their first dimension, got lengths {lengths}")
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.tensors, self.block_size = tensors, block_size
        self.num_rows = lengths.pop()

    def __len__(self) -> int:
        return -(-self.num_rows // self.block_size)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} of {len(self)}")
        rows = slice(index * self.block_size, (index + 1) * self.block_size)
        return tuple(t[rows] for t in self.tensors)


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
        self.buffer = torch.tensor(values, dtype=torch.float64, device=_comm_device())
        self._work = dist.all_reduce(self.buffer, async_op=True) if _active() else None

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
        _raise_step_failure(_gather_objects(report()))


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


def _store_params() -> list[tuple[str, Tensor]]:
    """The param store's unconstrained tensors, in an order every rank agrees on."""
    return sorted(pyro.get_param_store().named_parameters())


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


def _in_constraint(value: Tensor, saved, current) -> Tensor:
    """The unconstrained value that gives under ``current`` what ``value`` gave under the
    ``saved`` constraint (the same tensor where their maps agree).

    AutoRealNVP's location is stored in units of its start, which another process's guide
    (on other data, say) may not share: those units are loaded too, in place, so training
    goes on in the checkpoint's units."""
    if isinstance(saved, StartUnits) and isinstance(current, StartUnits):
        current.center.copy_(saved.center)
        current.scale.copy_(saved.scale)
        return value
    if saved is current or transform_to(saved) == transform_to(current):
        return value
    with torch.no_grad():
        return transform_to(current).inv(transform_to(saved)(value))


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
    store_constraints = store.get_state()["constraints"]
    new = {"params": {}, "constraints": {}}
    for name, value in state["params"].items():
        if name in existing:
            current = existing[name]
            if current.shape != value.shape:
                raise ValueError(
                    f"checkpoint parameter '{name}' has shape {tuple(value.shape)}, "
                    f"the guide's has {tuple(current.shape)}"
                )
            saved = state["constraints"][name]
            current.copy_(_in_constraint(value, saved, store_constraints.get(name, saved)))
        else:
            new["params"][name] = value.detach().requires_grad_()
            new["constraints"][name] = state["constraints"][name]
    store.set_state(new)
    if optim is not None and _optim_path(path).exists():
        optim.load(str(_optim_path(path)), map_location=map_location)
