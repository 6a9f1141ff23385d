"""Checkpoints of a data-parallel run: Pyro's param-store files, written once, read anywhere.

Parameters are identical on every rank, so rank 0 writes them; any number of processes
read them back, and so does ``pyro.get_param_store().load`` in one process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
import torch.distributed as torch_dist
from pyro.optim import PyroOptim
from torch import Tensor
from torch.distributions import constraints, transform_to

from .._internal.locate import warn_at_user
from ..errors import RankFailedError
from ..guide.units import StartUnits
from .ranks import comm_device, gather_objects, is_main_process, world_size

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
    every rank, so rank 0's copy is the model. Each file is written whole or not at all
    (to a temporary file beside it, then renamed), so a failed save leaves the previous
    checkpoint as it was. ``optim`` must be a Pyro optimizer (``pyro.optim.Adam``, not
    ``torch.optim.Adam``); its state goes to ``path`` + ``".optim"``. All ranks wait
    until it is written; if rank 0 cannot write it, every rank raises.

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
    _check_optim(optim)
    _on_main_process(lambda: _save(path, optim), f"saving the checkpoint {path}")


def _save(path: Path, optim: PyroOptim | None) -> None:
    _check_destination(path)
    if not pyro.get_param_store().keys():
        warn_at_user(
            f"the param store is empty, so the checkpoint {path} holds no parameter: "
            "run the guide (or fit) before saving"
        )
    files = {path: pyro.get_param_store().get_state()}
    if optim is not None:
        files[_optim_path(path)] = optim.get_state()
    _write_atomically(files)


def _on_main_process(work: Callable[[], None], what: str) -> None:
    """Run ``work`` on rank 0 while the other ranks wait; if it raised, rank 0 raises its
    error and every other rank a :class:`RankFailedError` naming it, none left waiting."""
    error = None
    if is_main_process():
        try:
            work()
        except Exception as caught:  # noqa: BLE001 - raised below, on every rank
            error = caught
    outcome = gather_objects(None if error is None else repr(error))[0]
    if error is not None:
        raise error
    if outcome is not None:
        raise RankFailedError(f"rank 0 raised {outcome}, during {what}")


def _check_optim(optim) -> None:
    """Refuse, before anything is written or read, an optimizer that is not Pyro's."""
    if optim is not None and not isinstance(optim, PyroOptim):
        raise TypeError(
            "optim must be a Pyro optimizer such as pyro.optim.Adam({'lr': 0.01}), the one "
            f"given to SVI or fit, got {optim!r}"
        )


def _check_destination(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(
            f"cannot save a checkpoint to {path}: it is a directory; name a file in it, "
            f"such as {path / 'checkpoint.pt'}"
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"cannot save a checkpoint to {path}: the directory {path.parent} does not "
            "exist; create it first"
        )


def _write_atomically(files: dict[Path, dict]) -> None:
    """``torch.save`` each state to a temporary file beside its path, then rename them all:
    a failure on the way leaves no temporary file and every path as it was."""
    written: dict[Path, str] = {}
    try:
        for path, state in files.items():
            # Only rank 0 writes: a name of its own process cannot clash.
            written[path] = str(path.with_name(f".{path.name}.{os.getpid()}.partial"))
            with open(written[path], "wb") as file:
                torch.save(state, file)
        for path, temporary in written.items():
            os.replace(temporary, path)
    except BaseException:
        for temporary in written.values():
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
        raise


def _optim_path(path: Path) -> Path:
    return path.with_name(path.name + ".optim")


def _in_constraint(value: Tensor, saved, current) -> Tensor:
    """The unconstrained value that gives under ``current`` what ``value`` gave under the
    ``saved`` constraint (the same tensor where their maps agree).

    AutoRealNVP's location is stored in units of its start, which another process's guide
    (on other data, say) may not share: it is taken as it is, and :func:`_take_units`
    then loads those units too, so training goes on in the checkpoint's units."""
    if isinstance(saved, StartUnits) and isinstance(current, StartUnits):
        return value
    if saved is current or transform_to(saved) == transform_to(current):
        return value
    with torch.no_grad():
        return transform_to(current).inv(transform_to(saved)(value))


def _take_units(saved, current) -> None:
    """Load a location's start units in place (see :func:`_in_constraint`)."""
    if isinstance(saved, StartUnits) and isinstance(current, StartUnits):
        current.center.copy_(saved.center)
        current.scale.copy_(saved.scale)


def _read(path: Path, map_location) -> dict:
    """The param-store state in ``path``, or an error naming the file and what it holds."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except OSError:
        raise  # its message names the file
    except Exception as error:  # noqa: BLE001 - unpickling fails in many ways
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"{path} is not a readable checkpoint: torch.load failed ({reason}); the file is "
            "not one save_checkpoint wrote, or it was cut short or overwritten"
        ) from error
    if not (
        isinstance(state, dict)
        and set(state) == {"params", "constraints"}
        and isinstance(state["params"], dict)
        and isinstance(state["constraints"], dict)
        and all(isinstance(v, Tensor) for v in state["params"].values())
    ):
        holds = (
            f"a dict with keys {sorted(map(str, state))[:6]}"
            if isinstance(state, dict)
            else f"a {type(state).__name__}"
        )
        raise ValueError(
            f"{path} is not a checkpoint of Pyro's param store (a dict of 'params' and "
            f"'constraints', as save_checkpoint writes): it holds {holds}. A module's "
            "state_dict loads with module.load_state_dict(torch.load(path))"
        )
    return state


def _read_optim(path: Path, optim: PyroOptim | None, map_location) -> dict | None:
    """The optimizer state saved beside ``path``, if ``optim`` wants it; a warning if none."""
    _check_optim(optim)
    if optim is None:
        return None
    optim_path = _optim_path(path)
    if not optim_path.exists():
        warn_at_user(
            f"{optim_path} does not exist, so the optimizer's state was not loaded and it "
            "starts afresh: save_checkpoint(path, optim) writes it"
        )
        return None
    try:
        return torch.load(optim_path, map_location=map_location, weights_only=False)
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 - unpickling fails in many ways
        raise ValueError(f"{optim_path} is not a readable optimizer state: {error}") from error


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
    the guide is built. A file that is not a checkpoint, or a parameter whose shape
    differs, raises, naming it, before anything is loaded: a refused checkpoint leaves
    the store as it was. ``optim``'s state is read from ``path`` + ``".optim"`` (a
    warning if there is none).

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
    state = _read(path, map_location)
    optim_state = _read_optim(path, optim, map_location)
    store = pyro.get_param_store()
    existing = dict(store.named_parameters())
    store_constraints = store.get_state()["constraints"]
    updates, new = [], {"params": {}, "constraints": {}}
    for name, value in state["params"].items():
        saved = state["constraints"].get(name, constraints.real)
        if name not in existing:
            new["params"][name] = value.detach().requires_grad_()
            new["constraints"][name] = saved
            continue
        current = existing[name]
        if current.shape != value.shape:
            raise ValueError(
                f"checkpoint parameter '{name}' has shape {tuple(value.shape)}, "
                f"the guide's has {tuple(current.shape)}; nothing was loaded from {path}"
            )
        now = store_constraints.get(name, saved)
        updates.append((current, _in_constraint(value, saved, now), saved, now))
    for current, value, saved, now in updates:  # all checked: now load
        _take_units(saved, now)
        current.copy_(value)
    store.set_state(new)
    if optim_state is not None:
        optim.set_state(optim_state)
