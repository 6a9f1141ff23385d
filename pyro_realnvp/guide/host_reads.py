"""Latent values the model reads as Python numbers, found once at set-up.

A model that takes ``s.item()`` or ``float(mu)`` of a latent computes on with a number
that autograd cannot follow: the ELBO's gradient no longer reaches that latent through
the likelihood, and the guide trains on a cut gradient without a word (torch warns only
for ``float()``, naming nothing). One run of the model with each latent a leaf tensor,
under a ``TorchFunctionMode`` that records such reads, names the sites behind them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from pyro import poutine
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .._internal.locate import warn_at_user

__all__ = ["host_read_sites", "warn_host_reads"]

#: The tensor methods that hand a value to Python, where autograd cannot follow it.
HOST_READS = frozenset({"item", "__float__", "__int__", "__index__", "tolist", "numpy"})
#: Autograd nodes searched for the latents behind one read (a model's graph is small).
MAX_NODES = 10_000


class _HostReads(TorchFunctionMode):
    """Records, for each host read of a tensor that requires grad, the leaves behind it."""

    def __init__(self, leaves: dict[int, str]) -> None:
        super().__init__()
        self.leaves, self.found = leaves, set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS and args and isinstance(args[0], Tensor) and args[0].requires_grad:
            self.found |= _leaves_behind(args[0], self.leaves)
        return func(*args, **(kwargs or {}))


def _leaves_behind(tensor: Tensor, leaves: dict[int, str]) -> set[str]:
    """The names of the ``leaves`` (by ``id``) that ``tensor`` was computed from."""
    if tensor.grad_fn is None:
        return {leaves[id(tensor)]} if id(tensor) in leaves else set()
    found, stack, seen = set(), [tensor.grad_fn], set()
    while stack and len(seen) < MAX_NODES:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad: a leaf
        if variable is not None and id(variable) in leaves:
            found.add(leaves[id(variable)])
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def host_read_sites(model: Callable, prototype: poutine.Trace, args: tuple,
                    kwargs: dict) -> list[str]:  # fmt: skip
    """The latent sites of ``prototype`` whose values ``model`` reads as Python numbers.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(0.0, s.item()), obs=torch.tensor(0.3))
        >>> host_read_sites(model, poutine.trace(model).get_trace(), (), {})
        ['s']
    """
    values = {
        name: site["value"].detach().clone().requires_grad_()
        for name, site in prototype.iter_stochastic_nodes()
        if site["value"].is_floating_point()
    }
    watch = _HostReads({id(value): name for name, value in values.items()})
    try:
        with warnings.catch_warnings(), poutine.block(), watch:
            warnings.simplefilter("ignore")  # torch's own, for float(): named below
            poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the set-up's other checks say why a run fails
        pass
    return sorted(watch.found)


def warn_host_reads(model: Callable, prototype: poutine.Trace, args: tuple, kwargs: dict):
    """Warn, naming them, of latent sites the model reads as Python numbers.

    Example:
        >>> import warnings, pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(float(mu), 1.0), obs=torch.tensor(0.3))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_host_reads(model, poutine.trace(model).get_trace(), (), {})
        >>> str(caught[0].message)[:40]
        "the model reads latent site(s) ['mu'] as"
    """
    names = host_read_sites(model, prototype, args, kwargs)
    if names:
        warn_at_user(
            f"the model reads latent site(s) {names} as Python numbers (.item(), float(), "
            "int(), .tolist()): no gradient reaches them through what it computes from "
            "those numbers, so the guide trains on a cut gradient. Keep them tensors "
            "(torch.tanh(mu), not math.tanh(float(mu)))"
        )
