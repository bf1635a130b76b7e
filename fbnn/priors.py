"""Priors over parameter pytrees.

A ``Prior`` holds ``log_prob(params) -> scalar`` (summed over every element, constants
included) and, where one exists, ``kl(mean, std) -> scalar``: the closed-form
KL(N(mean, std^2) || prior) summed over elements, for mean-field Gaussian posteriors.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch

from . import tree

__all__ = ["Prior", "normal", "laplace", "log_prior"]

_LOG_2PI = math.log(2 * math.pi)


class Prior(NamedTuple):
    log_prob: Callable
    kl: Optional[Callable]
    name: str
    grad: Optional[Callable] = None   # params -> grad of log_prob (a pytree), where closed form


def _positive(value, what, who):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{who}: {what} must be a finite number > 0, got {value!r}")
    return float(value)


def normal(sigma: float = 1.0, mean: float = 0.0) -> Prior:
    """Independent N(mean, sigma^2) on every element."""
    sigma = _positive(sigma, "sigma", "priors.normal")

    def sq_dev(x):
        d = (x if mean == 0.0 else x - mean).reshape(-1)
        return torch.dot(d, d)

    def log_prob(params):
        return sum(-0.5 / sigma ** 2 * sq_dev(x) - x.numel() * (math.log(sigma) + 0.5 * _LOG_2PI)
                   for x in tree.leaves(params))

    def grad(params):
        return tree.map(lambda x: (x if mean == 0.0 else x - mean) * (-1.0 / sigma ** 2), params)

    def kl(q_mean, q_std):
        # sum [log(sigma / s) + (s^2 + (m - mean)^2) / (2 sigma^2) - 1/2], as whole-tensor sums
        def leaf(m, s):
            s_flat = s.reshape(-1)
            return (m.numel() * (math.log(sigma) - 0.5) - torch.log(s_flat).sum()
                    + (torch.dot(s_flat, s_flat) + sq_dev(m)) / (2 * sigma ** 2))
        return sum(leaf(m, s) for m, s in zip(tree.leaves(q_mean), tree.leaves(q_std)))

    return Prior(log_prob, kl, f"normal(sigma={sigma:g})", grad)


def laplace(scale: float = 1.0, mean: float = 0.0) -> Prior:
    """Independent Laplace(mean, b=scale) on every element: ``-log(2b) - |x - mean| / b``."""
    b = _positive(scale, "scale", "priors.laplace")

    def log_prob(params):
        return sum(-x.numel() * math.log(2 * b) - (x if mean == 0.0 else x - mean).abs().sum() / b
                   for x in tree.leaves(params))

    def grad(params):
        return tree.map(lambda x: torch.sign(x - mean) * (-1.0 / b), params)

    return Prior(log_prob, None, f"laplace(b={b:g})", grad)


def log_prior(prior, params) -> torch.Tensor:
    """``prior.log_prob(params)``, or 0 without a prior. ``prior`` may also be a pytree of
    priors with the structure of ``params`` (one per tensor, ``None`` for none)."""
    if prior is None:
        return torch.zeros(())
    if isinstance(prior, Prior):
        return prior.log_prob(params)
    return _log_prior_tree(prior, params)


# ---------------------------------------------------------------------------------------
# Per-tensor priors, scale mixtures and PyVarInf's families (SPEC 3.3.2-3.3.3, 6.2).
#
# A prior may be one ``Prior`` for every tensor or a pytree of priors with the params'
# structure (``None`` leaves: no prior on that tensor); ``per_tensor`` builds one.

__all__ += ["MIXTURE_MODES", "scale_mixture", "per_tensor", "prior_leaves", "is_prior_tree",
            "pyvarinf_sigma", "pyvarinf_gaussian", "normal_gamma", "known_mean_gamma",
            "pyvarinf_mixture", "log_prob_elements", "kl_elements", "leaf_names"]

MIXTURE_MODES = ("per_weight", "joint_sum", "joint_sum_additive")


def _is_prior_leaf(x) -> bool:
    return x is None or isinstance(x, Prior)


def leaf_names(params) -> list:
    """Dotted names of the leaves of ``params`` in ``tree.leaves`` order
    (``{"fc0.weight": w}`` -> ``["fc0.weight"]``; nested ``{"a": {"b": w}}`` -> ``["a.b"]``)."""
    import torch.utils._pytree as pytree

    def part(k):
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    return [".".join(part(k) for k in path) for path, _ in pytree.tree_flatten_with_path(params)[0]]


def is_prior_tree(prior) -> bool:
    """Whether ``prior`` is a pytree of priors (not one ``Prior`` and not ``None``)."""
    return prior is not None and not isinstance(prior, Prior)


def prior_leaves(prior, params) -> list:
    """One ``Prior`` (or ``None``) per leaf of ``params``, in ``tree.leaves`` order.

    ``prior``: ``None``, one ``Prior`` for every tensor, or a pytree of priors with the
    structure of ``params``. Raises ``ValueError`` when the structures differ."""
    n = len(tree.leaves(params))
    if not is_prior_tree(prior):
        return [prior] * n
    import torch.utils._pytree as pytree
    flat, spec = pytree.tree_flatten(prior, is_leaf=_is_prior_leaf)
    bad = [type(p).__name__ for p in flat if not _is_prior_leaf(p)]
    if bad:
        raise ValueError(f"prior tree: leaves must be fbnn.priors.Prior or None, got {bad[0]}")
    if spec != tree.structure(params):
        raise ValueError(f"prior tree: its structure differs from the params':\n  {spec}\nvs\n  "
                         f"{tree.structure(params)}")
    return flat


def per_tensor(params, fn: Callable) -> object:
    """A pytree of priors ``fn(name, tensor) -> Prior | None`` with the structure of ``params``."""
    flat, spec = tree.flatten(params)
    return tree.unflatten([fn(name, x) for name, x in zip(leaf_names(params), flat)], spec)


def _log_prior_tree(prior, params) -> torch.Tensor:
    total = torch.zeros(())
    for p, x in zip(prior_leaves(prior, params), tree.leaves(params)):
        if p is not None:
            total = total + p.log_prob(x)
    return total


def scale_mixture(pi: float = 0.5, sigma1: float = 1.0, sigma2: float = math.exp(-6),
                  mode: str = "per_weight") -> Prior:
    """Blundell et al.'s scale mixture ``pi N(0, sigma1^2) + (1 - pi) N(0, sigma2^2)``.

    ``mode`` (SPEC 3.3.3):
    - ``"per_weight"`` (the paper): ``sum_w log[pi N(w; 0, s1^2) + (1 - pi) N(w; 0, s2^2)]``,
      a log-sum-exp per element;
    - ``"joint_sum"`` (the seed's src): per tensor, ``N_k = sum_w log N(w; 0, s_k^2)``
      then ``log[pi e^N1 + (1 - pi) e^N2]`` -- a mixture over whole tensors; with the
      seed's sigma2 = 5e-4 it is ``log pi + N1``, i.e. a Gaussian prior;
    - ``"joint_sum_additive"`` (the seed's table notebook): per tensor,
      ``m + log(pi + e^(N1 - m) + (1 - pi) + e^(N2 - m))``, ``m = max(N1, N2)``,
      i.e. ``max(N1, N2) + log 2`` up to a vanishing term.
    No closed-form KL (``kl`` is ``None``): use a Monte Carlo KL.
    """
    who = "priors.scale_mixture"
    s1, s2 = _positive(sigma1, "sigma1", who), _positive(sigma2, "sigma2", who)
    if isinstance(pi, bool) or not isinstance(pi, (int, float)) or not 0.0 < pi < 1.0:
        raise ValueError(f"{who}: pi must be in (0, 1), got {pi!r}")
    if mode not in MIXTURE_MODES:
        raise ValueError(f"{who}: unknown mixture_mode {mode!r}; choose one of {MIXTURE_MODES}")
    log_pi, log_1m_pi = math.log(pi), math.log1p(-pi)

    def log_normal(x, s):
        return -0.5 * (x / s) ** 2 - math.log(s) - 0.5 * _LOG_2PI

    def per_weight(x):
        both = torch.stack([log_pi + log_normal(x, s1), log_1m_pi + log_normal(x, s2)])
        return torch.logsumexp(both, dim=0).sum()

    def joint(x):
        # N_k = sum_w log N(w; 0, s_k^2) = -sum w^2 / (2 s_k^2) - n (log s_k + log(2 pi) / 2)
        flat = x.reshape(-1)
        sq, half_n = torch.dot(flat, flat), 0.5 * x.numel()
        n1 = -0.5 / s1 ** 2 * sq - half_n * (2 * math.log(s1) + _LOG_2PI)
        n2 = -0.5 / s2 ** 2 * sq - half_n * (2 * math.log(s2) + _LOG_2PI)
        if mode == "joint_sum":
            return torch.logsumexp(torch.stack([log_pi + n1, log_1m_pi + n2]), dim=0)
        m = torch.maximum(n1, n2)  # the seed's stabiliser; differentiated through, as there
        return m + torch.log(pi + torch.exp(n1 - m) + (1 - pi) + torch.exp(n2 - m))

    leaf = per_weight if mode == "per_weight" else joint

    def log_prob(params):
        return sum((leaf(x) for x in tree.leaves(params)), torch.zeros(()))

    return Prior(log_prob, None, f"scale_mixture(pi={pi:g}, sigma1={s1:g}, sigma2={s2:g}, mode={mode})")


def pyvarinf_sigma(params) -> object:
    """PyVarInf's default prior scale per tensor (SPEC 6.2): ``1 / sqrt(fan_in)`` for tensors
    with >= 2 dims (fan_in = product of all dims but the first), 0.01 for 1-D (and 0-D)
    tensors. A pytree of floats with the structure of ``params``."""
    def sigma(x):
        return 1.0 / math.sqrt(math.prod(x.shape[1:])) if x.dim() >= 2 else 0.01
    return tree.unflatten([sigma(x) for x in tree.leaves(params)], tree.structure(params))


def pyvarinf_gaussian(params) -> object:
    """PyVarInf's default prior: ``N(0, pyvarinf_sigma^2)`` per tensor, a pytree of
    ``normal`` priors (closed-form KL)."""
    flat, spec = tree.flatten(pyvarinf_sigma(params))
    return tree.unflatten([normal(s) for s in flat], spec)


def _gamma_params(alpha0, beta0, who):
    return _positive(alpha0, "alpha0", who), _positive(beta0, "beta0", who)


def normal_gamma(alpha0: float = 1.0, beta0: float = 1.0, mu0: float = 0.0, kappa0: float = 1.0) -> Prior:
    """PyVarInf's ``conjugate`` prior (SPEC 6.2): per tensor, the elements are i.i.d.
    N(mu, 1/lambda) with (mu, lambda) ~ NormalGamma(mu0, kappa0, alpha0, beta0)
    (lambda ~ Gamma(alpha0, rate beta0), mu | lambda ~ N(mu0, 1/(kappa0 lambda))),
    marginalised: with n elements, mean m, V = sum (w - m)^2,
    ``log p = lnG(a_n) - lnG(a0) + a0 ln b0 - a_n ln b_n + 0.5 ln(k0 / k_n) - (n/2) ln 2pi``,
    ``a_n = a0 + n/2``, ``k_n = k0 + n``, ``b_n = b0 + V/2 + k0 n (m - mu0)^2 / (2 k_n)``.
    Not factorised over elements; no closed-form KL."""
    who = "priors.normal_gamma"
    a0, b0 = _gamma_params(alpha0, beta0, who)
    k0 = _positive(kappa0, "kappa0", who)
    if isinstance(mu0, bool) or not isinstance(mu0, (int, float)) or not math.isfinite(mu0):
        raise ValueError(f"{who}: mu0 must be a finite number, got {mu0!r}")

    def leaf(x):
        x = x.reshape(-1)
        n = x.numel()
        m = x.mean()
        v = ((x - m) ** 2).sum()
        a_n, k_n = a0 + n / 2, k0 + n
        b_n = b0 + v / 2 + k0 * n * (m - mu0) ** 2 / (2 * k_n)
        return (math.lgamma(a_n) - math.lgamma(a0) + a0 * math.log(b0) - a_n * torch.log(b_n)
                + 0.5 * math.log(k0 / k_n) - 0.5 * n * _LOG_2PI)

    def log_prob(params):
        return sum((leaf(x) for x in tree.leaves(params)), torch.zeros(()))

    return Prior(log_prob, None, f"normal_gamma(alpha0={a0:g}, beta0={b0:g}, mu0={mu0:g}, kappa0={k0:g})")


def known_mean_gamma(mean: float = 0.0, alpha0: float = 1.0, beta0: float = 1.0) -> Prior:
    """PyVarInf's ``conjugate_known_mean`` prior (SPEC 6.2): per tensor, i.i.d.
    N(mean, 1/lambda) elements with lambda ~ Gamma(alpha0, rate beta0), marginalised:
    ``log p = lnG(a_n) - lnG(a0) + a0 ln b0 - a_n ln b_n - (n/2) ln 2pi``,
    ``a_n = a0 + n/2``, ``b_n = b0 + sum (w - mean)^2 / 2``. No closed-form KL."""
    who = "priors.known_mean_gamma"
    a0, b0 = _gamma_params(alpha0, beta0, who)
    if isinstance(mean, bool) or not isinstance(mean, (int, float)) or not math.isfinite(mean):
        raise ValueError(f"{who}: mean must be a finite number, got {mean!r}")

    def leaf(x):
        n = x.numel()
        a_n = a0 + n / 2
        b_n = b0 + ((x - mean) ** 2).sum() / 2
        return math.lgamma(a_n) - math.lgamma(a0) + a0 * math.log(b0) - a_n * torch.log(b_n) \
            - 0.5 * n * _LOG_2PI

    def log_prob(params):
        return sum((leaf(x) for x in tree.leaves(params)), torch.zeros(()))

    return Prior(log_prob, None, f"known_mean_gamma(mean={mean:g}, alpha0={a0:g}, beta0={b0:g})")


def pyvarinf_mixture(sigma1: float = 1.0, sigma2: float = 0.01, pi: float = 0.5) -> Prior:
    """PyVarInf's ``mixtgauss`` prior (SPEC 6.2), per element:
    ``log(pi e^(-w^2 / 2 s1^2) / s1 + (1 - pi) e^(-w^2 / 2 s2^2) / s2 + 1e-8) - 0.5 ln 2pi``
    (the 1e-8 as in the reference; computed as a three-term log-sum-exp)."""
    who = "priors.pyvarinf_mixture"
    s1, s2 = _positive(sigma1, "sigma1", who), _positive(sigma2, "sigma2", who)
    if isinstance(pi, bool) or not isinstance(pi, (int, float)) or not 0.0 < pi < 1.0:
        raise ValueError(f"{who}: pi must be in (0, 1), got {pi!r}")
    c1, c2, c3 = math.log(pi) - math.log(s1), math.log1p(-pi) - math.log(s2), math.log(1e-8)

    def leaf(x):
        terms = torch.stack([c1 - 0.5 * (x / s1) ** 2, c2 - 0.5 * (x / s2) ** 2,
                             torch.full_like(x, c3)])
        return (torch.logsumexp(terms, dim=0) - 0.5 * _LOG_2PI).sum()

    def log_prob(params):
        return sum((leaf(x) for x in tree.leaves(params)), torch.zeros(()))

    return Prior(log_prob, None, f"pyvarinf_mixture(sigma1={s1:g}, sigma2={s2:g}, pi={pi:g})")


def log_prob_elements(prior: Prior, x: torch.Tensor) -> torch.Tensor:
    """Per-element log density ``x.shape`` of a prior that factorises over elements
    (normal, Laplace, per-weight mixtures), by ``vmap`` over the elements. Raises
    ``ValueError`` when the elements do not sum to ``prior.log_prob(x)`` (joint-sum
    mixtures, conjugate priors): such a prior has no per-element density."""
    from torch.func import vmap
    if not isinstance(prior, Prior):
        raise ValueError(f"log_prob_elements: expected one Prior, got {type(prior).__name__}")
    flat = x.detach().reshape(-1).to(torch.float64)
    per = vmap(prior.log_prob)(flat)
    whole = prior.log_prob(flat)
    if not torch.allclose(per.sum(), whole.to(per.dtype), rtol=1e-6, atol=1e-6):
        raise ValueError(f"prior {prior.name} does not factorise over elements (its per-element "
                         f"terms sum to {float(per.sum()):.6g}, not {float(whole):.6g})")
    return per.reshape(x.shape).to(x.dtype)


def kl_elements(prior: Prior, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-element closed-form KL(N(mean, std^2) || prior), ``mean.shape``."""
    from torch.func import vmap
    if not isinstance(prior, Prior) or prior.kl is None:
        name = prior.name if isinstance(prior, Prior) else type(prior).__name__
        raise ValueError(f"kl_elements: prior {name} has no closed-form KL")
    per = vmap(prior.kl)(mean.reshape(-1), std.reshape(-1))
    return per.reshape(mean.shape)
