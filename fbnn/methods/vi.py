"""Mean-field Gaussian variational inference: Bayes by Backprop and its estimators.

q(theta) = prod N(mu, sigma^2) over every variational scalar, sigma = 1e-6 + softplus(rho)
(softplus with threshold 20, SPEC 2). Per minibatch ``i`` of an epoch of ``M`` minibatches
the loss is the seed's (SPEC 3.3.1),

    L = (1/S) sum_s [ sum_{b in batch} -log p(y_b | x_b, theta_s) + T pi_i KL_s ],

with ``S`` ELBO samples drawn through ``vmap``, KL weight ``pi_i = 1/M`` (uniform, the
seed's) or Blundell's geometric ``2^(M-i) / (2^M - 1)``, and temperature ``T``. ``KL_s``
is the closed form ``KL(q || p)`` where the prior has one, or the seed's Monte Carlo
estimate ``log q(theta_s) - log p(theta_s)`` (the weight draws are made outside the
``vmap`` and every ``log p`` is evaluated per sample on plain tensors). Summed over an
epoch the expected loss is the negative ELBO when ``T = 1`` and the weights sum to 1.

Estimators of the data term (``variational(model, estimator=...)``):
- ``"sample"``: one weight draw per ELBO sample, shared by the whole minibatch (the seed's);
- ``"lrt"``: local reparametrisation (Kingma, Salimans & Welling 2015, SPEC 3.4): every
  ``F.linear``/``F.conv*d`` call whose weight is variational returns
  ``A_mu + sqrt(A_var) * eps`` with ``A_mu = layer(x, mu_W, mu_b)``,
  ``A_var = layer(x^2, sigma_W^2, sigma_b^2)`` and ``eps`` per example and unit;
- ``"flipout"`` (Wen et al. 2018): ``layer(x, mu) + layer(x * s_in, dW) * s_out`` with
  ``dW = sigma * eps`` shared by the batch and random signs ``s_in``, ``s_out`` per example.
Both work on any model (``models.mlp``, ``models.from_module``) without module surgery:
the model runs under a ``torch.overrides.TorchFunctionMode`` that recognises the mean
tensors by identity (it composes with ``grad`` and ``vmap``). Which tensors are layer
weights is found once, by recording the layer calls of one forward pass; every other
variational tensor (norm-layer scales, say) is weight-sampled.

A ``deterministic`` filter keeps chosen tensors as point estimates (``norm_params(module)``
picks normalisation layers): they are trained by the same optimizer, with an optional
``point_prior`` weighted like the KL (MAP inside the ELBO).

The state is ``ViState(mean, rho, opt_state, model_state, count)``: ``mean`` has the
params' structure (variational means and point values), ``rho`` is a dict ``{name: rho}``
over the variational tensors (names as ``priors.leaf_names``), and the optimizer works on
the pytree ``{"mean": mean, "rho": rho}``.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import grad, vmap
from torch.overrides import TorchFunctionMode

from .. import optim as fo
from .. import priors as fp
from .. import random as fr
from .. import tree
from ..models import Model
from . import base

__all__ = ["ViState", "VariationalModel", "variational", "bbp", "norm_params", "std_from_rho",
           "rho_from_std", "posterior_mean", "posterior_std", "sample_chunks", "stochastic_forward",
           "kl_divergence", "kl_weight", "bayesify", "variational_names", "ESTIMATORS", "KL_ESTIMATORS",
           "KL_SCHEDULES", "KL_REDUCTIONS", "MEAN_INITS"]

ESTIMATORS = ("sample", "lrt", "flipout")
KL_ESTIMATORS = ("auto", "closed", "mc", "mc_entropy")
KL_SCHEDULES = ("uniform", "geometric")
KL_REDUCTIONS = ("sum", "mean")
MEAN_INITS = ("uniform", "zero", "model")

SIGMA_FLOOR = 1e-6         # sigma = 1e-6 + softplus(rho)
_SOFTPLUS_THRESHOLD = 20.0
_VAR_FLOOR = 1e-16         # inside the LRT sqrt: finite gradients when an input row is all zero
_LOG_2PI = math.log(2 * math.pi)


class ViState(NamedTuple):
    mean: Any                # params pytree: variational means and deterministic point values
    rho: dict                # {name: tensor} for the variational tensors
    opt_state: Any           # the optimizer's state over {"mean": mean, "rho": rho}
    model_state: Any         # BatchNorm buffers ({} for stateless models)
    count: torch.Tensor      # () int64, steps taken


class VariationalModel(NamedTuple):
    model: Model
    deterministic: Any       # None, a predicate name -> bool, or a pytree of bools (True: point estimate)
    estimator: str
    shared_bias_noise: bool
    name: str


# --- sigma parametrisation ------------------------------------------------------------------

def std_from_rho(rho: torch.Tensor) -> torch.Tensor:
    """``1e-6 + softplus(rho)`` (identity above rho = 20)."""
    return SIGMA_FLOOR + F.softplus(rho, beta=1.0, threshold=_SOFTPLUS_THRESHOLD)


def rho_from_std(std, like: torch.Tensor | None = None) -> torch.Tensor:
    """The inverse of ``std_from_rho`` (computed in float64): ``rho = log(expm1(std - 1e-6))``.

    ``std`` a float or tensor (> 1e-6); with ``like`` a float becomes a full tensor like it."""
    s = torch.as_tensor(std, dtype=torch.float64) - SIGMA_FLOOR
    if not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError(f"rho_from_std: std must be finite and > {SIGMA_FLOOR:g}, got {std!r}")
    rho = torch.where(s > _SOFTPLUS_THRESHOLD, s, torch.log(torch.expm1(s)))
    if like is not None:
        return torch.full_like(like, float(rho)) if rho.dim() == 0 else rho.to(like.dtype)
    return rho.to(torch.float32)


# --- which tensors are variational -----------------------------------------------------------

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def norm_params(module: nn.Module) -> Callable[[str], bool]:
    """A ``deterministic`` filter: ``name -> True`` for the parameters of normalisation
    layers (BatchNorm, InstanceNorm, LayerNorm, GroupNorm) of ``module``, named as
    ``models.from_module(module)`` names them."""
    names = {f"{mod_name}.{p_name}" if mod_name else p_name
             for mod_name, mod in module.named_modules() if isinstance(mod, _NORM_LAYERS)
             for p_name, _ in mod.named_parameters(recurse=False)}
    return lambda name: name in names


def _deterministic_flags(deterministic, params) -> list:
    names = fp.leaf_names(params)
    if deterministic is None:
        return [False] * len(names)
    if callable(deterministic):
        return [bool(deterministic(n)) for n in names]
    flat, spec = tree.flatten(deterministic)
    if spec != tree.structure(params) or not all(isinstance(f, bool) for f in flat):
        raise ValueError("variational: deterministic must be None, a predicate on parameter names, "
                         "or a pytree of bools with the structure of the params")
    return list(flat)


def variational_names(vmodel: VariationalModel, params) -> list:
    """Names of the variational tensors of ``params`` (those the filter does not keep deterministic)."""
    return [n for n, d in zip(fp.leaf_names(params), _deterministic_flags(vmodel.deterministic, params))
            if not d]


def variational(model: Model, *, deterministic=None, estimator: str = "sample",
                shared_bias_noise: bool = False) -> VariationalModel:
    """A model made variational for ``bbp`` (no module surgery; see the module docstring).

    ``deterministic``: ``None`` (every tensor variational), a predicate ``name -> bool``
    (True keeps the tensor a point estimate; e.g. ``norm_params(module)``) or a pytree of
    bools with the params' structure. ``estimator``: ``"sample"``, ``"lrt"`` or
    ``"flipout"``. ``shared_bias_noise`` (LRT only): the seed's quirk of one bias noise
    ``(out,)`` shared by the whole minibatch (SPEC 3.4); default per example (the paper).
    """
    if not isinstance(model, Model):
        raise ValueError(f"variational: expected an fbnn.models.Model, got {type(model).__name__}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"variational: unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    if shared_bias_noise and estimator != "lrt":
        raise ValueError("variational: shared_bias_noise applies to estimator='lrt' only")
    if deterministic is not None and not callable(deterministic) and not tree.leaves(deterministic):
        raise ValueError("variational: deterministic must be None, a predicate or a pytree of bools")
    suffix = {"sample": "", "lrt": "_lrt", "flipout": "_flipout"}[estimator]
    return VariationalModel(model, deterministic, estimator, bool(shared_bias_noise), "bbp" + suffix)


# --- intercepting layer calls ------------------------------------------------------------------

_LAYER_FUNCS = {F.linear: 0, F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}  # value: spatial dims


def _layer_args(args, kwargs):
    """``(input, weight, bias, rest_args, rest_kwargs)`` of a ``linear``/``conv`` call."""
    names = ("input", "weight", "bias")
    vals = list(args[:3]) + [None] * (3 - min(len(args), 3))
    for i, n in enumerate(names):
        if n in kwargs:
            vals[i] = kwargs[n]
    rest_kwargs = {k: v for k, v in kwargs.items() if k not in names}
    return vals[0], vals[1], vals[2], tuple(args[3:]), rest_kwargs


class _Recorder(TorchFunctionMode):
    """Records ``(weight_name, bias_name)`` of every layer call on known tensors."""

    def __init__(self, names_by_id: dict):
        super().__init__()
        self.names_by_id, self.calls = names_by_id, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LAYER_FUNCS:
            _, w, b, _, _ = _layer_args(args, kwargs)
            if id(w) in self.names_by_id:
                self.calls.append((self.names_by_id[id(w)], self.names_by_id.get(id(b)) if b is not None
                                   else None))
        return func(*args, **kwargs)


class _LayerNoise(TorchFunctionMode):
    """Replaces layer calls on variational mean weights by the LRT or Flipout computation.

    ``weights``/``biases``: ``{id(mean tensor): (std, eps)}`` (``eps`` the tensor's weight
    noise, used by Flipout). Call ``c`` draws its noise from the two keys ``keys[c]``.
    """

    def __init__(self, estimator, weights, biases, keys, shared_bias_noise):
        super().__init__()
        self.estimator, self.weights, self.biases = estimator, weights, biases
        self.keys, self.shared_bias_noise, self.calls = keys, shared_bias_noise, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _LAYER_FUNCS:
            return func(*args, **kwargs)
        x, w, b, rest, rest_kw = _layer_args(args, kwargs)
        if id(w) not in self.weights:
            return func(*args, **kwargs)
        if self.calls >= self.keys.shape[0]:
            raise ValueError(f"{self.estimator}: the model made more layer calls on variational weights "
                             f"than its first forward pass ({self.keys.shape[0]}); its layers must not "
                             "depend on the data")
        key = self.keys[self.calls]
        self.calls += 1
        w_std, w_eps = self.weights[id(w)]
        b_std, b_eps = self.biases.get(id(b), (None, None)) if b is not None else (None, None)
        layer = (lambda inp, weight, bias=None: func(inp, weight, bias, *rest, **rest_kw))
        if self.estimator == "lrt":
            return self._lrt(layer, func, x, w, b, w_std, b_std, key)
        return self._flipout(layer, func, x, w, b, w_std * w_eps,
                             None if b_std is None else b_std * b_eps, key)

    def _lrt(self, layer, func, x, w, b, w_std, b_std, key):
        k_out, k_bias = key[0], key[1]
        shared = self.shared_bias_noise and b_std is not None
        mean = layer(x, w, b)
        var_bias = None if (b_std is None or shared) else b_std ** 2
        var = layer(x * x, w_std ** 2, var_bias)
        out = mean + torch.sqrt(var + _VAR_FLOOR) * fr.normal(k_out, mean.shape, mean.dtype)
        if shared:
            # the seed's bias noise: one draw (out,) for the whole minibatch (SPEC 3.4)
            spatial = _LAYER_FUNCS[func]
            noise = b_std * fr.normal(k_bias, b_std.shape, b_std.dtype)
            out = out + noise.reshape(noise.shape + (1,) * spatial)
        return out

    def _flipout(self, layer, func, x, w, b, dw, db, key):
        k_in, k_out = key[0], key[1]
        spatial = _LAYER_FUNCS[func]
        mean = layer(x, w, b)
        lead = x.shape[:x.dim() - spatial]               # (..., in) / (..., C_in)
        s_in = _signs(k_in, lead, x.dtype).reshape(lead + (1,) * spatial)
        out_lead = mean.shape[:mean.dim() - spatial]     # (..., out) / (..., C_out)
        s_out = _signs(k_out, out_lead, x.dtype).reshape(out_lead + (1,) * spatial)
        pert = layer(x * s_in, dw)
        if db is not None:  # the bias as the weight of a constant input (its sign folds into s_out)
            pert = pert + db.reshape(db.shape + (1,) * spatial)
        return mean + pert * s_out


def _signs(key, shape, dtype) -> torch.Tensor:
    return fr.bernoulli(key, 0.5, shape).to(dtype) * 2 - 1


# --- the variational forward pass ---------------------------------------------------------------

class _Plan(NamedTuple):
    """Static facts about a model's variational tensors (computed once per method)."""
    names: list              # all leaf names, in tree.leaves order
    variational: list        # bool per leaf
    layer_weights: frozenset  # names handled by LRT/Flipout as layer weights
    layer_biases: frozenset   # names handled as the biases of those layers
    n_calls: int              # layer calls on variational weights per forward pass


def _discover_layers(vmodel, plan_names, flags, mean, model_state, x):
    """Layer calls of one forward pass: which variational tensors are linear/conv weights."""
    leaves = tree.leaves(mean)
    rec = _Recorder({id(t): n for n, t in zip(plan_names, leaves)})
    with torch.no_grad(), rec:
        vmodel.model.apply(mean, x[:2], state=model_state)
    var = {n for n, f in zip(plan_names, flags) if f}
    weights = frozenset(w for w, _ in rec.calls if w in var)
    biases = frozenset(b for w, b in rec.calls if w in var and b in var)
    return weights, biases, sum(w in var for w, _ in rec.calls)


class _Reparam(torch.autograd.Function):
    """``mu + sigma * eps``: ``(...), (...), (S, ...) -> (S, ...)``.

    Same values and gradients as ``torch.addcmul``; its backward makes the incoming
    gradient contiguous (under ``vmap`` a linear layer's weight gradient arrives
    transposed, and autograd's reduction over ``S`` of a transposed tensor is several
    times slower than a copy) and sums over ``S`` with elementwise adds, sample by sample
    (no ``(S, ...)`` temporary for ``g * eps``)."""
    generate_vmap_rule = True

    @staticmethod
    def forward(mu, sigma, eps):
        return torch.addcmul(mu, sigma, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[2])

    @staticmethod
    def backward(ctx, g):
        (eps,) = ctx.saved_tensors
        g = g.contiguous()
        g_mu, g_sigma = g[0], g[0] * eps[0]
        for s in range(1, g.shape[0]):
            g_mu = g_mu + g[s]
            g_sigma = torch.addcmul(g_sigma, g[s], eps[s])
        return g_mu, g_sigma, None


def _sample_weights(mean, std, eps, plan) -> dict:
    """``{name: mu + sigma * eps}`` for every name in ``eps`` (``eps (S, ...)``, S kept)."""
    means = dict(zip(plan.names, tree.leaves(mean)))
    return {n: _Reparam.apply(means[n], std[n], e) for n, e in eps.items()}


def _half_sq_norms(eps: dict, names, n_s: int) -> torch.Tensor:
    """``-sum eps^2 / 2`` per sample over the tensors ``names``: ``{name: (S, ...)} -> (S,)``."""
    total = torch.zeros(n_s)
    for n in names:
        flat = eps[n].reshape(n_s, -1)
        total = total - 0.5 * torch.stack([torch.dot(v, v) for v in flat]).to(total.dtype)
    return total


def _forward(vmodel, plan, mean, std, eps, sampled, model_state, x, key_model, layer_keys, train=True):
    """One stochastic forward pass: ``(out, new_model_state)``.

    ``std``: sigma per variational name; ``eps``/``sampled``: the weight noise and the
    weights ``mu + sigma eps`` of this pass (Flipout reads ``eps`` of its layers; LRT
    layers use neither)."""
    flat, spec = tree.flatten(mean)
    inputs = []
    for name, var, m in zip(plan.names, plan.variational, flat):
        handled = name in plan.layer_weights or name in plan.layer_biases
        inputs.append(sampled[name] if (var and not handled) else m)
    params = tree.unflatten(inputs, spec)
    mode = contextlib.nullcontext()
    if plan.layer_weights:
        by_name = dict(zip(plan.names, inputs))
        weights = {id(by_name[n]): (std[n], eps.get(n)) for n in plan.layer_weights}
        biases = {id(by_name[n]): (std[n], eps.get(n)) for n in plan.layer_biases}
        mode = _LayerNoise(vmodel.estimator, weights, biases, layer_keys, vmodel.shared_bias_noise)
    with mode:
        if train:
            return vmodel.model.apply_train(params, model_state, x, key=key_model)
        return vmodel.model.apply(params, x, key=key_model, state=model_state), model_state


def _copies(model_state, n: int):
    """``n`` writable copies of the buffers: ``leaf -> (n, ...)``."""
    return tree.map(lambda b: b.unsqueeze(0).repeat(n, *([1] * b.dim())), model_state)


def _normals(keys: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One standard-normal tensor shaped like ``like`` per key: ``(S, 2) -> (S, *like.shape)``
    (bitwise a loop of ``fr.normal`` over the keys)."""
    return vmap(lambda k: fr.normal(k, like.shape, like.dtype))(keys)


def _draw_noise(estimator, plan, rho, sample_keys, mc_names=()):
    """Everything random in ``S`` forward passes, one per key of ``sample_keys (S, 2)``, drawn
    outside ``grad``/``vmap`` (so vmapped and looped passes see the same bits): the weight
    noise ``eps[name] (S, ...)`` of the tensors that need one (weight-sampled ones, Flipout's
    layers, and ``mc_names`` for a Monte Carlo KL), the model's keys ``(S, 2)`` (dropout)
    and the layer keys ``(S, calls, 2, 2)`` for LRT/Flipout."""
    handled = plan.layer_weights | plan.layer_biases
    index = {n: i for i, n in enumerate(plan.names)}
    per_sample = fr.split(sample_keys, 3)                                   # (S, 3, 2)
    k_eps, k_model, k_layers = per_sample[:, 0], per_sample[:, 1], per_sample[:, 2]
    eps = {n: _normals(fr.fold_in(k_eps, index[n]), r) for n, r in rho.items()
           if n not in handled or estimator == "flipout" or n in mc_names}
    layer_keys = fr.split(fr.split(k_layers, max(plan.n_calls, 1)), 2)      # (S, calls, 2, 2)
    return eps, k_model, layer_keys


def stochastic_forward(vmodel: VariationalModel, state: ViState, x: torch.Tensor, key, n: int = 1, *,
                       train: bool = False, chunk: int = 64) -> torch.Tensor:
    """Outputs ``(n, B, ...)`` of ``n`` stochastic passes under the model's estimator: one
    weight draw per pass (``"sample"``), or LRT/Flipout noise per example (the seed's
    ``sample_predict`` of its LRT net), vmapped ``chunk`` passes at a time. ``train=True``
    runs the model in training mode (batch statistics in BatchNorm). For the usual
    posterior predictive, ``bbp``'s ``sample`` and ``fbnn.predict`` draw whole weight
    sets: per example the two have the same distribution (for one input, LRT is exact
    layer by layer)."""
    for value, what in ((n, "n"), (chunk, "chunk")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"stochastic_forward: {what} must be an int >= 1, got {value!r}")
    names = fp.leaf_names(state.mean)
    flags = [name in state.rho for name in names]
    if vmodel.estimator == "sample":
        layers = (frozenset(), frozenset(), 0)
    else:
        layers = _discover_layers(vmodel, names, flags, state.mean, state.model_state, x)
    plan = _Plan(names, flags, *layers)
    std = {name: std_from_rho(r) for name, r in state.rho.items()}

    def one(e, w, km, kl_, st):
        return _forward(vmodel, plan, state.mean, std, e, w, st, x, km, kl_, train=train)[0]

    # in training mode BatchNorm writes its buffers: every pass gets its own copy
    copies = train and bool(tree.leaves(state.model_state))
    keys = fr.split(key, n)
    outs = []
    with torch.no_grad():
        for s0 in range(0, n, chunk):
            k = keys[s0:s0 + chunk]
            eps, k_model, layer_keys = _draw_noise(vmodel.estimator, plan, state.rho, k)
            st = _copies(state.model_state, k.shape[0]) if copies else state.model_state
            w = _sample_weights(state.mean, std, eps, plan)
            outs.append(vmap(one, in_dims=(0, 0, 0, 0, 0 if copies else None), randomness="error")(
                eps, w, k_model, layer_keys, st))
    return torch.cat(outs)


# --- KL -------------------------------------------------------------------------------------------

def kl_weight(count: torch.Tensor, n_batches: int, schedule="uniform") -> torch.Tensor:
    """The KL weight pi_i of step ``count`` (``i = count mod M + 1``), ``()`` float64.

    ``"uniform"``: 1/M. ``"geometric"``: ``2^(M-i) / (2^M - 1) = 2^-i / (1 - 2^-M)`` (Blundell
    et al. 2015), which sums to 1 over an epoch. A callable ``count -> weight`` is used as is."""
    if callable(schedule):
        return torch.as_tensor(schedule(count)).to(torch.float64)
    if schedule == "uniform":
        return torch.full((), 1.0 / n_batches, dtype=torch.float64)
    i = torch.remainder(torch.as_tensor(count), n_batches).to(torch.float64) + 1
    return torch.exp2(-i) / -math.expm1(-n_batches * math.log(2))


def kl_divergence(state: ViState, prior, *, reduction: str = "sum", last_only: bool = False) -> torch.Tensor:
    """Closed-form ``KL(q || prior)`` of a variational state, ``()``.

    ``reduction``: ``"sum"`` (the ELBO's) or ``"mean"``, the sum divided by the number of
    variational scalars (torchbnn's ``BKLLoss(reduction='mean')``, SPEC 6.3 -- not a
    per-datapoint KL). ``last_only=True`` reproduces torchbnn's ``last_layer_only`` bug: the
    KL of the last variational tensor alone (SPEC 7 #21). Every variational tensor's prior
    must have a closed-form KL."""
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl_divergence: unknown reduction {reduction!r}; choose one of {KL_REDUCTIONS}")
    names = fp.leaf_names(state.mean)
    pri = dict(zip(names, fp.prior_leaves(prior, state.mean)))
    items = [n for n in names if n in state.rho]
    if last_only:
        items = items[-1:]
    total, count = torch.zeros(()), 0
    for n in items:
        p = pri[n]
        if p is None or p.kl is None:
            raise ValueError(f"kl_divergence: the prior of {n!r} has no closed-form KL")
        m = dict(zip(names, tree.leaves(state.mean)))[n]
        total = total + p.kl(m, std_from_rho(state.rho[n]))
        count += m.numel()
    return total / count if reduction == "mean" else total


# --- validation -------------------------------------------------------------------------------------

def _real(value, what, who, low=None, strict=True):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if not ok:
        bound = "" if low is None else (f" > {low:g}" if strict else f" >= {low:g}")
        raise ValueError(f"{who}: {what} must be a finite number{bound}, got {value!r}")
    return float(value)


def _check_n_samples(n_samples, who):
    def ok(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
    if isinstance(n_samples, dict):
        if not n_samples or 0 not in n_samples or not all(ok(v) for v in n_samples.values()) \
                or not all(ok(k + 1) for k in n_samples):
            raise ValueError(f"{who}: an n_samples schedule must map epochs (ints >= 0, 0 included) "
                             f"to ints >= 1, got {n_samples!r}")
    elif not callable(n_samples) and not ok(n_samples):
        raise ValueError(f"{who}: n_samples must be an int >= 1, a dict {{first_epoch: S}} or a "
                         f"callable epoch -> S, got {n_samples!r}")


def _samples_at(n_samples, count, n_batches, who) -> int:
    if isinstance(n_samples, numbers.Integral):
        return int(n_samples)
    try:
        epoch = int(count) // n_batches
    except RuntimeError:
        raise ValueError(f"{who}: an n_samples schedule needs a concrete step count; under vmap "
                         f"(ensembles of BBP) use a fixed n_samples") from None
    if isinstance(n_samples, dict):
        return int(n_samples[max(e for e in n_samples if e <= epoch)])
    s = n_samples(epoch)
    if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
        raise ValueError(f"{who}: n_samples({epoch}) must be an int >= 1, got {s!r}")
    return int(s)


# --- the method -----------------------------------------------------------------------------------

def bbp(model, likelihood, optimizer, prior, n_batches: int, *, n_samples=1, kl: str = "auto",
        kl_schedule="uniform", temperature: float = 1.0, kl_reduction: str = "sum",
        reduction: str = "sum", mean_init: str = "uniform", mean_scale: float = 0.1,
        rho_init=(-3.0, -2.0), sigma_init=None, point_prior=None,
        vmap_samples: bool = True) -> base.Method:
    """Bayes by Backprop (Blundell et al. 2015; SPEC 3.3, 3.4) on any model.

    ``model``: a ``Model`` (every tensor variational, weight sampling) or a
    ``variational(model, ...)``. ``prior``: one ``fbnn.priors`` prior or a pytree of them
    per tensor. ``n_batches``: M, minibatches per epoch (``ceil(N / B)`` with ``fit``);
    step ``count`` is minibatch ``count mod M + 1`` of epoch ``count // M``.

    - ``n_samples``: S, ELBO samples per step; an int, a dict ``{first_epoch: S}`` (the
      seed's GMM ``{0: 3, 61: 5}``) or a callable ``epoch -> S`` (schedules read the step count,
      so they do not run under ``vmap``). Samples go through ``vmap`` unless
      ``vmap_samples=False`` (a Python loop; same numbers).
    - ``kl``: ``"auto"`` (closed form per tensor where its prior has one, else MC),
      ``"closed"``, ``"mc"`` (``log q - log p`` at the sampled weights, the seed's) or
      ``"mc_entropy"`` (``-log p`` at the samples minus the exact entropy, PyVarInf's).
      With LRT the MC KL uses an independent weight draw (the forward pass has none).
    - ``kl_schedule``: ``"uniform"`` (1/M), ``"geometric"`` or a callable ``count -> weight``;
      ``temperature`` multiplies the KL (and the point priors).
    - ``kl_reduction``: ``"sum"`` (the ELBO) or ``"mean"`` (divided by the number of
      variational scalars, as torchbnn's ``BKLLoss``; changes the objective).
    - ``reduction``: ``"sum"`` (the seed's summed NLL) or ``"mean"`` (the whole loss / B).
    - init: ``mean_init`` ``"uniform"`` (U(-mean_scale, mean_scale); the seed's 0.1 or 0.2),
      ``"zero"`` (PyVarInf) or ``"model"`` (the params given to ``init``: torch's
      U(+-1/sqrt(fan_in)) for Linear/Conv, torchbnn's); rho ~ U(*rho_init) (the seed's
      (-3, -2)) or constant ``rho_init`` (a float), or ``sigma_init`` (a float, or a pytree
      of floats like ``priors.pyvarinf_sigma(params)``; sets sigma exactly).
    - ``point_prior``: prior on the deterministic tensors (None: maximum likelihood).

    ``sample(state, key, n)`` draws n weight sets ``(n, ...)``; ``posterior_mean(state)``
    gives the mean. Info: ``loss``, ``nll`` (summed over the batch, mean over S), ``kl``
    (the KL estimate, mean over S, before weighting) and ``kl_weight``.
    """
    who = "bbp"
    vmodel = model if isinstance(model, VariationalModel) else variational(model)
    if isinstance(n_batches, bool) or not isinstance(n_batches, numbers.Integral) or n_batches < 1:
        raise ValueError(f"{who}: n_batches (minibatches per epoch, M) must be an int >= 1, got {n_batches!r}")
    _check_n_samples(n_samples, who)
    if kl not in KL_ESTIMATORS:
        raise ValueError(f"{who}: unknown kl {kl!r}; choose one of {KL_ESTIMATORS}")
    if not callable(kl_schedule) and kl_schedule not in KL_SCHEDULES:
        raise ValueError(f"{who}: unknown kl_schedule {kl_schedule!r}; choose one of {KL_SCHEDULES} "
                         "or pass a callable count -> weight")
    temperature = _real(temperature, "temperature", who, 0.0, strict=False)
    if kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"{who}: unknown kl_reduction {kl_reduction!r}; choose one of {KL_REDUCTIONS}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"{who}: unknown reduction {reduction!r}; choose 'sum' or 'mean'")
    if mean_init not in MEAN_INITS:
        raise ValueError(f"{who}: unknown mean_init {mean_init!r}; choose one of {MEAN_INITS}")
    mean_scale = _real(mean_scale, "mean_scale", who, 0.0)
    if sigma_init is None:
        if isinstance(rho_init, tuple) and len(rho_init) == 2:
            lo, hi = (_real(r, "rho_init", who) for r in rho_init)
            if not lo < hi:
                raise ValueError(f"{who}: rho_init (low, high) needs low < high, got {rho_init!r}")
        else:
            _real(rho_init, "rho_init (a float or a (low, high) tuple)", who)
    elif isinstance(sigma_init, numbers.Real):
        _real(sigma_init, "sigma_init", who, SIGMA_FLOOR)
    if prior is None:
        raise ValueError(f"{who}: a prior is required (fbnn.priors)")
    estimator_name = vmodel.name
    plain = vmodel.model
    cache: dict = {}

    def plan_for(mean, model_state=None, x=None) -> _Plan:
        if "plan" in cache:
            return cache["plan"]
        names = fp.leaf_names(mean)
        flags = [not d for d in _deterministic_flags(vmodel.deterministic, mean)]
        if not any(flags):
            raise ValueError(f"{who}: the deterministic filter leaves no variational tensor")
        pri = fp.prior_leaves(prior, mean)
        for n, f, p in zip(names, flags, pri):
            if f and p is None:
                raise ValueError(f"{who}: no prior for the variational tensor {n!r}")
            if f and kl == "closed" and p.kl is None:
                raise ValueError(f"{who}: kl='closed' but the prior {p.name} of {n!r} has no closed-form KL")
        if vmodel.estimator == "sample":
            weights, biases, n_calls = frozenset(), frozenset(), 0
        elif x is None:
            return _Plan(names, flags, frozenset(), frozenset(), 0)  # layers are found at the first step
        else:
            weights, biases, n_calls = _discover_layers(vmodel, names, flags, mean, model_state, x)
            if not weights:
                raise ValueError(f"{who}: estimator {vmodel.estimator!r} found no F.linear/F.conv call "
                                 "on a variational weight in the model")
        cache["plan"] = _Plan(names, flags, weights, biases, n_calls)
        cache["priors"] = dict(zip(names, pri))
        cache["point_priors"] = dict(zip(names, fp.prior_leaves(point_prior, mean)))
        return cache["plan"]

    def closed_form(name) -> bool:
        p = cache["priors"][name]
        return kl == "closed" or (kl == "auto" and p.kl is not None)

    def init(key, params):
        k_mean, k_rho = fr.split(key, 2)
        names = fp.leaf_names(params)
        flags = [not d for d in _deterministic_flags(vmodel.deterministic, params)]
        if not any(flags):
            raise ValueError(f"{who}: the deterministic filter leaves no variational tensor")
        sig = sigma_init
        if sig is not None and not isinstance(sig, numbers.Real):
            sig_flat, sig_spec = tree.flatten(sig)
            if sig_spec != tree.structure(params):
                raise ValueError(f"{who}: sigma_init must be a float or a pytree of floats shaped like the params")
            sig = dict(zip(names, sig_flat))
        flat, spec = tree.flatten(params)
        means, rho = [], {}
        for i, (n, f, p) in enumerate(zip(names, flags, flat)):
            if not f or mean_init == "model":
                means.append(p.detach().clone())
            elif mean_init == "zero":
                means.append(torch.zeros_like(p))
            else:
                means.append(fr.uniform(fr.fold_in(k_mean, i), p.shape, p.dtype, -mean_scale, mean_scale))
            if not f:
                continue
            if sig is not None:
                rho[n] = rho_from_std(sig if isinstance(sig, numbers.Real) else sig[n], like=p)
            elif isinstance(rho_init, tuple):
                rho[n] = fr.uniform(fr.fold_in(k_rho, i), p.shape, p.dtype, float(rho_init[0]), float(rho_init[1]))
            else:
                rho[n] = torch.full_like(p, float(rho_init))
        mean = tree.unflatten(means, spec)
        plan_for(mean)  # validates the priors
        return ViState(mean, rho, optimizer.init({"mean": mean, "rho": rho}), plain.init_state(),
                       torch.zeros((), dtype=torch.int64))

    def sample_terms(trainable, std, model_state, batch, eps, sampled, k_model, layer_keys, plan):
        """One ELBO sample's data term: ``(nll, new_model_state)``."""
        out, new_state = _forward(vmodel, plan, trainable["mean"], std, eps, sampled, model_state, batch.x,
                                  k_model, layer_keys)
        return -base.data_log_lik(likelihood.log_lik(out, batch.y), batch, "sum", None), new_state

    def loss_fn(trainable, model_state, batch, draws, count):
        plan = cache["plan"]
        eps, k_model, layer_keys, eps_sq = draws
        n_s = k_model.shape[0]
        std = {n: std_from_rho(r) for n, r in trainable["rho"].items()}
        mc = [n for n in plan.names if n in std and not closed_form(n)]
        handled = plan.layer_weights | plan.layer_biases
        sampled = _sample_weights(trainable["mean"], std,                        # (S, ...) each
                                  {n: e for n, e in eps.items() if n not in handled or n in mc}, plan)
        stateful = bool(tree.leaves(model_state))
        # every ELBO sample runs the model on its own copy of the buffers (BatchNorm
        # updates them in place); the new buffers are averaged over the samples
        states = _copies(model_state, n_s) if stateful else model_state

        def one(e, w, km, kl_, st):
            return sample_terms(trainable, std, st, batch, e, w, km, kl_, plan)

        if vmap_samples:
            nll, new_states = vmap(one, in_dims=(0, 0, 0, 0, 0 if stateful else None),
                                   randomness="error")(eps, sampled, k_model, layer_keys, states)
        else:
            outs = [one(tree.index(eps, s), tree.index(sampled, s), k_model[s], layer_keys[s],
                        tree.index(states, s) if stateful else states) for s in range(n_s)]
            nll = torch.stack([o[0] for o in outs])
            new_states = tree.stack([o[1] for o in outs]) if stateful else outs[0][1]
        # the per-sample part of the MC KL: -log p(w_s) (+ log q's -eps^2/2, in eps_sq),
        # evaluated sample by sample on plain tensors (the sigma terms follow, once)
        per_sample = {n: sampled[n].unbind(0) for n in mc}  # (one stack in the backward pass)
        kl_mc = torch.stack([sum((-cache["priors"][n].log_prob(per_sample[n][s]) for n in mc),
                                 torch.zeros((), dtype=nll.dtype)) for s in range(n_s)]) + eps_sq
        kl_fixed = torch.zeros((), dtype=nll.dtype)
        n_var = 0
        leaves = dict(zip(plan.names, tree.leaves(trainable["mean"])))
        # mc: log q(w_s) = sum(-eps^2/2 - log sigma) - (n/2) log 2 pi;
        # mc_entropy: -H[q] = -sum log sigma - (n/2)(1 + log 2 pi)
        const = 0.5 * (_LOG_2PI + (1.0 if kl == "mc_entropy" else 0.0))
        for n, r in trainable["rho"].items():
            n_var += r.numel()
            s = std[n]
            if closed_form(n):
                kl_fixed = kl_fixed + cache["priors"][n].kl(leaves[n], s)
            else:
                kl_fixed = kl_fixed - torch.log(s).sum() - const * r.numel()
        kl_total = kl_fixed + kl_mc                                     # (S,)
        if kl_reduction == "mean":
            kl_total = kl_total / n_var
        neg_log_point = torch.zeros((), dtype=nll.dtype)
        for n, var in zip(plan.names, plan.variational):
            p = cache["point_priors"][n]
            if not var and p is not None:
                neg_log_point = neg_log_point - p.log_prob(leaves[n])
        weight = (temperature * kl_weight(count, n_batches, kl_schedule)).to(nll.dtype)
        loss = (nll + weight * (kl_total + neg_log_point)).mean()
        if reduction == "mean":
            loss = loss / batch.x.shape[0]
        if stateful:
            new_state = tree.map(lambda b: b.mean(0) if b.is_floating_point() else b[0], new_states)
        else:
            new_state = new_states
        aux = {"loss": loss, "nll": nll.mean(), "kl": kl_total.mean(), "kl_weight": weight}
        return loss, (aux, new_state)

    grad_fn = grad(loss_fn, has_aux=True)

    def step(state, batch, key):
        plan = plan_for(state.mean, state.model_state, batch.x)
        n_s = _samples_at(n_samples, state.count, n_batches, who)
        trainable = {"mean": state.mean, "rho": state.rho}
        mc = {n for n in state.rho if not closed_form(n)}
        eps, k_model, layer_keys = _draw_noise(vmodel.estimator, plan, state.rho, fr.split(key, n_s), mc)
        # log q's -eps^2 / 2 (a constant to the gradient), per sample: (S,)
        eps_sq = _half_sq_norms(eps, sorted(mc) if kl == "mc" else [], n_s)
        draws = (eps, k_model, layer_keys, eps_sq)
        grads, (aux, model_state) = grad_fn(trainable, state.model_state, batch, draws, state.count)
        updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
        new = fo.apply_updates(trainable, updates)
        info = {k: v.detach() for k, v in aux.items()}
        return ViState(new["mean"], new["rho"], opt_state, model_state, state.count + 1), info

    def sample(state, key, n):
        return _draw(state, fr.split(key, n))

    def check(state, x, y):
        base.check_data(plain, likelihood, state.mean, state.model_state, x, y)

    return base.Method(init, step, sample, check, plain, False, estimator_name)


# --- posterior draws ------------------------------------------------------------------------------

def _draw(state: ViState, keys: torch.Tensor) -> base.Samples:
    """Weight draws ``(len(keys), ...)``: draw ``j`` from ``keys[j]``; point tensors expanded."""
    n = keys.shape[0]
    names = fp.leaf_names(state.mean)
    flat, spec = tree.flatten(state.mean)
    tensor_keys = fr.fold_in(keys, 1)
    out = []
    for i, (name, m) in enumerate(zip(names, flat)):
        if name in state.rho:
            out.append(m + std_from_rho(state.rho[name]) * _normals(fr.fold_in(tensor_keys, i), m))
        else:
            out.append(m.unsqueeze(0).expand(n, *m.shape))
    states = tree.map(lambda b: b.unsqueeze(0).expand(n, *b.shape), state.model_state)
    return base.Samples(tree.unflatten(out, spec), states)


def sample_chunks(state: ViState, key, n: int, chunk: int):
    """``method.sample(state, key, n)`` in pieces of at most ``chunk`` draws (same draws,
    in order), so that a large net's ``n`` weight sets need not sit in memory at once."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"sample_chunks: chunk must be an int >= 1, got {chunk!r}")
    keys = fr.split(key, n)
    for s0 in range(0, n, chunk):
        yield _draw(state, keys[s0:s0 + chunk])


def posterior_mean(state: ViState, n: int = 1) -> base.Samples:
    """The posterior mean as ``n`` views ``(n, ...)`` (the seed's deterministic ``eval``)."""
    return base.expand_samples(state.mean, state.model_state, n)


def posterior_std(state: ViState) -> dict:
    """``{name: sigma}`` for the variational tensors."""
    return {n: std_from_rho(r) for n, r in state.rho.items()}


def bayesify(params, sigma=0.1, *, deterministic=None) -> tuple:
    """torchbnn's ``transform_model`` as a pure function (SPEC 6.3): ``(mean, rho)`` with
    ``mean = params`` (copied) and sigma = ``sigma`` (a float or a pytree of floats) on
    every tensor the ``deterministic`` filter does not keep. ``bbp(..., mean_init="model",
    sigma_init=sigma).init(key, params)`` builds the same pair inside a ``ViState``."""
    names = fp.leaf_names(params)
    keep = _deterministic_flags(deterministic, params)
    if isinstance(sigma, numbers.Real):
        sig = {n: sigma for n in names}
    else:
        flat, spec = tree.flatten(sigma)
        if spec != tree.structure(params):
            raise ValueError("bayesify: sigma must be a float or a pytree of floats shaped like the params")
        sig = dict(zip(names, flat))
    rho = {n: rho_from_std(sig[n], like=p) for n, d, p in zip(names, keep, tree.leaves(params)) if not d}
    return tree.clone(tree.map(lambda p: p.detach(), params)), rho
