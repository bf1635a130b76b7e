"""Tests for fbnn.metrics (SPEC §0.1, §1.4, §4.1, §4.7, §5.2, §9.6-9.7)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fbnn import metrics as M


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _random_probs(b, k, seed=0, concentration=1.0, s=None):
    """Dirichlet-ish rows: softmax of scaled Gaussian logits."""
    shape = (b, k) if s is None else (s, b, k)
    logits = torch.randn(shape, generator=_gen(seed), dtype=torch.float64) / concentration
    return torch.softmax(logits, dim=-1)


# ---------------------------------------------------------------------------
# Likelihood / error
# ---------------------------------------------------------------------------


def test_nll_sum_equals_n_times_mean_cross_entropy():
    # SPEC §9.7: Log Like of a deterministic net equals -N x mean CE.
    n, k = 1000, 10
    logits = 4.0 * torch.randn(n, k, generator=_gen(1), dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=_gen(2))
    probs = torch.softmax(logits, dim=1)
    ce = F.cross_entropy(logits, labels).item()
    assert M.nll_sum(probs, labels) == pytest.approx(n * ce, rel=1e-10)
    assert M.test_loglik_sum(probs, labels) == pytest.approx(-n * ce, rel=1e-10)
    assert M.nll_mean(probs, labels) == pytest.approx(ce, rel=1e-10)


def test_nll_sum_float32_probs_and_numpy_inputs():
    logits = torch.randn(50, 5, generator=_gen(3))
    labels = torch.randint(0, 5, (50,), generator=_gen(4))
    probs32 = torch.softmax(logits, dim=1)
    expected = 50 * F.cross_entropy(logits.double(), labels).item()
    assert M.nll_sum(probs32, labels) == pytest.approx(expected, rel=1e-5)
    assert M.nll_sum(probs32.numpy(), labels.numpy()) == pytest.approx(expected, rel=1e-5)
    assert isinstance(M.nll_sum(probs32, labels), float)


def test_nll_zero_probability_is_large_but_finite():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    labels = torch.tensor([1, 0])
    value = M.nll_sum(probs, labels)
    assert math.isfinite(value)
    assert value == pytest.approx(-math.log(1e-300) + math.log(2.0))
    # eps is added to the true-class probability before the log
    assert M.nll_sum(probs, labels, eps=1e-5) == pytest.approx(
        -math.log(1e-5) - math.log(0.5 + 1e-5)
    )


def test_error_accuracy_hand_example():
    probs = torch.tensor(
        [
            [0.7, 0.2, 0.1],  # pred 0
            [0.1, 0.8, 0.1],  # pred 1
            [0.3, 0.3, 0.4],  # pred 2
            [0.5, 0.4, 0.1],  # pred 0
        ]
    )
    labels = torch.tensor([0, 2, 2, 1])
    assert M.error_rate(probs, labels) == pytest.approx(0.5)
    assert M.error_pct(probs, labels) == pytest.approx(50.0)
    assert M.accuracy(probs, labels) == pytest.approx(0.5)
    assert M.error_rate(probs, torch.tensor([0, 1, 2, 0])) == 0.0


def test_brier_perfect_and_uniform():
    k = 7
    labels = torch.arange(20) % k
    perfect = F.one_hot(labels, k).double()
    assert M.brier(perfect, labels) == pytest.approx(0.0, abs=1e-15)
    uniform = torch.full((20, k), 1.0 / k)
    assert M.brier(uniform, labels) == pytest.approx((k - 1) / k, rel=1e-6)
    # confidently wrong: (1-0)^2 + (0-1)^2 = 2
    wrong = F.one_hot((labels + 1) % k, k).double()
    assert M.brier(wrong, labels) == pytest.approx(2.0)


# ---------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------


def _binary_probs_with_confidence(conf, predicted):
    """(B, 2) probs whose max entry is `conf` at column `predicted`."""
    b = conf.shape[0]
    probs = torch.empty(b, 2, dtype=torch.float64)
    probs[torch.arange(b), predicted] = conf
    probs[torch.arange(b), 1 - predicted] = 1.0 - conf
    return probs


def test_ece_perfectly_calibrated_is_small():
    n = 200_000
    g = _gen(5)
    conf = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    correct = torch.rand(n, generator=g, dtype=torch.float64) < conf
    predicted = torch.randint(0, 2, (n,), generator=g)
    labels = torch.where(correct, predicted, 1 - predicted)
    probs = _binary_probs_with_confidence(conf, predicted)
    assert M.ece(probs, labels) < 0.01
    assert M.ece(probs, labels, n_bins=10) < 0.01


def test_ece_confident_but_half_wrong_is_about_half():
    n = 1000
    k = 10
    labels = torch.arange(n) % k
    predicted = torch.where(torch.arange(n) % 2 == 0, labels, (labels + 1) % k)
    probs = torch.full((n, k), 1e-4 / (k - 1), dtype=torch.float64)
    probs[torch.arange(n), predicted] = 1.0 - 1e-4
    assert M.error_rate(probs, labels) == pytest.approx(0.5)
    assert M.ece(probs, labels) == pytest.approx(0.5 - 1e-4, abs=1e-12)


def test_ece_and_reliability_diagram_hand_case():
    # 4 bins of width 0.25 over the max-probability confidence.
    probs = torch.tensor(
        [
            [0.9, 0.1],  # conf .9, pred 0, label 0 -> correct, bin 3
            [0.8, 0.2],  # conf .8, pred 0, label 1 -> wrong,   bin 3
            [0.4, 0.6],  # conf .6, pred 1, label 1 -> correct, bin 2
            [0.5, 0.5],  # conf .5 (bin 1: (.25, .5]), pred 0, label 0 -> correct
        ],
        dtype=torch.float64,
    )
    labels = torch.tensor([0, 1, 1, 0])
    # bin 1: n=1, acc 1, conf .5  -> |.5|
    # bin 2: n=1, acc 1, conf .6  -> |.4|
    # bin 3: n=2, acc .5, conf .85 -> |.35|
    expected = (1 * 0.5 + 1 * 0.4 + 2 * 0.35) / 4
    assert M.ece(probs, labels, n_bins=4) == pytest.approx(expected, abs=1e-12)

    rd = M.reliability_diagram(probs, labels, n_bins=4)
    assert set(rd) == {"bin_lower", "bin_upper", "confidence", "accuracy", "count"}
    torch.testing.assert_close(rd["bin_lower"], torch.tensor([0.0, 0.25, 0.5, 0.75], dtype=torch.float64))
    torch.testing.assert_close(rd["bin_upper"], torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    assert rd["count"].tolist() == [0, 1, 1, 2]
    assert math.isnan(rd["confidence"][0]) and math.isnan(rd["accuracy"][0])
    torch.testing.assert_close(rd["confidence"][1:], torch.tensor([0.5, 0.6, 0.85], dtype=torch.float64))
    torch.testing.assert_close(rd["accuracy"][1:], torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64))


def _seed_calibration_curve_numpy(probs, labels):
    """Direct transcription of the PLOTS-notebook loop (SPEC §4.7) as a reference."""
    bin_step = 0.1
    bins = np.arange(0, 1.0001, bin_step)
    k = probs.shape[1]
    pred_class = np.argmax(probs, axis=1)
    expanded = probs.reshape(-1)
    pred_oh = np.eye(k)[pred_class].reshape(-1)
    targ_oh = np.eye(k)[labels].reshape(-1)
    correct_vec = (targ_oh * (pred_oh == targ_oh)).astype(int)
    bin_idxs = np.digitize(expanded, bins, right=True) - 1
    centres = bins[1:] - bin_step / 2
    frac = np.full(len(centres), np.nan)
    for b in range(len(centres)):
        n = np.sum(bin_idxs == b)
        if n > 0:
            frac[b] = np.sum(correct_vec[bin_idxs == b]) / n
    return centres, frac


def test_calibration_curve_seed_matches_notebook_loop():
    probs = _random_probs(500, 10, seed=6, concentration=0.3)
    probs[0] = F.one_hot(torch.tensor(3), 10).double()  # exact zeros and an exact 1
    probs[1] = torch.tensor([0.1] * 10, dtype=torch.float64)  # on a bin edge
    labels = torch.randint(0, 10, (500,), generator=_gen(7))
    centres, frac = M.calibration_curve_seed(probs, labels)
    ref_centres, ref_frac = _seed_calibration_curve_numpy(probs.numpy(), labels.numpy())
    np.testing.assert_allclose(centres.numpy(), ref_centres)
    np.testing.assert_allclose(frac.numpy(), ref_frac, equal_nan=True)
    assert centres.shape == (10,)


def test_calibration_curve_seed_hand_case():
    probs = torch.tensor([[0.95, 0.05], [0.3, 0.7]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    centres, frac = M.calibration_curve_seed(probs, labels)
    # entries: .95 true&argmax-right -> correct (bin 9); .05 -> bin 0, not correct;
    # .3 true class but argmax wrong -> bin 2, not correct; .7 -> bin 6, not correct.
    assert frac[9] == 1.0 and frac[0] == 0.0 and frac[2] == 0.0 and frac[6] == 0.0
    assert all(math.isnan(frac[i]) for i in (1, 3, 4, 5, 7, 8))
    np.testing.assert_allclose(centres.numpy(), np.arange(0.05, 1.0, 0.1))


# ---------------------------------------------------------------------------
# Sample averaging / entropy decomposition
# ---------------------------------------------------------------------------


def test_mean_probs():
    sp = _random_probs(4, 3, seed=8, s=5)
    mp = M.mean_probs(sp)
    assert mp.shape == (4, 3)
    torch.testing.assert_close(mp, sp.mean(0))
    torch.testing.assert_close(mp.sum(1), torch.ones(4, dtype=torch.float64))


def test_epistemic_nonnegative_on_random_samples():
    sp = _random_probs(200, 10, seed=9, concentration=0.5, s=30)
    total, aleatoric, epistemic = M.entropy_decomposition(sp, offset=0.0)
    assert total.shape == aleatoric.shape == epistemic.shape == (200,)
    assert float(epistemic.min()) >= -1e-6
    torch.testing.assert_close(epistemic, total - aleatoric)
    assert float(aleatoric.min()) >= 0.0


def test_epistemic_zero_when_samples_agree():
    p = _random_probs(50, 10, seed=10, concentration=0.3)
    p[0] = F.one_hot(torch.tensor(2), 10).double()  # exercises 0 log 0
    sp = p.expand(8, 50, 10)
    total, aleatoric, epistemic = M.entropy_decomposition(sp)
    assert float(epistemic.abs().max()) <= 1e-6
    assert total[0] == 0.0


def test_total_entropy_of_uniform_is_log_k():
    k = 10
    sp = torch.full((3, 4, k), 1.0 / k)
    total, aleatoric, epistemic = M.entropy_decomposition(sp)
    torch.testing.assert_close(total, torch.full((4,), math.log(k), dtype=torch.float64))
    torch.testing.assert_close(aleatoric, total)


def test_entropy_decomposition_disagreeing_one_hots():
    # Two confident samples that disagree: aleatoric 0, epistemic = log 2.
    sp = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    total, aleatoric, epistemic = M.entropy_decomposition(sp)
    assert aleatoric.item() == 0.0
    assert epistemic.item() == pytest.approx(math.log(2.0))


def test_entropy_offset_matches_explicit_formula():
    sp = _random_probs(6, 4, seed=11, s=3)
    c = 1e-5
    q = sp + c
    qbar = sp.mean(0) + c
    expected_total = -(qbar * qbar.log()).sum(-1)
    expected_alea = -(q * q.log()).sum(-1).mean(0)
    total, aleatoric, _ = M.entropy_decomposition(sp, offset=c)
    torch.testing.assert_close(total, expected_total)
    torch.testing.assert_close(aleatoric, expected_alea)
    torch.testing.assert_close(M.categorical_entropy(sp.mean(0), offset=c), expected_total)


@st.composite
def _sample_probs(draw):
    s = draw(st.integers(1, 5))
    b = draw(st.integers(1, 4))
    k = draw(st.integers(2, 6))
    raw = draw(
        st.lists(
            st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False),
            min_size=s * b * k,
            max_size=s * b * k,
        )
    )
    x = torch.tensor(raw, dtype=torch.float64).reshape(s, b, k) + 1e-12
    return x / x.sum(-1, keepdim=True)


@settings(deadline=None, max_examples=50)
@given(_sample_probs())
def test_property_total_ge_aleatoric(sp):
    total, aleatoric, epistemic = M.entropy_decomposition(sp)
    assert bool((total >= aleatoric - 1e-9).all())
    assert bool((total <= math.log(sp.shape[-1]) + 1e-9).all())
    assert bool((aleatoric >= -1e-12).all())


# ---------------------------------------------------------------------------
# AUROC
# ---------------------------------------------------------------------------


def _auroc_bruteforce(s_in, s_out):
    s_in = np.asarray(s_in)[:, None]
    s_out = np.asarray(s_out)[None, :]
    return float(((s_out > s_in) + 0.5 * (s_out == s_in)).mean())


def _tied_scores():
    g = _gen(12)
    s_in = torch.randn(300, generator=g, dtype=torch.float64)
    s_out = torch.randn(200, generator=g, dtype=torch.float64) + 0.7
    # inject ties by rounding
    return torch.round(s_in * 4) / 4, torch.round(s_out * 4) / 4


def test_auroc_matches_bruteforce_with_ties():
    s_in, s_out = _tied_scores()
    assert M.auroc(s_in, s_out) == pytest.approx(_auroc_bruteforce(s_in, s_out), abs=1e-12)


def test_auroc_matches_scipy_mann_whitney():
    stats = pytest.importorskip("scipy.stats")  # a reference only; scipy is no dependency
    s_in, s_out = _tied_scores()
    u = stats.mannwhitneyu(s_out.numpy(), s_in.numpy()).statistic
    assert M.auroc(s_in, s_out) == pytest.approx(u / (300 * 200), abs=1e-12)


def test_auroc_extremes_ties_and_symmetry():
    assert M.auroc([0.1, 0.2, 0.3], [0.5, 0.9]) == 1.0
    assert M.auroc([0.5, 0.9], [0.1, 0.2, 0.3]) == 0.0
    assert M.auroc([1.0, 1.0, 1.0], [1.0, 1.0]) == 0.5
    g = _gen(13)
    a = torch.randn(100, generator=g)
    b = torch.randn(80, generator=g)
    assert M.auroc(a, b) + M.auroc(b, a) == pytest.approx(1.0, abs=1e-12)
    # identical distributions (same values) -> 0.5 with ties counted half
    assert M.auroc(a, a.clone()) == pytest.approx(0.5, abs=1e-12)


# ---------------------------------------------------------------------------
# Regression
# ---------------------------------------------------------------------------


def test_rmse_and_uci_rmse():
    mean = torch.tensor([1.0, 2.0, 3.0, 4.0])
    y = torch.tensor([1.0, 0.0, 3.0, 6.0])
    assert M.rmse(mean, y) == pytest.approx(math.sqrt((4 + 4) / 4))
    assert M.uci_rmse(mean, y, 2.5) == pytest.approx(2.5 * math.sqrt(2.0))


def test_gaussian_loglik_matches_torch_normal():
    g = _gen(14)
    mean = torch.randn(100, generator=g, dtype=torch.float64)
    std = torch.rand(100, generator=g, dtype=torch.float64) + 0.1
    y = torch.randn(100, generator=g, dtype=torch.float64)
    ll = M.gaussian_loglik(mean, std, y)
    torch.testing.assert_close(ll, torch.distributions.Normal(mean, std).log_prob(y))
    ll_no2pi = M.gaussian_loglik(mean, std, y, include_2pi=False)
    torch.testing.assert_close(ll_no2pi - ll, torch.full_like(ll, 0.5 * math.log(2 * math.pi)))
    # scalar (homoscedastic) std broadcasts
    torch.testing.assert_close(
        M.gaussian_loglik(mean, 0.3, y), torch.distributions.Normal(mean, 0.3).log_prob(y)
    )


def test_mixture_of_identical_components_equals_single():
    g = _gen(15)
    mean = torch.randn(20, generator=g, dtype=torch.float64)
    std = torch.rand(20, generator=g, dtype=torch.float64) + 0.2
    y = torch.randn(20, generator=g, dtype=torch.float64)
    mix = M.gaussian_mixture_loglik(mean.expand(7, 20), std.expand(7, 20), y)
    torch.testing.assert_close(mix, M.gaussian_loglik(mean, std, y))


def test_mixture_loglik_matches_explicit_density():
    g = _gen(16)
    means = torch.randn(4, 10, generator=g, dtype=torch.float64)
    stds = torch.rand(4, 10, generator=g, dtype=torch.float64) + 0.3
    y = torch.randn(10, generator=g, dtype=torch.float64)
    dens = torch.distributions.Normal(means, stds).log_prob(y).exp().mean(0)
    torch.testing.assert_close(M.gaussian_mixture_loglik(means, stds, y), dens.log())


def test_moment_match_proper_equals_mixture_moments():
    g = _gen(17)
    s, b = 5, 3
    means = torch.randn(s, b, generator=g, dtype=torch.float64)
    stds = torch.rand(s, b, generator=g, dtype=torch.float64) + 0.2
    mean, std = M.moment_match(means, stds)
    # closed form: E[y^2] - E[y]^2 of the equal-weight mixture
    second_moment = (stds**2 + means**2).mean(0)
    torch.testing.assert_close(mean, means.mean(0))
    torch.testing.assert_close(std**2, second_moment - means.mean(0) ** 2)
    # Monte Carlo from the mixture
    n = 400_000
    comp = torch.randint(0, s, (n, b), generator=g)
    cols = torch.arange(b).expand(n, b)
    draws = means[comp, cols] + stds[comp, cols] * torch.randn(n, b, generator=g, dtype=torch.float64)
    torch.testing.assert_close(draws.var(0), std**2, rtol=0.02, atol=0.0)
    torch.testing.assert_close(draws.mean(0), mean, rtol=0.0, atol=0.02)


def test_moment_match_seed_compat():
    means = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]], dtype=torch.float64)
    stds = torch.tensor([[1.0, 0.5], [2.0, 0.5], [3.0, 0.5]], dtype=torch.float64)
    mean, std = M.moment_match(means, stds, seed_compat=True)
    # Var unbiased of (0,2,4) = 4; (mean sigma)^2 = 4  -> var 8
    torch.testing.assert_close(mean, torch.tensor([2.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(std**2, torch.tensor([8.0, 0.25], dtype=torch.float64))
    # proper: pop var 8/3 + mean sigma^2 14/3 = 22/3
    _, std_proper = M.moment_match(means, stds)
    torch.testing.assert_close(std_proper**2, torch.tensor([22 / 3, 0.25], dtype=torch.float64))
    with pytest.raises(ValueError, match="S >= 2"):
        M.moment_match(means[:1], stds[:1], seed_compat=True)


def test_uci_test_loglik_matches_density_in_original_units():
    g = _gen(18)
    y_mean, y_std = 22.5, 9.2
    mean_n = torch.randn(64, generator=g, dtype=torch.float64)
    std_n = torch.rand(64, generator=g, dtype=torch.float64) + 0.2
    y_n = torch.randn(64, generator=g, dtype=torch.float64)
    direct = torch.distributions.Normal(mean_n * y_std + y_mean, std_n * y_std).log_prob(y_n * y_std + y_mean)
    assert M.uci_test_loglik(mean_n, std_n, y_n, y_std) == pytest.approx(direct.mean().item(), rel=1e-12)
    no2pi = M.uci_test_loglik(mean_n, std_n, y_n, y_std, include_2pi=False)
    assert no2pi - direct.mean().item() == pytest.approx(0.5 * math.log(2 * math.pi))
    assert M.uci_test_loglik(mean_n, std_n, y_n, torch.tensor(y_std)) == pytest.approx(direct.mean().item())


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

_GOOD_PROBS = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
_GOOD_LABELS = torch.tensor([1, 0, 1])

_CLASSIFICATION_FNS = [
    M.nll_sum,
    M.nll_mean,
    M.test_loglik_sum,
    M.error_rate,
    M.error_pct,
    M.accuracy,
    M.brier,
    M.ece,
    M.reliability_diagram,
    M.calibration_curve_seed,
]


@pytest.mark.parametrize("fn", _CLASSIFICATION_FNS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "probs, labels, match",
    [
        (_GOOD_PROBS, torch.tensor([1, 0]), "labels: length 2 does not match"),
        (_GOOD_PROBS, torch.tensor([1, 0, 2]), r"labels: class labels must lie in \[0, 1\]"),
        (_GOOD_PROBS, torch.tensor([1, -1, 0]), r"labels: class labels must lie in \[0, 1\]"),
        (_GOOD_PROBS, torch.tensor([1.0, 0.0, 1.0]), "labels: must be an integer array"),
        (torch.tensor([[0.2, 0.7], [0.6, 0.4], [0.5, 0.5]]), _GOOD_LABELS, "probs: rows .* must sum to 1"),
        (torch.tensor([[float("nan"), 0.8], [0.6, 0.4], [0.5, 0.5]]), _GOOD_LABELS, "probs: contains 1 NaN"),
        (torch.tensor([[-0.2, 1.2], [0.6, 0.4], [0.5, 0.5]]), _GOOD_LABELS, r"probs: probabilities must lie in \[0, 1\]"),
        (torch.tensor([0.2, 0.8, 0.5]), _GOOD_LABELS, r"probs: expected a 2-D array of shape \(B, K\)"),
    ],
)
def test_classification_bad_input(fn, probs, labels, match):
    with pytest.raises(ValueError, match=match):
        fn(probs, labels)


def test_row_sum_tolerance_is_1e_minus_3():
    ok = torch.tensor([[0.2, 0.8005]])
    assert M.nll_sum(ok, torch.tensor([1])) == pytest.approx(-math.log(0.8005))
    with pytest.raises(ValueError, match="sum to 1"):
        M.nll_sum(torch.tensor([[0.2, 0.802]]), torch.tensor([1]))


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="sample_probs: expected a 3-D"):
        M.entropy_decomposition(_GOOD_PROBS)
    with pytest.raises(ValueError, match="sample_probs: rows"):
        M.mean_probs(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="offset"):
        M.entropy_decomposition(_GOOD_PROBS[None], offset=-1.0)
    with pytest.raises(ValueError, match="n_bins"):
        M.ece(_GOOD_PROBS, _GOOD_LABELS, n_bins=0)
    with pytest.raises(ValueError, match="scores_out: contains 1 NaN"):
        M.auroc([0.1, 0.2], [float("nan"), 0.3])
    with pytest.raises(ValueError, match="scores_in: is empty"):
        M.auroc([], [0.3])
    with pytest.raises(ValueError, match="mean and y: shape mismatch"):
        M.rmse(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="std: standard deviations must be strictly positive"):
        M.gaussian_loglik(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]), torch.zeros(3))
    with pytest.raises(ValueError, match="std: shape"):
        M.gaussian_loglik(torch.zeros(3), torch.ones(2), torch.zeros(3))
    with pytest.raises(ValueError, match="y: length 4 does not match"):
        M.gaussian_mixture_loglik(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="y_std: must be strictly positive"):
        M.uci_test_loglik(torch.zeros(3), torch.ones(3), torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="means: expected a 2-D"):
        M.moment_match(torch.zeros(3), torch.ones(3))


def test_classification_summary_is_the_table_metrics_of_the_mean_of_the_samples():
    g = torch.Generator().manual_seed(0)
    sample_probs = torch.softmax(torch.randn(5, 40, 3, generator=g), -1)
    y = torch.randint(0, 3, (40,), generator=g)
    probs = sample_probs.mean(0)
    got = M.classification_summary(probs, y, sample_probs)
    total, _, epistemic = M.entropy_decomposition(sample_probs)
    assert got == {"error_pct": M.error_pct(probs, y), "test_loglik_sum": M.test_loglik_sum(probs, y),
                   "nll_mean": M.nll_mean(probs, y), "brier": M.brier(probs, y),
                   "ece": M.ece(probs, y), "mean_total_entropy": float(total.mean()),
                   "mean_epistemic_entropy": float(epistemic.mean())}
    assert set(M.classification_summary(probs, y)) == {"error_pct", "test_loglik_sum", "nll_mean", "brier", "ece"}
