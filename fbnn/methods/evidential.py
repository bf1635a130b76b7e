"""Evidential deep learning (Sensoy, Kaplan & Kandemir 2018; SPEC 6.1).

A classifier's outputs ``f(x) (B, K)`` become non-negative evidence ``e = g(f(x))``
(``g`` ReLU, softplus or a clamped exp), the parameters of a Dirichlet over the class
probabilities::

    alpha = e + 1,  S = sum_k alpha_k,  p_hat = alpha / S,
    belief b_k = e_k / S,  uncertainty mass u = K / S   (u + sum_k b_k = 1).

Training minimises, averaged over the batch, one of three expected losses under
``Dir(p | alpha)`` for the one-hot label ``y``

- ``"ml"`` (Type-II maximum likelihood): ``sum_k y_k (log S - log alpha_k)``,
- ``"ce"`` (Bayes risk of cross-entropy): ``sum_k y_k (psi(S) - psi(alpha_k))``,
- ``"mse"`` (Bayes risk of squared error): ``sum_k (y_k - p_hat_k)^2 + p_hat_k (1 - p_hat_k) / (S + 1)``,

plus ``lambda_t KL(Dir(alpha_tilde) || Dir(1))`` with ``alpha_tilde = y + (1 - y) alpha``
(the true class's evidence removed), annealed by ``"paper"``: ``min(1, t / 10)``, ``t``
the epoch index, or ``"labml"``: piecewise linear in the number of training examples
seen, ``(0, 0) -> (0.2 T, 0.01) -> (T, 1)``, ``T = epochs * n_data``.

``evidential(...)`` is a ``base.Method`` driven by ``fbnn.fit``. Its ``model`` outputs
``log alpha (B, K)``, so a softmax of it is ``p_hat = alpha / S``: ``fbnn.predict.predictive``
and every metric on softmax probabilities see the expected probabilities, and
``dirichlet_from_log_alpha`` recovers ``(p_hat, u)``. Classify with ``predicted_class``
(argmax of ``log alpha``): once a net has learnt to put no evidence on an input, every
``alpha_k`` rounds to 1 and the argmax of the rounded ``p_hat`` is class 0, although the
evidence still ranks the classes. Evidential regression (Amini et al. 2020) with a
Normal-Inverse-Gamma head is at the end of this file.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from itertools import pairwise
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.func import grad

from .. import likelihoods as fl
from .. import models as fm
from .. import optim as fo
from .. import random as fr
from ..predict import predict
from . import base

__all__ = [
    "EVIDENCE", "LOSSES", "ANNEALING", "LABML_KNOTS",
    "relu_evidence", "softplus_evidence", "exp_evidence", "evidence_fn", "dirichlet_alpha",
    "strength", "expected_probs", "belief", "uncertainty", "one_hot",
    "ml_loss", "ce_risk", "mse_risk", "evidential_loss", "kl_uniform", "kl_regulariser",
    "paper_annealing", "labml_annealing", "dirichlet_model", "dirichlet_from_log_alpha",
    "dirichlet_entropy_decomposition", "predicted_class", "predict_log_alpha", "predict_dirichlet",
    "EvidentialState", "evidential",
    "nig_params", "nig_nll", "nig_regulariser", "nig_predictive", "evidential_regression",
]

EVIDENCE = ("softplus", "relu", "exp")
LOSSES = ("mse", "ml", "ce")
ANNEALING = ("paper", "labml", "none")
LABML_KNOTS = ((0.0, 0.0), (0.2, 0.01), (1.0, 1.0))  # (fraction of T, coefficient)
EXP_CLAMP = 10.0  # exp evidence clamps outputs to [-10, 10], as the paper's code does


# --- evidence and the Dirichlet --------------------------------------------------------------

def relu_evidence(out: torch.Tensor) -> torch.Tensor:
    """``(..., K) -> (..., K)``: ``max(out, 0)`` (the paper's choice)."""
    return F.relu(out)


def softplus_evidence(out: torch.Tensor) -> torch.Tensor:
    """``(..., K) -> (..., K)``: ``log(1 + exp(out))`` (labml's default)."""
    return F.softplus(out)


def exp_evidence(out: torch.Tensor) -> torch.Tensor:
    """``(..., K) -> (..., K)``: ``exp(clamp(out, -10, 10))``."""
    return torch.exp(out.clamp(-EXP_CLAMP, EXP_CLAMP))


_EVIDENCE = {"relu": relu_evidence, "softplus": softplus_evidence, "exp": exp_evidence}


def evidence_fn(name: str) -> Callable:
    """The evidence function called ``name`` (one of ``EVIDENCE``)."""
    if name not in _EVIDENCE:
        raise ValueError(f"evidential: unknown evidence {name!r}; choose one of {EVIDENCE}")
    return _EVIDENCE[name]


def _log_alpha(out: torch.Tensor, evidence: str) -> torch.Tensor:
    """``log(g(out) + 1)`` in forms that stay accurate for small and large ``out``: ``(..., K)``."""
    if evidence == "relu":
        return torch.log1p(F.relu(out))
    if evidence == "softplus":
        return torch.log1p(F.softplus(out))
    return F.softplus(out.clamp(-EXP_CLAMP, EXP_CLAMP))  # log(exp(z) + 1)


def _check_alpha(alpha: torch.Tensor, who: str) -> None:
    if not isinstance(alpha, torch.Tensor) or alpha.dim() < 1 or alpha.shape[-1] < 2:
        shape = tuple(alpha.shape) if isinstance(alpha, torch.Tensor) else type(alpha).__name__
        raise ValueError(f"{who}: alpha must be a tensor (..., K) with K >= 2 classes, got {shape}")


def dirichlet_alpha(evidence: torch.Tensor) -> torch.Tensor:
    """``(..., K) -> (..., K)``: ``alpha = e + 1``."""
    return evidence + 1.0


def strength(alpha: torch.Tensor) -> torch.Tensor:
    """``(..., K) -> (...)``: the Dirichlet strength ``S = sum_k alpha_k``."""
    _check_alpha(alpha, "strength")
    return alpha.sum(-1)


def expected_probs(alpha: torch.Tensor) -> torch.Tensor:
    """``(..., K) -> (..., K)``: ``p_hat = alpha / S``, the mean of ``Dir(alpha)``."""
    _check_alpha(alpha, "expected_probs")
    return alpha / alpha.sum(-1, keepdim=True)


def belief(alpha: torch.Tensor) -> torch.Tensor:
    """``(..., K) -> (..., K)``: belief masses ``b_k = (alpha_k - 1) / S``."""
    _check_alpha(alpha, "belief")
    return (alpha - 1.0) / alpha.sum(-1, keepdim=True)


def uncertainty(alpha: torch.Tensor) -> torch.Tensor:
    """``(..., K) -> (...)``: uncertainty mass ``u = K / S`` (``u + sum_k b_k = 1``)."""
    _check_alpha(alpha, "uncertainty")
    return alpha.shape[-1] / alpha.sum(-1)


def _is_plain(t: torch.Tensor) -> bool:
    """Whether ``t`` is a concrete tensor (not wrapped by ``vmap``/``grad``), so its values can be read."""
    try:
        from torch._C._functorch import is_functorch_wrapped_tensor
    except ImportError:  # pragma: no cover
        return True
    return not is_functorch_wrapped_tensor(t)


def one_hot(y: torch.Tensor, n_classes: int, dtype=torch.float32) -> torch.Tensor:
    """Integer labels ``(B,)`` -> one-hot ``(B, K)``.

    Works under ``vmap`` (a comparison, no indexing); the label range is checked when the
    labels are concrete (not wrapped by a transform)."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"evidential: labels must be a tensor, got {type(y).__name__}")
    if y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"evidential: labels must be integers, got {y.dtype}")
    if _is_plain(y) and y.numel():
        if y.is_floating_point() and not torch.equal(y, y.round()):
            raise ValueError("evidential: labels must be integers (or one-hot rows of the alpha shape)")
        if int(y.min()) < 0 or int(y.max()) >= n_classes:
            raise ValueError(f"evidential: labels must lie in [0, {n_classes - 1}] for {n_classes} "
                             f"classes; got range [{int(y.min())}, {int(y.max())}]")
    classes = torch.arange(n_classes, device=y.device)
    return (y.long().unsqueeze(-1) == classes).to(dtype)


def _targets(alpha: torch.Tensor, y: torch.Tensor, who: str) -> torch.Tensor:
    """One-hot targets ``(B, K)`` from labels ``(B,)`` or a float ``(B, K)`` passed through."""
    _check_alpha(alpha, who)
    if isinstance(y, torch.Tensor) and y.is_floating_point() and y.shape == alpha.shape:
        return y.to(alpha.dtype)
    if not isinstance(y, torch.Tensor) or y.shape != alpha.shape[:-1]:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{who}: labels of shape {shape} do not fit alpha of shape "
                         f"{tuple(alpha.shape)}; expected ({', '.join(map(str, alpha.shape[:-1]))},) "
                         f"integer labels or a one-hot float {tuple(alpha.shape)}")
    return one_hot(y, alpha.shape[-1], alpha.dtype)


def _batch_mean(per_example: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``(B,) -> ()``: ``sum_b w_b l_b / B`` (as ``base.data_log_lik``'s ``mean``)."""
    if weight is not None:
        per_example = per_example * weight
    return per_example.sum(-1) / per_example.shape[-1]


# --- losses (per example, then batch means) ---------------------------------------------------

def _ml_terms(alpha, target):
    return (target * (torch.log(alpha.sum(-1, keepdim=True)) - torch.log(alpha))).sum(-1)


def _ce_terms(alpha, target):
    return (target * (torch.digamma(alpha.sum(-1, keepdim=True)) - torch.digamma(alpha))).sum(-1)


def _mse_terms(alpha, target):
    s = alpha.sum(-1, keepdim=True)
    p = alpha / s
    return ((target - p) ** 2 + p * (1.0 - p) / (s + 1.0)).sum(-1)


_TERMS = {"ml": _ml_terms, "ce": _ce_terms, "mse": _mse_terms}


def ml_loss(alpha: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Type-II maximum likelihood ``-log E_Dir[p_y] = log S - log alpha_y``, batch mean.

    ``alpha (B, K)``, ``y (B,)`` ints or ``(B, K)`` one-hot, optional ``weight (B,)`` -> ``()``."""
    return _batch_mean(_ml_terms(alpha, _targets(alpha, y, "ml_loss")), weight)


def ce_risk(alpha: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Bayes risk of cross-entropy ``E_Dir[-log p_y] = psi(S) - psi(alpha_y)``, batch mean: ``()``."""
    return _batch_mean(_ce_terms(alpha, _targets(alpha, y, "ce_risk")), weight)


def mse_risk(alpha: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Bayes risk of squared error ``E_Dir[||y - p||^2]``, batch mean: ``()``."""
    return _batch_mean(_mse_terms(alpha, _targets(alpha, y, "mse_risk")), weight)


def evidential_loss(name: str) -> Callable:
    """The loss called ``name`` (one of ``LOSSES``): ``(alpha, y, weight=None) -> ()``."""
    losses = {"ml": ml_loss, "ce": ce_risk, "mse": mse_risk}
    if name not in losses:
        raise ValueError(f"evidential: unknown loss {name!r}; choose one of {LOSSES}")
    return losses[name]


def kl_uniform(alpha: torch.Tensor) -> torch.Tensor:
    """``KL(Dir(alpha) || Dir(1, ..., 1))``: ``(..., K) -> (...)``, closed form

    ``log Gamma(S) - log Gamma(K) - sum_k log Gamma(alpha_k) + sum_k (alpha_k - 1)(psi(alpha_k) - psi(S))``."""
    _check_alpha(alpha, "kl_uniform")
    s = alpha.sum(-1)
    k = alpha.shape[-1]
    return (torch.lgamma(s) - math.lgamma(k) - torch.lgamma(alpha).sum(-1)
            + ((alpha - 1.0) * (torch.digamma(alpha) - torch.digamma(s).unsqueeze(-1))).sum(-1))


def kl_regulariser(alpha: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Batch mean of ``KL(Dir(alpha_tilde) || Dir(1))``, ``alpha_tilde = y + (1 - y) alpha``: ``()``."""
    target = _targets(alpha, y, "kl_regulariser")
    return _batch_mean(kl_uniform(target + (1.0 - target) * alpha), weight)


# --- annealing ---------------------------------------------------------------------------------

def paper_annealing(epoch, annealing_epochs: float = 10.0) -> torch.Tensor:
    """Sensoy et al.'s ``lambda_t = min(1, t / annealing_epochs)``, ``t`` the (0-based) epoch: ``()``."""
    _positive(annealing_epochs, "annealing_epochs", "paper_annealing")
    t = torch.as_tensor(epoch).to(torch.float32)
    return torch.clamp(t / annealing_epochs, max=1.0)


def labml_annealing(seen, total, knots=LABML_KNOTS) -> torch.Tensor:
    """labml's piecewise-linear ``lambda`` in the number of examples ``seen``: ``()``.

    ``knots``: ``(fraction of total, value)`` pairs, fractions increasing from 0; linear in
    between, the last value past the end (``(0, 0) -> (0.2 T, 0.01) -> (T, 1)`` by default)."""
    _positive(total, "total", "labml_annealing")
    xs = [float(f) * total for f, _ in knots]
    if len(knots) < 2 or xs[0] != 0.0 or any(b <= a for a, b in pairwise(xs)):
        raise ValueError(f"labml_annealing: knots must start at fraction 0 and increase, got {knots}")
    points = [(x, float(v)) for x, (_, v) in zip(xs, knots)]
    s = torch.as_tensor(seen).to(torch.float64)
    value = torch.full_like(s, points[0][1])
    for (x0, v0), (x1, v1) in pairwise(points):  # later segments take over from their start
        value = torch.where(s >= x0, v0 + (v1 - v0) * (s - x0) / (x1 - x0), value)
    return torch.where(s >= points[-1][0], points[-1][1], value).to(torch.float32)


# --- the model view and predictions ------------------------------------------------------------

def dirichlet_model(model: fm.Model, evidence: str = "softplus") -> fm.Model:
    """``model`` with outputs ``log alpha (B, K)``, ``alpha = g(f(x)) + 1``.

    ``softmax(log alpha) = alpha / S`` is the expected probability and
    ``K exp(-logsumexp(log alpha)) = K / S`` the uncertainty (``dirichlet_from_log_alpha``)."""
    evidence_fn(evidence)

    def apply(params, x, *, key=None, state=None):
        return _log_alpha(model.apply(params, x, key=key, state=state), evidence)

    def apply_train(params, state, x, *, key=None):
        out, new_state = model.apply_train(params, state, x, key=key)
        return _log_alpha(out, evidence), new_state

    return fm.Model(model.init, apply, model.init_state, apply_train, f"dirichlet({model.name})")


def dirichlet_from_log_alpha(log_alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log alpha (..., K) -> (p_hat (..., K), u (...))``."""
    _check_alpha(log_alpha, "dirichlet_from_log_alpha")
    k = log_alpha.shape[-1]
    return torch.softmax(log_alpha, -1), k * torch.exp(-torch.logsumexp(log_alpha, -1))


def dirichlet_entropy_decomposition(alpha: torch.Tensor):
    """``(total, aleatoric, epistemic)``, each ``(...)``, of ``Dir(alpha) (..., K)`` in closed form.

    total ``H[p_hat]``; aleatoric ``E_Dir[H[p]] = sum_k p_hat_k (psi(S + 1) - psi(alpha_k + 1))``;
    epistemic the mutual information, their difference (>= 0)."""
    _check_alpha(alpha, "dirichlet_entropy_decomposition")
    a = alpha.to(torch.float64)
    s = a.sum(-1, keepdim=True)
    p = a / s
    total = -(p * torch.log(p)).sum(-1)
    aleatoric = (p * (torch.digamma(s + 1.0) - torch.digamma(a + 1.0))).sum(-1)
    return total, aleatoric, total - aleatoric


def predicted_class(log_alpha: torch.Tensor) -> torch.Tensor:
    """``argmax_k p_hat_k`` read off ``log alpha (..., K)``: ``(...)`` int64.

    ``p_hat = alpha / S`` orders the classes as ``log alpha`` does, but a rounded ``p_hat``
    loses that order when the evidence is below the float's resolution: every ``alpha_k``
    rounds to 1 and ``p_hat`` ties at ``1 / K`` (float32: evidence < 6e-8, softplus outputs
    below about -17), where ``argmax`` of the rounded probabilities returns class 0.
    ``log alpha = log1p(e)`` keeps the order down to the smallest float."""
    _check_alpha(log_alpha, "predicted_class")
    return log_alpha.argmax(-1)


def predict_log_alpha(method: base.Method, state, x: torch.Tensor, *, key=None, n_samples: int = 1,
                      **kw) -> torch.Tensor:
    """``log alpha (S, B, K)`` of an evidential ``method`` for ``S = n_samples`` parameter draws
    (1 for a single net; a multiple of the member count for an ensemble of evidential nets)
    on inputs ``x (B, ...)``. ``kw`` goes to ``fbnn.predict.predict`` (chunks, memory budget)."""
    key = fr.key(0) if key is None else key
    k_sample, k_predict = fr.split(key, 2)
    samples = method.sample(state, k_sample, n_samples)
    return predict(method.model, samples, x, key=k_predict if method.keyed else None, **kw)


def predict_dirichlet(method: base.Method, state, x: torch.Tensor, *, key=None, n_samples: int = 1,
                      **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p_hat (B, K), u (B,))`` of an evidential ``method`` on inputs ``x (B, ...)``, averaged
    over ``n_samples`` parameter draws (see ``predict_log_alpha``). For the predicted class
    of one net use ``predicted_class`` on ``predict_log_alpha(...)[0]``: ``argmax`` of the
    rounded ``p_hat`` breaks ties from vanishing evidence arbitrarily."""
    probs, u = dirichlet_from_log_alpha(predict_log_alpha(method, state, x, key=key, n_samples=n_samples, **kw))
    return probs.mean(0), u.mean(0)


# --- the method --------------------------------------------------------------------------------

class EvidentialState(NamedTuple):
    params: Any
    opt_state: Any
    model_state: Any
    count: torch.Tensor   # () int64, steps taken
    seen: torch.Tensor    # () int64, training examples seen (drives the annealing)


def _positive(value, what: str, who: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{who}: {what} must be a finite number > 0, got {value!r}")
    return float(value)


def _positive_int(value, what: str, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{who}: {what} must be an int >= 1, got {value!r}")
    return int(value)


def _schedule(annealing, n_data, epochs, annealing_epochs) -> Callable:
    """``(seen before the step (), batch size) -> lambda ()``."""
    if callable(annealing):
        return lambda seen, b: torch.as_tensor(annealing(seen), dtype=torch.float32)
    if annealing not in ANNEALING:
        raise ValueError(f"evidential: unknown annealing {annealing!r}; choose one of {ANNEALING} "
                         f"or pass a callable seen -> coefficient")
    if annealing == "none":
        return lambda seen, b: torch.zeros(())
    n_data = _positive_int(n_data, "n_data (the training-set size)", "evidential")
    if annealing == "paper":
        _positive(annealing_epochs, "annealing_epochs", "evidential")
        return lambda seen, b: paper_annealing(torch.div(seen, n_data, rounding_mode="floor"),
                                               annealing_epochs)
    epochs = _positive_int(epochs, "epochs (the length T of the labml schedule)", "evidential")
    # labml counts the current batch before reading its coefficient
    return lambda seen, b: labml_annealing(seen + b, epochs * n_data)


def _label_check():
    def check(out, y):
        k = out.shape[-1]
        if k < 2:
            raise ValueError(f"evidential: the model must output K >= 2 classes, got {k}")
        if y.dim() != 1:
            raise ValueError(f"evidential: labels must have shape (N,), got {tuple(y.shape)}")
        if y.is_floating_point() and not torch.equal(y, y.round()):
            raise ValueError("evidential: labels must be integers")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
            raise ValueError(f"evidential: labels must lie in [0, {k - 1}] for a model with {k} outputs; "
                             f"got range [{int(y.min())}, {int(y.max())}]")
    return check


def evidential(model: fm.Model, optimizer, *, loss: str = "mse", evidence: str = "softplus",
               annealing="paper", n_data: int | None = None, epochs: int | None = None,
               annealing_epochs: float = 10.0) -> base.Method:
    """Evidential classification (Sensoy et al. 2018) on any classifier ``model`` (outputs ``(B, K)``).

    - ``loss``: ``"mse"`` (Bayes risk of squared error), ``"ml"`` (Type-II ML) or ``"ce"``
      (Bayes risk of cross-entropy);
    - ``evidence``: ``"softplus"``, ``"relu"`` or ``"exp"``;
    - ``annealing`` of the KL weight: ``"paper"`` (``min(1, t / annealing_epochs)``, ``t`` the
      epoch index ``floor(seen / n_data)``), ``"labml"`` (piecewise linear over
      ``T = epochs * n_data`` examples, counting the current batch, as labml does), ``"none"``
      (no KL term) or a callable ``seen (int64 ()) -> coefficient``. ``n_data`` is needed by
      both schedules, ``epochs`` by ``"labml"``.
    Each step minimises ``mean_b w_b [loss_b + lambda KL_b]`` (``w`` the batch weights, 1
    by default) with ``optimizer``; weight decay belongs in the optimizer (``optim.adamw``).
    ``info`` holds ``loss`` (the total), ``data_loss``, ``kl`` and ``annealing``.
    ``method.model`` outputs ``log alpha``: ``fbnn.predict.predictive`` gives ``alpha / S``,
    ``predict_dirichlet`` gives ``(alpha / S, K / S)`` and ``predicted_class`` the exact argmax.
    """
    terms = _TERMS.get(loss)
    if terms is None:
        raise ValueError(f"evidential: unknown loss {loss!r}; choose one of {LOSSES}")
    g = evidence_fn(evidence)
    schedule = _schedule(annealing, n_data, epochs, annealing_epochs)
    out_model = dirichlet_model(model, evidence)
    checker = fl.Likelihood(lambda out, y: torch.zeros(out.shape[0]), _label_check(), "evidential")

    def objective(params, model_state, batch, key, coef):
        out, new_state = model.apply_train(params, model_state, batch.x, key=key)
        alpha = dirichlet_alpha(g(out))
        target = _targets(alpha, batch.y, "evidential")
        data = _batch_mean(terms(alpha, target), batch.weight)
        kl = _batch_mean(kl_uniform(target + (1.0 - target) * alpha), batch.weight)
        total = data + coef * kl
        return total, (total, data, kl, new_state)

    grad_fn = grad(objective, has_aux=True)

    def init(key, params):
        zero = torch.zeros((), dtype=torch.int64)
        return EvidentialState(params, optimizer.init(params), model.init_state(), zero, zero.clone())

    def step(state, batch, key):
        b = batch.x.shape[0]
        coef = schedule(state.seen, b)
        grads, (total, data, kl, model_state) = grad_fn(state.params, state.model_state, batch, key, coef)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = fo.apply_updates(state.params, updates)
        new = EvidentialState(params, opt_state, model_state, state.count + 1, state.seen + b)
        return new, {"loss": total.detach(), "data_loss": data.detach(), "kl": kl.detach(),
                     "annealing": coef.detach()}

    def sample(state, key, n):
        return base.expand_samples(state.params, state.model_state, n)

    def check(state, x, y):
        base.check_data(out_model, checker, state.params, state.model_state, x, y)

    return base.Method(init, step, sample, check, out_model, False, f"evidential_{loss}")


# --- evidential regression (Amini et al. 2020) -------------------------------------------------

def nig_params(out: torch.Tensor, min_value: float = 1e-6):
    """Network outputs ``(B, 4D)`` -> Normal-Inverse-Gamma ``(gamma, nu, alpha, beta)``, each ``(B, D)``.

    ``gamma`` is the raw first block; ``nu = softplus + eps``, ``alpha = softplus + 1 + eps``,
    ``beta = softplus + eps``."""
    if out.shape[-1] % 4:
        raise ValueError(f"nig_params: outputs must be (B, 4D) [gamma, nu, alpha, beta], "
                         f"got last dimension {out.shape[-1]}")
    gamma, nu, alpha, beta = out.chunk(4, dim=-1)
    return (gamma, F.softplus(nu) + min_value, F.softplus(alpha) + 1.0 + min_value,
            F.softplus(beta) + min_value)


def nig_nll(y, gamma, nu, alpha, beta) -> torch.Tensor:
    """``-log St(y; gamma, 2 alpha, beta (1 + nu) / (nu alpha))``, the NIG marginal: ``(B, D)``.

    ``= 0.5 log(pi / nu) - alpha log(Omega) + (alpha + 0.5) log(nu (y - gamma)^2 + Omega)
    + log Gamma(alpha) - log Gamma(alpha + 0.5)``, ``Omega = 2 beta (1 + nu)``."""
    omega = 2.0 * beta * (1.0 + nu)
    return (0.5 * torch.log(math.pi / nu) - alpha * torch.log(omega)
            + (alpha + 0.5) * torch.log(nu * (y - gamma) ** 2 + omega)
            + torch.lgamma(alpha) - torch.lgamma(alpha + 0.5))


def nig_regulariser(y, gamma, nu, alpha) -> torch.Tensor:
    """Amini et al.'s evidence penalty ``|y - gamma| (2 nu + alpha)``: ``(B, D)``."""
    return torch.abs(y - gamma) * (2.0 * nu + alpha)


def nig_predictive(gamma, nu, alpha, beta):
    """``(mean, aleatoric variance E[sigma^2], epistemic variance Var[mu])``, each ``(B, D)``."""
    return gamma, beta / (alpha - 1.0), beta / (nu * (alpha - 1.0))


def evidential_regression(model: fm.Model, optimizer, *, coeff: float = 1e-2) -> base.Method:
    """Deep evidential regression (Amini et al. 2020): ``model`` outputs ``(B, 4D)`` read by
    ``nig_params``; each step minimises the batch mean of ``nig_nll + coeff * nig_regulariser``
    (summed over ``D``). ``method.model`` outputs the raw ``(B, 4D)``; use ``nig_params`` and
    ``nig_predictive`` on them. Targets ``y`` are ``(B,)`` for ``D = 1`` or ``(B, D)``."""
    if isinstance(coeff, bool) or not isinstance(coeff, numbers.Real) or not math.isfinite(coeff) \
            or coeff < 0:
        raise ValueError(f"evidential_regression: coeff must be a finite number >= 0, got {coeff!r}")

    def objective(params, model_state, batch, key):
        out, new_state = model.apply_train(params, model_state, batch.x, key=key)
        gamma, nu, alpha, beta = nig_params(out)
        y = batch.y.reshape(gamma.shape)
        per_example = (nig_nll(y, gamma, nu, alpha, beta) + coeff * nig_regulariser(y, gamma, nu, alpha)).sum(-1)
        total = _batch_mean(per_example, batch.weight)
        return total, (total, new_state)

    grad_fn = grad(objective, has_aux=True)

    def init(key, params):
        zero = torch.zeros((), dtype=torch.int64)
        return EvidentialState(params, optimizer.init(params), model.init_state(), zero, zero.clone())

    def step(state, batch, key):
        grads, (total, model_state) = grad_fn(state.params, state.model_state, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new = EvidentialState(fo.apply_updates(state.params, updates), opt_state, model_state,
                              state.count + 1, state.seen + batch.x.shape[0])
        return new, {"loss": total.detach()}

    def sample(state, key, n):
        return base.expand_samples(state.params, state.model_state, n)

    def check(state, x, y):
        def target_check(out, y):
            if out.shape[-1] % 4:
                raise ValueError(f"evidential_regression: the model must output (B, 4D), got last "
                                 f"dimension {out.shape[-1]}")
            d = out.shape[-1] // 4
            if not y.is_floating_point():
                raise ValueError(f"evidential_regression: targets must be floating point, got {y.dtype}")
            if y.shape[1:] not in ((), (d,)) or (y.dim() == 1 and d != 1):
                raise ValueError(f"evidential_regression: targets of shape {tuple(y.shape)} do not fit "
                                 f"{d} output dimension(s)")
            if not torch.isfinite(y).all():
                raise ValueError("evidential_regression: targets contain NaN or inf")
        lik = fl.Likelihood(lambda out, y: torch.zeros(out.shape[0]), target_check, "nig")
        base.check_data(model, lik, state.params, state.model_state, x, y)

    return base.Method(init, step, sample, check, model, False, "evidential_regression")
