"""The argument checks every module shares: integers, and widths of hidden layers."""

from __future__ import annotations

import numbers
from collections.abc import Iterable

__all__ = ["check_hidden_dims", "check_int", "check_int_sequence", "is_int"]


def is_int(value) -> bool:
    """An integer of any kind (numpy's too) but not a ``bool``.

    Example:
        >>> [is_int(v) for v in (3, 3.0, True)]
        [True, False, False]
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int, why: str = "") -> int:
    """``value`` as an ``int`` if it is an integer ``>= minimum``, else an error naming ``name``
    (and ``why``, said after the minimum, where that minimum needs a reason).

    numpy and other ``numbers.Integral`` scalars are accepted, ``bool`` is not. A value of
    the wrong type raises ``TypeError``, an integer below ``minimum`` ``ValueError``.

    Example:
        >>> check_int("num_layers", 2.5, 1)
        Traceback (most recent call last):
        ...
        TypeError: num_layers must be an integer >= 1, got 2.5
    """
    message = f"{name} must be an integer >= {minimum}{why}, got {value!r}"
    if not is_int(value):
        raise TypeError(message)
    if value < minimum:
        raise ValueError(message)
    return int(value)


def check_int_sequence(name: str, values, minimum: int, why: str = "") -> tuple[int, ...]:
    """``values`` as a tuple of ints, each ``>= minimum``, else an error naming ``name``:
    ``TypeError`` for what is not a sequence of integers, ``ValueError`` below the minimum.

    Example:
        >>> check_int_sequence("sizes", [2, 0], 1, " (one per group)")
        Traceback (most recent call last):
        ...
        ValueError: sizes must be a sequence of integers >= 1 (one per group), got [2, 0]
    """
    message = f"{name} must be a sequence of integers >= {minimum}{why}, got {values!r}"
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise TypeError(message)
    items = tuple(values)
    if not all(is_int(item) for item in items):
        raise TypeError(message)
    if not all(item >= minimum for item in items):
        raise ValueError(message)
    return tuple(int(item) for item in items)


def check_hidden_dims(hidden_dims) -> tuple[int, ...]:
    """``hidden_dims`` as a tuple of ints, each ``>= 1``; ``()`` (no hidden layer) is fine.

    Example:
        >>> check_hidden_dims([16, 8])
        (16, 8)
    """
    return check_int_sequence("hidden_dims", hidden_dims, 1)
