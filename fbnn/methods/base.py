"""The method contract shared by every inference method.

A ``Method`` is a bundle of pure functions:
- ``init(key, params) -> state``;
- ``step(state, batch, key) -> (state, info)`` for one minibatch ``Batch(x, y, idx, weight)``;
  ``info`` is a dict of tensors and always holds ``"loss"``;
- ``sample(state, key, n) -> Samples``: ``n`` posterior draws, a params pytree with a
  leading axis ``n`` plus the model state (BatchNorm buffers) with the same axis;
- ``check(state, x, y)``: raises ``ValueError`` naming what is wrong with a dataset for
  this model (input shape, NaN, label range);
- ``keyed``: whether predictions from ``sample``'s draws need a key per draw
  (MC dropout's masks);
- ``model``, ``name``;
- ``streams``: ``None`` for a method whose ``step`` takes one plain batch ``x (B, ...)``
  (a single method, ``ensemble(..., batches="shared")``); else the number of independent
  minibatch streams it consumes, stacked along a leading axis, ``x (streams, B, ...)``,
  which ``fit`` builds from that many independent shuffles.
  ``ensemble(..., batches="independent")`` has one per member, a one-member ensemble too;
- ``subsets``: ``None``, or ``subsets(state) -> [(n_s,), ...]``, one index tensor per
  stream: the examples that stream trains on (repeats allowed). ``fit`` then shuffles
  each stream's own examples every epoch, takes full batches of them, and pads the
  streams that run out first with weight-0 rows (``ensemble(..., batches="subset")``).
Methods never know the architecture: they see ``model.apply_train`` and
``likelihood.log_lik``, so any model from ``from_module`` works with every method.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import torch

from .. import priors as fp
from .. import tree

__all__ = ["Method", "Batch", "Samples", "expand_samples", "check_data", "data_log_lik",
           "REDUCTIONS"]

REDUCTIONS = ("sum", "mean", "dataset")


class Batch(NamedTuple):
    """A minibatch: inputs ``(B, ...)``, targets ``(B, ...)``, dataset indices ``(B,)``
    and optional per-example weights ``(B,)`` (bootstrap counts, subsample masks)."""
    x: torch.Tensor
    y: torch.Tensor
    idx: Optional[torch.Tensor] = None
    weight: Optional[torch.Tensor] = None


class Samples(NamedTuple):
    """Posterior draws: ``params`` and ``model_state`` with a leading sample axis ``S``."""
    params: Any
    model_state: Any


class Method(NamedTuple):
    init: Callable
    step: Callable
    sample: Callable
    check: Callable
    model: Any
    keyed: bool
    name: str
    streams: Optional[int] = None
    subsets: Optional[Callable] = None


def expand_samples(params, model_state, n: int) -> Samples:
    """``n`` views of one parameter set (no copy): ``leaf (...) -> (n, ...)``."""
    def rep(x):
        return x.unsqueeze(0).expand(n, *x.shape)
    return Samples(tree.map(rep, params), tree.map(rep, model_state))


def _check_reduction(reduction: str, n_data, prior, who: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{who}: unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    if (reduction == "dataset" or prior is not None) and (n_data is None or n_data < 1):
        raise ValueError(f"{who}: n_data (the training-set size) is required with "
                         f"reduction='dataset' or a prior, got {n_data!r}")


def data_log_lik(log_lik: torch.Tensor, batch: Batch, reduction: str, n_data: int | None) -> torch.Tensor:
    """Reduce per-example log-likelihoods ``(B,)`` (weighted by ``batch.weight``).

    ``sum``: the seed's summed loss; ``mean``: its batch mean; ``dataset``: ``n_data``
    times the mean, the unbiased full-data estimate (SG-MCMC's convention, SPEC 1.3).
    """
    if batch.weight is not None:
        log_lik = log_lik * batch.weight
    total = log_lik.sum()
    if reduction == "sum":
        return total
    mean = total / log_lik.shape[0]
    return mean if reduction == "mean" else n_data * mean


def prior_weight(reduction: str, batch_size: int, n_data: int | None) -> float:
    """Weight of ``log p(theta)`` that keeps the loss proportional to the full posterior."""
    if reduction == "dataset":
        return 1.0
    return (batch_size if reduction == "sum" else 1.0) / n_data


def neg_log_joint(model, likelihood, prior, reduction, n_data):
    """``(params, model_state, batch, key) -> (loss, new_model_state)`` for a minibatch."""
    def loss_fn(params, model_state, batch, key):
        out, new_state = model.apply_train(params, model_state, batch.x, key=key)
        loss = -data_log_lik(likelihood.log_lik(out, batch.y), batch, reduction, n_data)
        if prior is not None:
            loss = loss - prior_weight(reduction, batch.x.shape[0], n_data) * fp.log_prior(prior, params)
        return loss, new_state
    return loss_fn


def check_data(model, likelihood, params, model_state, x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ``ValueError`` naming what is wrong with ``(x, y)`` for this model."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("data: x and y must be tensors")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"data: x has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("data: the dataset is empty")
    if x.is_floating_point():
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        if bad.any():
            rows = torch.nonzero(bad).flatten()
            raise ValueError(f"data: inputs contain NaN or inf in {rows.numel()} row(s), "
                             f"first at row {int(rows[0])}")
    try:
        out = model.apply(params, x[:2], state=model_state)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"data: inputs of shape {tuple(x.shape)} do not fit the model "
                         f"{getattr(model, 'name', '')!r}: {err}") from err
    likelihood.check(out, y)
