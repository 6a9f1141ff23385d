"""How many plates a model nests, read from its traces."""

from __future__ import annotations

from pyro import poutine

__all__ = ["plate_nesting"]


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
