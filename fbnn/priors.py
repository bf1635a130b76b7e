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


def _positive(value, what, who):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{who}: {what} must be a finite number > 0, got {value!r}")
    return float(value)


def normal(sigma: float = 1.0, mean: float = 0.0) -> Prior:
    """Independent N(mean, sigma^2) on every element."""
    sigma = _positive(sigma, "sigma", "priors.normal")

    def log_prob(params):
        return sum((-0.5 * ((x - mean) / sigma) ** 2 - math.log(sigma) - 0.5 * _LOG_2PI).sum()
                   for x in tree.leaves(params))

    def kl(q_mean, q_std):
        def leaf(m, s):
            return (math.log(sigma) - torch.log(s) + (s ** 2 + (m - mean) ** 2) / (2 * sigma ** 2) - 0.5).sum()
        return sum(leaf(m, s) for m, s in zip(tree.leaves(q_mean), tree.leaves(q_std)))

    return Prior(log_prob, kl, f"normal(sigma={sigma:g})")


def laplace(scale: float = 1.0, mean: float = 0.0) -> Prior:
    """Independent Laplace(mean, b=scale) on every element: ``-log(2b) - |x - mean| / b``."""
    b = _positive(scale, "scale", "priors.laplace")

    def log_prob(params):
        return sum((-math.log(2 * b) - (x - mean).abs() / b).sum() for x in tree.leaves(params))

    return Prior(log_prob, None, f"laplace(b={b:g})")


def log_prior(prior: Prior | None, params) -> torch.Tensor:
    """``prior.log_prob(params)``, or 0 without a prior."""
    return torch.zeros(()) if prior is None else prior.log_prob(params)
