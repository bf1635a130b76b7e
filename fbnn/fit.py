"""The one training driver for every method.

``fit`` runs epochs of key-driven shuffled minibatches through ``method.step``. All
randomness comes from ``key``: epoch ``e`` shuffles with ``fold_in(key, e)`` and its
step ``i`` uses a key derived from the same epoch key, so a run is a pure function of
its inputs. After every epoch it can write a checkpoint atomically (temporary file,
then rename); ``resume=True`` continues from it and ends bit-identical to an
uninterrupted run. A non-finite loss stops the run with an error naming the epoch
and step. A ``Collector`` keeps posterior samples along the way (burn-in, thinning,
FIFO buffer), for SG-MCMC.
"""
from __future__ import annotations

import collections
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from tqdm.auto import tqdm

from . import random as fr
from . import tree
from .methods.base import Batch, Samples

__all__ = ["fit", "FitResult", "Collector", "atomic_write", "save_checkpoint", "load_checkpoint", "epoch_keys",
           "epoch_batches", "subset_epoch_batches"]


class FitResult(NamedTuple):
    state: Any
    history: list
    samples: Samples | None


class Collector:
    """Keeps ``method.sample(state, key, draws)`` after chosen epochs (or steps).

    Draws are kept at index ``t`` (0-based epoch, or global step when ``every="step"``)
    when ``t >= burn_in`` and ``(t - burn_in) % thin == 0``; the buffer keeps the last
    ``capacity`` collections (all when ``None``). ``draws`` is the number of samples per
    collection: 1 for one chain, ``n`` for ``ensemble(sampler, n)`` (one per chain).
    ``samples()`` stacks them collection-major: ``(collections * draws, ...)``.
    With ``directory`` the draws go to disk (one atomic file per collection, named by its
    index, the oldest deleted past ``capacity``) and the buffer holds only their paths, so
    a hundred samples of a large net need not sit in memory; ``iter_samples()`` reads them
    back one collection at a time.
    """

    def __init__(self, burn_in: int = 0, thin: int = 1, capacity: int | None = None, every: str = "epoch",
                 draws: int = 1, directory: str | os.PathLike | None = None):
        if burn_in < 0 or thin < 1 or (capacity is not None and capacity < 1) or draws < 1:
            raise ValueError(f"Collector: need burn_in >= 0, thin >= 1, capacity >= 1 or None, draws >= 1; "
                             f"got burn_in={burn_in}, thin={thin}, capacity={capacity}, draws={draws}")
        if every not in ("epoch", "step"):
            raise ValueError(f"Collector: every must be 'epoch' or 'step', got {every!r}")
        self.burn_in, self.thin, self.capacity, self.every, self.draws = burn_in, thin, capacity, every, draws
        self.directory = Path(directory) if directory is not None else None
        self.buffer: collections.deque = collections.deque()

    def wants(self, t: int) -> bool:
        return t >= self.burn_in and (t - self.burn_in) % self.thin == 0

    def add(self, method, state, key, t: int) -> None:
        draw = tree.clone(method.sample(state, key, self.draws))
        if self.directory is not None:
            path = self.directory / f"sample_{t:08d}.pt"
            save_checkpoint(path, draw)
            draw = str(path)
        self.buffer.append(draw)
        while self.capacity is not None and len(self.buffer) > self.capacity:
            old = self.buffer.popleft()
            if self.directory is not None and os.path.exists(old):
                os.unlink(old)

    def iter_samples(self):
        """The kept collections in order, each ``(draws, ...)``, loaded one at a time."""
        for item in self.buffer:
            yield load_checkpoint(item) if self.directory is not None else item

    def samples(self) -> Samples | None:
        if not self.buffer:
            return None
        return tree.map(lambda *xs: torch.cat(xs), *self.iter_samples())

    def validate(self, epochs: int, steps_per_epoch: int) -> None:
        horizon = epochs if self.every == "epoch" else epochs * steps_per_epoch
        if self.burn_in >= horizon:
            raise ValueError(f"Collector: burn_in ({self.burn_in} {self.every}s) is not shorter than "
                             f"the run ({horizon} {self.every}s); no sample would be kept")


def atomic_write(path, write: Callable, binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, then rename it over
    ``path``: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path, payload: dict) -> None:
    """``torch.save`` written atomically (see ``atomic_write``)."""
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, weights_only=False)
    except Exception as err:  # torch raises several types for a damaged file
        raise ValueError(f"checkpoint {path} is unreadable or corrupt: {err}") from err


def epoch_keys(key, epoch: int):
    """``(shuffle_key, step_key_base)`` for one epoch."""
    k = fr.split(fr.fold_in(key, epoch), 2)
    return k[0], k[1]


def _batches(n: int, batch_size: int, drop_last: bool):
    stop = n - n % batch_size if drop_last else n
    return [(s, min(s + batch_size, n)) for s in range(0, stop, batch_size)]


def _orders(shuffle_key, n: int, streams: int | None) -> torch.Tensor:
    """One epoch's example order: ``(n,)``, or ``(streams, n)`` independent shuffles."""
    if streams is None:
        return fr.permutation(shuffle_key, n)
    return torch.stack([fr.permutation(k, n) for k in fr.split(shuffle_key, streams)])


def epoch_batches(key, epoch: int, n: int, batch_size: int, streams: int | None = None, drop_last: bool = False,
                  order: Callable | None = None):
    """One epoch's minibatches as ``fit`` takes them: ``(i, idx, step_key)`` per step, ``idx``
    ``(B,)``, or ``(streams, B)`` for independent shuffles; ``order(epoch)`` in place of the
    key's shuffle when given (see ``fit``)."""
    shuffle_key, step_base = epoch_keys(key, epoch)
    order = _orders(shuffle_key, n, streams) if order is None else _given_order(order, epoch, n)
    for i, (lo, hi) in enumerate(_batches(n, batch_size, drop_last)):
        yield i, order[..., lo:hi], fr.fold_in(step_base, i)


def subset_epoch_batches(key, epoch: int, subsets, batch_size: int, drop_last: bool = False):
    """One epoch over per-stream example sets (``method.subsets``): ``(i, idx, weight,
    step_key)`` per step, ``idx`` and ``weight`` ``(streams, B)``. Stream ``s`` shuffles its
    own ``subsets[s]`` (its own key, as ``_orders``) and takes full batches of it; a stream
    that runs out before the longest is padded with row 0 at weight 0."""
    shuffle_key, step_base = epoch_keys(key, epoch)
    keys = fr.split(shuffle_key, len(subsets))
    orders = [sub[fr.permutation(k, sub.numel())] for sub, k in zip(subsets, keys)]
    if drop_last:
        orders = [o[:o.numel() - o.numel() % batch_size] for o in orders]
    steps = _subset_steps(subsets, batch_size, drop_last)
    idx = torch.zeros(len(orders), steps * batch_size, dtype=torch.int64)
    weight = torch.zeros(len(orders), steps * batch_size)
    for s, o in enumerate(orders):
        idx[s, :o.numel()] = o
        weight[s, :o.numel()] = 1.0
    for i in range(steps):
        cols = slice(i * batch_size, (i + 1) * batch_size)
        yield i, idx[:, cols], weight[:, cols], fr.fold_in(step_base, i)


def _subset_steps(subsets, batch_size: int, drop_last: bool) -> int:
    sizes = [s.numel() - (s.numel() % batch_size if drop_last else 0) for s in subsets]
    return max(math.ceil(m / batch_size) for m in sizes)


def _given_order(order: Callable, epoch: int, n: int) -> torch.Tensor:
    """``order(epoch)``, checked to be a permutation of ``range(n)``."""
    perm = order(epoch)
    if (not isinstance(perm, torch.Tensor) or perm.shape != (n,) or perm.dtype != torch.int64
            or not torch.equal(perm.sort().values, torch.arange(n))):
        raise ValueError(f"fit: order({epoch}) must be an int64 permutation of range({n}), got "
                         + (f"shape {tuple(perm.shape)}, dtype {perm.dtype}" if isinstance(perm, torch.Tensor)
                            else type(perm).__name__))
    return perm


def _epoch(key, epoch, n, batch_size, streams, drop_last, subsets, order=None):
    """``(i, idx, weight, step_key)`` per step: ``epoch_batches`` (weight ``None``) or
    ``subset_epoch_batches``."""
    if subsets is not None:
        yield from subset_epoch_batches(key, epoch, subsets, batch_size, drop_last)
        return
    for i, idx, step_key in epoch_batches(key, epoch, n, batch_size, streams, drop_last, order):
        yield i, idx, None, step_key


def _check_finite(info: dict, epoch: int, step: int, global_step: int) -> float:
    loss = info["loss"]
    if not torch.isfinite(loss).all():
        raise FloatingPointError(
            f"non-finite loss ({loss.tolist()}) at epoch {epoch}, step {step} "
            f"(global step {global_step}); lower the learning rate or check the data")
    return float(loss.mean())


def fit(method, state, data, key, *, epochs: int, batch_size: int, eval_fn: Callable | None = None,
        eval_every: int = 1, checkpoint: str | os.PathLike | None = None, resume: bool = False,
        collector: Collector | None = None, progress: bool = True, drop_last: bool = False,
        description: str | None = None, meta: dict | None = None, order: Callable | None = None) -> FitResult:
    """Train ``state`` with ``method`` on ``data = (x, y)`` for ``epochs`` epochs.

    ``eval_fn(state, epoch) -> dict`` runs every ``eval_every`` epochs and its numbers go
    into the history and the progress bar. ``checkpoint``: a file path written after
    every epoch; with ``resume=True`` an existing checkpoint is continued (its run
    settings must match). ``order(epoch) -> (n,)``: that epoch's example order in place of
    the shuffle drawn from ``key`` (to replay another program's data order, e.g.
    ``torch_draws.DataLoaderOrder``); a function of the epoch alone, so that resume is exact,
    whose ``repr`` is kept with the run settings. Returns ``FitResult(state, history, samples)``.
    """
    x, y = data
    n = x.shape[0]
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative int, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"fit: batch_size must be a positive int, got {batch_size!r}")
    method.check(state, x, y)
    spans = _batches(n, batch_size, drop_last)
    if not spans:
        raise ValueError(f"fit: no full batch of {batch_size} in {n} examples with drop_last=True")
    streams = method.streams
    subsets = method.subsets(state) if method.subsets is not None else None
    n_steps = len(spans) if subsets is None else _subset_steps(subsets, batch_size, drop_last)
    if n_steps == 0:
        raise ValueError(f"fit: no stream has a full batch of {batch_size} examples with drop_last=True")
    if collector is not None:
        collector.validate(epochs, n_steps)
    if order is not None and (streams is not None or subsets is not None):
        raise ValueError(f"fit: order gives one example order per epoch; method {method.name!r} trains "
                         f"{streams} streams{' on subsets' if subsets is not None else ''}, each with its own")
    settings = {"method": method.name, "n": n, "batch_size": batch_size, "drop_last": drop_last,
                "key": key.tolist()}
    if order is not None:
        settings["order"] = repr(order)
    if streams is not None:
        settings["streams"] = streams
    if subsets is not None:
        settings["subset_sizes"] = [s.numel() for s in subsets]

    history: list = []
    start_epoch, wall_before = 0, 0.0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        ckpt = load_checkpoint(checkpoint)
        if ckpt.get("settings") != settings:
            raise ValueError(f"checkpoint {checkpoint} comes from a different run: "
                             f"{ckpt.get('settings')} != {settings}")
        state, history, start_epoch = ckpt["state"], ckpt["history"], ckpt["epoch"]
        wall_before = ckpt.get("wall_s", 0.0)
        if collector is not None:
            collector.buffer.extend(ckpt.get("collected", []))

    t0 = time.perf_counter()
    bar = tqdm(total=(epochs - start_epoch) * n_steps, disable=not progress,
               desc=description or method.name, dynamic_ncols=True, mininterval=1.0)
    for epoch in range(start_epoch, epochs):
        losses = []
        t_epoch = time.perf_counter()
        for i, idx, weight, step_key in _epoch(key, epoch, n, batch_size, streams, drop_last, subsets, order):
            state, info = method.step(state, Batch(x[idx], y[idx], idx, weight), step_key)
            global_step = epoch * n_steps + i
            losses.append(_check_finite(info, epoch, i, global_step))
            if collector is not None and collector.every == "step" and collector.wants(global_step):
                collector.add(method, state, fr.fold_in(fr.fold_in(key, global_step), 1 << 20), global_step)
            bar.update(1)
            if i % 20 == 0:
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4g}", refresh=False)
        record = {"epoch": epoch, "loss": sum(losses) / len(losses),
                  "epoch_s": time.perf_counter() - t_epoch}
        if collector is not None and collector.every == "epoch" and collector.wants(epoch):
            collector.add(method, state, fr.fold_in(fr.fold_in(key, epoch), 1 << 21), epoch)
        if eval_fn is not None and ((epoch + 1) % eval_every == 0 or epoch == epochs - 1):
            record.update(eval_fn(state, epoch))
        history.append(record)
        if progress:
            bar.write(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in record.items()))
        bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in record.items()
                         if k != "epoch_s"})
        if checkpoint is not None:
            save_checkpoint(checkpoint, {
                "state": state, "epoch": epoch + 1, "history": history, "settings": settings,
                "collected": list(collector.buffer) if collector is not None else [],
                "wall_s": wall_before + time.perf_counter() - t0, "meta": meta})
    bar.close()
    if history:
        history[-1]["wall_s"] = wall_before + time.perf_counter() - t0
    return FitResult(state, history, collector.samples() if collector is not None else None)
