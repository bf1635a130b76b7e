"""Regression benchmarks: many small nets trained side by side, scored as mixtures (SPEC §5).

The unit of work is a *group*: one training set with its evaluation set (a UCI split's
training rows and test rows, or a validation part of them, or the toy data and a grid).
Every group gets ``k`` *streams* (ensemble members, SG-MCMC chains, or one net), and all
``G * k`` streams train in one ``vmap``ped ``methods.ensemble`` step, each with its own
minibatch order over its own group's rows. At evaluation epochs the predictive of a group
is the equal-weight mixture of the Gaussians ``N(mu_c, sigma_c^2)`` of its components
(streams x weight draws, and for SG-MCMC also the draws of earlier evaluations):

    log p(y | x) = logsumexp_c log N(y; mu_c, sigma_c^2) - log C,

reported per point in original units (``- log y_std``), with the RMSE of the mixture mean.
Hyperparameters (a small grid and the number of epochs) are chosen per split on a
validation part of its training rows (``select_by_validation``); the test rows are only
scored, never used to choose.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch.func import vmap

from . import likelihoods, models, optim, priors, tree
from . import random as fr
from .data.uci import UCISplit, standardize
from .methods import Batch, ensemble, init_members
from .methods import laplace as la_mod
from .methods import map_estimate, mc_dropout, sghmc_sa, sgld, vi
from .methods.evidential import evidential_regression, nig_params, nig_predictive

__all__ = ["REGRESSION_METHODS", "mean_se", "summarize", "destandardize", "validation_split",
           "Groups", "stack_groups", "Mixture", "mixture_init", "mixture_add", "mixture_scores",
           "stream_orders", "stream_outputs", "train_streams", "MethodConfig", "method_config",
           "build_method", "score_splits", "select_by_validation", "laplace_scores", "uci_method_runs",
           "gaussian_bands", "nig_bands", "TOY_METHODS", "toy_bands"]

REGRESSION_METHODS = ("map", "ensemble", "mc_dropout", "bbp", "sgld", "sghmc", "laplace", "ensemble_laplace")
_LAPLACE_METHODS = ("laplace", "ensemble_laplace")
_LOG_2PI = math.log(2 * math.pi)


# --- aggregation and standardisation ------------------------------------------------------------

def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error ``std(ddof=1) / sqrt(n)`` (0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("mean_se: no values")
    se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else 0.0
    return float(a.mean()), se


def summarize(test_ll: Sequence[float], rmse: Sequence[float]) -> dict:
    """Per-split metrics -> ``{test_ll_mean, test_ll_se, rmse_mean, rmse_se, n_splits}``."""
    if len(test_ll) != len(rmse):
        raise ValueError(f"summarize: {len(test_ll)} log-likelihoods but {len(rmse)} RMSEs")
    ll_m, ll_se = mean_se(test_ll)
    r_m, r_se = mean_se(rmse)
    return {"test_ll_mean": ll_m, "test_ll_se": ll_se, "rmse_mean": r_m, "rmse_se": r_se,
            "n_splits": len(test_ll)}


def destandardize(y_n, y_mean: float, y_std: float):
    """Back to original units: ``y_n * y_std + y_mean`` (inverse of ``data.uci.standardize``)."""
    return y_n * y_std + y_mean


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit_idx, val_idx)``: a seeded random ``fraction`` of ``range(n)`` held out (at least 1 row)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_split: fraction must be in (0, 1), got {fraction}")
    perm = np.random.RandomState(seed).permutation(n)
    n_val = max(1, int(round(fraction * n)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# --- groups of padded data ------------------------------------------------------------------------

class Groups(NamedTuple):
    """``G`` training/evaluation sets, zero-padded to common sizes (float32 unless noted).

    x_train `(G, n_max, d)`, y_train `(G, n_max)`, n_train `(G,)` int64, x_eval `(G, m_max, d)`,
    y_eval `(G, m_max)`, eval_mask `(G, m_max)` bool, y_std `(G,)` float64 (the scale back to
    original units). Targets are standardised.
    """
    x_train: torch.Tensor
    y_train: torch.Tensor
    n_train: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    eval_mask: torch.Tensor
    y_std: torch.Tensor


def _pad_rows(ts: list, length: int) -> torch.Tensor:
    return torch.stack([torch.cat([t, t.new_zeros((length - t.shape[0],) + t.shape[1:])]) for t in ts])


def stack_groups(splits: Sequence[UCISplit]) -> Groups:
    """Standardised splits (``data.uci.UCISplit``) -> padded ``Groups``."""
    n_max = max(s.x_train.shape[0] for s in splits)
    m_max = max(s.x_test.shape[0] for s in splits)
    mask = torch.stack([torch.arange(m_max) < s.x_test.shape[0] for s in splits])
    return Groups(_pad_rows([s.x_train for s in splits], n_max), _pad_rows([s.y_train for s in splits], n_max),
                  torch.tensor([s.x_train.shape[0] for s in splits]),
                  _pad_rows([s.x_test for s in splits], m_max), _pad_rows([s.y_test for s in splits], m_max),
                  mask, torch.tensor([s.y_std for s in splits], dtype=torch.float64))


# --- mixture predictive -----------------------------------------------------------------------------

class Mixture(NamedTuple):
    """Running sums over components: logsumexp of ``log N(y; mu, sigma^2)`` `(G, m)`,
    sum of ``mu`` `(G, m)`, sum of ``mu^2 + sigma^2`` `(G, m)` (float64) and the count."""
    log_sum: torch.Tensor
    mean_sum: torch.Tensor
    second_sum: torch.Tensor
    count: int


def mixture_init(n_groups: int, m: int) -> Mixture:
    zeros = torch.zeros(n_groups, m, dtype=torch.float64)
    return Mixture(torch.full_like(zeros, -math.inf), zeros, zeros.clone(), 0)


def mixture_add(acc: Mixture, out: torch.Tensor, y: torch.Tensor) -> Mixture:
    """Add components ``out (G, C, m, 2)`` (``[mu, log_sigma]``) for targets ``y (G, m)``."""
    out = out.double()
    mu, log_sigma = out[..., 0], out[..., 1]
    z = (y.double()[:, None] - mu) * torch.exp(-log_sigma)
    log_n = -0.5 * z ** 2 - log_sigma - 0.5 * _LOG_2PI
    log_sum = torch.logaddexp(acc.log_sum, torch.logsumexp(log_n, dim=1))
    second = (mu ** 2 + torch.exp(2 * log_sigma)).sum(1)
    return Mixture(log_sum, acc.mean_sum + mu.sum(1), acc.second_sum + second, acc.count + out.shape[1])


def mixture_scores(acc: Mixture, y: torch.Tensor, mask: torch.Tensor, y_std: torch.Tensor):
    """``(test_ll (G,), rmse (G,))`` in original units: the mean over the masked points of
    ``log (1/C) sum_c N(y; mu_c, sigma_c^2) - log y_std``, and ``y_std`` times the RMSE of the
    mixture mean. Non-finite log-likelihoods (a diverged net) give ``-inf``."""
    m = mask.double()
    n = m.sum(1)
    ll_point = torch.where(mask, acc.log_sum - math.log(acc.count), torch.zeros((), dtype=torch.float64))
    ll = (ll_point * m).sum(1) / n - torch.log(y_std)
    mean = acc.mean_sum / acc.count
    rmse = torch.sqrt((((mean - y.double()) ** 2) * m).sum(1) / n) * y_std
    ll = torch.where(torch.isfinite(ll), ll, torch.full_like(ll, -math.inf))
    return ll, rmse


def gaussian_bands(out: torch.Tensor):
    """Per-sample outputs ``(C, m, 2)`` -> ``(mean, aleatoric std, epistemic std)``, each ``(m,)``:
    mixture mean, ``sqrt(mean_c sigma_c^2)`` and the population std of ``mu_c`` (SPEC §5.1)."""
    mu, sigma = out[..., 0], torch.exp(out[..., 1])
    return mu.mean(0), (sigma ** 2).mean(0).sqrt(), mu.std(0, correction=0)


def nig_bands(out: torch.Tensor):
    """Evidential outputs ``(m, 4)`` -> ``(mean, aleatoric std, epistemic std)`` of the NIG."""
    mean, aleatoric, epistemic = nig_predictive(*nig_params(out))
    return mean[:, 0], aleatoric[:, 0].sqrt(), epistemic[:, 0].sqrt()


# --- vmapped training of G * k streams ----------------------------------------------------------

def stream_orders(key, n_rows: torch.Tensor, length: int) -> torch.Tensor:
    """One epoch's row order per stream, ``(R, length)`` int64: a random permutation of
    ``range(n_rows[r])``, continued cyclically up to ``length`` (streams with fewer rows see
    a few rows twice, so that all streams take the same number of steps)."""
    r = n_rows.shape[0]
    u = fr.uniform(key, (r, length))
    u = torch.where(torch.arange(length)[None] < n_rows[:, None], u, torch.full_like(u, 2.0))
    order = torch.argsort(u, dim=1)
    return order.gather(1, torch.arange(length)[None] % n_rows[:, None])


def stream_outputs(method, state, x_eval: torch.Tensor, streams: int, key, n_samples: int) -> torch.Tensor:
    """Predictive draws of every stream on its group's inputs.

    ``method``: an ``ensemble`` of ``G * streams`` members (group-major); ``x_eval (G, m, d)``.
    Returns ``(G, streams * n_samples, m, out)``: ``n_samples`` weight draws per stream (one
    dropout-mask key each for keyed methods).
    """
    g, m = x_eval.shape[:2]
    r = g * streams
    k_sample, k_pred = fr.split(key, 2)
    samples = method.sample(state, k_sample, r * n_samples)
    params = tree.map(lambda p: p.reshape(r, n_samples, *p.shape[1:]), samples.params)
    x_r = x_eval.repeat_interleave(streams, 0)
    apply = method.model.apply
    with torch.no_grad():
        if method.keyed:
            keys = fr.split(k_pred, r * n_samples)
            keys = keys.reshape(r, n_samples, *keys.shape[1:])
            out = vmap(vmap(lambda p, k, x: apply(p, x, key=k), in_dims=(0, 0, None)))(params, keys, x_r)
        else:
            out = vmap(vmap(lambda p, x: apply(p, x), in_dims=(0, None)))(params, x_r)
    return out.reshape(g, streams * n_samples, m, out.shape[-1])


def train_streams(method, params, x_train: torch.Tensor, y_train: torch.Tensor, n_train: torch.Tensor,
                  streams: int, key, *, epochs: int, batch_size: int, eval_every: int,
                  on_eval: Callable | None = None, resample: str | None = None,
                  group_weight: torch.Tensor | None = None):
    """Train ``streams`` copies of ``method`` per group, all groups at once.

    ``params``: stacked initial parameters, leading axis ``G * streams`` (group-major);
    ``x_train (G, n_max, d)``, ``y_train (G, n_max)``, ``n_train (G,)``. Every epoch has
    ``ceil(n_max / batch_size)`` steps; stream ``r`` walks its own order over its group's rows.
    ``on_eval(epoch, ens, state)`` runs after every ``eval_every`` epochs and after the last.
    ``resample``: ``ensemble``'s per-member resampling (the toy bootstrap). ``group_weight (G,)``:
    a per-example weight for each group's rows (SG-MCMC built with ``n_data=1`` gets its
    group's training-set size here, so every stream targets its own posterior). Returns ``(ens, state)``.
    """
    g, n_max = x_train.shape[:2]
    r = g * streams
    ens = ensemble(method, r, resample=resample, n_data=n_max if resample else None)
    k_init, k_order, k_step = fr.split(key, 3)
    state = ens.init(k_init, params)
    group_of = torch.arange(g).repeat_interleave(streams)
    n_rows = n_train[group_of]
    steps = math.ceil(n_max / batch_size)
    for epoch in range(epochs):
        order = stream_orders(fr.fold_in(k_order, epoch), n_rows, n_max)
        for i in range(steps):
            idx = order[:, i * batch_size:(i + 1) * batch_size]
            weight = None if group_weight is None else group_weight[group_of][:, None].expand(idx.shape).float()
            batch = Batch(x_train[group_of[:, None], idx], y_train[group_of[:, None], idx], idx, weight)
            state, _ = ens.step(state, batch, fr.fold_in(k_step, epoch * steps + i))
        if on_eval is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            on_eval(epoch + 1, ens, state)
    return ens, state


# --- method configurations ------------------------------------------------------------------------

class MethodConfig(NamedTuple):
    """How one method is trained on UCI data.

    ``streams``: nets (members / chains) per split; ``n_samples``: predictive draws per net
    at each evaluation; ``accumulate``: pool the draws of successive evaluations (SG-MCMC);
    ``burn_in``: fraction of the epochs before the first pooled draw; ``grid``: the
    hyperparameter settings tried (chosen per split on validation data); ``min_steps``,
    ``max_epochs``: epochs = min(max_epochs, ceil(min_steps / steps per epoch)); ``n_evals``:
    evaluations (candidate stopping epochs) after burn-in.
    """
    streams: int
    n_samples: int
    accumulate: bool
    burn_in: float
    grid: tuple
    batch_size: int
    min_steps: int
    max_epochs: int
    n_evals: int


# Sized for a shared 2-core CPU: every setting is one vmapped run over all splits (x2 phases).
_CONFIGS = {
    # deep ensemble (Lakshminarayanan et al. 2017: 5 nets, Adam, B = 100); "map" is its first net
    "ensemble": MethodConfig(5, 1, False, 0.0, ({"lr": 5e-3, "wd": 1e-3}, {"lr": 5e-3, "wd": 1e-2}),
                             100, 1500, 400, 25),
    "map": MethodConfig(1, 1, False, 0.0, ({"lr": 5e-3, "wd": 1e-3}, {"lr": 5e-3, "wd": 1e-2}),
                        100, 1500, 400, 25),
    "mc_dropout": MethodConfig(1, 10, False, 0.0, ({"lr": 5e-3, "p": 0.05, "wd": 1e-4},), 100, 800, 400, 10),
    "bbp": MethodConfig(1, 10, False, 0.0, ({"lr": 1e-2},), 100, 600, 400, 8),
    "sghmc": MethodConfig(1, 1, True, 0.5, ({"lr": 1e-2},), 100, 1000, 400, 20),
    # plain SGLD mixes slowly: 5,000+ steps, the step size chosen on validation
    "sgld": MethodConfig(1, 1, True, 0.5, ({"lr": 1e-2}, {"lr": 3e-2}, {"lr": 1e-1}), 100, 5000, 4000, 20),
}
_CONFIGS["laplace"] = _CONFIGS["map"]
_CONFIGS["ensemble_laplace"] = _CONFIGS["ensemble"]


def method_config(name: str, quick: bool = False, steps_scale: float = 1.0) -> MethodConfig:
    """The UCI configuration of ``name`` (``quick``: one grid point, a few dozen steps;
    ``steps_scale`` multiplies the training steps and epochs, for a smaller CPU budget)."""
    if name not in _CONFIGS:
        raise ValueError(f"unknown regression method {name!r}; valid methods: {', '.join(REGRESSION_METHODS)}")
    cfg = _CONFIGS[name]
    if not steps_scale > 0:
        raise ValueError(f"steps_scale must be > 0, got {steps_scale}")
    if steps_scale != 1.0:
        cfg = cfg._replace(min_steps=max(1, round(cfg.min_steps * steps_scale)),
                           max_epochs=max(1, round(cfg.max_epochs * steps_scale)))
    if quick:
        cfg = cfg._replace(grid=cfg.grid[:1], min_steps=30, max_epochs=6, n_evals=3,
                           n_samples=min(cfg.n_samples, 5))
    return cfg


def epochs_for(cfg: MethodConfig, n_rows: int) -> int:
    steps = math.ceil(n_rows / cfg.batch_size)
    return max(1, min(cfg.max_epochs, math.ceil(cfg.min_steps / steps)))


SAMPLERS = ("sgld", "sghmc")


def build_method(name: str, n_in: int, n_data: int, hp: dict, *, hidden: int = 50, steps_per_epoch: int = 1,
                 burn_in_steps: int = 0):
    """``(model, method)`` for one grid point: a ``hidden``-unit ReLU MLP with a
    heteroscedastic ``[mu, log_sigma]`` head, on standardised data of about ``n_data`` rows.

    The samplers (``SAMPLERS``) are built with ``n_data=1``: their potential is
    ``mean_batch[-w log p(y | x, theta)] - log p(theta)`` with per-example weight ``w`` = the
    training-set size, passed by ``train_streams(group_weight=...)``.
    """
    lik = likelihoods.gaussian()
    if name in ("map", "ensemble", "laplace"):
        model = models.mlp([n_in, hidden, 1], head="hetero")
        return model, map_estimate(model, lik, optim.adam(hp["lr"], weight_decay=hp["wd"]), reduction="mean")
    if name == "mc_dropout":
        model = models.mlp([n_in, hidden, 1], head="hetero", dropout=hp["p"])
        return model, mc_dropout(model, lik, optim.adam(hp["lr"], weight_decay=hp["wd"]), reduction="mean")
    if name == "bbp":
        model = models.mlp([n_in, hidden, 1], head="hetero")
        # mean-reduced ELBO per step: (NLL_sum + KL / M) / B, M = minibatches per epoch
        return model, vi.bbp(model, lik, optim.adam(hp["lr"]), priors.normal(1.0), steps_per_epoch,
                             n_samples=1, reduction="mean", mean_init="model", rho_init=(-6.0, -5.0))
    if name == "sghmc":
        model = models.mlp([n_in, hidden, 1], head="hetero")
        return model, sghmc_sa(model, lik, 1, hp["lr"], burn_in=burn_in_steps, prior_sigma=1.0,
                               alpha0=1.0, beta0=1.0, adaptation="pybnn", clip_std_mul=None)
    if name == "sgld":
        model = models.mlp([n_in, hidden, 1], head="hetero")
        return model, sgld(model, lik, priors.normal(1.0), 1, hp["lr"] / n_data)
    raise ValueError(f"unknown regression method {name!r}; valid methods: {', '.join(REGRESSION_METHODS)}")


# --- one method on a set of splits ---------------------------------------------------------------

def _train_and_score(name: str, cfg: MethodConfig, hp: dict, groups: Groups, key, *, n_in: int,
                     score_sets: dict, keep_params: bool):
    """Train ``cfg.streams`` nets per group on ``groups`` and score every evaluation epoch.

    ``score_sets``: ``{name: number of leading streams pooled}``. Returns
    ``({epoch: {set: (ll (G,), rmse (G,))}}, {epoch: params (G, streams, ...)}, model)``;
    the parameters only with ``keep_params``.
    """
    g, n_max = groups.x_train.shape[:2]
    steps = math.ceil(n_max / cfg.batch_size)
    epochs = epochs_for(cfg, n_max)
    burn_epochs = int(cfg.burn_in * epochs)
    n_data = int(groups.n_train.double().mean().round())
    model, method = build_method(name, n_in, n_data, hp, steps_per_epoch=steps, burn_in_steps=burn_epochs * steps)
    eval_every = max(1, (epochs - burn_epochs) // cfg.n_evals)
    scores, snapshots = {}, {}
    m = groups.x_eval.shape[1]
    acc = {s: mixture_init(g, m) for s in score_sets}
    k_train, k_eval = fr.split(key, 2)

    def on_eval(epoch, ens, state):
        if epoch <= burn_epochs:
            return
        out = stream_outputs(ens, state, groups.x_eval, cfg.streams, fr.fold_in(k_eval, epoch), cfg.n_samples)
        scores[epoch] = {}
        for s, n_streams in score_sets.items():
            base = acc[s] if cfg.accumulate else mixture_init(g, m)
            acc[s] = mixture_add(base, out[:, :n_streams * cfg.n_samples], groups.y_eval)
            scores[epoch][s] = mixture_scores(acc[s], groups.y_eval, groups.eval_mask, groups.y_std)
        if keep_params:
            params = ens.sample(state, fr.key(0), g * cfg.streams).params
            snapshots[epoch] = tree.map(lambda p: p.reshape(g, cfg.streams, *p.shape[1:]).clone(), params)

    params0 = init_members(model, fr.fold_in(k_train, 1), g * cfg.streams)
    train_streams(method, params0, groups.x_train, groups.y_train, groups.n_train, cfg.streams, k_train,
                  epochs=epochs, batch_size=cfg.batch_size, eval_every=eval_every, on_eval=on_eval,
                  group_weight=groups.n_train.double() if name in SAMPLERS else None)
    return scores, snapshots, model


def _index_groups(groups: Groups, sl: slice) -> Groups:
    return Groups(*(t[sl] for t in groups))


def score_splits(name: str, splits: Sequence[tuple], key, *, quick: bool = False, val_fraction: float = 0.2,
                 laplace: bool = False, progress: Callable | None = None, steps_scale: float = 1.0) -> dict:
    """Train and score method ``name`` on raw splits ``[(x_train, y_train, x_test, y_test), ...]``.

    Every split contributes two groups to one vmapped run: a *validation* group, trained on
    ``1 - val_fraction`` of its training rows and scored on the rest, and a *test* group,
    trained on all its training rows and scored on its test rows (each standardised with its
    own training statistics). Per split, the grid point and evaluation epoch with the best
    validation log-likelihood give its test numbers (``select_by_validation``).
    ``"ensemble"`` also reports its first net as ``"map"``; with ``laplace=True`` (or for
    ``"laplace"``) the chosen MAP net gets a K-FAC Laplace (``laplace_scores``), and for
    ``"ensemble"`` every member of the chosen ensemble gets one too: ``"ensemble_laplace"``,
    a mixture of Laplace approximations (Eschenhagen et al. 2021).

    Returns ``{method: {"test_ll": [...], "rmse": [...], "choice": [...]}}``.
    """
    if name == "ensemble_laplace":
        res = score_splits("ensemble", splits, key, quick=quick, val_fraction=val_fraction, laplace=True,
                           progress=progress, steps_scale=steps_scale)
        return {"ensemble_laplace": res["ensemble_laplace"]}
    cfg = method_config(name, quick, steps_scale)
    n_splits, n_in = len(splits), splits[0][0].shape[1]
    val_parts, test_parts = [], []
    for i, (x_tr, y_tr, x_te, y_te) in enumerate(splits):
        fit_idx, val_idx = validation_split(len(y_tr), val_fraction, seed=i)
        val_parts.append(standardize(x_tr[fit_idx], y_tr[fit_idx], x_tr[val_idx], y_tr[val_idx]))
        test_parts.append(standardize(x_tr, y_tr, x_te, y_te))
    groups = stack_groups(val_parts + test_parts)
    if name == "ensemble":
        score_sets = {"ensemble": cfg.streams, "map": 1}
    elif name in ("map", "laplace"):
        score_sets = {"map": 1}
    else:
        score_sets = {name: cfg.streams}
    keep = laplace or name == "laplace"
    val_scores, test_scores, snaps, model = {}, {}, {}, None
    for j, hp in enumerate(cfg.grid):
        if progress:
            progress(f"{name} {hp}: {n_splits} splits x 2 phases x {cfg.streams} nets")
        scores, snaps[j], model = _train_and_score(name, cfg, hp, groups, fr.fold_in(key, j), n_in=n_in,
                                                   score_sets=score_sets, keep_params=keep)
        for e, by_set in scores.items():
            for s, (ll, rmse) in by_set.items():
                val_scores.setdefault(s, {})[(j, e)] = ll[:n_splits]
                test_scores.setdefault(s, {})[(j, e)] = (ll[n_splits:], rmse[n_splits:])
    results = {s: select_by_validation(val_scores[s], test_scores[s], cfg.grid) for s in score_sets}
    if keep:
        choices = results["map"]["choice"]
        params = [tree.index(snaps[c["grid_index"]][c["epoch"]], (n_splits + i, slice(0, 1)))
                  for i, c in enumerate(choices)]
        results["laplace"] = laplace_scores(model, params, test_parts, fr.fold_in(key, 99))
        results["laplace"]["choice"] = choices
        if name == "ensemble":
            choices = results["ensemble"]["choice"]
            params = [tree.index(snaps[c["grid_index"]][c["epoch"]], n_splits + i) for i, c in enumerate(choices)]
            results["ensemble_laplace"] = laplace_scores(model, params, test_parts, fr.fold_in(key, 98))
            results["ensemble_laplace"]["choice"] = choices
    if name == "laplace":
        results.pop("map")
    return results


def select_by_validation(val_ll: dict, test: dict, grid: Sequence[dict]) -> dict:
    """Per split, the candidate ``(grid_index, epoch)`` with the highest validation
    log-likelihood ``val_ll[c] (n_splits,)``, and its test numbers ``test[c] = (ll, rmse)``.
    Candidates missing from ``test`` are skipped."""
    cands = [c for c in val_ll if c in test]
    if not cands:
        raise ValueError("select_by_validation: no candidate has both validation and test scores")
    vals = torch.stack([val_ll[c] for c in cands])                 # (C, n_splits)
    vals = torch.where(torch.isnan(vals), torch.full_like(vals, -math.inf), vals)
    best = vals.argmax(0)
    out = {"test_ll": [], "rmse": [], "choice": []}
    for i, b in enumerate(best.tolist()):
        j, e = cands[b]
        out["test_ll"].append(float(test[(j, e)][0][i]))
        out["rmse"].append(float(test[(j, e)][1][i]))
        out["choice"].append({"grid_index": j, **grid[j], "epoch": e, "val_ll": float(vals[b, i])})
    return out


def laplace_scores(model, params: list, splits: Sequence[UCISplit], key, *, n_samples: int = 100) -> dict:
    """K-FAC Laplace (GGN) around each net of each split; prior precision by each net's Laplace
    marginal likelihood on the training rows; GLM predictive ``f ~ N(f*, J Sigma J')`` on the
    test rows, scored as an equal-weight mixture of ``n_samples`` Gaussians per net.

    ``params[i]``: the nets of split ``i`` stacked on a leading axis ``(K, ...)`` (``K = 1``: a
    Laplace around one MAP net; ``K > 1``: a mixture of Laplace approximations around an
    ensemble's members). Returns ``{"test_ll": [...], "rmse": [...], "prior_precision": [[...]]}``.
    """
    lik = likelihoods.gaussian()
    out = {"test_ll": [], "rmse": [], "prior_precision": []}
    for i, (nets, s) in enumerate(zip(params, splits)):
        acc, taus = mixture_init(1, s.x_test.shape[0]), []
        la = la_mod.kfac_laplace(model, lik, n_data=s.x_train.shape[0])
        for k in range(tree.leaves(nets)[0].shape[0]):
            state = la_mod.fit_laplace(la, tree.index(nets, k), (s.x_train, s.y_train), batch_size=256)
            tau = la.optimize_prior_precision(state, bounds=(1e-4, 1e4))
            mean, cov = la.glm_predictive(state, s.x_test, prior_precision=tau)
            chol = torch.linalg.cholesky(cov.double() + 1e-9 * torch.eye(cov.shape[-1], dtype=torch.float64))
            z = fr.normal(fr.fold_in(fr.fold_in(key, i), k), (n_samples,) + tuple(mean.shape), dtype=torch.float64)
            f = mean.double() + torch.einsum("bkl,sbl->sbk", chol, z)       # (S, m, 2)
            acc = mixture_add(acc, f[None], s.y_test[None])
            taus.append(float(tau))
        ll, rmse = mixture_scores(acc, s.y_test[None], torch.ones(1, s.x_test.shape[0], dtype=torch.bool),
                                  torch.tensor([s.y_std], dtype=torch.float64))
        out["test_ll"].append(float(ll[0]))
        out["rmse"].append(float(rmse[0]))
        out["prior_precision"].append(taus)
    return out


def uci_method_runs(methods: Sequence[str]) -> list[tuple[str, bool]]:
    """Training runs that cover ``methods``: ``(run_method, with_laplace)``. One ensemble run
    also gives "map" (its first net) and, if asked, "laplace" around that net and
    "ensemble_laplace" around every member."""
    wanted = list(dict.fromkeys(methods))
    shared = ("ensemble", "map", *_LAPLACE_METHODS)
    runs = []
    if any(m in wanted for m in shared):
        needs_ensemble = "ensemble" in wanted or "ensemble_laplace" in wanted
        base = "ensemble" if needs_ensemble else ("map" if "map" in wanted else "laplace")
        runs.append((base, any(m in wanted for m in _LAPLACE_METHODS)))
    runs += [(m, False) for m in wanted if m not in shared]
    return runs


# --- 1-D toy regression (SPEC §5.1, §5.3) ---------------------------------------------------------

TOY_METHODS = ("ensemble", "mc_dropout", "bbp", "sgld", "sghmc", "laplace", "evidential")

# name: (grid point, streams, full-batch steps, burn-in steps, predictive draws per stream)
_TOY = {
    "ensemble": ({"lr": 1e-2, "wd": 1e-4}, 5, 500, 0, 1),
    "mc_dropout": ({"lr": 1e-2, "wd": 1e-4, "p": 0.1}, 1, 600, 0, 100),
    "bbp": ({"lr": 1e-2}, 1, 600, 0, 100),
    "sgld": ({"lr": 2.5e-2}, 2, 1200, 400, 1),
    "sghmc": ({"lr": 1e-2}, 2, 1200, 400, 1),
    "laplace": ({"lr": 1e-2, "wd": 1e-4}, 1, 600, 0, 100),
    "evidential": ({"lr": 5e-3}, 1, 600, 0, 1),
}


def toy_bands(name: str, x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor, key, *, quick: bool = False,
              hidden: int = 50) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit method ``name`` full-batch to 1-D data ``x (n, 1)``, ``y (n,)`` and return its predictive
    on ``grid (m, 1)`` as ``(mean, aleatoric std, epistemic std)``, each ``(m,)``.

    Ensembles use a bootstrap resample (80 %) per member, as the seed's toy notebooks; SG-MCMC
    runs parallel chains and keeps a draw every 100 steps after burn-in; Laplace is K-FAC around
    one MAP net with the marginal-likelihood prior precision and the GLM predictive.
    """
    if name not in _TOY:
        raise ValueError(f"unknown toy method {name!r}; valid methods: {', '.join(TOY_METHODS)}")
    hp, streams, steps, burn_in, n_samples = _TOY[name]
    if quick:
        steps, burn_in = max(steps // 20, 20), burn_in // 20
    n = x.shape[0]
    k_init, k_train, k_eval = fr.split(key, 3)
    if name == "evidential":
        model = models.mlp([1, hidden, 4])
        method = evidential_regression(model, optim.adam(hp["lr"]))
    else:
        model, method = build_method("map" if name == "laplace" else name, 1, n, {"wd": 0.0, **hp},
                                     hidden=hidden, steps_per_epoch=1, burn_in_steps=burn_in)
    draws = []

    def on_eval(step, ens, state):
        if step > burn_in:
            draws.append(stream_outputs(ens, state, grid[None], streams, fr.fold_in(k_eval, step), n_samples)[0])

    every = 20 if name in SAMPLERS and not quick else steps
    ens, state = train_streams(method, init_members(model, k_init, streams), x[None], y[None], torch.tensor([n]),
                               streams, k_train, epochs=steps, batch_size=n, eval_every=every, on_eval=on_eval,
                               resample="bootstrap" if name == "ensemble" else None,
                               group_weight=torch.tensor([float(n)]) if name in SAMPLERS else None)
    if name == "evidential":
        return nig_bands(draws[-1][0])
    if name == "laplace":
        params = tree.map(lambda p: p[0], ens.sample(state, fr.key(0), 1).params)
        la = la_mod.kfac_laplace(model, likelihoods.gaussian(), n_data=n)
        la_state = la_mod.fit_laplace(la, params, (x, y), batch_size=n)
        tau = la.optimize_prior_precision(la_state, bounds=(1e-4, 1e4))
        mean, cov = la.glm_predictive(la_state, grid, prior_precision=tau)
        chol = torch.linalg.cholesky(cov.double() + 1e-9 * torch.eye(cov.shape[-1], dtype=torch.float64))
        z = fr.normal(k_eval, (n_samples,) + tuple(mean.shape), dtype=torch.float64)
        return gaussian_bands((mean.double() + torch.einsum("bkl,sbl->sbk", chol, z)).float())
    return gaussian_bands(torch.cat(draws) if name in SAMPLERS else draws[-1])
