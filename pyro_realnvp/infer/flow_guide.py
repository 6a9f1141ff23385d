"""What training needs of AutoRealNVP beyond Pyro's ``AutoContinuous`` contract."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["FlowGuide"]


@runtime_checkable
class FlowGuide(Protocol):
    """What the fast path needs of a guide besides Pyro's ``AutoContinuous`` contract
    (``latent_dim``, ``loc``, ``prototype_trace``): :class:`~pyro_realnvp.AutoRealNVP`'s
    public methods, so that the path depends on them and not on the class.

    Example:
        >>> from pyro_realnvp import AutoRealNVP
        >>> from pyro.infer.autoguide import AutoNormal
        >>> isinstance(AutoRealNVP(print), FlowGuide), isinstance(AutoNormal(print), FlowGuide)
        (True, False)
    """

    def draw(self, eps: Tensor) -> tuple[Tensor, Tensor]: ...

    def latent_draws(self, num_samples: int, seed: int = 0) -> Tensor: ...

    def auto_start_rule(self, rule: str) -> AbstractContextManager: ...

    def restart_by_elbo(self) -> None: ...
