"""Models as pairs of pure functions over parameter pytrees.

A ``Model`` has
- ``init(key) -> params``: a flat dict ``{name: tensor}`` (weights in ``nn.Linear``'s
  ``(out, in)`` layout);
- ``apply(params, x, *, key=None, state=None) -> out``: evaluation mode. Stochastic
  layers (dropout) are active exactly when a ``key`` is given, so the same call gives a
  deterministic prediction (``key=None``) or one MC-dropout sample (a key);
- ``init_state() -> state``: non-trainable buffers (BatchNorm running statistics),
  ``{}`` for stateless models;
- ``apply_train(params, state, x, *, key=None) -> (out, new_state)``: training mode
  (BatchNorm uses batch statistics and returns updated running statistics).
Nothing mutates its inputs and nothing draws from torch's global RNG.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import math
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from . import random as fr
from . import tree

__all__ = ["Model", "mlp", "lenet", "from_module", "KeyedDropout", "linear_init"]


class Model(NamedTuple):
    init: Callable
    apply: Callable
    init_state: Callable
    apply_train: Callable
    name: str = "model"


_ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu, "sigmoid": torch.sigmoid,
                "elu": F.elu, "silu": F.silu}


def _activation(name: str) -> Callable:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def linear_init(key, fan_in: int, shape) -> torch.Tensor:
    """PyTorch's default ``nn.Linear``/``Conv`` init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return fr.uniform(key, shape, low=-bound, high=bound)


def _dropout(key, h: torch.Tensor, p: float) -> torch.Tensor:
    keep = fr.bernoulli(key, 1.0 - p, h.shape)
    return h * keep / (1.0 - p)


def _stateless(apply: Callable) -> Callable:
    def apply_train(params, state, x, *, key=None):
        return apply(params, x, key=key), state
    return apply_train


def _check_features(x: torch.Tensor, n_in: int, who: str) -> None:
    if x.dim() < 1 or x.shape[-1] != n_in:
        raise ValueError(f"{who}: input of shape {tuple(x.shape)} does not fit: "
                         f"expected (..., {n_in})")


def mlp(sizes: Sequence[int], activation: str = "relu", dropout: float | None = None,
        head: str | None = None, name: str = "mlp") -> Model:
    """Fully connected net ``sizes[0] -> ... -> sizes[-1]``.

    ``dropout`` (probability p) acts on every hidden pre-activation, with inverted
    scaling 1/(1-p), when ``apply`` gets a key (SPEC 3.5). ``head``:
    - ``None``: plain output ``(B, sizes[-1])``;
    - ``"hetero"``: the last layer has ``2 D`` outputs, read as ``[mean, log_sigma]``;
    - ``"homo"``: a learnt global ``log_sigma`` parameter ``(D,)`` (init 0) is appended,
      giving the same ``(B, 2 D)`` layout with a shared noise level.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"mlp: sizes must hold at least two positive ints, got {sizes}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"mlp: dropout probability must be in [0, 1), got {dropout}")
    if head not in (None, "hetero", "homo"):
        raise ValueError(f"mlp: head must be None, 'hetero' or 'homo', got {head!r}")
    act = _activation(activation)
    dims = list(sizes)
    if head == "hetero":
        dims[-1] = 2 * sizes[-1]
    n_layers = len(dims) - 1

    def init(key):
        keys = fr.split(key, 2 * n_layers)
        params = {}
        for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
            params[f"fc{i}.weight"] = linear_init(keys[2 * i], n_in, (n_out, n_in))
            params[f"fc{i}.bias"] = linear_init(keys[2 * i + 1], n_in, (n_out,))
        if head == "homo":
            params["log_sigma"] = torch.zeros(sizes[-1])
        return params

    def apply(params, x, *, key=None, state=None):
        _check_features(x, dims[0], name)
        keys = fr.split(key, n_layers) if (key is not None and dropout) else None
        h = x
        for i in range(n_layers):
            h = F.linear(h, params[f"fc{i}.weight"], params[f"fc{i}.bias"])
            if i < n_layers - 1:
                if keys is not None:
                    h = _dropout(keys[i], h, dropout)
                h = act(h)
        if head == "homo":
            h = torch.cat([h, params["log_sigma"].expand_as(h)], dim=-1)
        return h

    return Model(init, apply, dict, _stateless(apply), name)


# ---------------------------------------------------------------------------------------
# Any torch module as a pure model

_DROPOUT_KEY: contextvars.ContextVar = contextvars.ContextVar("fbnn_dropout_key", default=None)


@contextlib.contextmanager
def _dropout_key(key):
    token = _DROPOUT_KEY.set(key)
    try:
        yield
    finally:
        _DROPOUT_KEY.reset(token)


class KeyedDropout(nn.Module):
    """Dropout whose mask comes from the key passed to ``apply``, not torch's global RNG.

    Active exactly when a key is given (in training and for MC-dropout prediction).
    """

    def __init__(self, p: float, index: int, channelwise: bool = False):
        super().__init__()
        self.p, self.index, self.channelwise = float(p), index, channelwise

    def forward(self, x):
        key = _DROPOUT_KEY.get()
        if key is None or self.p == 0.0:
            return x
        shape = x.shape[:2] + (1,) * (x.dim() - 2) if self.channelwise else x.shape
        keep = fr.bernoulli(fr.fold_in(key, self.index), 1.0 - self.p, shape)
        return x * keep / (1.0 - self.p)


def _replace_dropout(module: nn.Module) -> nn.Module:
    count = 0

    def visit(mod):
        nonlocal count
        for child_name, child in mod.named_children():
            if isinstance(child, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
                channelwise = not isinstance(child, nn.Dropout)
                setattr(mod, child_name, KeyedDropout(child.p, count, channelwise))
                count += 1
            elif isinstance(child, (nn.AlphaDropout, nn.FeatureAlphaDropout)):
                raise ValueError(f"from_module: {type(child).__name__} is not supported")
            else:
                visit(child)

    visit(module)
    return module


def _keyed_default_init(module: nn.Module, key) -> dict:
    """Keyed versions of torch's default inits for common layers; other params are copied."""
    params = {name: p.detach().clone() for name, p in module.named_parameters()}
    owners = dict(module.named_modules())
    for i, name in enumerate(sorted(params)):
        owner_name, _, leaf = name.rpartition(".")
        owner = owners[owner_name]
        k = fr.fold_in(key, i)
        if isinstance(owner, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and leaf in ("weight", "bias"):
            fan_in = owner.weight[0].numel()
            params[name] = linear_init(k, fan_in, params[name].shape)
        elif isinstance(owner, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
            params[name] = torch.ones_like(params[name]) if leaf == "weight" else torch.zeros_like(params[name])
    return params


def from_module(module: nn.Module, input_shape: Sequence[int] | None = None,
                name: str | None = None) -> Model:
    """A pure ``Model`` from any ``nn.Module`` through ``torch.func.functional_call``.

    Parameters become the params dict (named as in ``named_parameters``); buffers
    (BatchNorm running statistics) become the model state, updated functionally by
    ``apply_train``. ``nn.Dropout*`` layers are replaced by ``KeyedDropout``. ``init(key)``
    uses keyed versions of torch's default inits for Linear/Conv/norm layers and copies
    the module's current values for any other parameter. ``input_shape`` (per example,
    e.g. ``(1, 28, 28)``) reshapes flat inputs ``(B, prod)`` before the module.
    The module passed in is copied, never modified.
    """
    eval_mod = _replace_dropout(copy.deepcopy(module)).eval()
    train_mod = copy.deepcopy(eval_mod).train()
    for m in (eval_mod, train_mod):
        for p in m.parameters():
            p.requires_grad_(False)
    buffers0 = {k: b.detach().clone() for k, b in eval_mod.named_buffers()}
    in_shape = tuple(input_shape) if input_shape is not None else None
    label = name or type(module).__name__

    def reshape(x):
        if in_shape is None:
            return x
        n = math.prod(in_shape)
        if x.shape[-1] != n and tuple(x.shape[-len(in_shape):]) != in_shape:
            raise ValueError(f"{label}: input of shape {tuple(x.shape)} does not fit: expected "
                             f"(B, {n}) or (B, {', '.join(map(str, in_shape))})")
        return x.reshape(*x.shape[:-1], *in_shape) if x.shape[-1] == n and len(in_shape) > 1 else x

    def init(key):
        return _keyed_default_init(eval_mod, key)

    def init_state():
        return tree.clone(buffers0)

    def apply(params, x, *, key=None, state=None):
        tensors = {**params, **(buffers0 if state is None else state)}
        with _dropout_key(key):
            return functional_call(eval_mod, tensors, (reshape(x),))

    def apply_train(params, state, x, *, key=None):
        new_state = tree.clone(state)  # BatchNorm updates these copies in place
        with _dropout_key(key):
            out = functional_call(train_mod, {**params, **new_state}, (reshape(x),))
        return out, new_state

    return Model(init, apply, init_state, apply_train, label)


def lenet(n_classes: int = 10, dropout: float = 0.5) -> Model:
    """LeNet of SPEC 6.1: conv(1->20,k5)-ReLU-pool2, conv(20->50,k5)-ReLU-pool2,
    FC 800->500-ReLU-dropout, FC 500->K. Inputs ``(B, 784)`` or ``(B, 1, 28, 28)``."""
    with torch.random.fork_rng(devices=[]):  # module constructors draw from the global RNG
        net = nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(500, n_classes))
    return from_module(net, input_shape=(1, 28, 28), name="lenet")
