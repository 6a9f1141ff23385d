"""The argument checks every module shares: integers, and widths of hidden layers."""

from __future__ import annotations

import numbers
from collections.abc import Iterable

__all__ = ["check_hidden_dims", "check_int", "is_int"]


def is_int(value) -> bool:
    """An integer of any kind (numpy's too) but not a ``bool``.

    Example:
        >>> [is_int(v) for v in (3, 3.0, True)]
        [True, False, False]
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an ``int`` if it is an integer ``>= minimum``, else an error naming ``name``.

    numpy and other ``numbers.Integral`` scalars are accepted, ``bool`` is not. A value of
    the wrong type raises ``TypeError``, an integer below ``minimum`` ``ValueError``.

    Example:
        >>> check_int("num_layers", 2.5, 1)
        Traceback (most recent call last):
        ...
        TypeError: num_layers must be an integer >= 1, got 2.5
    """
    message = f"{name} must be an integer >= {minimum}, got {value!r}"
    if not is_int(value):
        raise TypeError(message)
    if value < minimum:
        raise ValueError(message)
    return int(value)


def check_hidden_dims(hidden_dims) -> tuple[int, ...]:
    """``hidden_dims`` as a tuple of ints, each ``>= 1``; ``()`` (no hidden layer) is fine.

    Example:
        >>> check_hidden_dims([16, 8])
        (16, 8)
    """
    message = f"hidden_dims must be a sequence of integers >= 1, got {hidden_dims!r}"
    if isinstance(hidden_dims, str) or not isinstance(hidden_dims, Iterable):
        raise TypeError(message)
    widths = tuple(hidden_dims)
    if not all(is_int(width) for width in widths):
        raise TypeError(message)
    if not all(width >= 1 for width in widths):
        raise ValueError(message)
    return tuple(int(width) for width in widths)
