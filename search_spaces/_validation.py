"""Checks for user-given values (space configs, architecture fields) with messages that name them.

Plain functions rather than ``assert``: asserts vanish under ``python -O``, and every message names
the offending key and value so a bad YAML file is fixed without reading code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._activations import check_activation


def show(value: Any) -> str:
    """Render a value as the user wrote it: YAML lists arrive as lists, tuples are shown alike."""
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


def is_int(value: Any) -> bool:
    # bool is an int subclass, but `true` where a number belongs is a typo, not a 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_list(value: Any) -> bool:
    # A string is a sequence too; `activations: relu` must be rejected, not read as r, e, l, u.
    return isinstance(value, list | tuple)


def int_range(key: str, value: Any, minimum: int) -> tuple[int, int]:
    """Check a ``[low, high]`` integer range with ``minimum <= low <= high``.

    Raises:
        ValueError: Naming ``key`` and ``value`` otherwise.
    """
    if not (
        _is_list(value)
        and len(value) == 2
        and all(is_int(v) for v in value)
        and minimum <= value[0] <= value[1]
    ):
        raise ValueError(
            f"{key} must be [low, high] with {minimum} <= low <= high, but got {show(value)}"
        )
    return (value[0], value[1])


def _distinct_list(key: str, value: Any, description: str) -> tuple[Any, ...]:
    if not _is_list(value) or len(value) == 0:
        raise ValueError(f"{key} must be a non-empty list of {description}, but got {show(value)}")
    # Compared pairwise, not through set(): a nested list in YAML must get this message,
    # not a TypeError about hashing.
    if any(item in value[:index] for index, item in enumerate(value)):
        raise ValueError(f"{key} must not repeat a value, but got {show(value)}")
    return tuple(value)


def int_choices(key: str, value: Any, minimum: int = 1, odd: bool = False) -> tuple[int, ...]:
    """Check a non-empty list of distinct integers ``>= minimum`` (and odd if ``odd``).

    Raises:
        ValueError: Naming ``key`` and ``value`` otherwise.
    """
    description = f"{'odd ' if odd else ''}integers >= {minimum}"
    if odd:
        description += " (padding k//2 keeps the size only for odd k)"
    choices = _distinct_list(key, value, description)
    for choice in choices:
        if not is_int(choice) or choice < minimum or (odd and choice % 2 == 0):
            raise ValueError(
                f"{key} must be a non-empty list of {description}, but got {show(value)}"
            )
    return choices


def str_choices(key: str, value: Any, allowed: Iterable[str]) -> tuple[str, ...]:
    """Check a non-empty list of distinct strings, each one of ``allowed``.

    Raises:
        ValueError: Naming ``key`` and the unknown value, listing ``allowed``.
    """
    allowed = tuple(allowed)
    choices = _distinct_list(key, value, f"values from {', '.join(allowed)}")
    for choice in choices:
        if choice not in allowed:
            raise ValueError(
                f"{key} has unknown value {choice!r}; choose from {', '.join(allowed)}"
            )
    return choices


def bool_choices(key: str, value: Any) -> tuple[bool, ...]:
    """Check a non-empty list of distinct booleans.

    Raises:
        ValueError: Naming ``key`` and ``value`` otherwise.
    """
    choices = _distinct_list(key, value, "booleans")
    if not all(isinstance(choice, bool) for choice in choices):
        raise ValueError(f"{key} must be a non-empty list of booleans, but got {show(value)}")
    return choices


def activation_choices(key: str, value: Any) -> tuple[str, ...]:
    """Check a non-empty list of distinct activation names (keys of ACTIVATIONS).

    Raises:
        ValueError: Naming ``key`` and the unknown activation, listing the known ones.
    """
    choices = _distinct_list(key, value, "activation names")
    for choice in choices:
        check_activation(choice, key)
    return choices


def boolean(key: str, value: Any) -> bool:
    """Check a boolean flag.

    Raises:
        ValueError: Naming ``key`` and ``value`` otherwise.
    """
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, but got {show(value)}")
    return value


def int_at_least(key: str, value: Any, minimum: int, odd: bool = False) -> int:
    """Check one integer ``>= minimum`` (and odd if ``odd``).

    Raises:
        ValueError: Naming ``key`` and ``value`` otherwise.
    """
    if not is_int(value) or value < minimum or (odd and value % 2 == 0):
        kind = "an odd integer" if odd else "an integer"
        raise ValueError(f"{key} must be {kind} >= {minimum}, but got {show(value)}")
    return value


def int_tuple(key: str, value: Any, minimum: int, odd: bool = False) -> tuple[int, ...]:
    """Check a (possibly empty) sequence of integers ``>= minimum``; return it as a tuple.

    Raises:
        ValueError: Naming ``key`` and ``value`` otherwise.
    """
    if not _is_list(value):
        raise ValueError(f"{key} must be a tuple of integers, but got {show(value)}")
    for item in value:
        int_at_least(key, item, minimum, odd)
    return tuple(value)


def one_of(key: str, value: Any, allowed: Iterable[str]) -> str:
    """Check that ``value`` is one of ``allowed``.

    Raises:
        ValueError: Naming ``key`` and ``value``, listing ``allowed``.
    """
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}, but got {show(value)}")
    return value
