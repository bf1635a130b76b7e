"""Stateless optimizers in optax's shape.

A ``GradientTransformation`` is ``init(params) -> state`` and
``update(grads, state, params=None) -> (updates, state)``; ``apply_updates`` adds the
updates. States are pytrees of tensors (step counts included), so optimizers run
under ``vmap`` (ensembles) and inside checkpoints. ``sgd``, ``adam``, ``adamw`` and
``rmsprop`` follow ``torch.optim``'s exact semantics (SPEC 1.3), e.g. SGD with momentum
mu and weight decay wd: ``v <- mu v + (g + wd theta); theta <- theta - lr v``.
A learning rate is a float or a schedule ``count (int64 tensor) -> lr``.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Union

import torch

from . import tree

__all__ = [
    "GradientTransformation", "apply_updates", "chain", "identity", "scale", "scale_by_learning_rate",
    "add_decayed_weights", "trace", "scale_by_adam", "scale_by_rms", "clip_by_global_norm",
    "sgd", "adam", "adamw", "rmsprop", "constant_schedule", "exponential_decay",
    "cosine_decay", "cyclical_cosine", "piecewise_constant",
]

Schedule = Callable[[torch.Tensor], torch.Tensor]
ScalarOrSchedule = Union[float, Schedule]


class GradientTransformation(NamedTuple):
    init: Callable
    update: Callable


class EmptyState(NamedTuple):
    pass


class CountState(NamedTuple):
    count: torch.Tensor


class TraceState(NamedTuple):
    trace: dict


class AdamState(NamedTuple):
    count: torch.Tensor
    mu: dict
    nu: dict


class RmsState(NamedTuple):
    nu: dict


def apply_updates(params, updates):
    """``params + updates`` leafwise (returns new tensors; nothing is modified)."""
    return tree.map(lambda p, u: p + u.to(p.dtype), params, updates)


def _check_rate(value, what: str, who: str, allow_zero: bool = False):
    if callable(value):
        v = float(value(torch.zeros((), dtype=torch.int64)))
    else:
        v = value
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{who}: {what} must be a finite number {bound}, got {v!r}")


def _check_unit(value: float, what: str, who: str, closed_low: bool = True):
    ok = (0.0 <= value < 1.0) if closed_low else (0.0 < value < 1.0)
    if not ok:
        raise ValueError(f"{who}: {what} must be in {'[0' if closed_low else '(0'}, 1), got {value!r}")


def _value(rate: ScalarOrSchedule, count: torch.Tensor):
    return rate(count) if callable(rate) else rate


# --- building blocks -------------------------------------------------------------------

def identity() -> GradientTransformation:
    return GradientTransformation(lambda params: EmptyState(), lambda g, s, p=None: (g, s))


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations in order; the state is the tuple of their states."""
    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(grads, state, params=None):
        new_states = []
        for t, s in zip(transforms, state):
            grads, s = t.update(grads, s, params)
            new_states.append(s)
        return grads, tuple(new_states)

    return GradientTransformation(init, update)


def scale(factor: float) -> GradientTransformation:
    return GradientTransformation(lambda p: EmptyState(),
                                  lambda g, s, p=None: (tree.scale(g, factor), s))


def scale_by_learning_rate(lr: ScalarOrSchedule) -> GradientTransformation:
    """Multiply by ``-lr(count)``; the count starts at 0 and increases each update."""
    def init(params):
        return CountState(torch.zeros((), dtype=torch.int64))

    def update(grads, state, params=None):
        rate = _value(lr, state.count)
        return tree.scale(grads, -rate), CountState(state.count + 1)

    return GradientTransformation(init, update)


def add_decayed_weights(weight_decay: float, mask: Callable[[str], bool] | None = None) -> GradientTransformation:
    """``g + wd * theta`` (coupled, as ``torch.optim``'s ``weight_decay``).

    ``mask(name) -> bool`` restricts the decay to chosen top-level entries of a dict."""
    _check_rate(weight_decay, "weight_decay", "add_decayed_weights", allow_zero=True)

    def update(grads, state, params=None):
        if weight_decay == 0.0:
            return grads, state
        if params is None:
            raise ValueError("add_decayed_weights needs params")
        if mask is None:
            return tree.map(lambda g, p: torch.add(g, p, alpha=weight_decay), grads, params), state
        return {k: (g + weight_decay * params[k]) if mask(k) else g for k, g in grads.items()}, state

    return GradientTransformation(lambda p: EmptyState(), update)


def trace(momentum: float, nesterov: bool = False) -> GradientTransformation:
    """Heavy-ball momentum as ``torch.optim.SGD`` (dampening 0): ``v <- mu v + g``."""
    _check_unit(momentum, "momentum", "trace")

    def init(params):
        return TraceState(tree.zeros_like(params))

    def update(grads, state, params=None):
        if momentum == 0.0:
            return grads, state
        v = tree.map(lambda t, g: torch.add(g, t, alpha=momentum), state.trace, grads)  # one pass
        out = tree.map(lambda g, t: torch.add(g, t, alpha=momentum), grads, v) if nesterov else v
        return out, TraceState(v)

    return GradientTransformation(init, update)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """Adam's direction ``m_hat / (sqrt(v_hat) + eps)`` (``torch.optim.Adam``'s order of ops)."""
    _check_unit(b1, "b1", "scale_by_adam")
    _check_unit(b2, "b2", "scale_by_adam")
    _check_rate(eps, "eps", "scale_by_adam")

    def init(params):
        return AdamState(torch.zeros((), dtype=torch.int64), tree.zeros_like(params), tree.zeros_like(params))

    def update(grads, state, params=None):
        count = state.count + 1
        mu = tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        t = count.to(torch.float64)  # bias corrections in float64, as torch computes them
        bc1, bc2_sqrt = 1 - b1 ** t, torch.sqrt(1 - b2 ** t)
        direction = tree.map(lambda m, v: (m / bc1.to(m.dtype)) / (v.sqrt() / bc2_sqrt.to(v.dtype) + eps),
                             mu, nu)
        return direction, AdamState(count, mu, nu)

    return GradientTransformation(init, update)


def scale_by_rms(alpha: float = 0.99, eps: float = 1e-8) -> GradientTransformation:
    """RMSprop's ``g / (sqrt(v) + eps)`` with ``v <- alpha v + (1 - alpha) g^2``, ``v_0 = 0``."""
    _check_unit(alpha, "alpha", "scale_by_rms")
    _check_rate(eps, "eps", "scale_by_rms")

    def init(params):
        return RmsState(tree.zeros_like(params))

    def update(grads, state, params=None):
        nu = tree.map(lambda v, g: alpha * v + (1 - alpha) * g * g, state.nu, grads)
        return tree.map(lambda g, v: g / (v.sqrt() + eps), grads, nu), RmsState(nu)

    return GradientTransformation(init, update)


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Rescale so that the L2 norm over all leaves is at most ``max_norm``."""
    _check_rate(max_norm, "max_norm", "clip_by_global_norm")

    def update(grads, state, params=None):
        factor = torch.clamp(max_norm / (tree.norm(grads) + 1e-6), max=1.0)
        return tree.scale(grads, factor), state

    return GradientTransformation(lambda p: EmptyState(), update)


# --- torch.optim equivalents ----------------------------------------------------------

def sgd(lr: ScalarOrSchedule, momentum: float = 0.0, weight_decay: float = 0.0,
        nesterov: bool = False) -> GradientTransformation:
    """``torch.optim.SGD(lr, momentum, weight_decay, nesterov)`` with dampening 0."""
    _check_rate(lr, "learning rate", "sgd")
    if nesterov and momentum == 0.0:
        raise ValueError("sgd: nesterov momentum needs momentum > 0")
    return chain(add_decayed_weights(weight_decay), trace(momentum, nesterov), scale_by_learning_rate(lr))


def adam(lr: ScalarOrSchedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0) -> GradientTransformation:
    """``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient)."""
    _check_rate(lr, "learning rate", "adam")
    return chain(add_decayed_weights(weight_decay), scale_by_adam(b1, b2, eps), scale_by_learning_rate(lr))


def adamw(lr: ScalarOrSchedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 1e-2) -> GradientTransformation:
    """``torch.optim.AdamW``: decoupled decay ``theta <- theta - lr (adam_dir + wd theta)``."""
    _check_rate(lr, "learning rate", "adamw")
    return chain(scale_by_adam(b1, b2, eps), add_decayed_weights(weight_decay), scale_by_learning_rate(lr))


def rmsprop(lr: ScalarOrSchedule = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
            weight_decay: float = 0.0, momentum: float = 0.0) -> GradientTransformation:
    """``torch.optim.RMSprop`` (non-centred)."""
    _check_rate(lr, "learning rate", "rmsprop")
    return chain(add_decayed_weights(weight_decay), scale_by_rms(alpha, eps), trace(momentum),
                 scale_by_learning_rate(lr))


# --- schedules: count (int64 tensor) -> value -----------------------------------------

def constant_schedule(value: float) -> Schedule:
    return lambda count: torch.as_tensor(value, dtype=torch.float32)


def exponential_decay(init_value: float, decay_rate: float, transition_steps: int,
                      staircase: bool = False) -> Schedule:
    """``init * rate ** (count / transition_steps)``."""
    def schedule(count):
        p = count.to(torch.float32) / transition_steps
        return init_value * decay_rate ** (torch.floor(p) if staircase else p)
    return schedule


def cosine_decay(init_value: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    """Cosine from ``init`` to ``alpha * init`` over ``decay_steps``, then flat."""
    def schedule(count):
        t = torch.clamp(count.to(torch.float32), max=decay_steps) / decay_steps
        return init_value * ((1 - alpha) * 0.5 * (1 + torch.cos(math.pi * t)) + alpha)
    return schedule


def cyclical_cosine(init_value: float, cycle_steps: int) -> Schedule:
    """Cyclical SG-MCMC step size (Zhang et al. 2020): a cosine from ``init`` to 0 per cycle."""
    def schedule(count):
        t = torch.remainder(count, cycle_steps).to(torch.float32) / cycle_steps
        return init_value * 0.5 * (1 + torch.cos(math.pi * t))
    return schedule


def piecewise_constant(init_value: float, boundaries_and_scales: dict[int, float]) -> Schedule:
    """Multiply by ``scale`` once ``count >= boundary``, for each entry."""
    items = sorted(boundaries_and_scales.items())

    def schedule(count):
        value = torch.as_tensor(init_value, dtype=torch.float32)
        for boundary, s in items:
            value = torch.where(count >= boundary, value * s, value)
        return value
    return schedule
