"""The guides compared, each built from a model with its documented defaults.

``"zuko RealNVP"`` (zuko's ``RealNVP`` at zuko's defaults through Pyro's ``ZukoToPyro``,
see :mod:`benchmarks.zuko_guide`) is listed only where zuko, the ``bench`` extra, is
installed, so the test suite runs without it; the benchmark runner says when it is left out.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from functools import partial

import torch
from pyro.distributions.transforms import (
    ComposeTransformModule,
    Permute,
    affine_coupling,
    iterated,
)
from pyro.infer.autoguide import (
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalizingFlow,
)

from benchmarks.zuko_guide import AutoZukoRealNVP, zuko_available
from pyro_realnvp import AutoRealNVP, fit

__all__ = [
    "GUIDES",
    "ZUKO_GUIDE",
    "coupling_with_permutations",
    "fit_counting_redraws",
    "make_guide",
]


def coupling_with_permutations(input_dim: int, num_layers: int = 4) -> ComposeTransformModule:
    """``num_layers`` of Pyro's ``affine_coupling`` with a reversal between them, so the
    coordinates left unchanged by one layer are transformed by the next."""
    reverse = torch.arange(input_dim - 1, -1, -1)
    parts = []
    for layer in range(num_layers):
        parts.append(affine_coupling(input_dim))
        if layer < num_layers - 1:
            parts.append(Permute(reverse))
    return ComposeTransformModule(parts)


#: Column label -> guide constructor taking the model.
GUIDES: dict[str, Callable] = {
    "AutoRealNVP": AutoRealNVP,
    "AutoNormal": AutoNormal,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoIAFNormal": AutoIAFNormal,
    "ANF 4 coupling": lambda model: AutoNormalizingFlow(
        model, partial(iterated, 4, affine_coupling)
    ),
    "ANF 4 coupling+perm": lambda model: AutoNormalizingFlow(model, coupling_with_permutations),
}
#: Pyro's flow tutorials now point to zuko; its RealNVP at zuko's own defaults.
ZUKO_GUIDE = "zuko RealNVP"
if zuko_available():
    GUIDES[ZUKO_GUIDE] = AutoZukoRealNVP


def make_guide(name: str, model: Callable, *, label: str | None = None, **options):
    """Build the named guide; its param names are prefixed with ``label`` (default the
    name), so several guides of one class can share the param store, as the interleaved
    timing needs."""
    guide = GUIDES[name](model, **options)
    guide._pyro_name = re.sub(r"\W", "_", label or name)
    return guide


def fit_counting_redraws(model: Callable, guide: Callable, *args, **kwargs) -> tuple[list, int]:
    """``fit``, and how many of its steps were redrawn after a non-finite loss.

    The count is the returned history's ``redraws``; fit's closing warning about them
    is silenced here, as the tables report it.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> losses, redraws = fit_counting_redraws(
        ...     model, AutoNormal(model), num_steps=5, progress=False)
        >>> len(losses), redraws
        (5, 0)
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\d+ of \d+ SVI steps were redrawn")
        history = fit(model, guide, *args, **kwargs)
    return history, history.redraws
