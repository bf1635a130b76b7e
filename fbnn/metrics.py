"""Evaluation metrics for classification and Gaussian regression.

Small pure functions: arrays (torch tensors, numpy arrays or nested lists) in,
Python floats out -- or float64 tensors where per-example values are the point.
All reductions are done in float64 so that sums over 10,000 test points do not
lose precision.

Shape conventions used in the docstrings:

* ``S`` -- number of posterior samples (weight sets, ensemble members, ...),
* ``B`` -- number of examples (the test set, a batch),
* ``K`` -- number of classes.

Classification functions take *predictive* probabilities ``probs (B, K)`` that
are already averaged over samples (see :func:`mean_probs`), and integer
``labels (B,)``.  Regression functions take Gaussian predictive means and
standard deviations.

Every function validates its input and raises ``ValueError`` naming the
offending argument and the problem (wrong shape, labels out of range,
probabilities outside [0, 1] or rows not summing to 1, NaN/inf, ...).

Conventions follow the seed where it matters (SPEC §0.1, §1.4, §4.1, §4.7,
§5.2):

* MNIST "Log Like" is ``-sum_i log p(y_i | x_i)`` over the whole test set,
  i.e. :func:`test_loglik_sum` (= ``-nll_sum``).
* "Error %" is ``100 x`` the fraction misclassified by the argmax of the
  predictive mean, :func:`error_pct`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    # classification
    "nll_sum",
    "nll_mean",
    "test_loglik_sum",
    "error_rate",
    "error_pct",
    "accuracy",
    "brier",
    "ece",
    "reliability_diagram",
    "calibration_curve_seed",
    "mean_probs",
    "categorical_entropy",
    "entropy_decomposition",
    "auroc",
    "classification_summary",
    # regression
    "rmse",
    "gaussian_loglik",
    "gaussian_mixture_loglik",
    "moment_match",
    "uci_test_loglik",
    "uci_rmse",
]

#: Allowed deviation of a probability row sum from 1.
ROW_SUM_TOL = 1e-3
#: Allowed excursion of an individual probability outside [0, 1] (float round-off).
PROB_RANGE_TOL = 1e-6
#: Probabilities are clamped to at least this before taking logs, so that a
#: zero probability gives a large finite NLL (about 690.8 nats) instead of inf.
LOG_FLOOR = 1e-300

_LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------
# Input conversion and validation helpers (private)
# ---------------------------------------------------------------------------


def _to_float64(x: Any, name: str) -> torch.Tensor:
    """Convert ``x`` to a detached float64 CPU tensor; reject NaN/inf."""
    try:
        if isinstance(x, (torch.Tensor, np.ndarray, np.generic)):
            t = torch.as_tensor(x)
        else:  # Python scalars / nested lists: avoid torch's float32 default
            t = torch.as_tensor(x, dtype=torch.float64)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name}: cannot be converted to a tensor ({exc})") from exc
    if t.is_complex():
        raise ValueError(f"{name}: complex values are not supported")
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name}: contains {n_bad} NaN or infinite value(s)")
    return t


def _check_ndim(t: torch.Tensor, ndim: int, name: str, shape_doc: str) -> None:
    if t.dim() != ndim:
        raise ValueError(
            f"{name}: expected a {ndim}-D array of shape {shape_doc}, "
            f"got shape {tuple(t.shape)}"
        )


def _check_nonempty(t: torch.Tensor, name: str) -> None:
    if t.numel() == 0:
        raise ValueError(f"{name}: is empty (shape {tuple(t.shape)})")


def _as_probs(probs: Any, name: str, ndim: int, shape_doc: str) -> torch.Tensor:
    """Validate a probability array whose last axis is the class axis.

    Checks: dimensionality, non-empty, finite, every entry in [0, 1] (up to
    ``PROB_RANGE_TOL``), every row summing to 1 within ``ROW_SUM_TOL``.
    Returns a float64 tensor clamped to [0, 1].
    """
    p = _to_float64(probs, name)
    _check_ndim(p, ndim, name, shape_doc)
    _check_nonempty(p, name)
    lo, hi = float(p.min()), float(p.max())
    if lo < -PROB_RANGE_TOL or hi > 1.0 + PROB_RANGE_TOL:
        raise ValueError(
            f"{name}: probabilities must lie in [0, 1], found values in [{lo:.6g}, {hi:.6g}]"
        )
    row_sums = p.sum(dim=-1)
    worst = float((row_sums - 1.0).abs().max())
    if worst > ROW_SUM_TOL:
        raise ValueError(
            f"{name}: rows (last axis) must sum to 1 within {ROW_SUM_TOL:g}; "
            f"worst row sum deviates by {worst:.6g}"
        )
    return p.clamp(0.0, 1.0)


def _as_labels(labels: Any, n_examples: int, n_classes: int, name: str = "labels") -> torch.Tensor:
    """Validate integer class labels of shape ``(B,)`` with values in [0, K)."""
    t = torch.as_tensor(labels).detach().cpu()
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name}: must be an integer array, got dtype {t.dtype}")
    _check_ndim(t, 1, name, "(B,)")
    if t.shape[0] != n_examples:
        raise ValueError(
            f"{name}: length {t.shape[0]} does not match the batch size B={n_examples} of probs"
        )
    t = t.to(torch.int64)
    if t.numel() > 0:
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(
                f"{name}: class labels must lie in [0, {n_classes - 1}] (K={n_classes}), "
                f"found values in [{lo}, {hi}]"
            )
    return t


def _probs_and_labels(probs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    p = _as_probs(probs, "probs", 2, "(B, K)")
    y = _as_labels(labels, p.shape[0], p.shape[1])
    return p, y


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins: must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def _check_positive(t: torch.Tensor, name: str) -> None:
    if bool((t <= 0).any()):
        raise ValueError(f"{name}: standard deviations must be strictly positive, min is {float(t.min()):.6g}")


def _broadcast_to(t: torch.Tensor, shape: torch.Size, name: str, other: str) -> torch.Tensor:
    try:
        return torch.broadcast_to(t, shape)
    except RuntimeError as exc:
        raise ValueError(
            f"{name}: shape {tuple(t.shape)} cannot be broadcast to the shape "
            f"{tuple(shape)} of {other}"
        ) from exc


def _same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b}: shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}"
        )


# ---------------------------------------------------------------------------
# Classification: likelihood and error
# ---------------------------------------------------------------------------


def _true_class_log_probs(p: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    p_true = p.gather(1, y[:, None]).squeeze(1) + float(eps)
    return torch.log(p_true.clamp_min(LOG_FLOOR))


def nll_sum(probs: Any, labels: Any, eps: float = 0.0) -> float:
    """Summed negative log predictive probability of the true labels (nats).

    ``-sum_i log(p_i[y_i] + eps)`` computed in float64; the argument of the log
    is clamped to at least ``LOG_FLOOR`` (1e-300) so that a zero probability
    gives a large finite value (~690.8) instead of ``inf``.

    Args:
        probs: ``(B, K)`` predictive probabilities (rows sum to 1).
        labels: ``(B,)`` integer labels in ``[0, K)``.
        eps: constant added to the true-class probability before the log
            (default 0: exact).
    """
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps: must be a finite non-negative number, got {eps!r}")
    p, y = _probs_and_labels(probs, labels)
    return float(-_true_class_log_probs(p, y, eps).sum())


def test_loglik_sum(probs: Any, labels: Any) -> float:
    """The seed's MNIST "Log Like" (SPEC §0.1): ``sum_i log p_i[y_i]`` = ``-nll_sum``.

    Args:
        probs: ``(B, K)`` predictive probabilities.
        labels: ``(B,)`` integer labels.
    """
    return -nll_sum(probs, labels)


# Not a pytest test despite the name.
test_loglik_sum.__test__ = False  # type: ignore[attr-defined]


def nll_mean(probs: Any, labels: Any, eps: float = 0.0) -> float:
    """Mean negative log predictive probability per example (nats), ``nll_sum / B``.

    Args:
        probs: ``(B, K)``; labels: ``(B,)``; eps: as in :func:`nll_sum`.
    """
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps: must be a finite non-negative number, got {eps!r}")
    p, y = _probs_and_labels(probs, labels)
    return float(-_true_class_log_probs(p, y, eps).mean())


def error_rate(probs: Any, labels: Any) -> float:
    """Fraction of examples whose argmax class differs from the label (in [0, 1]).

    Ties in the argmax resolve to the lowest class index.

    Args:
        probs: ``(B, K)``; labels: ``(B,)``.
    """
    p, y = _probs_and_labels(probs, labels)
    wrong = (p.argmax(dim=1) != y).to(torch.float64)
    return float(wrong.mean())


def error_pct(probs: Any, labels: Any) -> float:
    """The seed's "Error %": ``100 * error_rate``."""
    return 100.0 * error_rate(probs, labels)


def accuracy(probs: Any, labels: Any) -> float:
    """Fraction of examples classified correctly by argmax, ``1 - error_rate``."""
    return 1.0 - error_rate(probs, labels)


def brier(probs: Any, labels: Any) -> float:
    """Multi-class Brier score: mean over examples of ``sum_k (p_k - onehot_k)^2``.

    0 for perfect one-hot predictions, ``(K-1)/K`` for uniform ones, at most 2.

    Args:
        probs: ``(B, K)``; labels: ``(B,)``.
    """
    p, y = _probs_and_labels(probs, labels)
    onehot = torch.nn.functional.one_hot(y, num_classes=p.shape[1]).to(torch.float64)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


# ---------------------------------------------------------------------------
# Classification: calibration
# ---------------------------------------------------------------------------


def _confidence_bins(p: torch.Tensor, y: torch.Tensor, n_bins: int):
    """Per-bin count, summed confidence and summed correctness (float64 tensors)."""
    confidence, predicted = p.max(dim=1)
    correct = (predicted == y).to(torch.float64)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # bucketize(right=False): edges[i-1] < c <= edges[i]  ->  bins (lo, hi],
    # with c == 0 falling in bin 0 (the first bin includes 0).
    idx = torch.bucketize(confidence, edges[1:-1], right=False)
    count = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    conf_sum = torch.bincount(idx, weights=confidence, minlength=n_bins)
    corr_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    return edges, count, conf_sum, corr_sum


def reliability_diagram(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, torch.Tensor]:
    """Per-bin statistics of a confidence reliability diagram.

    Confidence is the max predictive probability; bins are ``n_bins``
    equal-width intervals ``(lo, hi]`` of [0, 1] (the first also includes 0).

    Args:
        probs: ``(B, K)``; labels: ``(B,)``; n_bins: number of bins.

    Returns:
        dict of ``(n_bins,)`` tensors: ``bin_lower``, ``bin_upper`` (float64),
        ``confidence`` (mean max-probability in the bin), ``accuracy`` (fraction
        of argmax-correct examples in the bin) -- both NaN for empty bins -- and
        ``count`` (int64 number of examples in the bin).
    """
    n_bins = _check_n_bins(n_bins)
    p, y = _probs_and_labels(probs, labels)
    edges, count, conf_sum, corr_sum = _confidence_bins(p, y, n_bins)
    nonempty = count > 0
    nan = torch.full_like(count, float("nan"))
    return {
        "bin_lower": edges[:-1].clone(),
        "bin_upper": edges[1:].clone(),
        "confidence": torch.where(nonempty, conf_sum / count.clamp_min(1.0), nan),
        "accuracy": torch.where(nonempty, corr_sum / count.clamp_min(1.0), nan),
        "count": count.to(torch.int64),
    }


def ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error (equal-width confidence bins).

    ``ECE = sum_b (n_b / B) * |acc_b - conf_b|`` with the bins of
    :func:`reliability_diagram` (max-probability confidence, ``(lo, hi]``).

    Args:
        probs: ``(B, K)``; labels: ``(B,)``; n_bins: number of bins (default 15).
    """
    n_bins = _check_n_bins(n_bins)
    p, y = _probs_and_labels(probs, labels)
    _, _, conf_sum, corr_sum = _confidence_bins(p, y, n_bins)
    # sum_b (n_b/B)|corr_b/n_b - conf_b/n_b| = sum_b |corr_sum_b - conf_sum_b| / B
    return float((corr_sum - conf_sum).abs().sum() / p.shape[0])


#: Bin edges of the seed's calibration curve: ``np.arange(0, 1.0001, 0.1)``.
_SEED_CAL_BIN_STEP = 0.1


def calibration_curve_seed(probs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's calibration curve (SPEC §4.7, PLOTS notebook).

    All ``B x K`` probability entries are binned at 0.1 width with
    ``np.digitize(p, np.arange(0, 1.0001, 0.1), right=True) - 1``, i.e. bins
    ``(0, 0.1], (0.1, 0.2], ..., (0.9, 1]``.  An entry counts as "correct" when
    it is the true class's entry AND the argmax class is the true class.  As in
    the seed, entries that are exactly 0 get bin index -1 and fall in no bin.

    Args:
        probs: ``(B, K)``; labels: ``(B,)``.

    Returns:
        ``(bin_centres, fraction_correct)``, both ``(10,)`` float64 tensors;
        centres are 0.05, 0.15, ..., 0.95 and empty bins have NaN fraction.
    """
    p, y = _probs_and_labels(probs, labels)
    n_classes = p.shape[1]
    edges = torch.from_numpy(np.arange(0, 1.0001, _SEED_CAL_BIN_STEP)).to(torch.float64)
    n_bins = edges.numel() - 1
    centres = edges[1:] - _SEED_CAL_BIN_STEP / 2

    onehot_true = torch.nn.functional.one_hot(y, n_classes).bool()
    argmax_right = (p.argmax(dim=1) == y)[:, None]
    correct = (onehot_true & argmax_right).reshape(-1).to(torch.float64)

    # torch.bucketize(right=False) == np.digitize(right=True): edges[i-1] < x <= edges[i].
    idx = torch.bucketize(p.reshape(-1), edges, right=False) - 1
    in_range = (idx >= 0) & (idx < n_bins)
    idx, correct = idx[in_range], correct[in_range]
    count = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    n_correct = torch.bincount(idx, weights=correct, minlength=n_bins)
    fraction = torch.where(count > 0, n_correct / count.clamp_min(1.0), torch.full_like(count, float("nan")))
    return centres, fraction


# ---------------------------------------------------------------------------
# Classification: sample averaging and uncertainty
# ---------------------------------------------------------------------------


def mean_probs(sample_probs: Any) -> torch.Tensor:
    """Predictive probabilities, the average of per-sample probabilities (SPEC §1.4).

    Args:
        sample_probs: ``(S, B, K)`` per-sample class probabilities (softmax outputs).

    Returns:
        ``(B, K)`` float64 tensor ``(1/S) sum_s p_s``.
    """
    p = _as_probs(sample_probs, "sample_probs", 3, "(S, B, K)")
    return p.mean(dim=0)


def categorical_entropy(probs: Any, offset: float = 0.0) -> torch.Tensor:
    """Entropy (nats) of each row, ``-sum_k q_k log q_k`` with ``q = p + offset``.

    ``0 log 0`` is taken as 0.  Accepts any leading shape ``(..., K)``.

    Returns:
        float64 tensor of shape ``(...)``.
    """
    offset = _check_offset(offset)
    p = _to_float64(probs, "probs")
    if p.dim() < 1:
        raise ValueError(f"probs: expected at least 1 dimension (..., K), got shape {tuple(p.shape)}")
    p = _as_probs(p, "probs", p.dim(), "(..., K)")
    return _entropy(p, offset)


def _check_offset(offset: Any) -> float:
    offset = float(offset)
    if not math.isfinite(offset) or offset < 0:
        raise ValueError(f"offset: must be a finite non-negative number, got {offset!r}")
    return offset


def _entropy(p: torch.Tensor, offset: float) -> torch.Tensor:
    q = p + offset if offset else p
    return -torch.special.xlogy(q, q).sum(dim=-1)


def entropy_decomposition(
    sample_probs: Any, offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Total / aleatoric / epistemic predictive entropy (SPEC §4.1), in nats.

    * total     = ``H[mean_s p_s]``
    * aleatoric = ``mean_s H[p_s]``
    * epistemic = total - aleatoric (the mutual information between the label
      and the weights; >= 0 up to round-off when ``offset == 0``).

    ``offset`` is added to every probability (no renormalisation) before the
    entropies are computed, i.e. ``H_c[p] = -sum_k (p_k + c) log(p_k + c)``;
    the seed used ``c = 1e-5``.  With the default 0, ``0 log 0 = 0`` (xlogy).

    Args:
        sample_probs: ``(S, B, K)`` per-sample class probabilities.
        offset: non-negative constant added to each probability.

    Returns:
        ``(total, aleatoric, epistemic)``, each a ``(B,)`` float64 tensor.
    """
    offset = _check_offset(offset)
    p = _as_probs(sample_probs, "sample_probs", 3, "(S, B, K)")
    total = _entropy(p.mean(dim=0), offset)
    aleatoric = _entropy(p, offset).mean(dim=0)
    return total, aleatoric, total - aleatoric


def classification_summary(probs: Any, labels: Any, sample_probs: Any = None) -> dict[str, float]:
    """The MNIST table's metrics of a predictive: error %, summed test log-likelihood,
    mean NLL, Brier and ECE from ``probs (B, K)``; with ``sample_probs (S, B, K)`` (whose
    mean is ``probs``) also the mean total and epistemic entropy."""
    out = {"error_pct": error_pct(probs, labels), "test_loglik_sum": test_loglik_sum(probs, labels),
           "nll_mean": nll_mean(probs, labels), "brier": brier(probs, labels), "ece": ece(probs, labels)}
    if sample_probs is not None:
        total, _, epistemic = entropy_decomposition(sample_probs)
        out.update({"mean_total_entropy": float(total.mean()), "mean_epistemic_entropy": float(epistemic.mean())})
    return out


def auroc(scores_in: Any, scores_out: Any) -> float:
    """Area under the ROC curve for separating OOD from in-distribution inputs.

    The OOD inputs (``scores_out``) are the positive class and a higher score
    means "more OOD".  Computed exactly as the Mann-Whitney statistic
    ``U / (n_in * n_out)`` with ``U = #{(i, j): out_j > in_i} + 0.5 #{out_j == in_i}``
    (ties count half).  ``auroc(a, b) == 1 - auroc(b, a)``.

    Args:
        scores_in: ``(n_in,)`` scores of in-distribution examples.
        scores_out: ``(n_out,)`` scores of out-of-distribution examples.
    """
    s_in = _to_float64(scores_in, "scores_in")
    s_out = _to_float64(scores_out, "scores_out")
    _check_ndim(s_in, 1, "scores_in", "(n_in,)")
    _check_ndim(s_out, 1, "scores_out", "(n_out,)")
    _check_nonempty(s_in, "scores_in")
    _check_nonempty(s_out, "scores_out")
    sorted_in, _ = torch.sort(s_in)
    n_below = torch.searchsorted(sorted_in, s_out, right=False)  # in < out
    n_below_or_equal = torch.searchsorted(sorted_in, s_out, right=True)  # in <= out
    # 2U = sum_j (#less + #less_or_equal), exact in int64.
    twice_u = int((n_below + n_below_or_equal).sum())
    return twice_u / (2.0 * s_in.numel() * s_out.numel())


# ---------------------------------------------------------------------------
# Regression
# ---------------------------------------------------------------------------


def rmse(mean: Any, y: Any) -> float:
    """Root mean squared error ``sqrt(mean((mean - y)^2))``.

    Args:
        mean: predictive means, any shape ``(B, ...)``.
        y: targets of the same shape.
    """
    m = _to_float64(mean, "mean")
    t = _to_float64(y, "y")
    _same_shape(m, t, "mean", "y")
    _check_nonempty(m, "mean")
    return math.sqrt(float(((m - t) ** 2).mean()))


def gaussian_loglik(mean: Any, std: Any, y: Any, include_2pi: bool = True) -> torch.Tensor:
    """Per-point Gaussian log density ``log N(y; mean, std^2)``.

    ``-(y - mean)^2 / (2 std^2) - log std - 0.5 log(2 pi)``; with
    ``include_2pi=False`` the constant ``-0.5 log(2 pi)`` is omitted, matching the
    NLL used as training loss in most seed notebooks (SPEC §5.2).

    Args:
        mean: ``(B,)`` (or any shape) predictive means.
        std: predictive standard deviations, same shape as ``mean`` or
            broadcastable to it (e.g. a scalar homoscedastic noise); > 0.
        y: targets, same shape as ``mean``.
        include_2pi: include the ``-0.5 log(2 pi)`` constant.

    Returns:
        float64 tensor with the shape of ``mean``.
    """
    m = _to_float64(mean, "mean")
    t = _to_float64(y, "y")
    _same_shape(m, t, "mean", "y")
    s = _broadcast_to(_to_float64(std, "std"), m.shape, "std", "mean")
    _check_positive(s, "std")
    z = (t - m) / s
    ll = -0.5 * z**2 - torch.log(s)
    if include_2pi:
        ll = ll - 0.5 * _LOG_2PI
    return ll


def gaussian_mixture_loglik(means: Any, stds: Any, y: Any, include_2pi: bool = True) -> torch.Tensor:
    """Per-point log density of the equal-weight Gaussian mixture of S samples.

    ``log (1/S) sum_s N(y; mu_s, sigma_s^2)`` computed as
    ``logsumexp_s(log N_s) - log S`` -- the proper predictive of S posterior
    samples (as opposed to the moment-matched single Gaussian).

    Args:
        means: ``(S, B)`` per-sample predictive means.
        stds: ``(S, B)`` per-sample standard deviations (or broadcastable,
            e.g. ``(S, 1)`` for a per-sample homoscedastic noise); > 0.
        y: ``(B,)`` targets.
        include_2pi: include the ``-0.5 log(2 pi)`` constant.

    Returns:
        ``(B,)`` float64 tensor.
    """
    mu = _to_float64(means, "means")
    _check_ndim(mu, 2, "means", "(S, B)")
    _check_nonempty(mu, "means")
    t = _to_float64(y, "y")
    _check_ndim(t, 1, "y", "(B,)")
    if t.shape[0] != mu.shape[1]:
        raise ValueError(
            f"y: length {t.shape[0]} does not match the batch size B={mu.shape[1]} of means (S, B)"
        )
    s = _broadcast_to(_to_float64(stds, "stds"), mu.shape, "stds", "means")
    _check_positive(s, "stds")
    z = (t[None, :] - mu) / s
    log_components = -0.5 * z**2 - torch.log(s)
    if include_2pi:
        log_components = log_components - 0.5 * _LOG_2PI
    return torch.logsumexp(log_components, dim=0) - math.log(mu.shape[0])


def moment_match(means: Any, stds: Any, seed_compat: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse S Gaussian predictions to one Gaussian per point.

    Proper moment matching of the equal-weight mixture (default):
    ``mean = mean_s mu_s``, ``var = mean_s sigma_s^2 + Var_s(mu_s)`` (population
    variance, ddof 0).

    ``seed_compat=True`` reproduces the seed notebooks (SPEC §5.2):
    ``var = Var_s(mu_s)`` (unbiased, ddof 1) ``+ (mean_s sigma_s)^2`` -- note the
    square of the mean sigma; requires S >= 2.

    Args:
        means: ``(S, B)`` per-sample predictive means.
        stds: ``(S, B)`` per-sample standard deviations (or broadcastable); >= 0.

    Returns:
        ``(mean, std)``, each a ``(B,)`` float64 tensor.
    """
    mu = _to_float64(means, "means")
    _check_ndim(mu, 2, "means", "(S, B)")
    _check_nonempty(mu, "means")
    s = _broadcast_to(_to_float64(stds, "stds"), mu.shape, "stds", "means")
    if bool((s < 0).any()):
        raise ValueError(f"stds: standard deviations must be non-negative, min is {float(s.min()):.6g}")
    mean = mu.mean(dim=0)
    if seed_compat:
        if mu.shape[0] < 2:
            raise ValueError(
                f"means: seed_compat=True uses the unbiased variance over samples and needs S >= 2, got S={mu.shape[0]}"
            )
        var = mu.var(dim=0, correction=1) + s.mean(dim=0) ** 2
    else:
        var = (s**2).mean(dim=0) + mu.var(dim=0, correction=0)
    return mean, var.sqrt()


def _check_y_std(y_std: Any) -> float:
    t = _to_float64(y_std, "y_std")
    if t.numel() != 1:
        raise ValueError(f"y_std: must be a scalar, got shape {tuple(t.shape)}")
    value = float(t.reshape(()))
    if value <= 0:
        raise ValueError(f"y_std: must be strictly positive, got {value!r}")
    return value


def uci_test_loglik(mean_n: Any, std_n: Any, y_n: Any, y_std: Any, include_2pi: bool = True) -> float:
    """Mean per-point test log-likelihood in original units (SPEC §5.2).

    Given predictions and targets in normalised units (``y_n = (y - y_mean) / y_std``),
    the density in original units is the normalised one divided by ``y_std``:
    ``LL = mean_i log N(y_n_i; mean_n_i, std_n_i^2) - log(y_std)``.

    Args:
        mean_n: ``(B,)`` normalised predictive means.
        std_n: ``(B,)`` (or broadcastable) normalised predictive stds; > 0.
        y_n: ``(B,)`` normalised targets.
        y_std: scalar > 0, the target standard deviation used for normalising.
        include_2pi: include the ``-0.5 log(2 pi)`` constant.
    """
    scale = _check_y_std(y_std)
    ll = gaussian_loglik(mean_n, std_n, y_n, include_2pi=include_2pi)
    _check_nonempty(ll, "mean_n")
    return float(ll.mean()) - math.log(scale)


def uci_rmse(mean_n: Any, y_n: Any, y_std: Any) -> float:
    """RMSE in original units from normalised quantities: ``y_std * rmse(mean_n, y_n)``.

    Args:
        mean_n: ``(B,)`` normalised predictive means.
        y_n: ``(B,)`` normalised targets.
        y_std: scalar > 0.
    """
    scale = _check_y_std(y_std)
    return scale * rmse(mean_n, y_n)
