"""UCI regression benchmarks: the 20 standard splits and the seed's 10-fold protocol (SPEC §5.4)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

UCI_DATASETS = ("housing", "concrete", "energy", "power", "wine", "yacht")

UCI_FOLDERS = {
    "housing": "bostonHousing",
    "concrete": "concrete",
    "energy": "energy",
    "power": "power-plant",
    "wine": "wine-quality-red",
    "yacht": "yacht",
}

N_STANDARD_SPLITS = 20
PROTOCOLS = ("standard20", "seed10fold")

# Rows the seed lost to pandas header handling (SPEC §5.4).
_SEED_DROPPED_ROWS = {"housing": 1, "concrete": 0, "energy": 0, "power": 0, "wine": 1, "yacht": 2}

Split = tuple[np.ndarray, np.ndarray]


class UCISplit(NamedTuple):
    """One standardised train/test split.

    x_train `(n_train, d)`, y_train `(n_train,)`, x_test `(n_test, d)`, y_test `(n_test,)`:
    float32 tensors z-scored with training statistics. y_mean, y_std: the training target
    statistics (floats) to map predictions back to original units: y = y_norm * y_std + y_mean.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    y_mean: float
    y_std: float


def _uci_folder(name: str, root: str | os.PathLike | None) -> Path:
    from . import data_dir

    if name not in UCI_FOLDERS:
        raise ValueError(f"unknown UCI dataset {name!r}; valid names: {', '.join(UCI_DATASETS)}")
    return data_dir(root) / "uci" / UCI_FOLDERS[name] / "data"


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"UCI file not found: {path} (fbnn never downloads data; see shared/data/README.md)"
        )


def _read_index_file(path: Path) -> np.ndarray:
    """0-based integer indices, one per line, as a 1-D int64 array."""
    _require_file(path)
    return np.loadtxt(path, dtype=np.int64, ndmin=1)


@functools.lru_cache(maxsize=16)
def _read_table(path_str: str) -> np.ndarray:
    path = Path(path_str)
    _require_file(path)
    table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    table.setflags(write=False)
    return table


def load_uci(name: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All rows of a UCI benchmark, as given by its index files.

    Returns:
        x: float64 `(n, d)`; y: float64 `(n,)` (fresh arrays, safe to modify).
        housing (506, 13), concrete (1030, 8), energy (768, 8), power (9568, 4),
        wine (1599, 11), yacht (308, 6).
    """
    folder = _uci_folder(name, root)
    table = _read_table(str(folder / "data.txt"))
    features = _read_index_file(folder / "index_features.txt")
    target = int(_read_index_file(folder / "index_target.txt")[0])
    return table[:, features].copy(), table[:, target].copy()


def standard_splits(name: str, root: str | os.PathLike | None = None) -> list[Split]:
    """The 20 standard (PBP / MC-dropout) `(train_idx, test_idx)` int64 index pairs into `load_uci` rows."""
    folder = _uci_folder(name, root)
    return [
        (_read_index_file(folder / f"index_train_{i}.txt"), _read_index_file(folder / f"index_test_{i}.txt"))
        for i in range(N_STANDARD_SPLITS)
    ]


def kfold_blocks(n: int, n_folds: int) -> list[tuple[int, int]]:
    """`[start, stop)` of each fold in sklearn's unshuffled KFold: the first n % k folds have n//k + 1 rows."""
    if not 2 <= n_folds <= n:
        raise ValueError(f"n_folds must be in [2, n={n}], got {n_folds}")
    sizes = [n // n_folds + (1 if j < n % n_folds else 0) for j in range(n_folds)]
    stops = np.cumsum(sizes)
    return [(int(stop - size), int(stop)) for size, stop in zip(sizes, stops)]


def seed_kfold_splits(
    name: str,
    root: str | os.PathLike | None = None,
    n_folds: int = 10,
    seed: int = 0,
    compat: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[Split]]:
    """The seed's UCI protocol: one seeded permutation, then KFold without shuffling (SPEC §5.4).

    In compat mode the rows the seed lost to pandas header handling are dropped first
    (the first row of housing and wine, the first two of yacht), giving 505 / 1030 / 768 /
    9568 / 1598 / 306 rows. Then ``perm = np.random.RandomState(seed).permutation(n)`` and
    fold j's test set is the j-th contiguous block of the permuted order; its training set is
    the other blocks in permuted order (as ``KFold(n_folds).split`` on the permuted rows).

    Caveats: energy in the shared copy has target Y1 (heating load) and no Y2, whereas the
    seed used Y1 as a 9th input and Y2 (cooling load) as the target, so the seed's energy
    setting cannot be reproduced. Fold contents match the seed only where the row order of
    `data.txt` equals that of the seed's source file.

    Returns:
        x float64 `(n, d)`, y float64 `(n,)` (row-dropped but not permuted), and `n_folds`
        `(train_idx, test_idx)` int64 index pairs into them.
    """
    x, y = load_uci(name, root)
    if compat:
        drop = _SEED_DROPPED_ROWS[name]
        x, y = x[drop:], y[drop:]
    n = len(y)
    perm = np.random.RandomState(seed).permutation(n)
    splits = [
        (np.concatenate([perm[:start], perm[stop:]]), perm[start:stop].copy())
        for start, stop in kfold_blocks(n, n_folds)
    ]
    return x, y, splits


def _mean_std(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and population std (ddof 0) over axis 0; a zero std is replaced by 1."""
    mean = a.mean(axis=0)
    std = a.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def standardize(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> UCISplit:
    """Z-score inputs and targets with the training set's mean and population std (ddof 0).

    Statistics are computed in float64 from the training rows only and applied to both sets.
    A zero-variance column (or constant target) gets std 1, i.e. it is only centred.

    Args:
        x_train `(n_train, d)`, y_train `(n_train,)`, x_test `(n_test, d)`, y_test `(n_test,)`.

    Returns:
        UCISplit of float32 tensors plus the training y_mean, y_std as floats.
    """
    x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    y_train, y_test = np.asarray(y_train, np.float64), np.asarray(y_test, np.float64)
    x_mean, x_std = _mean_std(x_train)
    y_mean, y_std = _mean_std(y_train)

    def as_tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return UCISplit(
        x_train=as_tensor((x_train - x_mean) / x_std),
        y_train=as_tensor((y_train - y_mean) / y_std),
        x_test=as_tensor((x_test - x_mean) / x_std),
        y_test=as_tensor((y_test - y_mean) / y_std),
        y_mean=float(y_mean),
        y_std=float(y_std),
    )


def uci_split(
    name: str,
    split_index: int,
    protocol: str = "standard20",
    root: str | os.PathLike | None = None,
) -> UCISplit:
    """One standardised split in one call.

    protocol "standard20": split `split_index` (0..19) of the 20 standard splits.
    protocol "seed10fold": fold `split_index` (0..9) of `seed_kfold_splits(name, root)`
    (seed 0, compat mode; see its caveat on energy).
    """
    if protocol == "standard20":
        x, y = load_uci(name, root)
        splits = standard_splits(name, root)
    elif protocol == "seed10fold":
        x, y, splits = seed_kfold_splits(name, root)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    if not 0 <= split_index < len(splits):
        raise ValueError(f"split_index must be in 0..{len(splits) - 1} for {protocol!r}, got {split_index}")
    train_idx, test_idx = splits[split_index]
    return standardize(x[train_idx], y[train_idx], x[test_idx], y[test_idx])
