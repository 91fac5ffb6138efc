"""The two calls a search space makes on a trial, and a seeded stand-in for optuna.Trial."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

Choice = str | int | float | bool | None
"""Optuna's rule for categorical choices: plain scalars only."""


class Trial(Protocol):
    """What ``SearchSpace.sample`` may use: ``optuna.Trial`` satisfies it, as does RandomTrial."""

    def suggest_int(self, name: str, low: int, high: int) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Choice]) -> Choice: ...


class RandomTrial:
    """A trial that samples uniformly from an injected ``random.Random`` (no Optuna study needed).

    Like Optuna, a name suggested twice returns the value drawn first.

    Attributes:
        params: The values drawn so far, by parameter name.
    """

    def __init__(self, rng: random.Random) -> None:
        """Args:
            rng: The source of randomness, e.g. ``random.Random(seed)``.

        Raises:
            TypeError: If ``rng`` is not a ``random.Random`` (a bare seed would hide shared state).
        """
        if not isinstance(rng, random.Random):
            raise TypeError(f"RandomTrial needs a random.Random, but got {type(rng).__name__}")
        self._rng = rng
        self.params: dict[str, Choice] = {}

    def suggest_int(self, name: str, low: int, high: int) -> int:
        """Draw an integer uniformly from [low, high], both ends included.

        Raises:
            ValueError: If ``low > high``.
        """
        if name in self.params:
            return self.params[name]  # type: ignore[return-value]
        if low > high:
            raise ValueError(f"{name}: low must be <= high, but got {low=}, {high=}")
        value = self._rng.randint(low, high)
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Choice]) -> Choice:
        """Draw one of ``choices`` uniformly.

        Raises:
            ValueError: If ``choices`` is empty.
        """
        if name in self.params:
            return self.params[name]
        if len(choices) == 0:
            raise ValueError(f"{name}: choices must not be empty")
        value = choices[self._rng.randrange(len(choices))]
        self.params[name] = value
        return value
