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


def suggest_choice(trial: Trial, name: str, choices: Sequence[int], ordered: bool) -> int:
    """Draw one of integer ``choices``: as a category, or (``ordered``) by its rank.

    An ordered draw is ``trial.suggest_int(name + "_rank", 0, len(choices) - 1)`` over the
    choices sorted ascending, so a sampler that models integers (TPE's Parzen estimator) spreads
    the weight of a good observation to the neighbouring ranks: a good net with 16 channels lends
    weight to 8 and 25 as well. A categorical draw treats 8 and 16 channels as unrelated as 8
    and 64. The parameter name differs between the two ("channels_0" against "channels_0_rank"),
    so a study never holds one name with two distributions. Uniform sampling draws either way
    with the same probabilities.

    Args:
        trial: An ``optuna.Trial`` or a ``RandomTrial``.
        name: The parameter name of the categorical draw.
        choices: Distinct integers, in any order.
        ordered: Draw by rank.

    Returns:
        The chosen integer.
    """
    if not ordered:
        return trial.suggest_categorical(name, choices)  # type: ignore[return-value]
    ascending = sorted(choices)
    return ascending[trial.suggest_int(f"{name}_rank", 0, len(ascending) - 1)]


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
