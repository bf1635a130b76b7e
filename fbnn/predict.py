"""Posterior predictives over stacked samples, with bounded memory.

``predict`` vmaps ``model.apply`` over the sample axis, in chunks over samples (and over
inputs only when one sample over all inputs would not fit), so peak memory stays near a
budget the caller sets. The budget is turned into chunk sizes by measuring, once, the
bytes that a forward pass allocates per sample and per input (every new op output
counted: an upper bound on what is alive at once).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import vmap
from torch.utils._python_dispatch import TorchDispatchMode

from . import random as fr
from . import tree
from .methods.base import Samples

__all__ = ["predict", "predict_probs", "predictive", "forward_bytes", "chunk_sizes"]


class _ByteCounter(TorchDispatchMode):
    """Sums the bytes of every new tensor an op returns (views of inputs are not counted)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {t.untyped_storage().data_ptr() for t in tree.leaves((args, kwargs))
                if isinstance(t, torch.Tensor)}
        for t in tree.leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.bytes += t.numel() * t.element_size()
        return out


def _bytes_of_forward(model, params, x, model_state, key) -> int:
    counter = _ByteCounter()
    with torch.no_grad(), counter:
        model.apply(params, x, key=key, state=model_state)
    return counter.bytes


def forward_bytes(model, params, x: torch.Tensor, model_state=None, key=None) -> tuple[int, int]:
    """``(per_sample, per_input)``: bytes one forward pass allocates, split into a part fixed
    per parameter sample and a part per input (measured on 1 and 2 inputs of ``x``)."""
    one = _bytes_of_forward(model, params, x[:1], model_state, key)
    two = _bytes_of_forward(model, params, x[:1].expand(2, *x.shape[1:]), model_state, key)
    per_input = max(two - one, 1)
    return max(one - per_input, 0), per_input


def chunk_sizes(n_samples: int, n_inputs: int, bytes_per_sample: int, bytes_per_input: int,
                max_bytes: int, work_bytes: int = 2 ** 22) -> tuple[int, int]:
    """``(sample_chunk, input_chunk)`` so that a chunk's forward pass allocates at most
    ``max_bytes`` (at least one sample and one input). All inputs stay together when
    possible: chunking over samples changes no random draw. Within the budget, samples
    are grouped up to ``work_bytes`` per chunk: on a CPU, chunks much larger than the
    caches run slower, not faster."""
    per_sample = bytes_per_sample + bytes_per_input * n_inputs
    if per_sample <= max_bytes:
        return max(1, min(n_samples, min(max_bytes, work_bytes) // per_sample)), n_inputs
    room = max(max_bytes - bytes_per_sample, bytes_per_input)
    return 1, max(1, min(n_inputs, room // bytes_per_input))


def _as_samples(samples) -> Samples:
    if isinstance(samples, Samples):
        return samples
    return Samples(samples, {})


def predict(model, samples, x: torch.Tensor, *, key=None, transform: Callable | None = None,
            max_bytes: int = 2 ** 30, work_bytes: int = 2 ** 22, sample_chunk: int | None = None,
            input_chunk: int | None = None) -> torch.Tensor:
    """Outputs of every sample on every input: ``(S, B, ...)``.

    ``samples``: a ``Samples`` or a params pytree with leading axis ``S``. ``key``: when
    given, draw ``s`` gets ``split(key, S)[s]`` (MC-dropout masks); otherwise the model
    runs deterministically. ``transform`` (e.g. ``softmax``) is applied per chunk to the
    outputs before they are stored. ``max_bytes`` bounds what one chunk's forward pass
    allocates (the stored ``(S, B, ...)`` outputs come on top); ``work_bytes`` is the
    preferred chunk size within it (see ``chunk_sizes``). Runs under ``no_grad``.
    """
    samples = _as_samples(samples)
    params, model_state = samples.params, samples.model_state
    n_samples = tree.leaves(params)[0].shape[0]
    n_inputs = x.shape[0]
    keys = fr.split(key, n_samples) if key is not None else None
    if sample_chunk is None or input_chunk is None:
        first = tree.index(params, 0)
        first_state = tree.index(model_state, 0)
        fixed, per_input = forward_bytes(model, first, x, first_state, None if keys is None else keys[0])
        auto_s, auto_b = chunk_sizes(n_samples, n_inputs, fixed, per_input, max_bytes, work_bytes)
        sample_chunk = sample_chunk or auto_s
        input_chunk = input_chunk or auto_b

    def one(p, ms, k, xb):
        out = model.apply(p, xb, key=k, state=ms)
        return transform(out) if transform is not None else out

    batched = vmap(one, in_dims=(0, 0, None if keys is None else 0, None))
    rows = []
    with torch.no_grad():
        for s0 in range(0, n_samples, sample_chunk):
            sl = slice(s0, s0 + sample_chunk)
            p, ms = tree.index(params, sl), tree.index(model_state, sl)
            k = None if keys is None else keys[sl]
            rows.append(torch.cat([batched(p, ms, k, x[b0:b0 + input_chunk])
                                   for b0 in range(0, n_inputs, input_chunk)], dim=1))
    return torch.cat(rows, dim=0)


def predict_probs(model, samples, x, *, key=None, **kw) -> torch.Tensor:
    """Per-sample class probabilities ``(S, B, K)`` (softmax applied inside each chunk)."""
    return predict(model, samples, x, key=key, transform=lambda o: F.softmax(o, dim=-1), **kw)


def predictive(method, state, x, key, n_samples: int, *, probs: bool = True, **kw) -> torch.Tensor:
    """Draw ``n_samples`` from ``method`` and predict: ``(S, B, ...)``.

    Class probabilities when ``probs`` (average them over ``S`` for the predictive
    p(y|x), SPEC 1.4); raw outputs otherwise."""
    k_sample, k_predict = fr.split(key, 2)
    samples = method.sample(state, k_sample, n_samples)
    k = k_predict if method.keyed else None
    fn = predict_probs if probs else predict
    return fn(method.model, samples, x, key=k, **kw)
