"""1-D regression toy data drawn from a GP, and the exact GP posterior (SPEC §5.1)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

TOY_KINDS = ("homo", "hetero")
TOY_NOISE_SCALE = 0.3


class ToyData(NamedTuple):
    """x_train `(250, 1)`, y_train `(250,)`, x_all `(n, 1)`, y_all `(n,)`, noise_std_train `(250,)`; float32."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_all: torch.Tensor
    y_all: torch.Tensor
    noise_std_train: torch.Tensor


class GPPosterior(NamedTuple):
    """Predictive mean `(m,)`, variance of f `(m,)`, variance of y `(m,)` (None without test noise); float32."""

    mean: torch.Tensor
    var_f: torch.Tensor
    var_y: torch.Tensor | None


def toy_noise_std(x, kind: str) -> np.ndarray:
    """Observation noise std of the toy data: 0.3 (homo) or 0.3·|x + 2| (hetero); shape of `x`, float64."""
    x = np.asarray(x, dtype=np.float64)
    if kind == "homo":
        return np.full_like(x, TOY_NOISE_SCALE)
    if kind == "hetero":
        return TOY_NOISE_SCALE * np.abs(x + 2.0)
    raise ValueError(f"unknown toy kind {kind!r}; valid kinds: {', '.join(TOY_KINDS)}")


def rbf_kernel(a: np.ndarray, b: np.ndarray, lengthscale: float = 1.0, variance: float = 1.0) -> np.ndarray:
    """GPy-style RBF `variance * exp(-(a_i - b_j)^2 / (2 lengthscale^2))` for 1-D inputs `(n,)`, `(m,)` -> `(n, m)`."""
    diff = np.subtract.outer(a, b) / lengthscale
    return variance * np.exp(-0.5 * diff**2)


def gp_toy_data(
    kind: str = "homo",
    seed: int = 2,
    n: int = 400,
    train_slice: tuple[int, int] = (75, 325),
) -> ToyData:
    """The seed's GP toy regression set (SPEC §5.1).

    With one ``np.random.RandomState(seed)``: x ~ U(-3, 3) (n points, sorted), then
    y ~ N(0, K + diag(noise_std(x)^2)) via the legacy `multivariate_normal` (RBF kernel,
    variance 1, lengthscale 1), then y <- y - mean(y) over all n points. The training set
    is the sorted indices `train_slice[0] ... train_slice[1] - 1` (250 points, x ≈ [-1.9, 1.9]).
    """
    if kind not in TOY_KINDS:
        raise ValueError(f"unknown toy kind {kind!r}; valid kinds: {', '.join(TOY_KINDS)}")
    rng = np.random.RandomState(seed)
    x = np.sort(rng.uniform(-3.0, 3.0, size=n))
    noise_std_all = toy_noise_std(x, kind)
    cov = rbf_kernel(x, x) + np.diag(noise_std_all**2)
    y = rng.multivariate_normal(np.zeros(n), cov)
    y = y - y.mean()

    lo, hi = train_slice
    return ToyData(
        x_train=_as_float32(x[lo:hi, None]),
        y_train=_as_float32(y[lo:hi]),
        x_all=_as_float32(x[:, None]),
        y_all=_as_float32(y),
        noise_std_train=_as_float32(noise_std_all[lo:hi]),
    )


def _as_float32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _as_1d_float64(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return torch.from_numpy(np.asarray(a, dtype=np.float64).reshape(-1))


def _noise_vector(noise_var, n: int) -> torch.Tensor:
    """Scalar or per-point noise variance as an `(n,)` float64 tensor."""
    v = _as_1d_float64(noise_var)
    if v.numel() == 1:
        return v.expand(n).clone()
    if v.numel() != n:
        raise ValueError(f"noise variance has {v.numel()} entries, expected 1 or {n}")
    return v


def gp_posterior(
    x_train,
    y_train,
    x_test,
    noise_var_train,
    noise_var_test=None,
    lengthscale: float = 1.0,
    variance: float = 1.0,
) -> GPPosterior:
    """Exact zero-mean GP regression posterior with an RBF kernel, by Cholesky in float64.

    mean = K*ᵀ (K + Σ)⁻¹ y, var_f = diag(K**) − diag(K*ᵀ (K + Σ)⁻¹ K*), var_y = var_f + noise_var_test.
    For the heteroscedastic toy data pass ``noise_var_train = toy_noise_std(x_train, "hetero")**2``,
    i.e. 0.09·(x + 2)² at the training points (the seed used (x − 2)² there, a sign bug).

    Args:
        x_train `(n,)` or `(n, 1)`, y_train `(n,)`, x_test `(m,)` or `(m, 1)`: arrays or tensors.
        noise_var_train: scalar or `(n,)`. noise_var_test: None, scalar or `(m,)`.
    """
    xa, ya, xs = _as_1d_float64(x_train), _as_1d_float64(y_train), _as_1d_float64(x_test)
    k_train = torch.from_numpy(rbf_kernel(xa.numpy(), xa.numpy(), lengthscale, variance))
    k_train = k_train + torch.diag(_noise_vector(noise_var_train, len(xa)))
    k_cross = torch.from_numpy(rbf_kernel(xa.numpy(), xs.numpy(), lengthscale, variance))  # (n, m)

    chol = torch.linalg.cholesky(k_train)
    alpha = torch.cholesky_solve(ya[:, None], chol)[:, 0]
    v = torch.linalg.solve_triangular(chol, k_cross, upper=False)
    mean = k_cross.T @ alpha
    var_f = (variance - (v**2).sum(0)).clamp_min(0.0)
    var_y = None if noise_var_test is None else var_f + _noise_vector(noise_var_test, len(xs))
    return GPPosterior(
        mean=mean.float(),
        var_f=var_f.float(),
        var_y=None if var_y is None else var_y.float(),
    )
