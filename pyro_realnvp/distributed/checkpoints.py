"""Checkpoints of a data-parallel run: Pyro's param-store files, written once, read anywhere.

Parameters are identical on every rank, so rank 0 writes them; any number of processes
read them back, and so does ``pyro.get_param_store().load`` in one process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import torch
import torch.distributed as torch_dist
from pyro.optim import PyroOptim
from torch import Tensor
from torch.distributions import transform_to

from ..guide.units import StartUnits
from .ranks import barrier, comm_device, is_main_process, world_size

__all__ = ["load_checkpoint", "max_parameter_divergence", "save_checkpoint"]


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
    device = comm_device()
    worst = torch.zeros((), dtype=torch.float64, device=device)
    for _, param in _store_params():
        reference = param.detach().to(device).clone()
        torch_dist.broadcast(reference, src=src)
        diff = (param.detach().to(device) - reference).abs().max().to(torch.float64)
        worst = torch.maximum(worst, diff)
    torch_dist.all_reduce(worst, op=torch_dist.ReduceOp.MAX)
    return float(worst)


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
    barrier()


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
