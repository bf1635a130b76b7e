"""Tests for fbnn.data: IDX/MNIST loaders, UCI benchmarks, GP toy data."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import fbnn.data as fdata
from fbnn.data import (
    MNIST_MEAN,
    MNIST_STD,
    UCI_DATASETS,
    data_dir,
    gp_posterior,
    gp_toy_data,
    load_mnist_like,
    load_uci,
    read_idx,
    seed_kfold_splits,
    standard_splits,
    standardize,
    toy_noise_std,
    uci_split,
)


def _shared_data() -> Path | None:
    try:
        return data_dir()
    except FileNotFoundError:
        return None


DATA = _shared_data()
needs_data = pytest.mark.skipif(DATA is None, reason="shared data directory not found")


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch):
    monkeypatch.delenv("FBNN_DATA", raising=False)


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes, compress: bool) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    blob = header + payload
    path.write_bytes(gzip.compress(blob) if compress else blob)
    return path


# --------------------------------------------------------------------------- data dir


def test_data_dir_explicit_and_env(tmp_path, monkeypatch):
    assert data_dir(tmp_path) == tmp_path
    monkeypatch.setenv("FBNN_DATA", str(tmp_path))
    assert data_dir() == tmp_path


def test_missing_data_dir_names_path(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data_dir(missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_mnist_like("mnist", "test", root=missing)
    monkeypatch.setenv("FBNN_DATA", str(missing))
    with pytest.raises(FileNotFoundError, match="FBNN_DATA"):
        load_uci("housing")


def test_no_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fdata, "_REPO_ROOT", tmp_path / "repo")
    with pytest.raises(FileNotFoundError) as err:
        data_dir()
    msg = str(err.value)
    assert str((tmp_path / "repo" / ".." / "shared" / "data").resolve()) in msg
    assert "FBNN_DATA" in msg and "never downloads" in msg


# --------------------------------------------------------------------------- IDX


def test_read_idx_roundtrip_plain_and_gz(tmp_path):
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (False, True):
        path = _write_idx(tmp_path / f"img{compress}", 0x0803, (2, 3, 4), pixels.tobytes(), compress)
        np.testing.assert_array_equal(read_idx(path), pixels)
    labels = _write_idx(tmp_path / "lab.gz", 0x0801, (3,), bytes([7, 0, 9]), True)
    np.testing.assert_array_equal(read_idx(labels), [7, 0, 9])


@needs_data
def test_truncated_gz_raises_value_error(tmp_path):
    original = (DATA / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(original[: len(original) // 2])
    with pytest.raises(ValueError, match=str(bad.name)):
        read_idx(bad)


@needs_data
def test_truncated_plain_idx_raises_value_error(tmp_path):
    raw = gzip.decompress((DATA / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    bad = tmp_path / "labels-idx1-ubyte"
    bad.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match=r"truncated: expected 10000 bytes .*got 9990") as err:
        read_idx(bad)
    assert str(bad) in str(err.value)
    # a well-formed gzip stream of a short payload is caught by the length check too
    short_gz = _write_idx(tmp_path / "short.gz", 0x0803, (5, 28, 28), bytes(100), compress=True)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(short_gz)


def test_bad_magic_raises_value_error(tmp_path):
    bad = _write_idx(tmp_path / "bad.gz", 0x0802, (4,), bytes(4), compress=True)
    with pytest.raises(ValueError, match="magic") as err:
        read_idx(bad)
    assert "bad.gz" in str(err.value)
    float_typed = _write_idx(tmp_path / "float.gz", 0x0D01, (1,), bytes(4), compress=True)
    with pytest.raises(ValueError, match="data type"):
        read_idx(float_typed)


def test_missing_idx_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.gz"):
        read_idx(tmp_path / "absent.gz")


def test_unknown_name_or_split(tmp_path):
    with pytest.raises(ValueError, match="fashion-mnist"):
        load_mnist_like("cifar10", "test", root=tmp_path)
    with pytest.raises(ValueError, match="train, test"):
        load_mnist_like("mnist", "valid", root=tmp_path)
    with pytest.raises(ValueError, match="housing"):
        load_uci("boston", root=tmp_path)


# --------------------------------------------------------------------------- MNIST family


@needs_data
def test_mnist_test_set():
    x, y = load_mnist_like("mnist", "test")
    assert x.shape == (10000, 784) and x.dtype == torch.float32
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert int(y.min()) == 0 and int(y.max()) == 9
    counts = torch.bincount(y, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    black = (0.0 - MNIST_MEAN) / MNIST_STD
    assert abs(black - (-0.42421296)) < 1e-7
    assert torch.isclose(x.min(), torch.tensor(black))
    assert torch.isclose(x.max(), torch.tensor((1.0 - MNIST_MEAN) / MNIST_STD))
    # most pixels are background
    assert (x == x.min()).float().mean() > 0.7


@needs_data
def test_mnist_raw_and_image_layout():
    x, _ = load_mnist_like("mnist", "test", normalize=False, flatten=False)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    xn, _ = load_mnist_like("mnist", "test")
    torch.testing.assert_close(xn.view(10000, 1, 28, 28), (x - MNIST_MEAN) / MNIST_STD)
    # the cache returns the same data on a second call
    x2, _ = load_mnist_like("mnist", "test", normalize=False, flatten=False)
    assert x2.data_ptr() == x.data_ptr()


@needs_data
def test_mnist_train_set():
    x, y = load_mnist_like("mnist", "train")
    assert x.shape == (60000, 784) and y.shape == (60000,)
    assert torch.bincount(y, minlength=10).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]


@needs_data
def test_fashion_and_kmnist_test():
    for name in ("fashion-mnist", "kmnist"):
        x, y = load_mnist_like(name, "test")
        assert x.shape == (10000, 784) and x.dtype == torch.float32
        assert torch.bincount(y, minlength=10).tolist() == [1000] * 10
        assert torch.isclose(x.min(), torch.tensor((0.0 - MNIST_MEAN) / MNIST_STD))


@needs_data
def test_kmnist_train_not_shipped():
    with pytest.raises(FileNotFoundError, match="only the KMNIST test split"):
        load_mnist_like("kmnist", "train")


@needs_data
def test_root_and_env_override(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        os.symlink(DATA / "mnist" / f, tmp_path / "mnist" / f)
    x_ref, y_ref = load_mnist_like("mnist", "test")
    x, y = load_mnist_like("mnist", "test", root=tmp_path)
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    # the override is really used: the training split is absent there
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_mnist_like("mnist", "train", root=tmp_path)
    monkeypatch.setenv("FBNN_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_mnist_like("mnist", "train")


@needs_data
def test_corrupt_file_in_data_root(tmp_path):
    (tmp_path / "mnist").mkdir()
    images = (DATA / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(images[:100_000])
    os.symlink(DATA / "mnist" / "t10k-labels-idx1-ubyte.gz", tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        load_mnist_like("mnist", "test", root=tmp_path)


# --------------------------------------------------------------------------- UCI

UCI_SHAPES = {
    "housing": (506, 13, 455, 51),
    "concrete": (1030, 8, 927, 103),
    "energy": (768, 8, 691, 77),
    "power": (9568, 4, 8611, 957),
    "wine": (1599, 11, 1439, 160),
    "yacht": (308, 6, 277, 31),
}
SEED_ROWS = {"housing": 505, "concrete": 1030, "energy": 768, "power": 9568, "wine": 1598, "yacht": 306}


@needs_data
@pytest.mark.parametrize("name", UCI_DATASETS)
def test_uci_shapes_and_standard_splits(name):
    n, d, n_train, n_test = UCI_SHAPES[name]
    x, y = load_uci(name)
    assert x.shape == (n, d) and y.shape == (n,)
    assert x.dtype == np.float64 and y.dtype == np.float64
    assert np.isfinite(x).all() and np.isfinite(y).all()
    splits = standard_splits(name)
    assert len(splits) == 20
    for train_idx, test_idx in splits:
        assert (len(train_idx), len(test_idx)) == (n_train, n_test)
        assert np.intersect1d(train_idx, test_idx).size == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(n))


@needs_data
def test_uci_known_values():
    x, y = load_uci("housing")
    np.testing.assert_allclose(x[0, :3], [0.00632, 18.0, 2.31])
    assert y[0] == 24.0  # MEDV of the first tract
    _, y_wine = load_uci("wine")
    assert set(np.unique(y_wine)) <= set(range(3, 9))


@needs_data
def test_uci_missing_file_named(tmp_path):
    folder = tmp_path / "uci" / "yacht" / "data"
    folder.mkdir(parents=True)
    os.symlink(DATA / "uci" / "yacht" / "data" / "data.txt", folder / "data.txt")
    with pytest.raises(FileNotFoundError, match="index_features.txt"):
        load_uci("yacht", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="data.txt"):
        load_uci("concrete", root=tmp_path)


@needs_data
@pytest.mark.parametrize("name", UCI_DATASETS)
def test_seed_kfold_protocol(name):
    x, y, splits = seed_kfold_splits(name)
    n = SEED_ROWS[name]
    assert x.shape[0] == n and y.shape == (n,)
    x_full, y_full = load_uci(name)
    dropped = len(y_full) - n
    np.testing.assert_array_equal(x, x_full[dropped:])
    sizes = [len(test) for _, test in splits]
    assert sizes == [n // 10 + 1] * (n % 10) + [n // 10] * (10 - n % 10)
    perm = np.random.RandomState(0).permutation(n)
    np.testing.assert_array_equal(np.concatenate([test for _, test in splits]), perm)
    for train_idx, test_idx in splits:
        assert len(train_idx) + len(test_idx) == n
        assert np.intersect1d(train_idx, test_idx).size == 0


@needs_data
def test_seed_kfold_matches_kfold_semantics():
    _, _, splits = seed_kfold_splits("yacht")
    perm = np.random.RandomState(0).permutation(306)
    # 306 = 6 folds of 31 then 4 of 30; fold 7's test block is positions 216..245
    np.testing.assert_array_equal(splits[7][1], perm[216:246])
    np.testing.assert_array_equal(splits[7][0], np.concatenate([perm[:216], perm[246:]]))
    _, y_nc, splits_nc = seed_kfold_splits("yacht", compat=False, n_folds=5, seed=3)
    assert len(y_nc) == 308 and len(splits_nc) == 5


def test_standardize_uses_train_stats_only():
    rng = np.random.RandomState(0)
    x_train = rng.normal(5.0, 3.0, size=(50, 3))
    x_train[:, 2] = 7.0  # constant column
    y_train = rng.normal(-2.0, 4.0, size=50)
    x_test = rng.normal(100.0, 1.0, size=(10, 3))
    y_test = rng.normal(100.0, 1.0, size=10)
    s = standardize(x_train, y_train, x_test, y_test)
    assert s.x_train.dtype == torch.float32 and s.y_train.shape == (50,) and s.y_test.shape == (10,)
    torch.testing.assert_close(s.x_train.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.x_train[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-5, rtol=0)
    assert torch.all(s.x_train[:, 2] == 0)  # zero-variance column: centred, std 1
    assert s.y_mean == pytest.approx(y_train.mean()) and s.y_std == pytest.approx(y_train.std())
    expected_test = (x_test - x_train.mean(0)) / np.where(x_train.std(0) > 0, x_train.std(0), 1.0)
    np.testing.assert_allclose(s.x_test.numpy(), expected_test, rtol=1e-5)
    np.testing.assert_allclose(s.y_test.numpy() * s.y_std + s.y_mean, y_test, rtol=1e-5)


@needs_data
@pytest.mark.parametrize("protocol,index", [("standard20", 3), ("seed10fold", 9)])
def test_uci_split_convenience(protocol, index):
    s = uci_split("concrete", index, protocol=protocol)
    assert s.x_train.shape[1] == 8 and len(s.x_train) + len(s.x_test) == 1030
    torch.testing.assert_close(s.x_train.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(s.x_train.std(0, unbiased=False), torch.ones(8), atol=1e-4, rtol=0)
    assert abs(float(s.y_train.mean())) < 1e-4
    # the test fold is not itself standardised
    assert abs(float(s.y_test.mean())) > 1e-3
    with pytest.raises(ValueError, match="split_index"):
        uci_split("concrete", 20, protocol=protocol)
    with pytest.raises(ValueError, match="seed10fold"):
        uci_split("concrete", 0, protocol="cv")


# --------------------------------------------------------------------------- toy data


@pytest.fixture(scope="module")
def toy():
    """Both toy sets, drawn once per module (each draw factorises a 400 x 400 covariance)."""
    return {kind: gp_toy_data(kind) for kind in ("homo", "hetero")}


@pytest.mark.parametrize("kind", ["homo", "hetero"])
def test_toy_data_shapes_and_determinism(kind, toy):
    d = toy[kind]
    assert d.x_train.shape == (250, 1) and d.y_train.shape == (250,)
    assert d.x_all.shape == (400, 1) and d.y_all.shape == (400,)
    assert all(t.dtype == torch.float32 for t in d)
    assert -1.95 < float(d.x_train.min()) < -1.7 and 1.7 < float(d.x_train.max()) < 1.95
    assert torch.all(d.x_all[1:] >= d.x_all[:-1])
    assert abs(float(d.y_all.mean())) < 1e-5
    torch.testing.assert_close(d.x_train, d.x_all[75:325], rtol=0, atol=0)
    again = gp_toy_data(kind)
    assert all(torch.equal(a, b) for a, b in zip(d, again))
    other = gp_toy_data(kind, seed=3, n=50, train_slice=(10, 40))
    assert other.x_train.shape == (30, 1) and not torch.equal(d.y_all[:50], other.y_all)


def test_toy_x_draw_and_noise(toy):
    homo, hetero = toy["homo"], toy["hetero"]
    expected_x = np.sort(np.random.RandomState(2).uniform(-3, 3, 400)).astype(np.float32)
    np.testing.assert_array_equal(homo.x_all[:, 0].numpy(), expected_x)
    torch.testing.assert_close(hetero.x_all, homo.x_all)
    torch.testing.assert_close(homo.noise_std_train, torch.full((250,), 0.3))
    torch.testing.assert_close(hetero.noise_std_train, 0.3 * (hetero.x_train[:, 0] + 2).abs())
    with pytest.raises(ValueError, match="hetero"):
        gp_toy_data("cubic")
    np.testing.assert_allclose(toy_noise_std([-2.0, 0.0, 1.0], "hetero"), [0.0, 0.6, 0.9])


def _dense_gp(xa, ya, xs, noise_var, ls=1.0, var=1.0):
    k = lambda a, b: var * np.exp(-0.5 * (a[:, None] - b[None, :]) ** 2 / ls**2)  # noqa: E731
    inv = np.linalg.inv(k(xa, xa) + np.diag(noise_var))
    mean = k(xs, xa) @ inv @ ya
    cov = k(xs, xs) - k(xs, xa) @ inv @ k(xa, xs)
    return mean, np.diag(cov)


def test_gp_posterior_matches_dense_formula():
    xa = np.array([-1.0, 0.2, 1.5])
    ya = np.array([0.3, -0.8, 1.1])
    xs = np.linspace(-3, 3, 7)
    noise = 0.09 * (xa + 2) ** 2
    post = gp_posterior(torch.tensor(xa)[:, None], torch.tensor(ya), xs, noise, noise_var_test=0.25,
                        lengthscale=0.8, variance=1.3)
    mean, var = _dense_gp(xa, ya, xs, noise, ls=0.8, var=1.3)
    np.testing.assert_allclose(post.mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(post.var_f.numpy(), var, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(post.var_y.numpy(), var + 0.25, rtol=1e-5, atol=1e-6)
    assert gp_posterior(xa, ya, xs, 0.1).var_y is None
    mean_s, var_s = _dense_gp(xa, ya, xs, np.full(3, 0.1))
    post_s = gp_posterior(xa, ya, xs, 0.1)
    np.testing.assert_allclose(post_s.mean.numpy(), mean_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(post_s.var_f.numpy(), var_s, rtol=1e-5, atol=1e-6)


def test_gp_posterior_on_toy_data(toy):
    d = toy["hetero"]
    grid = torch.linspace(-5, 5, 200)
    noise_train = toy_noise_std(d.x_train[:, 0].numpy(), "hetero") ** 2
    post = gp_posterior(d.x_train, d.y_train, grid, noise_train,
                        noise_var_test=toy_noise_std(grid.numpy(), "hetero") ** 2)
    assert post.mean.shape == post.var_f.shape == post.var_y.shape == (200,)
    assert torch.all(post.var_f <= 1.0 + 1e-6) and torch.all(post.var_f >= 0)
    assert torch.all(post.var_y >= post.var_f)
    inside = (grid > -1.5) & (grid < 1.5)
    outside = grid.abs() > 4.5
    # the data pin f down inside the training range; far away the posterior returns to the prior
    assert float(post.var_f[inside].max()) < 0.2
    assert float(post.var_f[outside].min()) > 0.9
    # the posterior mean follows the training targets
    fit = gp_posterior(d.x_train, d.y_train, d.x_train, noise_train).mean
    assert float(torch.corrcoef(torch.stack([fit, d.y_train]))[0, 1]) > 0.8
