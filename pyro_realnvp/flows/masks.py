"""Binary coupling masks: ones mark the coordinates a layer keeps, zeros those it moves."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
from torch import Tensor

from .._internal.checks import check_int, check_int_sequence, is_int

__all__ = [
    "alternating_mask",
    "half_mask",
    "bit_mask",
    "coupling_masks",
    "separating_codes",
]


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
    dim, parity = check_int("dim", dim, 1), _check_parity(parity)
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
    dim, parity = check_int("dim", dim, 1), _check_parity(parity)
    first = torch.arange(dim, device=device) < (dim + 1) // 2
    mask = first if parity == 0 else ~first
    return mask.to(dtype or torch.get_default_dtype())


def bit_mask(
    dim: int, bit: int, parity: int = 0, *, device=None, dtype: torch.dtype | None = None
) -> Tensor:
    """Keep coordinate ``i`` when binary digit ``bit`` of ``i`` equals ``parity``.

    ``bit=0`` is :func:`alternating_mask`; higher bits keep runs of ``2**bit``. Two
    coordinates differ in some digit of their index, so some bit mask separates them.

    Example:
        >>> bit_mask(6, bit=1)
        tensor([1., 1., 0., 0., 1., 1.])
        >>> bit_mask(6, bit=1, parity=1)
        tensor([0., 0., 1., 1., 0., 0.])
    """
    dim, bit, parity = check_int("dim", dim, 1), check_int("bit", bit, 0), _check_parity(parity)
    return _digit_mask(torch.arange(dim, device=device), bit, parity, dtype)


def _check_parity(parity: int) -> int:
    """``parity`` as an ``int`` if it is 0 or 1 (which of a mask's two complements), else
    a ``TypeError`` (not an integer) or ``ValueError`` naming it."""
    message = f"parity must be 0 or 1 (which of the two complementary masks), got {parity!r}"
    if not is_int(parity):
        raise TypeError(message)
    if parity not in (0, 1):
        raise ValueError(message)
    return int(parity)


def _digit_mask(codes: Tensor, bit: int, parity: int, dtype: torch.dtype | None) -> Tensor:
    """Keep coordinate ``i`` when binary digit ``bit`` of ``codes[i]`` equals ``parity``."""
    return ((codes >> bit) & 1 == parity % 2).to(dtype or torch.get_default_dtype())


def separating_codes(sizes: Sequence[int], num_codes: int) -> list[int]:
    """A code in ``[0, num_codes)`` for each coordinate of consecutive groups of ``sizes``.

    Two coordinates are moved one reading the other in as many pairs of layers as their
    codes have differing bits, so codes far apart in Hamming distance make a conditioner
    read the other group's coordinates often. Groups take codes smallest first; each
    coordinate takes, in order of preference, a code at least half the bits away from
    every smaller group's codes (its distance counted up to that half), one its own group
    holds fewest times, the farthest, the lowest. A lone group takes the codes in turn,
    as by index. In a funnel ``[1, 9]``, the scale's code is then two or three bits from
    every ``x``, so each ``x`` is scaled by it in two or three of the three pairs of layers.

    Example:
        >>> separating_codes([1, 9], 8)  # v, then the nine x of a 10-d funnel
        [0, 7, 3, 5, 6, 7, 3, 5, 6, 7]
        >>> separating_codes([1, 1, 6], 8)  # a banana's x1 and x2 in every pair of layers
        [0, 7, 1, 2, 3, 4, 5, 6]
    """
    sizes = list(check_int_sequence("sizes", sizes, 1, " (one per group)"))
    num_codes = check_int("num_codes", num_codes, 1)
    num_bits = max(num_codes - 1, 1).bit_length()
    enough = (num_bits + 1) // 2
    codes: list[int] = [0] * sum(sizes)
    starts = [0, *accumulate(sizes)]
    others: list[int] = []  # codes held by the groups already placed
    for group in sorted(range(len(sizes)), key=lambda g: sizes[g]):
        # Each code's distance in bits from the nearest code of a group placed before.
        far = [min([(code ^ other).bit_count() for other in others], default=num_bits)
               for code in range(num_codes)]  # fmt: skip
        held = [0] * num_codes
        for index in range(starts[group], starts[group] + sizes[group]):
            code = max(range(num_codes), key=lambda c: (min(far[c], enough), -held[c], far[c], -c))
            codes[index], held[code] = code, held[code] + 1
        others += [code for code in range(num_codes) if held[code]]
    return codes


def coupling_masks(
    dim: int,
    num_layers: int,
    *,
    groups: Sequence[int] | None = None,
    device=None,
    dtype: torch.dtype | None = None,
) -> list[Tensor]:
    """Masks for a stack of couplings: pairs ``b, 1 - b``, with ``b`` changing between pairs.

    Within a pair the second layer moves exactly what the first kept, so every coordinate
    is transformed by every pair. Pair ``k`` uses :func:`bit_mask` with bit
    ``k mod ceil(log2 dim)``: any two coordinates differ in some bit of their index, so
    with ``2 * ceil(log2 dim)`` layers every coordinate is, in some layer, moved by a
    conditioner that reads any other (8 layers cover ``dim <= 16``); masks that only
    alternate, or alternate with halves, leave pairs such as ``0`` and ``2`` together in
    every layer (docs/tuning.md says what that cost). With ``dim == 1`` there is nothing
    to condition on: every mask is ``[0]`` and each layer is an affine map with learned
    constant scale and shift.

    ``groups``, the sizes of consecutive runs of coordinates (a model's sites), says what
    belongs together: with two or more, the bits are read from :func:`separating_codes`
    instead of the index, so coordinates of different groups are split by as many pairs
    of layers as the codes allow, and only a group's own coordinates share a code. By
    index, 6 layers kept the 10-d funnel's ``v`` beside one ``x`` in every layer, whose
    scale could then not follow ``e^{v/2}``, and moved a banana's ``x2`` reading ``x1``
    in one layer of six (docs/tuning.md).

    Example:
        >>> [m.tolist() for m in coupling_masks(4, 4)]
        [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
    """
    dim, num_layers = check_int("dim", dim, 1), check_int("num_layers", num_layers, 1)
    factory = {"device": device, "dtype": dtype}
    sizes = None if groups is None else _check_groups(groups, dim)
    if dim == 1:
        return [torch.zeros(1, **factory) for _ in range(num_layers)]
    num_bits = (dim - 1).bit_length()
    num_codes = 2 ** min(num_bits, (num_layers + 1) // 2)
    codes = torch.arange(dim, device=device)
    if sizes is not None and len(sizes) > 1:
        codes = torch.tensor(separating_codes(sizes, num_codes), device=device)
    bits = [(layer // 2) % num_bits for layer in range(num_layers)]
    return [_digit_mask(codes, bit, layer % 2, dtype) for layer, bit in enumerate(bits)]


def _check_groups(groups: Sequence[int], dim: int) -> list[int]:
    """``groups`` as a list of positive integers summing to ``dim``, else a ValueError."""
    sizes = [check_int("groups", size, 1) for size in groups]
    if sum(sizes) != dim:
        raise ValueError(f"groups must sum to dim={dim}, got {list(groups)} (sum {sum(sizes)})")
    return sizes
