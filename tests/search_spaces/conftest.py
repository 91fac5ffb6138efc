"""Shared fixtures for the search_spaces tests: seeded samples of feasible architectures."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import pytest
import torch

from search_spaces import (
    Architecture,
    InfeasibleArchitecture,
    RandomTrial,
    SearchSpace,
    layer_costs,
)

NUM_CLASSES = 10

SampleFeasible = Callable[[SearchSpace, Sequence[int], int, int], list[Architecture]]


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Run each test's tiny models on one thread, restoring the setting afterwards.

    On a busy 2-core machine, intra-op threads spin-wait on each other: measured 20-40x slower
    than one thread for these models (forward + backward of 8x8 and length-40 inputs).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def num_classes() -> int:
    return NUM_CLASSES


@pytest.fixture
def sample_feasible() -> SampleFeasible:
    """Return ``sample(space, input_shape, count, first_seed)``: ``count`` seeded feasible archs."""

    def sample(
        space: SearchSpace, input_shape: Sequence[int], count: int, first_seed: int = 0
    ) -> list[Architecture]:
        archs: list[Architecture] = []
        for seed in range(first_seed, first_seed + 20 * count):
            arch = space.sample(RandomTrial(random.Random(seed)))
            try:
                layer_costs(arch, input_shape, NUM_CLASSES)
            except InfeasibleArchitecture:
                continue
            archs.append(arch)
            if len(archs) == count:
                return archs
        raise AssertionError(f"fewer than {count} feasible archs in {20 * count} seeds")

    return sample
