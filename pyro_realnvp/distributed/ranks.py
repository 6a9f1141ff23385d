"""Ranks and shards: who this process is in a data-parallel run, and its part of the data.

Each rank holds a shard of the data and evaluates the model on it under a subsampling
``pyro.plate`` whose size is the full data size (:func:`data_plate`, :func:`shard`), so
its loss is an unbiased estimate of the full-data loss. Everything here works without a
process group too (one process, world size 1), so the same script runs under
``python`` and under ``torchrun``.
"""

from __future__ import annotations

import operator
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pyro
import torch
import torch.distributed as torch_dist
from torch import Tensor

__all__ = [
    "Blocks",
    "barrier",
    "comm_device",
    "data_plate",
    "gather_objects",
    "in_process_group",
    "is_main_process",
    "process_group",
    "rank",
    "seed_rank",
    "shard",
    "world_size",
]

#: Seconds :func:`process_group` waits, the GIL released, after destroying the group it
#: created: the backend's worker threads take the GIL to free a finished collective's
#: tensors, and one still waiting for it when the interpreter finalizes aborts the process.
WORKERS_DRAIN_S = 0.1


def in_process_group() -> bool:
    """Whether this process is a rank of an initialised default process group.

    Example:
        >>> in_process_group()
        False
    """
    return torch_dist.is_available() and torch_dist.is_initialized()


def _current_rank() -> int:
    return torch_dist.get_rank() if in_process_group() else 0


def _current_world_size() -> int:
    return torch_dist.get_world_size() if in_process_group() else 1


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


def comm_device() -> torch.device:
    """Where collectives' tensors live: NCCL moves only CUDA tensors, gloo CPU ones.

    Example:
        >>> comm_device()  # no process group
        device(type='cpu')
    """
    if in_process_group() and torch_dist.get_backend() == "nccl":
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
    call created it, then ``WORKERS_DRAIN_S`` seconds pass with the GIL released, so the
    backend's worker threads are done with Python objects before the interpreter ends.

    Example:
        >>> with process_group() as (r, n):
        ...     print(r, n)
        0 1
    """
    created = False
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not in_process_group():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch_dist.init_process_group(backend, timeout=timeout)
        created = True
    try:
        yield rank(), world_size()
    finally:
        if created:
            torch_dist.destroy_process_group()
            # Gloo's worker threads free a finished collective's tensors after the caller
            # has its result; one still waiting for the GIL at finalization aborts the
            # process ("terminate called without an active exception", 1 exit in 15 of
            # the example's test on torch 2.13). A sleep releases the GIL.
            time.sleep(WORKERS_DRAIN_S)


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
    w = _current_world_size() if world_size is None else _integer("world_size", world_size)
    if w < 1:
        raise ValueError(f"world_size must be at least 1 (the number of ranks), got {w}")
    r = _current_rank() if rank is None else _integer("rank", rank)
    if not 0 <= r < w:
        raise ValueError(f"rank must be in [0, {w}), got {r}")
    num_rows = _num_rows("shard", tensors)
    if num_rows < w:
        raise ValueError(f"cannot shard {num_rows} rows over {w} ranks")
    return tuple(t.tensor_split(w)[r] for t in tensors)


def _integer(name: str, value) -> int:
    """``value`` as an ``int``; a ``TypeError`` naming ``name`` if it is not an integer
    (a float such as ``2.0`` included: a count of rows or ranks is never fractional)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer, got {value!r} (a {type(value).__name__})"
        ) from None


def _num_rows(caller: str, tensors: tuple) -> int:
    """The rows the ``tensors`` given to ``caller`` share along dim 0, or a clear error."""
    if not tensors:
        raise ValueError(f"{caller} needs at least one tensor")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(
                f"{caller} takes tensors, got a {type(t).__name__} as argument {i}: "
                "convert it with torch.as_tensor"
            )
        if t.dim() == 0:
            raise TypeError(
                f"{caller} splits tensors along their first dimension, got a 0-d tensor as "
                f"argument {i}"
            )
    lengths = {len(t) for t in tensors}
    if len(lengths) != 1:
        raise ValueError(f"tensors must share their first dimension, got lengths {lengths}")
    return lengths.pop()


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
        num_rows = _num_rows("Blocks", tensors)
        block_size = _integer("block_size", block_size)
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.tensors, self.block_size = tensors, block_size
        self.num_rows = num_rows

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
    num_data, shard_size = _integer("num_data", num_data), _integer("shard_size", shard_size)
    if batch_size is not None:
        batch_size = _integer("batch_size", batch_size)
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


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group).

    Example:
        >>> gather_objects("mine")
        ['mine']
    """
    if not in_process_group():
        return [obj]
    out = [None] * world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (nothing without a process group).

    Example:
        >>> barrier()
    """
    if in_process_group():
        torch_dist.barrier()
