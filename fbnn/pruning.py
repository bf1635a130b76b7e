"""Weight pruning of a mean-field Gaussian posterior (Blundell et al. 2015, 5.1; SPEC 4.6).

Every variational scalar gets a score -- the signal-to-noise ratio ``|mu| / sigma``, or
its own ``KL(q(w) || p(w))`` (the seed's 20-sample Monte Carlo estimate, or the closed
form) -- and the lowest-scoring fraction is removed: ``mu = 0`` and ``rho = -1000``, the
seed's choice. In float32 ``softplus(-1000)`` is exactly 0, so a pruned weight has
sigma = 1e-6 (the floor of ``sigma = 1e-6 + softplus(rho)``): its draws are N(0, 1e-12),
not exactly 0. With inputs of order 1 a layer of 1200 pruned weights moves a unit by
about sqrt(1200) * 1e-6 ~ 4e-5, which changes no prediction (``tests/test_vi.py``
checks it). Deterministic (point-estimate) tensors are never pruned.

All functions are pure: they take a ``methods.vi.ViState`` and return new tensors or a
new state; scores are dicts ``{name: tensor}`` over the variational tensors.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from . import metrics, tree
from . import priors as fp
from . import random as fr
from .methods import vi
from .predict import predict_probs

__all__ = ["SEED_FRACTIONS", "PRUNED_RHO", "RULES", "snr", "snr_db", "kl_scores", "keep_mask", "apply_mask",
           "prune", "evaluate_pruning"]

SEED_FRACTIONS = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.99, 0.995)   # SPEC 8 `pruning`
PRUNED_RHO = -1000.0
RULES = ("count", "percentile")


def _means(state) -> dict:
    return dict(zip(fp.leaf_names(state.mean), tree.leaves(state.mean)))


def snr(state) -> dict:
    """Signal-to-noise ratio ``|mu| / sigma`` per variational scalar."""
    means = _means(state)
    return {n: means[n].abs() / vi.std_from_rho(r) for n, r in state.rho.items()}


def snr_db(state) -> dict:
    """``10 log10(|mu| / sigma)``, the paper's histogram unit."""
    return {n: 10 * torch.log10(s) for n, s in snr(state).items()}


def kl_scores(state, prior, key=None, n_samples: int = 20, closed_form: bool = False) -> dict:
    """Per-scalar ``KL(N(mu, sigma^2) || p)``.

    Monte Carlo (the seed's): ``mean_s [log q(w_s) - log p(w_s)]`` over ``n_samples`` draws
    from ``key`` (can be negative by MC noise); ``closed_form=True``: the exact value (the
    prior needs ``kl``). ``prior``: one prior or a pytree per tensor, factorised over
    elements (``ValueError`` otherwise, e.g. for a joint-sum mixture)."""
    names = fp.leaf_names(state.mean)
    pri = dict(zip(names, fp.prior_leaves(prior, state.mean)))
    means = _means(state)
    if not closed_form:
        if key is None:
            raise ValueError("kl_scores: a key is needed for the Monte Carlo estimate")
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"kl_scores: n_samples must be an int >= 1, got {n_samples!r}")
    out = {}
    for i, (n, r) in enumerate(state.rho.items()):
        p = pri[n]
        if p is None:
            raise ValueError(f"kl_scores: no prior for {n!r}")
        m, s = means[n].detach(), vi.std_from_rho(r.detach())
        if closed_form:
            out[n] = fp.kl_elements(p, m, s)
            continue
        keys = fr.split(fr.fold_in(key, i), n_samples)                          # (n_samples, 2)
        eps = torch.stack([fr.normal(k, m.shape, m.dtype) for k in keys])      # (n_samples, ...)
        log_q = -0.5 * eps * eps - torch.log(s) - 0.5 * math.log(2 * math.pi)
        out[n] = (log_q - fp.log_prob_elements(p, m + s * eps)).mean(0)
    return out


def _check_fraction(fraction) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"pruning: fraction must be in [0, 1], got {fraction!r}")
    return float(fraction)


def keep_mask(scores: dict, fraction: float, rule: str = "count") -> tuple[dict, float]:
    """``({name: bool tensor, True = keep}, threshold)`` removing the lowest scores.

    ``rule="count"``: exactly ``round(fraction * n)`` of the ``n`` scalars go (ties broken
    by position); ``threshold`` is the largest removed score (-inf if none).
    ``rule="percentile"`` (the seed's): ``t = np.percentile(scores, 100 fraction)``
    (linear interpolation) and only scores ``> t`` stay -- so fraction 0 still removes
    the minimum."""
    fraction = _check_fraction(fraction)
    if rule not in RULES:
        raise ValueError(f"pruning: unknown rule {rule!r}; choose one of {RULES}")
    if not scores:
        raise ValueError("pruning: no scores (the state has no variational tensor)")
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).to(torch.float64) for n in names])
    if torch.isnan(flat).any():
        raise ValueError("pruning: scores contain NaN")
    if rule == "count":
        k = round(fraction * flat.numel())
        keep = torch.ones_like(flat, dtype=torch.bool)
        order = torch.argsort(flat, stable=True)
        keep[order[:k]] = False
        threshold = float(flat[order[k - 1]]) if k > 0 else -math.inf
    else:
        threshold = float(np.percentile(flat.numpy(), 100 * fraction))
        keep = flat > threshold
    parts = torch.split(keep, [scores[n].numel() for n in names])
    return {n: p.reshape(scores[n].shape) for n, p in zip(names, parts)}, threshold


def apply_mask(state, keep: dict, rho: float = PRUNED_RHO):
    """A new state with ``mu = 0`` and ``rho = rho`` wherever ``keep`` is False."""
    names = fp.leaf_names(state.mean)
    flat, spec = tree.flatten(state.mean)
    missing = [n for n in keep if n not in state.rho]
    if missing:
        raise ValueError(f"pruning: {missing[0]!r} is not a variational tensor of the state")
    means = [torch.where(keep[n], m, torch.zeros_like(m)) if n in keep else m for n, m in zip(names, flat)]
    rhos = {n: torch.where(keep[n], r, torch.full_like(r, rho)) if n in keep else r
            for n, r in state.rho.items()}
    return state._replace(mean=tree.unflatten(means, spec), rho=rhos)


def prune(state, scores: dict, fraction: float, rule: str = "count", rho: float = PRUNED_RHO):
    """Remove the lowest-scoring ``fraction`` of the variational scalars (``keep_mask`` then
    ``apply_mask``); returns a new state."""
    keep, _ = keep_mask(scores, fraction, rule)
    return apply_mask(state, keep, rho)


def evaluate_pruning(method, state, x, y, key, scores: dict, fractions=SEED_FRACTIONS, n_samples: int = 100,
                     rule: str = "count", chunk: int = 10, rho: float = PRUNED_RHO) -> list:
    """Test metrics of the ``n_samples`` predictive after each pruning fraction.

    Every fraction uses the same ``key`` (common random numbers). Rows: ``fraction``,
    ``n_pruned``, ``n_kept``, ``threshold`` (see ``keep_mask``), ``error_pct``,
    ``test_loglik_sum`` and ``nll_mean``."""
    rows = []
    for fraction in fractions:
        keep, threshold = keep_mask(scores, fraction, rule)
        pruned = apply_mask(state, keep, rho)
        probs = torch.cat([predict_probs(method.model, s, x)
                           for s in vi.sample_chunks(pruned, key, n_samples, chunk)]).mean(0)
        n_kept = int(sum(int(k.sum()) for k in keep.values()))
        n_total = sum(k.numel() for k in keep.values())
        rows.append({"fraction": float(fraction), "n_pruned": n_total - n_kept, "n_kept": n_kept,
                     "threshold": threshold, "error_pct": metrics.error_pct(probs, y),
                     "test_loglik_sum": metrics.test_loglik_sum(probs, y),
                     "nll_mean": metrics.nll_mean(probs, y)})
    return rows
