"""Pyro translations of posteriordb's reference posteriors, with their data and draws.

Data, reference draws and Stan code are read at run time from ``$POSTERIORDB`` (default
``../shared/posteriordb`` beside the repository), never copied into the repository. One
module per family of models; each lists its translations in ``SPECS``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache

import torch
from torch import Tensor

from ..targets import Target
from . import classic, dynamics, regressions
from .common import Flat, Spec, as_tensor, flat, posteriordb_root

__all__ = [
    "POSTERIORDB_TARGETS",
    "SPECS",
    "Flat",
    "Spec",
    "as_tensor",
    "column_names",
    "flat",
    "load_data",
    "load_draws",
    "load_target",
    "posteriordb_root",
]

#: Row label -> the translation, over every family.
SPECS: dict[str, Spec] = {**classic.SPECS, **regressions.SPECS, **dynamics.SPECS}


def column_names(columns) -> list[str]:
    """posteriordb's column names for ``(site, size)`` pairs: ``mu``, ``theta[1]``, ..."""
    return [
        site if size == 1 else f"{site}[{i}]" for site, size in columns for i in range(1, size + 1)
    ]


@cache
def load_draws(folder: str, columns: tuple) -> Tensor:
    """Reference draws as ``(chains * draws, D)``, chains in file order."""
    chains = json.loads((posteriordb_root() / folder / "draws.json").read_text())
    names = column_names(columns)
    return torch.cat([as_tensor([chain[name] for name in names]).T for chain in chains])


def load_data(name: str) -> dict:
    """The named posterior's data, as posteriordb's ``data.json`` holds it."""
    return json.loads((posteriordb_root() / SPECS[name].folder / "data.json").read_text())


def load_target(name: str) -> Target:
    """The named posterior as a :class:`~benchmarks.targets.Target`.

    The reference draws are split in two halves of whole chains: the first is compared
    with the guide, the pair gives the noise floor. Moments use all draws.
    """
    spec = SPECS[name]
    draws = load_draws(spec.folder, spec.columns)
    half = len(draws) // 2
    return Target(
        name,
        spec.model,
        spec.make_args(load_data(name)),
        spec.columns,
        (draws[:half], draws[half:]),
        draws.mean(0),
        draws.std(0),
        log_z=None,
    )


#: Constructors of the posteriordb targets, by row label.
POSTERIORDB_TARGETS: dict[str, Callable[[], Target]] = {
    name: (lambda name=name: load_target(name)) for name in SPECS
}
