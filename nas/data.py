"""Datasets and their splits: scikit-learn digits, MNIST-1D (regenerated locally) and user .npz files.

Splits are deterministic and stratified from the config seed. MNIST-1D keeps its official test split
(1,000 samples); the others hold out ``test_fraction``. Search decisions read the validation split only;
the test split is read once per front member in the final report.

``data.permute`` reorders blocks of every input (`permute_blocks`) before the split: the locality
experiment's spatially shuffled MNIST-1D and block-permuted digits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nas.config import DataConfig
from nas.errors import DataError

__all__ = ["Dataset", "load_dataset", "validate_arrays", "fingerprint", "permute_blocks", "block_permutation"]


@dataclass(frozen=True)
class Dataset:
    """Three splits of float32 inputs shaped (N, C, L) or (N, C, H, W) and int64 labels 0..K-1."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    fingerprint: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    def without_test(self) -> "Dataset":
        """The same dataset with the test split emptied: what search trials get to see."""
        empty_x = self.x_test[:0]
        return Dataset(self.name, self.x_train, self.y_train, self.x_val, self.y_val, empty_x,
                       self.y_test[:0], self.num_classes, self.fingerprint)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 (first 16 hex) over the arrays' dtypes, shapes and bytes: says whether two runs saw the same data."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def validate_arrays(x: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Check inputs and labels; return float32 inputs shaped (N, C, ...) and labels 0..K-1.

    Inputs of shape (N, L) become (N, 1, L); (N, H, W) becomes (N, 1, H, W); (N, C, L) and (N, C, H, W)
    stay. Labels must be integers (or integral floats).

    Raises:
        DataError: naming the array and the problem (dtype, shape, NaN/inf, sizes, a single class).
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{source}: array 'x' must be numeric, but has dtype {x.dtype}")
    if x.ndim < 2 or x.ndim > 4:
        raise DataError(f"{source}: array 'x' must have shape (N, L), (N, H, W), (N, C, L) or (N, C, H, W), "
                        f"but has shape {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{source}: array 'y' must be one label per sample, shape (N,), but has shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{source}: arrays 'x' and 'y' differ in length: {len(x)} samples vs {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{source}: the dataset is empty")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise DataError(f"{source}: array 'x' holds {bad} NaN or infinite values")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{source}: array 'y' must hold integer class labels, but has dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            raise DataError(f"{source}: array 'y' holds NaN or infinite labels")
        if not np.equal(np.mod(y, 1), 0).all():
            raise DataError(f"{source}: array 'y' must hold integer class labels, but holds fractions")
    classes, y_index = np.unique(y.astype(np.int64), return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{source}: array 'y' holds a single class ({classes.tolist()}); classification needs two or more")
    if x.ndim == 2:
        x = x[:, None, :]
    elif x.ndim == 3 and x.shape[1] > 4:
        # (N, H, W) images; (N, C, L) with a few channels is kept as 1-D multichannel signals.
        x = x[:, None, :, :]
    return x, y_index.astype(np.int64), int(len(classes))


def _stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with `fraction` of each class held out (at least one where a class has two)."""
    keep, held = [], []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        idx = idx[rng.permutation(len(idx))]
        n_held = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        else:
            n_held = 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def _standardize(x_train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    # One mean and std from the training split only, so validation and test stay unseen.
    mean = float(x_train.mean())
    std = float(x_train.std()) or 1.0
    return [((a - mean) / std).astype(np.float32) for a in (x_train, *others)]


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def _load_mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Regenerated from the package's templates with its default args (seed 42): never downloaded.
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    return data["x"], data["y"], data["x_test"], data["y_test"]


def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data.path: file not found: {file}")
    try:
        with np.load(file, allow_pickle=False) as archive:
            missing = [name for name in ("x", "y") if name not in archive.files]
            if missing:
                raise DataError(f"{file}: missing array(s) {missing}; a .npz dataset needs arrays 'x' and 'y' "
                                f"(found {archive.files})")
            return archive["x"], archive["y"]
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(f"{file}: cannot read the arrays ({exc}); object arrays are refused") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable archive is the user's file at fault
        raise DataError(f"{file}: not a readable .npz file ({type(exc).__name__}: {exc})") from None


def _block_grid(shape: tuple[int, ...], block: int, source: str) -> tuple[int, ...]:
    """Blocks along each spatial axis of per-sample `shape` (C, L) or (C, H, W)."""
    spatial = shape[1:]
    if any(size % block for size in spatial):
        size = "x".join(str(s) for s in spatial)
        raise DataError(f"data.permute_block {block} does not divide the input size {size} of {source}; "
                        f"choose a divisor of every spatial size")
    return tuple(size // block for size in spatial)


def _to_blocks(x: np.ndarray, block: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """(N, C, *spatial) -> (N, C, B, block**d) with the B blocks in row-major order, and the grid."""
    n, c, *spatial = x.shape
    grid = tuple(size // block for size in spatial)
    if len(spatial) == 1:
        return x.reshape(n, c, grid[0], block), grid
    # (N, C, gh, b, gw, b) -> (N, C, gh, gw, b, b): each block's pixels together
    tiles = x.reshape(n, c, grid[0], block, grid[1], block).transpose(0, 1, 2, 4, 3, 5)
    return tiles.reshape(n, c, grid[0] * grid[1], block * block), grid


def _from_blocks(tiles: np.ndarray, grid: tuple[int, ...], block: int) -> np.ndarray:
    n, c = tiles.shape[:2]
    if len(grid) == 1:
        return tiles.reshape(n, c, grid[0] * block)
    images = tiles.reshape(n, c, grid[0], grid[1], block, block).transpose(0, 1, 2, 4, 3, 5)
    return images.reshape(n, c, grid[0] * block, grid[1] * block)


def block_permutation(blocks: int, rng: np.random.Generator) -> np.ndarray:
    """One permutation of `blocks` indices drawn from `rng`, redrawn while it is the identity (blocks > 1).

    A "fixed" permutation that happened to be the identity (1 in 24 for 4 blocks) would leave the task
    unpermuted and the experiment void.
    """
    identity = np.arange(blocks)
    permutation = rng.permutation(blocks)
    while blocks > 1 and np.array_equal(permutation, identity):
        permutation = rng.permutation(blocks)
    return permutation


def permute_blocks(x: np.ndarray, block: int, permutation: np.ndarray | None = None,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """Cut every input into blocks and reorder them.

    Args:
        x: inputs shaped (N, C, L) or (N, C, H, W).
        block: block length (1-D) or side (2-D); it must divide every spatial size.
        permutation: one order of the blocks for every sample (``new[i] = old[permutation[i]]``,
            blocks numbered row-major); or None with `rng` for a fresh permutation per sample.
        rng: the source of the per-sample permutations (when `permutation` is None).

    Returns:
        A new array of the same shape and dtype; channels move together.

    Raises:
        DataError: if `block` does not divide a spatial size.
        ValueError: if neither or both of `permutation` and `rng` are given, or `permutation` does not
            fit the number of blocks.
    """
    if (permutation is None) == (rng is None):
        raise ValueError("permute_blocks needs exactly one of permutation (fixed) and rng (per sample)")
    _block_grid(tuple(x.shape[1:]), block, "the data")
    tiles, grid = _to_blocks(np.ascontiguousarray(x), block)
    count = tiles.shape[2]
    if permutation is not None:
        permutation = np.asarray(permutation)
        if sorted(permutation.tolist()) != list(range(count)):
            raise ValueError(f"permutation must reorder the {count} blocks, but got {permutation.tolist()}")
        out = tiles[:, :, permutation]
    else:
        assert rng is not None
        # argsort of uniform keys: an independent uniform permutation per sample
        orders = np.argsort(rng.random((len(x), count)), axis=1)
        out = np.take_along_axis(tiles, orders[:, None, :, None], axis=2)
    return np.ascontiguousarray(_from_blocks(out, grid, block))


def _permute(cfg: DataConfig, arrays: list[np.ndarray], source: str) -> list[np.ndarray]:
    """Apply ``cfg.permute`` to every array (the same fixed order, or one per-sample stream)."""
    if cfg.permute == "none":
        return arrays
    grid = _block_grid(tuple(arrays[0].shape[1:]), cfg.permute_block, source)
    rng = np.random.default_rng(cfg.permute_seed)
    if cfg.permute == "fixed":
        permutation = block_permutation(int(np.prod(grid)), rng)
        return [permute_blocks(a, cfg.permute_block, permutation=permutation) for a in arrays]
    return [permute_blocks(a, cfg.permute_block, rng=rng) for a in arrays]


def _name(cfg: DataConfig) -> str:
    name = cfg.dataset if cfg.dataset != "npz" else Path(cfg.path or "npz").stem
    if cfg.permute != "none":
        name += f"[permute={cfg.permute},block={cfg.permute_block},seed={cfg.permute_seed}]"
    return name


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Load and split a dataset deterministically from `seed`.

    Inputs are permuted (``cfg.permute``) before the split, from ``cfg.permute_seed`` alone: the splits
    hold the same samples whatever the permutation.

    Raises:
        DataError: if the data cannot be used (missing file or arrays, wrong dtypes or shapes, NaN values,
            a single class, a split too small to hold every class, or a permute_block that does not divide
            the input size).
    """
    rng = np.random.default_rng(seed)
    if cfg.dataset == "mnist1d":
        x, y, x_test, y_test = _load_mnist1d()
        x, y, num_classes = validate_arrays(x, y, "mnist1d")
        x_test, y_test, _ = validate_arrays(x_test, y_test, "mnist1d test split")
        x, x_test = _permute(cfg, [x, x_test], "mnist1d")
        keep, val = _stratified_split(y, cfg.val_fraction, rng)
        x_train, y_train, x_val, y_val = x[keep], y[keep], x[val], y[val]
    else:
        if cfg.dataset == "digits":
            x, y = _load_digits()
            source = "digits"
        else:
            assert cfg.path is not None  # guaranteed by DataConfig
            x, y = _load_npz(cfg.path)
            source = cfg.path
        x, y, num_classes = validate_arrays(x, y, source)
        (x,) = _permute(cfg, [x], source)
        rest, test = _stratified_split(y, cfg.test_fraction, rng)
        # val_fraction is of the whole dataset, so rescale it to the remainder.
        val_share = cfg.val_fraction / (1.0 - cfg.test_fraction)
        keep_local, val_local = _stratified_split(y[rest], val_share, rng)
        train, val = rest[keep_local], rest[val_local]
        x_train, y_train, x_val, y_val = x[train], y[train], x[val], y[val]
        x_test, y_test = x[test], y[test]
        if len(np.unique(y_train)) < num_classes:
            raise DataError(f"{source}: the training split misses some classes; too few samples per class "
                            f"for val_fraction={cfg.val_fraction}, test_fraction={cfg.test_fraction}")
    x_train, x_val, x_test = _standardize(x_train, x_val, x_test)
    return Dataset(
        name=_name(cfg),
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
        num_classes=num_classes,
        fingerprint=fingerprint(x_train, y_train, x_val, y_val, x_test, y_test),
    )
