"""MCMC convergence diagnostics: split-R-hat and effective sample size.

Chains come as a tensor ``(C, T)`` or ``(C, T, ...)``: ``C`` chains of ``T`` draws of
any number of scalars (e.g. ``tree.ravel``-ed parameters or predictions); results have
the trailing shape ``(...)``. Everything is computed in float64.

- ``split_rhat``: Gelman et al., BDA3 section 11.4 (each chain split in half), with the
  optional rank-normalised, folded variant of Vehtari et al. (2021).
- ``effective_sample_size``: BDA3 / Stan's estimator: autocorrelations from the
  within- and between-chain variances, summed in pairs until the first non-positive
  pair (Geyer's initial positive sequence), made monotone (Geyer's initial monotone
  sequence), as in Stan and ArviZ.
"""
from __future__ import annotations

import math

import torch

__all__ = ["split_rhat", "effective_sample_size", "chain_summary"]


def _as_chains(chains, who: str) -> tuple[torch.Tensor, tuple]:
    """``(C, T, ...) -> ((C, T, P) float64, trailing shape)`` after validation."""
    x = torch.as_tensor(chains)
    if x.dim() < 2:
        raise ValueError(f"{who}: chains must have shape (C, T) or (C, T, ...), got {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{who}: need at least 2 chains, got {x.shape[0]} (shape {tuple(x.shape)})")
    if x.shape[1] < 4:
        raise ValueError(f"{who}: need at least 4 draws per chain, got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{who}: chains must be real numbers, got {x.dtype}")
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{who}: chains contain NaN or inf")
    trailing = tuple(x.shape[2:])
    return x.reshape(x.shape[0], x.shape[1], -1), trailing


def _split(x: torch.Tensor) -> torch.Tensor:
    """``(C, T, P) -> (2C, T // 2, P)``: first and last halves (the middle draw of an odd T dropped)."""
    n = x.shape[1] // 2
    return torch.cat([x[:, :n], x[:, x.shape[1] - n:]], dim=0)


def _rank_normalise(x: torch.Tensor) -> torch.Tensor:
    """Normal scores of the pooled ranks: ``ndtri((r - 3/8) / (S + 1/4))`` (average ranks for ties)."""
    c, t, p = x.shape
    flat = x.reshape(c * t, p)
    ranks = torch.empty_like(flat)
    for j in range(p):
        values, inverse, counts = torch.unique(flat[:, j], return_inverse=True, return_counts=True)
        ends = torch.cumsum(counts, 0).to(torch.float64)
        ranks[:, j] = (ends - (counts.to(torch.float64) - 1) / 2)[inverse]
    return torch.special.ndtri((ranks - 0.375) / (c * t + 0.25)).reshape(c, t, p)


def _rhat(x: torch.Tensor) -> torch.Tensor:
    """BDA3's R-hat on already split chains ``(M, n, P) -> (P,)``."""
    n = x.shape[1]
    # W: mean within-chain variance; B / n: variance of the chain means;
    # var+ = (n - 1) / n W + B / n;  R-hat = sqrt(var+ / W)
    w = x.var(dim=1, correction=1).mean(0)
    b_over_n = x.mean(dim=1).var(dim=0, correction=1)
    return torch.sqrt(((n - 1) / n * w + b_over_n) / w)


def split_rhat(chains, rank_normalize: bool = False) -> torch.Tensor:
    """Split-R-hat ``(C, T, ...) -> (...)`` float64 (BDA3 11.4); ~1 at convergence.

    ``rank_normalize=True``: Vehtari et al. (2021)'s version, the larger of the split-R-hat
    of the rank-normalised draws (bulk) and of the rank-normalised |draw - median| (tails).
    """
    x, trailing = _as_chains(chains, "split_rhat")
    s = _split(x)
    if not rank_normalize:
        return _rhat(s).reshape(trailing)
    bulk = _rhat(_rank_normalise(s))
    median = s.reshape(-1, s.shape[2]).median(dim=0).values
    tail = _rhat(_rank_normalise((s - median).abs()))
    return torch.maximum(bulk, tail).reshape(trailing)


def _autocov(x: torch.Tensor) -> torch.Tensor:
    """Biased autocovariance of each chain by FFT: ``(M, n, P) -> (M, n, P)``, lag on dim 1."""
    n = x.shape[1]
    centred = x - x.mean(dim=1, keepdim=True)
    size = 1 << (2 * n - 1).bit_length()
    f = torch.fft.rfft(centred, n=size, dim=1)
    return torch.fft.irfft(f * f.conj(), n=size, dim=1)[:, :n] / n


def effective_sample_size(chains, split: bool = True) -> torch.Tensor:
    """Effective sample size ``(C, T, ...) -> (...)`` float64 over all chains.

    ``split=True`` (BDA3) halves each chain first, so a drift within a chain lowers the
    ESS too. The result is capped at ``N log10 N`` (N the number of draws), as in Stan.
    """
    x, trailing = _as_chains(chains, "effective_sample_size")
    if split:
        x = _split(x)
    m, n, _ = x.shape
    acov = _autocov(x)
    # W = mean within-chain variance (ddof 1); var+ = (n - 1) / n W + var(chain means)
    w = acov[:, 0].mean(0) * n / (n - 1)
    var_plus = w * (n - 1) / n + x.mean(dim=1).var(dim=0, correction=1)
    # rho_t = 1 - (W - mean_chains acov_t) / var+, with rho_0 = 1
    rho = 1.0 - (w - acov.mean(0)) / var_plus            # (n, P)
    rho[0] = 1.0
    # pairs P_j = rho_2j + rho_2j+1 for j <= j_last (the last pair Stan's loop reaches)
    j_last = max(math.ceil((n - 2) / 2) - 1, 0)
    pairs = rho[0:2 * j_last + 2:2] + rho[1:2 * j_last + 2:2]          # (j_last + 1, P)
    # initial positive sequence: stop at the first non-positive pair J (or at j_last)
    stop = pairs <= 0
    stop[j_last] = True
    big_j = stop.to(torch.int64).argmax(dim=0)                           # (P,)
    # initial monotone sequence: each pair at most the previous one
    monotone = torch.cummin(pairs, dim=0).values
    kept = torch.arange(j_last + 1).unsqueeze(1) < big_j
    total = torch.where(kept, monotone, torch.zeros_like(monotone)).sum(0)
    # tau = -1 + 2 sum_{j < J} P_j + rho_2J (Stan's improved tail term, when it counts)
    rho_even = rho[0:2 * j_last + 1:2].gather(0, big_j.unsqueeze(0)).squeeze(0)
    pair_j = pairs.gather(0, big_j.unsqueeze(0)).squeeze(0)
    at_limit = (big_j == j_last) & (pair_j >= 0)
    tail = torch.where((rho_even > 0) | at_limit, rho_even, torch.zeros_like(rho_even))
    tau = -1.0 + 2.0 * total + tail
    draws = m * n
    tau = torch.clamp(tau, min=1.0 / math.log10(draws))
    return (draws / tau).reshape(trailing)


def chain_summary(chains) -> dict:
    """``{"mean", "std", "rhat", "ess"}`` over all draws of ``(C, T, ...)`` chains, each ``(...)``."""
    x, trailing = _as_chains(chains, "chain_summary")
    pooled = x.reshape(-1, x.shape[2])
    return {"mean": pooled.mean(0).reshape(trailing),
            "std": pooled.std(0, correction=1).reshape(trailing),
            "rhat": split_rhat(x).reshape(trailing),
            "ess": effective_sample_size(x).reshape(trailing)}
