"""What every posteriordb translation shares: where the posteriors live, Stan's flat prior,
the data as tensors, and the record that names a translation's parts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import biject_to

__all__ = ["Flat", "Spec", "as_tensor", "flat", "posteriordb_root"]


class Spec(NamedTuple):
    """One posterior: its posteriordb folder, the Pyro model, ``data.json -> args``, and
    the ``(site, size)`` columns of the reference draws, in their order."""

    folder: str
    model: Callable
    make_args: Callable[[dict], tuple]
    columns: tuple[tuple[str, int], ...]


class Flat(dist.ImproperUniform):
    """Stan's implicit flat prior on a constrained parameter (log-density 0).

    ``sample`` returns the image of the unconstrained origin, so Pyro's
    ``init_to_median`` starts such a site where Stan's default initialisation is centred.
    """

    def sample(self, sample_shape=()):
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        transform = biject_to(self.support)  # a simplex's has one coordinate fewer
        return transform(torch.zeros(transform.inverse_shape(shape)))


def flat(support, event_shape=()) -> Flat:
    """A :class:`Flat` site of one draw (any particle dimensions come from the guide)."""
    return Flat(support, batch_shape=(), event_shape=event_shape)


def as_tensor(value) -> Tensor:
    """posteriordb data as a tensor of torch's default dtype."""
    return torch.tensor(value, dtype=torch.get_default_dtype())


def posteriordb_root() -> Path:
    """``$POSTERIORDB``, else ``shared/posteriordb`` beside the repository's folder."""
    default = Path(__file__).resolve().parents[3] / "shared" / "posteriordb"
    return Path(os.environ.get("POSTERIORDB", default))
