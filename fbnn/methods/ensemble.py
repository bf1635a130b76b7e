"""Ensembles and parallel chains: any method, ``n`` members, trained together with ``vmap``.

``ensemble(method, n)`` vmaps ``method.init`` and ``method.step`` over members with
per-member keys. With ``batches="independent"`` (the default) every member has its own
minibatch stream: ``step`` takes batches with a leading member axis ``(n, B, ...)``,
which ``fit`` draws from ``n`` independent shuffles, as if each member were trained on
its own. ``batches="shared"`` feeds every member the same minibatch ``(B, ...)``
(cheaper to index, but the members' gradient noise is then correlated). Resampling
gives each member its own data, drawn at ``init``:
- ``"bernoulli"``: keep each training example with probability ``fraction`` (the seed's
  MNIST "bootstrap", SPEC 3.2: a subsample without replacement);
- ``"bootstrap"``: counts of a with-replacement resample of ``round(fraction * n_data)``
  draws (the regression notebooks' bootstrap).
By default a member sees every example, weighted 0/1 (or by its count), in batches of the
whole training set. ``batches="subset"`` instead has each member iterate over its own
examples only, in full batches (the seed's ``SubsetRandomSampler``: about 375 steps of 128
per MNIST epoch at fraction 0.8, against 469 batches holding about 102 kept examples each);
``fit`` pads the member that runs out first with weight-0 rows and ``step`` leaves a member
whose batch is all padding unchanged. With the summed loss (the seed's) a padded batch is
exactly its real rows; a ``"mean"`` or ``"dataset"`` reduction divides by ``B`` padding included.
Nothing here knows what the inner method is: the same transform gives a deep ensemble
of MAP nets, or parallel SG-MCMC chains.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.func import vmap

from .. import random as fr
from .. import tree
from . import base

__all__ = ["EnsembleState", "ensemble", "init_members"]

RESAMPLING = (None, "bernoulli", "bootstrap")
BATCHES = ("independent", "shared", "subset")


class EnsembleState(NamedTuple):
    members: Any            # the inner method's state, every leaf with a leading axis n
    weights: torch.Tensor   # (n, n_data) per-member example weights; (n, 0) without resampling


def init_members(model, key, n: int):
    """``n`` independently initialised parameter sets, stacked: ``leaf -> (n, ...)``."""
    return vmap(model.init)(fr.split(key, n))


def _resample_weights(key, n, n_data, resample, fraction):
    if resample is None:
        return torch.zeros(n, 0)
    keys = fr.split(key, n)
    if resample == "bernoulli":
        return torch.stack([fr.bernoulli(k, fraction, (n_data,)).float() for k in keys])
    draws = max(1, round(fraction * n_data))
    return torch.stack([torch.bincount(fr.randint(k, n_data, (draws,)), minlength=n_data).float()
                        for k in keys])


def ensemble(method: base.Method, n: int, *, resample: str | None = None, n_data: int | None = None,
             fraction: float = 0.8, batches: str = "independent") -> base.Method:
    """``n`` members of ``method`` trained side by side (see module docstring).

    ``init(key, params)`` takes stacked parameters (leading axis ``n``, e.g. from
    ``init_members``). ``step`` returns the inner info with a leading axis ``n``.
    ``sample(state, key, m)`` draws ``m / n`` samples from every member (``m`` must be a
    multiple of ``n``) and returns them member-major along one axis of size ``m``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"ensemble: n must be a positive int, got {n!r}")
    if batches not in BATCHES:
        raise ValueError(f"ensemble: unknown batches {batches!r}; choose one of {BATCHES}")
    if method.streams is not None:
        raise ValueError("ensemble: the inner method already takes stacked minibatch streams "
                         "(an ensemble with batches='independent'); nest with batches='shared'")
    independent = batches != "shared"
    if resample not in RESAMPLING:
        raise ValueError(f"ensemble: unknown resample {resample!r}; choose one of {RESAMPLING}")
    if batches == "subset" and resample is None:
        raise ValueError("ensemble: batches='subset' iterates over each member's resampled examples; "
                         "it needs resample='bernoulli' or 'bootstrap'")
    if resample is not None:
        if n_data is None or n_data < 1:
            raise ValueError("ensemble: resampling needs n_data, the training-set size")
        if not 0.0 < fraction <= (1.0 if resample == "bernoulli" else float("inf")):
            raise ValueError(f"ensemble: fraction must be in (0, 1] for bernoulli and > 0 for "
                             f"bootstrap, got {fraction}")

    member_init = vmap(method.init)

    def member_step(state, x, y, idx, weight, key):
        return method.step(state, base.Batch(x, y, idx, weight), key)

    def step_members(members, x, y, idx, weight, keys, weight_dim):
        data_dim = 0 if independent else None
        dims = (0, data_dim, data_dim, None if idx is None else data_dim,
                None if weight is None else weight_dim, 0)
        return vmap(member_step, in_dims=dims)(members, x, y, idx, weight, keys)

    def init(key, params):
        lead = {leaf.shape[0] for leaf in tree.leaves(params)}
        if lead != {n}:
            raise ValueError(f"ensemble.init: params must be stacked with a leading axis of size {n} "
                             f"(see init_members), got leading sizes {sorted(lead)}")
        k_init, k_weights = fr.split(key, 2)
        members = member_init(fr.split(k_init, n), params)
        return EnsembleState(members, _resample_weights(k_weights, n, n_data, resample, fraction))

    def check_batch(batch):
        if independent and (batch.x.dim() < 2 or batch.x.shape[0] != n or batch.y.shape[0] != n):
            raise ValueError(f"ensemble(batches='independent').step: expected per-member batches with a "
                             f"leading axis of size {n} (x (n, B, ...)), as fit builds them, got x of "
                             f"shape {tuple(batch.x.shape)}; use batches='shared' to feed one batch to all")

    def step_subset(state, batch, keys):
        if batch.weight is None or tuple(batch.weight.shape) != tuple(batch.idx.shape):
            raise ValueError("ensemble(batches='subset').step: needs batch.weight (n, B), the padding "
                             "mask fit builds from method.subsets (1 = an example, 0 = padding)")
        members, info = step_members(state.members, batch.x, batch.y, batch.idx, batch.weight, keys, 0)
        active = batch.weight.sum(1) > 0
        if not bool(active.all()):
            def keep_idle(new, old):
                return torch.where(active.view(-1, *([1] * (new.dim() - 1))), new, old)
            members = tree.map(keep_idle, members, state.members)
        return EnsembleState(members, state.weights), info

    def step(state, batch, key):
        check_batch(batch)
        keys = fr.split(key, n)
        if batches == "subset":
            return step_subset(state, batch, keys)
        if resample is None:
            members, info = step_members(state.members, batch.x, batch.y, batch.idx, batch.weight, keys,
                                         0 if independent else None)
        else:
            if batch.idx is None:
                raise ValueError("ensemble with resampling needs batch.idx (dataset indices)")
            weight = (torch.gather(state.weights, 1, batch.idx) if independent
                      else state.weights[:, batch.idx])
            if batch.weight is not None:
                weight = weight * batch.weight
            members, info = step_members(state.members, batch.x, batch.y, batch.idx, weight, keys, 0)
        return EnsembleState(members, state.weights), info

    def sample(state, key, m):
        if m % n:
            raise ValueError(f"ensemble.sample: the number of samples ({m}) must be a multiple of "
                             f"the number of members ({n})")
        per_member = vmap(lambda s, k: method.sample(s, k, m // n))(state.members, fr.split(key, n))
        return tree.map(lambda x: x.reshape(m, *x.shape[2:]), per_member)

    def check(state, x, y):
        method.check(tree.index(state.members, 0), x, y)

    def subsets(state):
        rows = torch.arange(state.weights.shape[1])
        return [rows.repeat_interleave(w.long()) for w in state.weights]

    return base.Method(init, step, sample, check, method.model, method.keyed, f"ensemble({method.name})",
                       n if independent else None, subsets if batches == "subset" else None)
