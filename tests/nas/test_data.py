from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nas.config import DataConfig
from nas.data import load_dataset
from nas.errors import DataError


def test_digits_splits_are_stratified_deterministic_and_disjoint():
    a = load_dataset(DataConfig("digits"), seed=3)
    b = load_dataset(DataConfig("digits"), seed=3)
    c = load_dataset(DataConfig("digits"), seed=4)
    assert a.fingerprint == b.fingerprint  # same seed, same splits
    assert a.fingerprint != c.fingerprint  # another seed, other splits
    sizes = a.sizes()
    assert sum(sizes.values()) == 1797 and abs(sizes["test"] - 360) <= 5 and abs(sizes["val"] - 360) <= 5
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    # stratified: every class in every split, in about the same share
    for y in (a.y_train, a.y_val, a.y_test):
        counts = np.bincount(y, minlength=10) / len(y)
        assert counts.min() > 0.07 and counts.max() < 0.13
    # the test split is what search trials never see
    assert a.without_test().x_test.shape[0] == 0


def test_mnist1d_keeps_its_official_test_split():
    data = load_dataset(DataConfig("mnist1d", val_fraction=0.2), seed=0)
    assert data.sizes() == {"train": 3200, "val": 800, "test": 1000}
    assert data.input_shape == (1, 40)


def _npz(tmp_path: Path, **arrays) -> str:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def test_npz_dataset_loads(tmp_path: Path):
    rng = np.random.default_rng(0)
    path = _npz(tmp_path, x=rng.normal(size=(200, 3, 16)), y=np.repeat([3, 7], 100))
    data = load_dataset(DataConfig("npz", path=path), seed=0)
    assert data.input_shape == (3, 16) and data.num_classes == 2  # labels 3, 7 become 0, 1


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.zeros((10, 5))}, "missing array(s) ['y']"),
        ({"x": np.array(["a"] * 10), "y": np.arange(10) % 2}, "must be numeric"),
        ({"x": np.zeros(10), "y": np.arange(10) % 2}, "shape"),
        ({"x": np.zeros((10, 4)), "y": np.zeros((10, 2))}, "shape (N,)"),
        ({"x": np.zeros((10, 4)), "y": np.arange(9) % 2}, "differ in length"),
        ({"x": np.full((10, 4), np.nan), "y": np.arange(10) % 2}, "NaN"),
        ({"x": np.zeros((10, 4)), "y": np.ones(10)}, "single class"),
        ({"x": np.zeros((10, 4)), "y": np.linspace(0, 1, 10)}, "fractions"),
    ],
)
def test_bad_npz_data_is_refused_with_the_problem_named(tmp_path: Path, arrays, fragment):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig("npz", path=path), seed=0)
    assert fragment in str(info.value)


def test_missing_npz_file_is_named(tmp_path: Path):
    with pytest.raises(DataError, match="file not found"):
        load_dataset(DataConfig("npz", path=str(tmp_path / "none.npz")), seed=0)
