"""IDX reader and MNIST / Fashion-MNIST / KMNIST loaders (SPEC §1.1, §4.3)."""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

MNIST_LIKE_DATASETS = ("mnist", "fashion-mnist", "kmnist")
SPLITS = ("train", "test")

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_MAGIC_NDIM = {0x0801: 1, 0x0803: 3}  # labels, images
_UINT8_TYPE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"

_HOW_TO_OBTAIN = (
    "fbnn never downloads data: put the original IDX .gz files (yann.lecun.com/exdb/mnist, "
    "github.com/zalandoresearch/fashion-mnist, codh.rois.ac.jp/kmnist) there, or pass "
    "root=... / set FBNN_DATA to a directory that has them (see shared/data/README.md)"
)


def _read_bytes(path: Path) -> bytes:
    """Whole decompressed content of a gzip or plain file."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({err})") from err


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a uint8 IDX file (gzip-compressed or plain).

    Supports the two layouts of the MNIST family: labels (magic 0x00000801, shape `(n,)`)
    and images (magic 0x00000803, shape `(n, rows, cols)`). Returns a read-only uint8 view.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: bad magic, wrong type byte, or a truncated / corrupt file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}. {_HOW_TO_OBTAIN}.")
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated: expected at least a 4-byte IDX header, got {len(raw)} bytes")

    magic = int.from_bytes(raw[:4], "big")
    if magic not in _MAGIC_NDIM:
        if raw[0] == 0 and raw[1] == 0 and raw[2] != _UINT8_TYPE:
            what = f"unsupported IDX data type 0x{raw[2]:02x} (only uint8, 0x08)"
        else:
            what = "bad magic number"
        raise ValueError(
            f"{path}: {what}: got 0x{magic:08x}, expected 0x00000801 (labels) or 0x00000803 (images)"
        )

    ndim = _MAGIC_NDIM[magic]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated: expected a {header_len}-byte header, got {len(raw)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    got = len(raw) - header_len
    if got != expected:
        problem = "truncated" if got < expected else "trailing data"
        raise ValueError(
            f"{path}: {problem}: expected {expected} bytes of data for shape {dims}, got {got}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _file_key(path: Path) -> tuple[str, int, int]:
    """Cache key that changes when the file is replaced or rewritten."""
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=6)  # up to ~190 MB per 60k-image entry
def _cached_images(key: tuple[str, int, int], normalize: bool) -> torch.Tensor:
    """`(N, 28, 28)` float32 images in [0, 1], standardised when `normalize`."""
    x = read_idx(key[0]).astype(np.float32)
    x /= 255.0
    if normalize:
        x -= MNIST_MEAN
        x /= MNIST_STD
    return torch.from_numpy(x)


@functools.lru_cache(maxsize=8)
def _cached_labels(key: tuple[str, int, int]) -> torch.Tensor:
    """`(N,)` int64 labels."""
    return torch.from_numpy(read_idx(key[0]).astype(np.int64))


def mnist_like_files(name: str, split: str, root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Paths `(images, labels)` of one split of an MNIST-like dataset under the data root."""
    from . import data_dir

    if name not in MNIST_LIKE_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(MNIST_LIKE_DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    folder = data_dir(root) / name
    prefix = _SPLIT_PREFIX[split]
    return (
        folder / f"{prefix}-images-idx3-ubyte.gz",
        folder / f"{prefix}-labels-idx1-ubyte.gz",
    )


def load_mnist_like(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    normalize: bool = True,
    flatten: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST, Fashion-MNIST or KMNIST.

    Args:
        name: "mnist", "fashion-mnist" or "kmnist".
        split: "train" or "test".
        root: data root (see `fbnn.data.data_dir`); files are
            `<root>/<name>/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`.
        normalize: scale to [0, 1], then x <- (x - MNIST_MEAN) / MNIST_STD. The MNIST
            statistics are used for all three datasets (SPEC §1.1, §4.3).
        flatten: `(N, 784)` if True, else `(N, 1, 28, 28)`.

    Returns:
        x: float32 `(N, 784)` or `(N, 1, 28, 28)`; y: int64 `(N,)`.
        Both share memory with an in-process cache: do not modify them in place
        (clone first if you need to).

    Raises:
        ValueError: unknown name or split, or a corrupt file.
        FileNotFoundError: missing files (KMNIST ships the test split only).
    """
    images_path, labels_path = mnist_like_files(name, split, root)
    if name == "kmnist" and split == "train" and not images_path.is_file():
        raise FileNotFoundError(
            f"{images_path} not found: only the KMNIST test split ships with fbnn's shared data "
            "(training labels only, no training images); use KMNIST as a test / "
            "out-of-distribution set, or place the original train-images-idx3-ubyte.gz there."
        )
    # read_idx raises the informative FileNotFoundError for a missing file.
    if not images_path.is_file():
        read_idx(images_path)
    if not labels_path.is_file():
        read_idx(labels_path)

    x = _cached_images(_file_key(images_path), bool(normalize))
    y = _cached_labels(_file_key(labels_path))
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{images_path} has {x.shape[0]} images but {labels_path} has {y.shape[0]} labels"
        )
    x = x.reshape(x.shape[0], -1) if flatten else x.unsqueeze(1)
    return x, y
