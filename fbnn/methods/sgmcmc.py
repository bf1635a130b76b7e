"""Stochastic-gradient MCMC: SGLD, pSGLD, SGHMC and SGHMC with scale adaptation.

Every sampler simulates one step of a discretised diffusion per minibatch on the
potential of SPEC 1.3,

    U(theta) = N * mean_batch[-log p(y | x, theta)] - log p(theta),

(``base.neg_log_joint`` with ``reduction="dataset"``), whose gradient is an unbiased
estimate of the full-data one. States are NamedTuples of tensors, so samplers run
under ``vmap`` (``methods.ensemble(sampler, n)`` gives ``n`` parallel chains) and go
into checkpoints as they are. ``sample(state, key, n)`` returns ``n`` views of the
current point; ``fit``'s ``Collector`` builds the chain (burn-in, thinning, buffer).
Conditional updates (momentum resampling, Gibbs steps, burn-in adaptation) are
selected with ``torch.where`` on the step count, never Python branches, so that a
batch of chains stays one vmapped computation. A learning rate and a temperature are
each a float or a schedule ``count (int64 tensor) -> value`` as in ``fbnn.optim``
(``optim.cyclical_cosine`` for cyclical SG-MCMC); ``sghmc_sa``'s temperature is a float.
A temperature T samples exp(-U / T); ``likelihood_temperature`` T_lik (a float) instead
replaces N by N / T_lik, which tempers the likelihood and leaves the prior as it is.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import torch
from torch.func import grad

from .. import random as fr
from .. import tree
from . import base

__all__ = ["SgldState", "PsgldState", "SghmcState", "SghmcSaState", "sgld", "psgld", "sghmc",
           "sghmc_sa", "gibbs_precision"]

_NOISE_FLOOR = 1e-16   # SGHMC-SA's lower bound on the injected noise variance (SPEC 3.9)
_NO_CLIP = 1e20        # the seed's max_norm before the gradient-norm buffer is full


class SgldState(NamedTuple):
    params: Any
    model_state: Any
    count: torch.Tensor          # () int64, steps taken


class PsgldState(NamedTuple):
    params: Any
    square_avg: Any              # like params: RMSprop's V
    model_state: Any
    count: torch.Tensor


class SghmcState(NamedTuple):
    params: Any
    momentum: Any                # like params: v, the per-step displacement
    model_state: Any
    count: torch.Tensor


class SghmcSaState(NamedTuple):
    params: Any
    momentum: Any                # like params: v
    tau: Any                     # like params: adaptive averaging window
    g_avg: Any                   # like params: g-hat, running mean of the gradient
    v_hat: Any                   # like params: V-hat, running mean of its square
    precision: Any               # one () tensor per parameter tensor: the prior precision lambda
    model_state: Any
    count: torch.Tensor          # () int64
    norm_buffer: torch.Tensor    # (clip_warmup + 1,) float64 ring of recent gradient norms
    norm_start: torch.Tensor     # () int64, index of the oldest entry
    norm_size: torch.Tensor      # () int64, number of entries
    max_norm: torch.Tensor       # () float64, the current clipping threshold


# --- validation -------------------------------------------------------------------------

def _finite_positive(value, what: str, who: str) -> float:
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex \
            and value.dtype != torch.bool:
        number, value = True, float(value)
    if not number or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{who}: {what} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_rate(rate, what: str, who: str):
    """A float > 0, or a schedule whose value at count 0 is one; returns the float or the schedule."""
    if callable(rate):
        value = rate(torch.zeros((), dtype=torch.int64))
        try:
            _finite_positive(value, what, who)
        except ValueError:
            raise ValueError(f"{who}: {what} must be a finite number > 0; the schedule gives {value!r} "
                             f"at count 0") from None
        return rate
    return _finite_positive(rate, what, who)


def _check_n_data(n_data, who: str) -> None:
    if isinstance(n_data, bool) or not isinstance(n_data, numbers.Integral) or n_data < 1:
        raise ValueError(f"{who}: n_data (the training-set size) must be an int >= 1, got {n_data!r}")


def _data_weight(n_data, likelihood_temperature, who: str) -> float:
    """N / T_lik, the weight of the minibatch-mean NLL in the potential: the likelihood
    raised to 1 / T_lik, the prior and the noise left as they are."""
    _check_n_data(n_data, who)
    return n_data / _finite_positive(likelihood_temperature, "likelihood_temperature", who)


def _check_friction(friction, who: str) -> None:
    v = _finite_positive(friction, "friction", who)
    if v > 1:
        raise ValueError(f"{who}: friction must be in (0, 1], got {friction!r}")


def _check_every(every, what: str, who: str) -> None:
    if every is not None and (isinstance(every, bool) or not isinstance(every, numbers.Integral)
                              or every < 1):
        raise ValueError(f"{who}: {what} must be None or an int >= 1, got {every!r}")


def _check_count(value, what: str, who: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{who}: {what} must be an int >= {low}, got {value!r}")


# --- shared pieces ------------------------------------------------------------------------

def _rate(lr, count: torch.Tensor) -> torch.Tensor:
    """The step size at ``count``: ``()`` float64 (a float, or a schedule's value)."""
    value = lr(count) if callable(lr) else lr
    return torch.as_tensor(value).to(torch.float64)


def _every(count: torch.Tensor, k) -> torch.Tensor:
    """``()`` bool: whether step ``count`` is one of every ``k`` (``False`` when ``k`` is None)."""
    if k is None:
        return torch.zeros((), dtype=torch.bool)
    return torch.remainder(count, k) == 0


def _grad_fn(model, likelihood, prior, n_data):
    """``(params, model_state, batch, key) -> (grad U, (U, new_model_state))``.

    A prior with a closed-form gradient (``Prior.grad``) is added outside autograd,
    which saves several passes over the parameters per step."""
    if prior is None or prior.grad is None:
        loss_fn = base.neg_log_joint(model, likelihood, prior, "dataset", n_data)
    else:
        loss_fn = base.neg_log_joint(model, likelihood, None, "dataset", n_data)

    def with_aux(params, model_state, batch, key):
        loss, new_state = loss_fn(params, model_state, batch, key)
        return loss, (loss, new_state)

    lik_grad = grad(with_aux, has_aux=True)
    if prior is None or prior.grad is None:
        return lik_grad

    def grad_fn(params, model_state, batch, key):
        grads, (nll, new_state) = lik_grad(params, model_state, batch, key)
        grads = tree.sub(grads, prior.grad(params))
        return grads, (nll.detach() - prior.log_prob(params).detach(), new_state)

    return grad_fn


def _step_rates(lr, temperature):
    """``count -> (lr, T)``: Python floats when both are constants (the fused float ops),
    else ``()`` float64 tensors."""
    if not callable(lr) and not callable(temperature):
        return lambda count: (float(lr), float(temperature))
    return lambda count: (_rate(lr, count), _rate(temperature, count))


def _method(init, step, model, likelihood, name) -> base.Method:
    def sample(state, key, n):
        return base.expand_samples(state.params, state.model_state, n)

    def check(state, x, y):
        base.check_data(model, likelihood, state.params, state.model_state, x, y)

    return base.Method(init, step, sample, check, model, False, name)


def _zero_count() -> torch.Tensor:
    return torch.zeros((), dtype=torch.int64)


# --- SGLD ---------------------------------------------------------------------------------

def sgld(model, likelihood, prior, n_data: int, lr, temperature=1.0,
         likelihood_temperature: float = 1.0) -> base.Method:
    """Stochastic-gradient Langevin dynamics (Welling & Teh 2011; SPEC 3.6).

    Per step, with g the minibatch gradient of U, eps = lr(count) and T = temperature(count):
    ``theta <- theta - (eps / 2) g + sqrt(eps T) xi``, xi ~ N(0, I). A constant
    ``temperature`` T targets p(theta | D)^(1/T). ``likelihood_temperature`` T_lik
    tempers the likelihood alone: U = (N / T_lik) mean NLL - log p(theta), the target
    p(D | theta)^(1/T_lik) p(theta) (the same in every sampler). ``prior`` is an
    ``fbnn.priors.Prior`` (or None for a flat one); the seed's is ``priors.normal(0.1)``.
    The state is ``SgldState``.
    """
    who = "sgld"
    data_weight = _data_weight(n_data, likelihood_temperature, who)
    _check_rate(lr, "lr", who)
    temperature = _check_rate(temperature, "temperature", who)
    grad_fn = _grad_fn(model, likelihood, prior, data_weight)
    rates = _step_rates(lr, temperature)

    def init(key, params):
        return SgldState(params, model.init_state(), _zero_count())

    def step(state, batch, key):
        k_model, k_noise = fr.split(key, 2)
        grads, (loss, model_state) = grad_fn(state.params, state.model_state, batch, k_model)
        xi = tree.normal_like(k_noise, state.params)
        eps, temp = rates(state.count)
        if isinstance(eps, float):
            noise_scale = math.sqrt(eps * temp)
            params = tree.map(lambda p, g, z: torch.add(p, g, alpha=-0.5 * eps).add_(z, alpha=noise_scale),
                              state.params, grads, xi)
        else:
            noise_scale = torch.sqrt(eps * temp)
            params = tree.map(lambda p, g, z: p - 0.5 * eps * g + noise_scale * z, state.params, grads, xi)
        return SgldState(params, model_state, state.count + 1), {"loss": loss.detach()}

    return _method(init, step, model, likelihood, "sgld")


# --- pSGLD --------------------------------------------------------------------------------

def psgld(model, likelihood, prior, n_data: int, lr, alpha: float = 0.99, eps: float = 1e-8,
          temperature=1.0, likelihood_temperature: float = 1.0) -> base.Method:
    """Preconditioned SGLD with RMSprop's diagonal preconditioner (Li et al. 2016; SPEC 3.7).

    Per step, on the full potential gradient g (prior included):
    ``V <- alpha V + (1 - alpha) g * g`` (V_0 = 0, exactly ``torch.optim.RMSprop``'s
    ``square_avg``), ``G = sqrt(V) + eps`` (non-centred, eps after the sqrt),
    ``theta <- theta - (lr / 2) g / G + sqrt(lr T / G) xi`` (lr and T at the step's
    count when they are schedules). The paper's drift
    correction Gamma(theta) = sum_j d G^-1_ij / d theta_j is omitted, as in the seed and
    common practice; it vanishes as alpha -> 1. With alpha = 0.99 and exact gradients
    on a correlated Gaussian the spread comes out 10-15 % wide, the price of that omission.
    V_0 = 0 makes the first step's noise sqrt(lr T / (sqrt(1 - alpha) |g_0|)) unbounded
    where g_0 ~ 0; warm-start ``state.square_avg`` (e.g. with g_0^2) to avoid it. The
    state is ``PsgldState``.
    """
    who = "psgld"
    data_weight = _data_weight(n_data, likelihood_temperature, who)
    _check_rate(lr, "lr", who)
    temperature = _check_rate(temperature, "temperature", who)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < alpha < 1.0:
        raise ValueError(f"{who}: alpha must be in (0, 1), got {alpha!r}")
    eps = _finite_positive(eps, "eps", who)
    grad_fn = _grad_fn(model, likelihood, prior, data_weight)
    rates = _step_rates(lr, temperature)

    def init(key, params):
        return PsgldState(params, tree.zeros_like(params), model.init_state(), _zero_count())

    def update(p, g, v, z, step_size, temp):
        # V <- alpha V + (1 - alpha) g^2;  G = sqrt(V) + eps
        v = torch.addcmul(v * alpha, g, g, value=1 - alpha)
        precond = v.sqrt().add_(eps)
        # theta <- theta - (eps/2) g / G + sqrt(eps T / G) xi
        if isinstance(step_size, float):
            p = torch.addcdiv(p, g, precond, value=-0.5 * step_size)
            return torch.addcmul(p, precond.rsqrt_(), z, value=math.sqrt(step_size * temp)), v
        p = p - 0.5 * step_size * g / precond + torch.sqrt(step_size * temp / precond) * z
        return p, v

    def step(state, batch, key):
        k_model, k_noise = fr.split(key, 2)
        grads, (loss, model_state) = grad_fn(state.params, state.model_state, batch, k_model)
        step_size, temp = rates(state.count)
        xi = tree.normal_like(k_noise, state.params)
        flat_p, spec = tree.flatten(state.params)
        out = [update(p, g, v, z, step_size, temp) for p, g, v, z in
               zip(flat_p, tree.leaves(grads), tree.leaves(state.square_avg), tree.leaves(xi))]
        params = tree.unflatten([o[0] for o in out], spec)
        square_avg = tree.unflatten([o[1] for o in out], spec)
        return PsgldState(params, square_avg, model_state, state.count + 1), {"loss": loss.detach()}

    return _method(init, step, model, likelihood, "psgld")


# --- SGHMC --------------------------------------------------------------------------------

def sghmc(model, likelihood, prior, n_data: int, lr, friction: float = 0.05, temperature=1.0,
          resample_momentum_every: int | None = None, likelihood_temperature: float = 1.0) -> base.Method:
    """Stochastic-gradient HMC (Chen, Fox & Guestrin 2014) in the v-parametrisation.

    With v = eps M^-1 r (the per-step displacement), learning rate eta = eps^2 M^-1 and
    friction alpha = eps M^-1 C, Chen et al.'s eq. (15) (with B-hat = 0) reads
    ``v <- v - eta g - alpha v + N(0, 2 alpha eta T)``, ``theta <- theta + v``, the form
    Springenberg et al. (2016) write with eta^2 M^-1 as the learning rate. Here
    ``lr`` is eta and ``temperature`` T (each a float or a schedule), ``friction`` is
    alpha in (0, 1]. The momentum starts at 0; with ``resample_momentum_every=k`` it is
    redrawn from its stationary law N(0, eta T) before every step whose count is a
    multiple of k (count 0 included). The state is ``SghmcState``.
    """
    who = "sghmc"
    data_weight = _data_weight(n_data, likelihood_temperature, who)
    _check_rate(lr, "lr", who)
    _check_friction(friction, who)
    temperature = _check_rate(temperature, "temperature", who)
    _check_every(resample_momentum_every, "resample_momentum_every", who)
    grad_fn = _grad_fn(model, likelihood, prior, data_weight)

    def init(key, params):
        return SghmcState(params, tree.zeros_like(params), model.init_state(), _zero_count())

    def step(state, batch, key):
        k_model, k_noise, k_mom = fr.split(key, 3)
        grads, (loss, model_state) = grad_fn(state.params, state.model_state, batch, k_model)
        eta, temp = _rate(lr, state.count), _rate(temperature, state.count)
        momentum = state.momentum
        if resample_momentum_every is not None:
            # v ~ N(0, eta T) on resampling steps
            fresh = tree.scale(tree.normal_like(k_mom, momentum), torch.sqrt(eta * temp))
            redraw = _every(state.count, resample_momentum_every)
            momentum = tree.map(lambda f, v: torch.where(redraw, f, v), fresh, momentum)
        noise_scale = torch.sqrt(2.0 * friction * eta * temp)
        xi = tree.normal_like(k_noise, state.params)
        # v <- v - eta g - alpha v + N(0, 2 alpha eta T);  theta <- theta + v
        momentum = tree.map(lambda v, g, z: v - eta * g - friction * v + noise_scale * z, momentum, grads, xi)
        params = tree.add(state.params, momentum)
        return SghmcState(params, momentum, model_state, state.count + 1), {"loss": loss.detach()}

    return _method(init, step, model, likelihood, "sghmc")


# --- SGHMC with scale adaptation -------------------------------------------------------------

def gibbs_precision(key, params, alpha0: float, beta0: float, temperature: float = 1.0):
    """One Gibbs draw of each parameter tensor's prior precision (SPEC 3.9).

    For a tensor theta of n elements under N(0, 1/lambda) with lambda ~ Gamma(alpha0,
    rate beta0), the conditional is ``lambda | theta ~ Gamma(alpha0 + n/2, rate beta0 +
    sum(theta^2)/2)``. At temperature T (the joint raised to 1/T) it is
    ``Gamma((alpha0 - 1 + n/2) / T + 1, rate (beta0 + sum(theta^2)/2) / T)``: the same
    mode, about T times the variance. ``params``: a pytree; returns a pytree of ``()``
    tensors, one subkey of ``key`` per tensor.
    """
    flat, spec = tree.flatten(params)
    keys = fr.split(key, len(flat))
    out = []
    for k, p in zip(keys, flat):
        shape_ = (alpha0 - 1.0 + 0.5 * p.numel()) / temperature + 1.0
        rate = (beta0 + 0.5 * p.to(torch.float64).pow(2).sum()) / temperature
        out.append((fr.gamma(k, shape_, (), dtype=torch.float64) / rate).to(p.dtype))
    return tree.unflatten(out, spec)


def _ring_stats(buf, start, size):
    """Mean and population std of the ``size`` entries of ring ``buf`` from ``start``."""
    cap = buf.shape[0]
    valid = torch.remainder(torch.arange(cap) - start, cap) < size
    n = size.clamp_min(1).to(buf.dtype)
    mean = torch.where(valid, buf, torch.zeros_like(buf)).sum() / n
    var = torch.where(valid, (buf - mean) ** 2, torch.zeros_like(buf)).sum() / n
    return mean, var.sqrt()


def sghmc_sa(model, likelihood, n_data: int, lr=1e-2, *, burn_in: int, friction: float = 0.05,
             prior_sigma: float | None = 0.1, alpha0: float = 10.0, beta0: float = 10.0,
             resample_momentum_every: int | None = 50, resample_prior_every: int | None = 15,
             clip_std_mul: float | None = 20.0, clip_warmup: int = 1000,
             eps: float = 1e-6, adaptation: str = "seed", temperature: float = 1.0,
             likelihood_temperature: float = 1.0) -> base.Method:
    """SGHMC with scale adaptation (Springenberg et al. 2016), the seed's sampler (SPEC 3.9).

    Defaults are SPEC 8 ``sghmc_sa`` (lr eta 1e-2, C 0.05, prior sigma 0.1, alpha0 =
    beta0 = 10, momentum redrawn every 50 steps, precision every 15, clipping at mean +
    20 std after 1000 norms); ``burn_in`` is in steps (the seed: 20 epochs of
    ceil(N / 256) steps). Each step, with count t, eta = lr(t):

    1. the likelihood gradient ``g_lik`` of N * mean NLL is clipped to the global norm
       ``max_norm`` (``torch.nn.utils.clip_grad_norm_``): once the buffer of recent
       pre-clip norms holds more than ``clip_warmup`` entries, ``max_norm`` becomes their
       mean + ``clip_std_mul`` * (population) std and the oldest entry is dropped;
       before that it is 1e20. The new norm joins the buffer unless it is >= max_norm.
       ``clip_std_mul=None`` switches clipping off.
    2. if t % resample_prior_every == 0: each tensor's precision lambda is Gibbs-redrawn
       (``gibbs_precision``) at the current theta; g = g_lik + lambda theta.
    3. while t < burn_in: tau <- tau - tau g_avg^2 / (V_hat + eps) + 1, r = 1 / (tau + eps),
       g_avg <- (1 - r) g_avg + r g, V_hat <- (1 - r) V_hat + r g^2 (tau first, the
       new tau in r).
    4. m = 1 / (sqrt(V_hat) + eps); if t % resample_momentum_every == 0: v ~ N(0, eta^2 m T);
       v <- v - eta^2 m g - C v + N(0, max(2 eta^2 m C T - eta^4, 1e-16)); theta <- theta + v.

    ``temperature`` T (a float; 1, the default, is the seed's sampler) targets
    p(theta, lambda | D)^(1/T); the Gibbs step draws from the tempered conditional
    (``gibbs_precision``), and the eta^4 term, a stand-in for the gradient noise, is
    not scaled. Below T = 1 the precisions run away: weights the likelihood leaves free
    have variance about T / lambda, so each Gibbs draw (mode n / sum(theta^2)) multiplies
    lambda by about 1 / T until the likelihood holds it (MNIST row ``sghmc_sa_T0.1_120ep``);
    cold runs keep the prior fixed (``resample_prior_every=None``; ``--resample-prior-every 0``),
    or temper the likelihood alone: ``likelihood_temperature`` T_lik puts N / T_lik in front
    of the mean NLL and leaves the prior, the Gibbs step and the noise at T (the target is
    p(D | theta)^(1/T_lik) p(theta | lambda) p(lambda) at T = 1), so free weights keep
    variance 1 / lambda and the Gibbs draws stay put (MNIST rows ``sghmc_sa_lik_T0.1_120ep*``;
    ``experiments.prior_scales`` reads lambda and n / sum(theta^2) off a checkpoint, and
    ``results/prior_scales.md`` has both cases).

    ``adaptation``: ``"seed"`` (default) is step 3 as written, the seed's order (SPEC 3.9).
    From tau = g_avg = V_hat = 1 it gives r = 1 - O(1e-6), and tau stays near 1 for as
    long as successive gradients agree, so V_hat is then about the last g^2 and m about
    1 / |g|: coordinates whose gradient is near 0 at some burn-in step get a very large
    m, hence a large kick (noise ~ eta sqrt(2 m C)), and m is heavy-tailed after burn-in
    unless minibatch noise lets tau grow. ``"pybnn"`` takes r = 1 / (tau + 1) from the
    old tau, as Springenberg et al.'s pybnn does, so V_hat at most halves per step.

    The gradient-noise estimate B-hat is taken as 0 and eta is not rescaled by sqrt(N),
    as in the seed; the -eta^4 term stands in for the minibatch noise (it cancels it when
    V_hat is all gradient noise) and otherwise shrinks the injected variance by a factor
    1 - eta^2 / (2 m C), so keep eta^2 << 2 m C for an unbiased spread.
    ``prior_sigma=None`` drops the prior (no Gibbs step then). The state is
    ``SghmcSaState``; info holds "loss" (U with the current precision), "grad_norm"
    (pre-clip) and "max_norm".
    """
    who = "sghmc_sa"
    data_weight = _data_weight(n_data, likelihood_temperature, who)
    _check_rate(lr, "lr", who)
    _check_friction(friction, who)
    _check_count(burn_in, "burn_in", who, 0)
    temperature = _finite_positive(temperature, "temperature", who)
    alpha0 = _finite_positive(alpha0, "alpha0", who)
    beta0 = _finite_positive(beta0, "beta0", who)
    eps = _finite_positive(eps, "eps", who)
    _check_every(resample_momentum_every, "resample_momentum_every", who)
    _check_every(resample_prior_every, "resample_prior_every", who)
    if adaptation not in ("seed", "pybnn"):
        raise ValueError(f"{who}: adaptation must be 'seed' or 'pybnn', got {adaptation!r}")
    if prior_sigma is None:
        if resample_prior_every is not None:
            raise ValueError(f"{who}: resample_prior_every needs a prior; pass "
                             f"resample_prior_every=None with prior_sigma=None")
    else:
        prior_sigma = _finite_positive(prior_sigma, "prior_sigma", who)
    if clip_std_mul is not None:
        if isinstance(clip_std_mul, bool) or not isinstance(clip_std_mul, numbers.Real) \
                or not math.isfinite(clip_std_mul) or clip_std_mul < 0:
            raise ValueError(f"{who}: clip_std_mul must be None or a finite number >= 0, "
                             f"got {clip_std_mul!r}")
        _check_count(clip_warmup, "clip_warmup", who, 1)
    capacity = clip_warmup + 1 if clip_std_mul is not None else 0
    grad_fn = _grad_fn(model, likelihood, None, data_weight)

    def init(key, params):
        lam = 0.0 if prior_sigma is None else 1.0 / prior_sigma ** 2
        return SghmcSaState(
            params, tree.zeros_like(params), tree.ones_like(params), tree.ones_like(params),
            tree.ones_like(params), tree.map(lambda p: torch.full((), lam, dtype=p.dtype), params),
            model.init_state(), _zero_count(), torch.zeros(capacity, dtype=torch.float64),
            _zero_count(), _zero_count(), torch.full((), _NO_CLIP, dtype=torch.float64))

    def clip(grads, state):
        """Dynamic clipping; returns the clipped grads, pre-clip norm and buffer fields."""
        norm = tree.norm(tree.astype(grads, torch.float64))
        if clip_std_mul is None:
            return grads, norm, state.norm_buffer, state.norm_start, state.norm_size, state.max_norm
        buf, start, size, max_norm = state.norm_buffer, state.norm_start, state.norm_size, state.max_norm
        full = size > clip_warmup
        mean, std = _ring_stats(buf, start, size)
        max_norm = torch.where(full, mean + clip_std_mul * std, max_norm)
        start = torch.where(full, torch.remainder(start + 1, capacity), start)
        size = torch.where(full, size - 1, size)
        factor = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        grads = tree.map(lambda g: g * factor.to(g.dtype), grads)
        keep = norm < max_norm
        slot = torch.arange(capacity) == torch.remainder(start + size, capacity)
        buf = torch.where(keep & slot, norm, buf)
        size = size + keep.to(size.dtype)
        return grads, norm, buf, start, size, max_norm

    def leaf_update(p, g_lik, lam, v, tau, g_avg, v_hat, z_mom, z, eta, adapt, redraw):
        g = g_lik + lam * p
        # burn-in: tau <- tau - tau g_avg^2 / (V_hat + eps) + 1; r = 1 / (tau + eps);
        # g_avg <- (1 - r) g_avg + r g; V_hat <- (1 - r) V_hat + r g^2
        tau_new = tau - tau * g_avg ** 2 / (v_hat + eps) + 1.0
        r = 1.0 / (tau_new + eps) if adaptation == "seed" else 1.0 / (tau + 1.0)
        g_avg_new = g_avg - r * g_avg + r * g
        v_hat_new = v_hat - r * v_hat + r * g ** 2
        tau = torch.where(adapt, tau_new, tau)
        g_avg = torch.where(adapt, g_avg_new, g_avg)
        v_hat = torch.where(adapt, v_hat_new, v_hat)
        # m = 1 / (sqrt(V_hat) + eps); v ~ N(0, eta^2 m T) on resampling steps
        m = 1.0 / (v_hat.sqrt() + eps)
        eta2 = (eta ** 2).to(p.dtype)
        v = torch.where(redraw, torch.sqrt(eta2 * m * temperature) * z_mom, v)
        # v <- v - eta^2 m g - C v + N(0, max(2 eta^2 m C T - eta^4, 1e-16)); theta <- theta + v
        noise_var = torch.clamp(2.0 * eta2 * m * friction * temperature - eta2 ** 2, min=_NOISE_FLOOR)
        v = v - eta2 * m * g - friction * v + noise_var.sqrt() * z
        return p + v, v, tau, g_avg, v_hat

    def step(state, batch, key):
        k_model, k_noise, k_mom, k_prior = fr.split(key, 4)
        grads, (data_loss, model_state) = grad_fn(state.params, state.model_state, batch, k_model)
        grads, norm, buf, start, size, max_norm = clip(grads, state)
        precision = state.precision
        if resample_prior_every is not None:
            drawn = gibbs_precision(k_prior, state.params, alpha0, beta0, temperature)
            redraw_prior = _every(state.count, resample_prior_every)
            precision = tree.map(lambda new, old: torch.where(redraw_prior, new, old), drawn, precision)
        eta = _rate(lr, state.count)
        adapt = state.count < burn_in
        redraw = _every(state.count, resample_momentum_every)
        # (without momentum resampling the redraw is never selected: skip the draw)
        z_mom = state.momentum if resample_momentum_every is None else tree.normal_like(k_mom, state.params)
        z = tree.normal_like(k_noise, state.params)
        flat_p, spec = tree.flatten(state.params)
        lams = tree.leaves(precision)
        if len(lams) != len(flat_p):
            raise ValueError(f"{who}: the state's precision has {len(lams)} entries for "
                             f"{len(flat_p)} parameter tensors")
        out = [leaf_update(p, g, lam, v, tau, ga, vh, zm, zz, eta, adapt, redraw)
               for p, g, lam, v, tau, ga, vh, zm, zz in zip(
                   flat_p, tree.leaves(grads), lams, tree.leaves(state.momentum), tree.leaves(state.tau),
                   tree.leaves(state.g_avg), tree.leaves(state.v_hat), tree.leaves(z_mom), tree.leaves(z))]
        fields = [tree.unflatten([o[i] for o in out], spec) for i in range(5)]
        # U = N mean NLL + sum over tensors of -log N(theta; 0, 1/lambda)
        prior_nll = sum(0.5 * lam * p.pow(2).sum() - 0.5 * p.numel() * torch.log(lam / (2 * math.pi))
                        for p, lam in zip(flat_p, lams)) if prior_sigma is not None else 0.0
        loss = (data_loss + prior_nll).detach()
        new = SghmcSaState(fields[0], fields[1], fields[2], fields[3], fields[4], precision, model_state,
                           state.count + 1, buf, start, size, max_norm)
        return new, {"loss": loss, "grad_norm": norm.detach(), "max_norm": max_norm}

    return _method(init, step, model, likelihood, "sghmc_sa")
