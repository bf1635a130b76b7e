"""Log-likelihoods ``log p(y | out)`` per example.

A ``Likelihood`` holds ``log_lik(out, y) -> (B,)`` and ``check(out, y)``, which raises a
``ValueError`` naming what is wrong with the labels or targets for this output.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["Likelihood", "categorical", "gaussian", "split_mean_log_sigma"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Likelihood(NamedTuple):
    log_lik: Callable
    check: Callable
    name: str


def _categorical_log_lik(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``logits (B, K)``, ``y (B,)`` int -> ``(B,)``."""
    return torch.gather(F.log_softmax(logits, dim=-1), -1, y.long().unsqueeze(-1)).squeeze(-1)


def _categorical_check(out: torch.Tensor, y: torch.Tensor) -> None:
    n_classes = out.shape[-1]
    if y.dim() != 1:
        raise ValueError(f"categorical: labels must have shape (N,), got {tuple(y.shape)}")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise ValueError("categorical: labels must be integers")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"categorical: labels must lie in [0, {n_classes - 1}] for a model with "
                         f"{n_classes} outputs; got range [{int(y.min())}, {int(y.max())}]")


def categorical() -> Likelihood:
    """Softmax cross-entropy: ``log_softmax(out)[y]``."""
    return Likelihood(_categorical_log_lik, _categorical_check, "categorical")


def split_mean_log_sigma(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 2D) -> (mean (B, D), log_sigma (B, D))``."""
    d = out.shape[-1] // 2
    return out[..., :d], out[..., d:]


def gaussian(sigma: float | None = None, include_2pi: bool = True) -> Likelihood:
    """Gaussian log density, summed over output dimensions.

    - ``sigma`` a float: fixed noise level, ``out (B, D)`` is the mean;
    - ``sigma=None``: ``out (B, 2D)`` is ``[mean, log_sigma]`` (per input from a
      ``head="hetero"`` net, or a learnt global level from ``head="homo"``).
    ``y`` is ``(B,)`` for ``D = 1`` or ``(B, D)``. ``include_2pi=False`` drops the
    ``-0.5 log 2 pi`` constant as several seed notebooks do (SPEC 5.2).
    """
    if sigma is not None and not sigma > 0:
        raise ValueError(f"gaussian: sigma must be > 0, got {sigma}")
    const = _HALF_LOG_2PI if include_2pi else 0.0

    def log_lik(out, y):
        if sigma is None:
            mean, log_sigma = split_mean_log_sigma(out)
        else:
            mean, log_sigma = out, torch.full_like(out, math.log(sigma))
        y = y.reshape(mean.shape)
        z = (y - mean) * torch.exp(-log_sigma)
        return (-0.5 * z ** 2 - log_sigma - const).sum(-1)

    def check(out, y):
        d = out.shape[-1] // 2 if sigma is None else out.shape[-1]
        if sigma is None and out.shape[-1] % 2:
            raise ValueError(f"gaussian(sigma=None): model output must be (B, 2D) [mean, log_sigma], "
                             f"got last dimension {out.shape[-1]}")
        if not y.is_floating_point():
            raise ValueError(f"gaussian: targets must be floating point, got {y.dtype}")
        if y.shape[1:] not in ((), (d,)) or (y.dim() == 1 and d != 1):
            raise ValueError(f"gaussian: targets of shape {tuple(y.shape)} do not fit an output of "
                             f"{d} dimension(s)")
        if not torch.isfinite(y).all():
            raise ValueError("gaussian: targets contain NaN or inf")

    return Likelihood(log_lik, check, "gaussian")
