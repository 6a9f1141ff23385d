"""Conditional RealNVP: the same couplings, with a context ``c`` fed to every conditioner."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions.conditional import ConditionalTransformModule
from torch import Tensor, nn
from torch.distributions.transforms import Transform

from .._internal.checks import check_int
from .coupling import default_hidden_dims
from .one_pass import OnePassLogDet
from .realnvp import RealNVP

__all__ = ["ConditionalRealNVP", "ConditionedRealNVP", "conditional_realnvp"]


class ConditionedRealNVP(OnePassLogDet, Transform):
    r"""A :class:`~pyro_realnvp.RealNVP` evaluated at one context, :math:`y = f(x; c)`.

    Made by :meth:`ConditionalRealNVP.condition`; it shares the conditional flow's layers
    (no copy), so gradients of anything computed with it reach those layers and the
    context. Batch shapes of ``x`` and ``c`` broadcast: ``c`` of shape ``(C,)`` serves a
    whole batch, ``c`` of shape ``(B, C)`` gives each of ``B`` rows its own context.
    Forward and inverse each compute the log-determinant in the same pass, as in
    :class:`~pyro_realnvp.RealNVP`.

    Example:
        >>> flow = ConditionalRealNVP(2, 3, num_layers=4, hidden_dims=(16,))
        >>> transform = flow.condition(torch.randn(5, 3))
        >>> transform(torch.randn(5, 2)).shape
        torch.Size([5, 2])
    """

    def __init__(self, flow: RealNVP, context: Tensor, context_dim: int | None = None) -> None:
        super().__init__(cache_size=1)
        self.flow = flow
        self.context = context
        # The width the caller's context has (before any embedding), for error messages.
        self.context_dim = flow.context_dim if context_dim is None else context_dim

    def _check_batch(self, x: Tensor) -> None:
        """Refuse, by name, a context whose batch shape does not broadcast with ``x``'s."""
        batch = tuple(self.context.shape[:-1])
        try:
            torch.broadcast_shapes(x.shape[:-1], batch)
        except RuntimeError:
            width = self.context_dim
            raise ValueError(
                f"context must have shape (..., {width}) with batch dimensions that broadcast "
                f"with the input's; got a context of batch shape {batch} for an input of shape "
                f"{tuple(x.shape)}: give one context row per input row, or one context of "
                f"shape ({width},) for all (to draw n samples at B contexts, sample (n, B))"
            ) from None

    def _forward_pass(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_batch(x)
        return self.flow.forward_and_log_det(x, self.context)

    def _backward_pass(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self._check_batch(y)
        return self.flow.inverse_and_log_det(y, self.context)


class ConditionalRealNVP(ConditionalTransformModule):
    r"""RealNVP whose scales and shifts depend on a context, :math:`s = s(bx, c),\ t = t(bx, c)`.

    Each layer is a :class:`~pyro_realnvp.MaskedAffineCoupling` with ``context_dim > 0``
    (the same code as the unconditional flow), so for every fixed ``c`` the map is an
    invertible RealNVP with the usual triangular log-determinant. ``c`` may first pass
    through an ``embedding`` network (a summary of the data for amortized inference);
    it is trained jointly, since gradients reach it through every conditioner.

    Use it with :class:`pyro.distributions.ConditionalTransformedDistribution` (or
    :func:`~pyro_realnvp.density.flow_distribution`) for conditional densities
    :math:`q(x \mid c)`, e.g. neural posterior estimation :math:`q(\theta \mid x)`.

    Args:
        input_dim: Event size ``D`` of the transformed variable.
        context_dim: Size ``C`` of the context, the last dimension of ``context``.
        num_layers: Number of coupling layers.
        hidden_dims: Conditioner hidden widths; default
            :func:`~pyro_realnvp.flows.coupling.default_hidden_dims` of ``D`` plus the
            (embedded) context width.
        embedding: Optional network applied to the context before the couplings.
        embedding_dim: Output width of ``embedding`` (required with it).
        **coupling_options: Every coupling's options (``scale_bound``, ``output_gain``,
            ``activation``, ``device``, ``dtype``...), as :class:`~pyro_realnvp.RealNVP`
            takes them.

    Example:
        >>> flow = ConditionalRealNVP(2, 3, num_layers=4, hidden_dims=(16,))
        >>> c, x = torch.randn(3), torch.randn(10, 2)
        >>> transform = flow.condition(c)
        >>> torch.allclose(transform.inv(transform(x).clone()), x, atol=1e-6)
        True
    """

    def __init__(
        self,
        input_dim: int,
        context_dim: int,
        num_layers: int = 8,
        hidden_dims: Sequence[int] | None = None,
        *,
        embedding: nn.Module | None = None,
        embedding_dim: int | None = None,
        **coupling_options,
    ) -> None:
        super().__init__()
        if "context_dim" in coupling_options:
            raise TypeError("context_dim is the second argument (the raw context's width)")
        input_dim = check_int("input_dim", input_dim, 1)
        context_dim = check_int("context_dim", context_dim, 1)
        if (embedding is None) != (embedding_dim is None):
            raise ValueError("embedding and embedding_dim must be given together")
        width = (
            context_dim if embedding_dim is None else check_int("embedding_dim", embedding_dim, 1)
        )
        if hidden_dims is None:
            hidden_dims = default_hidden_dims(input_dim + width)
        self.input_dim = input_dim
        self.context_dim = context_dim
        self.embedding = embedding
        self.flow = RealNVP(
            input_dim, num_layers, hidden_dims, context_dim=width, **coupling_options
        )

    def condition(self, context: Tensor) -> ConditionedRealNVP:
        """The RealNVP transform at ``context`` of shape ``(..., context_dim)``.

        Raises:
            ValueError: if ``context`` is a scalar or its last dimension is not
                ``context_dim``, or the embedding's output is not ``embedding_dim`` wide.
                Calling the transform at an input whose batch shape does not broadcast
                with the context's also raises a ``ValueError`` naming ``context``.
        """
        context = torch.as_tensor(context)
        if context.dim() == 0 or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context must have shape (..., {self.context_dim}) (context_dim), "
                f"got {tuple(context.shape)}"
            )
        if self.embedding is not None:
            context = self.embedding(context)
            if context.dim() == 0 or context.shape[-1] != self.flow.context_dim:
                raise ValueError(
                    f"embedding turned the context into shape {tuple(context.shape)}, but "
                    f"the couplings take (..., {self.flow.context_dim}) (embedding_dim)"
                )
        return ConditionedRealNVP(self.flow, context, self.context_dim)


def conditional_realnvp(
    input_dim: int, context_dim: int, num_layers: int = 8, **kwargs
) -> ConditionalRealNVP:
    """Lowercase factory for :class:`ConditionalRealNVP`, like Pyro's ``conditional_*``.

    Example:
        >>> len(conditional_realnvp(3, 2, num_layers=4).flow.layers)
        4
    """
    return ConditionalRealNVP(input_dim, context_dim, num_layers, **kwargs)
