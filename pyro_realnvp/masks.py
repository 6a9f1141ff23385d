"""Binary coupling masks: ones mark the coordinates a layer keeps, zeros those it moves."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["alternating_mask", "half_mask", "coupling_masks", "check_mask"]


def alternating_mask(
    dim: int, parity: int = 0, *, device=None, dtype: torch.dtype | None = None
) -> Tensor:
    """Keep every other coordinate, :math:`b_i = [(i + \\text{parity}) \\bmod 2 = 0]`.

    Example:
        >>> alternating_mask(5)
        tensor([1., 0., 1., 0., 1.])
        >>> alternating_mask(5, parity=1)
        tensor([0., 1., 0., 1., 0.])
    """
    index = torch.arange(dim, device=device)
    return ((index + parity) % 2 == 0).to(dtype or torch.get_default_dtype())


def half_mask(
    dim: int, parity: int = 0, *, device=None, dtype: torch.dtype | None = None
) -> Tensor:
    """Keep the first half of the coordinates (``parity=0``) or the second (``parity=1``).

    For odd ``dim`` the kept half is the larger one when ``parity=0``.

    Example:
        >>> half_mask(5)
        tensor([1., 1., 1., 0., 0.])
        >>> half_mask(5, parity=1)
        tensor([0., 0., 0., 1., 1.])
    """
    first = torch.arange(dim, device=device) < (dim + 1) // 2
    mask = first if parity % 2 == 0 else ~first
    return mask.to(dtype or torch.get_default_dtype())


def check_mask(mask: Tensor, dim: int | None = None) -> Tensor:
    """Validate a coupling mask and return it as a floating tensor.

    Raises:
        ValueError: if the mask is not one-dimensional, has the wrong length, holds values
            other than 0 and 1, or keeps every coordinate (the layer would be the identity).

    Example:
        >>> check_mask(torch.tensor([1, 0, 1]))
        tensor([1., 0., 1.])
    """
    mask = torch.as_tensor(mask)
    if mask.dim() != 1:
        raise ValueError(f"mask must be one-dimensional, got shape {tuple(mask.shape)}")
    if dim is not None and mask.shape != (dim,):
        raise ValueError(f"mask must have shape ({dim},), got {tuple(mask.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"mask must be binary (only 0 and 1), got {mask.tolist()}")
    if mask.numel() > 0 and bool((mask == 1).all()):
        raise ValueError(
            "mask keeps every coordinate (all ones), so the coupling would be the identity; "
            "at least one entry must be 0"
        )
    if not mask.is_floating_point():
        mask = mask.to(torch.get_default_dtype())
    return mask


def coupling_masks(
    dim: int, num_layers: int, *, device=None, dtype: torch.dtype | None = None
) -> list[Tensor]:
    """Masks for a stack of couplings: pairs ``b, 1 - b``, with ``b`` changing between pairs.

    Within a pair the second layer moves exactly what the first kept, so every coordinate
    is transformed by every pair. Pairs cycle between :func:`alternating_mask` and
    :func:`half_mask`, so coordinates that share a parity still condition on each other
    after two pairs. With ``dim == 1`` there is nothing to condition on: every mask is
    ``[0]`` and each layer is an affine map with learned constant scale and shift.

    Example:
        >>> [m.tolist() for m in coupling_masks(4, 4)]
        [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
    """
    if dim < 1:
        raise ValueError(f"dim must be at least 1, got {dim}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    factory = {"device": device, "dtype": dtype}
    if dim == 1:
        return [torch.zeros(1, **factory) for _ in range(num_layers)]
    patterns = (alternating_mask, half_mask)
    return [
        patterns[(layer // 2) % len(patterns)](dim, parity=layer % 2, **factory)
        for layer in range(num_layers)
    ]
