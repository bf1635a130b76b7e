"""Split-R-hat and effective sample size on chains with known answers."""
import math

import pytest
import torch

from fbnn import diagnostics as dg
from fbnn import random as fr


def _iid(key=0, shape=(4, 1000, 3)):
    return fr.normal(fr.key(key), shape, dtype=torch.float64)


def _ar1(rho, chains, draws, dims, key):
    """Stationary AR(1) chains ``(chains, draws, dims)`` with unit innovations."""
    e = fr.normal(fr.key(key), (draws, chains, dims), dtype=torch.float64)
    x = torch.empty_like(e)
    x[0] = e[0] / math.sqrt(1 - rho ** 2)
    for t in range(1, draws):
        x[t] = rho * x[t - 1] + e[t]
    return x.permute(1, 0, 2)


def _stan_ess(x):
    """Stan's / ArviZ's effective sample size for ``(M, n)`` chains, as a plain loop."""
    m, n = x.shape
    centred = x - x.mean(1, keepdim=True)
    acov = torch.stack([torch.stack([(centred[c, :n - t] * centred[c, t:]).sum() / n for t in range(n)])
                        for c in range(m)])
    mean_var = acov[:, 0].mean() * n / (n - 1)
    var_plus = mean_var * (n - 1) / n + x.mean(1).var(correction=1)
    rho = torch.zeros(n, dtype=torch.float64)
    rho_even, rho_odd = 1.0, float(1 - (mean_var - acov[:, 1].mean()) / var_plus)
    rho[0], rho[1] = rho_even, rho_odd
    t = 1
    while t < n - 3 and rho_even + rho_odd > 0:
        rho_even = float(1 - (mean_var - acov[:, t + 1].mean()) / var_plus)
        rho_odd = float(1 - (mean_var - acov[:, t + 2].mean()) / var_plus)
        if rho_even + rho_odd >= 0:
            rho[t + 1], rho[t + 2] = rho_even, rho_odd
        t += 2
    max_t = t - 2
    if rho_even > 0:
        rho[max_t + 1] = rho_even
    t = 1
    while t <= max_t - 2:
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = (rho[t - 1] + rho[t]) / 2
        t += 2
    tau = -1 + 2 * rho[:max_t + 1].sum() + rho[max_t + 1:max_t + 2].sum()
    tau = max(float(tau), 1 / math.log10(m * n))
    return m * n / tau


def test_iid_chains_have_rhat_one_and_full_ess():
    x = _iid()
    assert (dg.split_rhat(x) < 1.01).all()
    assert (dg.split_rhat(x, rank_normalize=True) < 1.01).all()
    ess = dg.effective_sample_size(x)
    assert ess.shape == (3,) and ess.dtype == torch.float64
    assert torch.allclose(ess / 4000, torch.ones(3, dtype=torch.float64), rtol=0.1)


def test_chains_with_different_means_have_large_rhat():
    x = _iid() + torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64).view(4, 1, 1)
    assert (dg.split_rhat(x) > 1.1).all()
    assert (dg.split_rhat(x, rank_normalize=True) > 1.1).all()


def test_a_drift_within_chains_shows_only_when_split():
    trend = torch.linspace(-2.0, 2.0, 1000, dtype=torch.float64).view(1, 1000, 1)
    x = _iid(shape=(4, 1000, 1)) + trend
    assert dg.split_rhat(x)[0] > 1.1
    assert dg.effective_sample_size(x)[0] < 0.5 * dg.effective_sample_size(x, split=False)[0]


def test_rank_normalised_rhat_sees_different_scales():
    # same means, chains 3-4 four times wider: the classic R-hat misses it, the folded one does not
    x = _iid() * torch.tensor([1.0, 1.0, 4.0, 4.0], dtype=torch.float64).view(4, 1, 1)
    assert (dg.split_rhat(x) < 1.01).all()
    assert (dg.split_rhat(x, rank_normalize=True) > 1.1).all()


def test_ar1_ess_matches_theory():
    rho, chains, draws = 0.9, 8, 5000
    x = _ar1(rho, chains, draws, 4, key=1)
    theory = chains * draws * (1 - rho) / (1 + rho)
    ratio = dg.effective_sample_size(x) / theory
    assert ((ratio > 0.8) & (ratio < 1.2)).all(), ratio
    assert abs(float(ratio.mean()) - 1) < 0.1
    assert (dg.split_rhat(x) < 1.02).all()


@pytest.mark.parametrize("rho, chains, draws", [(0.5, 2, 4), (0.3, 3, 7), (-0.7, 4, 40), (0.95, 2, 61),
                                                (0.0, 5, 33), (-0.95, 3, 50)])
def test_ess_equals_stans_loop(rho, chains, draws):
    x = _ar1(rho, chains, draws, 2, key=int(100 * abs(rho)) + draws)
    x = x + 0.5 * fr.normal(fr.key(9), (chains, 1, 2), dtype=torch.float64)   # some between-chain spread
    got = dg.effective_sample_size(x, split=False)
    for j in range(2):
        assert got[j].item() == pytest.approx(_stan_ess(x[:, :, j]), rel=1e-9)
    split = dg.effective_sample_size(x)
    n = draws // 2
    halves = torch.cat([x[:, :n], x[:, draws - n:]], 0)
    assert split[0].item() == pytest.approx(_stan_ess(halves[:, :, 0]), rel=1e-9)


def test_rhat_matches_bda3_by_hand():
    x = _ar1(0.5, 3, 21, 1, key=3)[:, :, 0]
    halves = torch.cat([x[:, :10], x[:, 11:]], 0)          # the middle draw of 21 dropped
    n = 10
    w = halves.var(1).mean()
    b = n * halves.mean(1).var()
    expected = math.sqrt(((n - 1) / n * w + b / n) / w)
    assert dg.split_rhat(x).item() == pytest.approx(expected, rel=1e-12)


def test_shapes_and_summary():
    x = _iid(shape=(3, 50, 2, 5)).float()
    assert dg.split_rhat(x).shape == (2, 5)
    assert dg.effective_sample_size(x).shape == (2, 5)
    assert dg.split_rhat(x[..., 0, 0]).shape == ()
    s = dg.chain_summary(x)
    assert set(s) == {"mean", "std", "rhat", "ess"}
    assert all(v.shape == (2, 5) and v.dtype == torch.float64 for v in s.values())
    pooled = x.double().reshape(150, 2, 5)
    torch.testing.assert_close(s["mean"], pooled.mean(0))
    torch.testing.assert_close(s["std"], pooled.std(0))
    torch.testing.assert_close(s["rhat"], dg.split_rhat(x))


@pytest.mark.parametrize("fn", [dg.split_rhat, dg.effective_sample_size, dg.chain_summary])
@pytest.mark.parametrize("bad, match", [
    (torch.zeros(1, 100), "at least 2 chains"),
    (torch.zeros(4, 3), "at least 4 draws"),
    (torch.zeros(100), r"shape \(C, T\)"),
    (torch.tensor([[0.0, 1.0, float("nan"), 2.0]] * 2), "NaN"),
])
def test_bad_chains(fn, bad, match):
    with pytest.raises(ValueError, match=match):
        fn(bad)
