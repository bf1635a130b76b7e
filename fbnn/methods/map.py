"""Point estimates: MAP (maximum a posteriori) and MC dropout.

Both minimise ``-log p(y | x, theta) - w log p(theta)`` over minibatches with a
stateless optimizer (``fbnn.optim``); ``w`` keeps the loss proportional to the full
posterior for the chosen reduction (``base.prior_weight``). The seed's MAP uses the
summed cross-entropy and puts its Gaussian prior in SGD's ``weight_decay`` instead
(SPEC 1.3); both routes are available. MC dropout (Gal & Ghahramani 2016) is the same
optimisation on a model with dropout; its posterior draws are dropout masks, so its
samples share one parameter set and predictions take one key per draw.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.func import grad

from .. import optim as fo
from . import base

__all__ = ["MapState", "map_estimate", "mc_dropout"]


class MapState(NamedTuple):
    params: Any
    opt_state: Any
    model_state: Any
    count: torch.Tensor


def _point_method(model, likelihood, optimizer, prior, n_data, reduction, keyed, name):
    base._check_reduction(reduction, n_data, prior, name)
    loss_fn = base.neg_log_joint(model, likelihood, prior, reduction, n_data)

    def loss_with_aux(params, model_state, batch, key):
        loss, new_model_state = loss_fn(params, model_state, batch, key)
        return loss, (loss, new_model_state)

    grad_fn = grad(loss_with_aux, has_aux=True)

    def init(key, params):
        return MapState(params, optimizer.init(params), model.init_state(),
                        torch.zeros((), dtype=torch.int64))

    def step(state, batch, key):
        grads, (loss, model_state) = grad_fn(state.params, state.model_state, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = fo.apply_updates(state.params, updates)
        return MapState(params, opt_state, model_state, state.count + 1), {"loss": loss.detach()}

    def sample(state, key, n):
        return base.expand_samples(state.params, state.model_state, n)

    def check(state, x, y):
        base.check_data(model, likelihood, state.params, state.model_state, x, y)

    return base.Method(init, step, sample, check, model, keyed, name)


def map_estimate(model, likelihood, optimizer, *, prior=None, n_data=None, reduction="sum"):
    """MAP: one parameter set; ``sample`` returns ``n`` views of it.

    ``reduction``: ``"sum"`` (the seed's), ``"mean"`` or ``"dataset"`` (see ``base.data_log_lik``).
    ``prior`` (``fbnn.priors``) needs ``n_data``. The key passed to ``step`` drives any
    stochastic layer of the model (dropout), so MAP on a dropout net trains with dropout.
    """
    return _point_method(model, likelihood, optimizer, prior, n_data, reduction, False, "map")


def mc_dropout(model, likelihood, optimizer, *, prior=None, n_data=None, reduction="sum"):
    """MC dropout: trained like MAP with dropout active (a fresh mask from each step's key);
    ``sample`` returns views of the one parameter set and ``keyed=True`` tells the
    predictive to give each draw its own key, i.e. its own dropout masks."""
    return _point_method(model, likelihood, optimizer, prior, n_data, reduction, True, "mc_dropout")
