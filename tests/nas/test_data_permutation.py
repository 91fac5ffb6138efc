"""data.permute: spatially shuffled and block-permuted inputs for the locality experiment."""

from __future__ import annotations

import numpy as np
import pytest

from nas.config import DataConfig, config_from_dict
from nas.data import block_permutation, load_dataset, permute_blocks
from nas.errors import ConfigError, DataError

# Fingerprints of the unpermuted datasets (seed 0) before data.permute existed.
DIGITS_FINGERPRINT = "200ef62efee97f3b"
MNIST1D_FINGERPRINT = "e77feb97c57dab3b"


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig("digits"), seed=0)


@pytest.fixture(scope="module")
def mnist1d():
    return load_dataset(DataConfig("mnist1d"), seed=0)


def blocks_of(image: np.ndarray, block: int) -> list[np.ndarray]:
    """The block x block tiles of a (C, H, W) image, row-major."""
    _, h, w = image.shape
    return [image[:, i:i + block, j:j + block] for i in range(0, h, block) for j in range(0, w, block)]


def test_defaults_leave_the_data_and_its_fingerprint_unchanged(digits, mnist1d):
    # Without data.permute the arrays are those of earlier versions: stored fingerprints stay valid.
    assert digits.fingerprint == DIGITS_FINGERPRINT and digits.name == "digits"
    assert mnist1d.fingerprint == MNIST1D_FINGERPRINT and mnist1d.name == "mnist1d"
    # The new keys default to "no permutation".
    assert (DataConfig().permute, DataConfig().permute_block) == ("none", 1)


def test_a_fixed_block_permutation_moves_whole_blocks_the_same_way_in_every_image(digits):
    permuted = load_dataset(DataConfig("digits", permute="fixed", permute_block=4), seed=0)
    # The split holds the same samples (permutations are drawn apart from the split), only the layout moved.
    assert np.array_equal(permuted.y_train, digits.y_train) and np.array_equal(permuted.y_test, digits.y_test)
    assert permuted.fingerprint != digits.fingerprint and "permute=fixed" in permuted.name
    before, after = blocks_of(digits.x_train[0], 4), blocks_of(permuted.x_train[0], 4)
    # Target block i holds source block source[i] of the first image ...
    source = [next(j for j, b in enumerate(before) if np.allclose(a, b, atol=1e-6)) for a in after]
    assert sorted(source) == [0, 1, 2, 3] and source != [0, 1, 2, 3]  # a real permutation, not the identity
    # ... and the same source block in every image of every split: one fixed permutation.
    for original, moved in ((digits.x_train, permuted.x_train), (digits.x_val, permuted.x_val),
                            (digits.x_test, permuted.x_test)):
        # (equal up to float rounding: standardization sums the permuted pixels in another order)
        assert np.allclose(moved, permute_blocks(original, 4, permutation=np.array(source)), atol=1e-6)


def test_a_per_sample_permutation_draws_a_fresh_order_for_each_image(digits):
    permuted = load_dataset(DataConfig("digits", permute="per_sample", permute_block=2), seed=0)
    orders = set()
    for original, moved in zip(digits.x_train[:200], permuted.x_train[:200]):
        before, after = blocks_of(original, 2), blocks_of(moved, 2)
        # Each image is made of its own 16 blocks (some may be equal, e.g. blank corners) ...
        assert sorted(b.round(4).tobytes() for b in before) == sorted(a.round(4).tobytes() for a in after)
        orders.add(tuple(next(j for j, b in enumerate(before) if np.allclose(a, b, atol=1e-6)) for a in after))
    # ... in an order of its own: 200 images, (almost) 200 different permutations of 16 blocks.
    assert len(orders) > 150
    # Deterministic: the same permute_seed gives the same images; another seed other ones.
    again = load_dataset(DataConfig("digits", permute="per_sample", permute_block=2), seed=0)
    other = load_dataset(DataConfig("digits", permute="per_sample", permute_block=2, permute_seed=1), seed=0)
    assert again.fingerprint == permuted.fingerprint != other.fingerprint


def test_mnist1d_fixed_shuffle_is_a_column_permutation_like_the_packages_shuffle_seq(mnist1d):
    from mnist1d.data import get_dataset_args, make_dataset

    shuffled = load_dataset(DataConfig("mnist1d", permute="fixed"), seed=0)
    # Every position of the shuffled signals is one position of the original, the same for all samples
    # (train, validation and the official test split alike).
    # (Standardization sums in another order after the permutation: equal up to float rounding.)
    x, y = mnist1d.x_train[:, 0], shuffled.x_train[:, 0]
    source = [int(np.abs(x - y[:, [i]]).max(axis=0).argmin()) for i in range(40)]
    assert sorted(source) == list(range(40)) and source != list(range(40))
    assert np.allclose(y, x[:, source], atol=1e-5)
    assert np.allclose(shuffled.x_test[:, 0], mnist1d.x_test[:, 0][:, source], atol=1e-5)
    # The mnist1d package's own shuffle_seq does the same kind of thing: a column permutation of the
    # unshuffled data (our permutation is drawn from data.permute_seed instead of its global RNG).
    args = get_dataset_args()
    plain = make_dataset(args)["x"]
    args.shuffle_seq = True
    theirs = make_dataset(args)["x"]
    columns = {plain[:, i].round(5).tobytes(): i for i in range(40)}
    assert sorted(columns[theirs[:, i].round(5).tobytes()] for i in range(40)) == list(range(40))


def test_blocks_of_a_1d_signal_and_the_inverse_permutation():
    x = np.arange(2 * 3 * 12, dtype=np.float32).reshape(2, 3, 12)  # 2 samples, 3 channels, length 12
    order = np.array([2, 0, 1])
    moved = permute_blocks(x, 4, permutation=order)
    # Output block i is input block order[i], channels move together.
    assert np.array_equal(moved[:, :, 0:4], x[:, :, 8:12]) and np.array_equal(moved[:, :, 4:8], x[:, :, 0:4])
    # The inverse permutation restores the input exactly.
    assert np.array_equal(permute_blocks(moved, 4, permutation=np.argsort(order)), x)
    # A "fixed" permutation is never the identity (which would leave the task unpermuted).
    rng = np.random.default_rng(0)
    assert all(not np.array_equal(block_permutation(2, rng), [0, 1]) for _ in range(50))


def test_a_block_that_does_not_divide_the_input_is_refused_by_key(tmp_path):
    # 8x8 digits cannot be cut into 3x3 blocks: the message names the key and the sizes.
    with pytest.raises(DataError, match=r"data.permute_block 3 does not divide the input size 8x8 of digits"):
        load_dataset(DataConfig("digits", permute="fixed", permute_block=3), seed=0)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"permute": "shuffle"}, "data.permute must be one of ['none', 'fixed', 'per_sample'], but got 'shuffle'"),
        ({"permute": "fixed", "permute_block": 0}, "data.permute_block must be at least 1, but got 0"),
        ({"permute_block": 4}, "data.permute_block has no effect while data.permute is 'none'"),
        ({"permute": "fixed", "permute_seed": -1}, "data.permute_seed must be >= 0, but got -1"),
        ({"permute": "fixed", "permute_block": "four"}, "data.permute_block must be an integer"),
    ],
)
def test_bad_permutation_keys_are_named(data, fragment):
    # Validated once, at the edge: the key path and the bad value are in the message.
    with pytest.raises(ConfigError) as error:
        config_from_dict({"data": {"dataset": "digits", **data}})
    assert fragment in str(error.value)
