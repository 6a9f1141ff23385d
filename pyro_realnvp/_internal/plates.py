"""How many plates a model nests, read from its traces."""

from __future__ import annotations

from pyro import poutine

__all__ = ["plate_nesting", "subsampling_plate"]


def plate_nesting(*traces: poutine.Trace) -> int:
    """The deepest vectorized plate over the sample sites of ``traces`` (0: none).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     with pyro.plate("a", 2), pyro.plate("b", 3):
        ...         pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> plate_nesting(poutine.trace(model).get_trace())
        2
    """
    dims = [
        -frame.dim
        for trace in traces
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


def subsampling_plate(*traces: poutine.Trace) -> str | None:
    """Where a sample site of ``traces`` lies in a plate that reads a subsample of its data,
    ``"site 'y' in plate 'data' (256 of 10000)"``; ``None`` where none does.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     with pyro.plate("data", 100, subsample_size=10):
        ...         pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.zeros(10))
        >>> subsampling_plate(poutine.trace(model).get_trace())
        "site 'y' in plate 'data' (10 of 100)"
    """
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            for frame in site["cond_indep_stack"]:
                if frame.full_size is not None and frame.size != frame.full_size:
                    sizes = f"{frame.size} of {frame.full_size}"
                    return f"site '{name}' in plate '{frame.name}' ({sizes})"
    return None
