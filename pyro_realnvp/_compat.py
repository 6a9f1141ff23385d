"""Every call into a private Pyro or torch name, in one place, each pinned by a test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pyro.poutine.subsample_messenger import SubsampleMessenger

__all__ = ["full_data_plates"]


@contextlib.contextmanager
def full_data_plates() -> Iterator[None]:
    """Inside, every subsampling ``pyro.plate`` yields all its indices, with scale 1.

    Pyro has no public switch for this: conditioning the plate's index site on the full
    range fails its ``subsample_size`` check. So the one helper that draws the indices,
    ``SubsampleMessenger._subsample``, is swapped for the length of the block. Plates
    built inside see ``subsample_size == size``, return ``torch.arange(size)`` and scale
    their sites by 1, so the model reads its whole data set.

    Example:
        >>> import pyro
        >>> with full_data_plates(), pyro.plate("data", 100, subsample_size=10) as idx:
        ...     len(idx)
        100
    """
    original = SubsampleMessenger._subsample

    def whole_range(name, size=None, subsample_size=None, subsample=None, *args, **kwargs):
        if size is None or subsample is not None:
            return original(name, size, subsample_size, subsample, *args, **kwargs)
        return original(name, size, size, None, *args, **kwargs)

    SubsampleMessenger._subsample = staticmethod(whole_range)
    try:
        yield
    finally:
        SubsampleMessenger._subsample = staticmethod(original)
