"""Explicit PRNG keys, in the style of ``jax.random``.

A key is an int64 tensor of shape ``(2,)`` holding two 32-bit words. ``split`` and
``fold_in`` derive new keys by hashing with plain integer arithmetic (Python ints for
a single key outside every transform, int64 tensors otherwise, the same words either
way), so they work under ``vmap`` and ``grad``. Every draw seeds a private
``torch.Generator`` from the key: the same key gives bitwise the same numbers, and
torch's global RNG is never read or changed. Under ``vmap`` key arithmetic and draws run once on the plain batch
of keys behind the batched tensors (``_lift``), so a function that draws from a key
can be ``vmap``-ed over a batch of keys, and the result equals a Python loop over
those keys bit for bit.
"""
from __future__ import annotations

import torch
from torch._C._functorch import (_add_batch_dim, get_unwrapped, is_batchedtensor, is_functorch_wrapped_tensor,
                                 maybe_current_level, maybe_get_bdim, maybe_get_level)

__all__ = [
    "key", "split", "fold_in", "is_key", "seed_of",
    "normal", "uniform", "bernoulli", "permutation", "gamma", "randint",
]

_MASK32 = 0xFFFFFFFF


def key(seed: int) -> torch.Tensor:
    """A key ``(2,)`` int64 from a non-negative integer seed (any size; folded to 64 bits)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"key(seed): seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"key(seed): seed must be non-negative, got {seed}")
    seed &= (1 << 64) - 1
    return _mix(torch.tensor([seed >> 32, seed & _MASK32], dtype=torch.int64))


def is_key(k) -> bool:
    return isinstance(k, torch.Tensor) and k.dtype == torch.int64 and k.shape[-1:] == (2,)


def _check_key(k, who: str) -> None:
    if not is_key(k):
        shape = tuple(k.shape) if isinstance(k, torch.Tensor) else type(k).__name__
        raise TypeError(f"{who}: expected a key (int64 tensor of shape (..., 2), "
                        f"from fbnn.random.key), got {shape}")


def _fmix32(x):
    # murmur3's 32-bit finaliser on uint32 values held in Python ints or int64 tensors;
    # products are masked back to 32 bits (int64 wraps, and the low 32 bits are exact).
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


# The hash below is written once for both Python ints (one plain key: a few microseconds)
# and int64 tensors (batches of keys, keys under vmap); both give the same words bit for bit.

def _mix2(a, b):
    """Two rounds of a two-word hash."""
    a, b = a & _MASK32, b & _MASK32
    for c in (0x9E3779B9, 0x7F4A7C15):
        a = _fmix32(a ^ ((b * 0x27D4EB2F + c) & _MASK32))
        b = _fmix32(b ^ ((a * 0x165667B1 + c) & _MASK32))
    return a, b


def _fold_in2(a, b, d):
    lo, hi = d & _MASK32, (d >> 32) & _MASK32
    a, b = _mix2(a ^ lo, (b + lo * 0x2545F491) & _MASK32)
    return _mix2(a ^ hi, (b + hi * 0x5851F42D + 1) & _MASK32)


def _split2(a, b, counter):
    return _mix2(a ^ counter, (b + counter * 0x2545F491 + 1) & _MASK32)


def _mix(words: torch.Tensor) -> torch.Tensor:
    """``(..., 2) -> (..., 2)``."""
    return torch.stack(_mix2(words[..., 0], words[..., 1]), dim=-1)


def _fold_in(k: torch.Tensor, d: torch.Tensor, num: int) -> torch.Tensor:
    return torch.stack(_fold_in2(k[..., 0], k[..., 1], d), dim=-1)


def _split(k: torch.Tensor, d: torch.Tensor, num: int) -> torch.Tensor:
    return torch.stack(_split2(k[..., 0:1], k[..., 1:2], torch.arange(num, dtype=torch.int64)), dim=-1)


def _key_op(k, d, op, num):
    """``op`` on keys ``k (..., 2)`` and data ``d``, which broadcast right-aligned per
    example; under ``vmap`` it runs once on the whole batch (see ``_lift``)."""
    def run(k, d, nb):
        # the nb leading axes are vmap batch axes: pad the per-example axes after them
        lead, k_ex, d_ex = k.shape[:nb], k.shape[nb:-1], d.shape[nb:]
        rank = max(len(k_ex), len(d_ex))
        k = k.reshape((*lead, *(1,) * (rank - len(k_ex)), *k_ex, 2))
        d = d.reshape((*lead, *(1,) * (rank - len(d_ex)), *d_ex))
        return op(k, d, num)
    return _lift(run, [k, d])


_INT64 = range(-(1 << 63), 1 << 63)
_FAST_SPLIT = 16  # up to this many subkeys, Python ints beat a tensor op's overhead


def _plain_words(k: torch.Tensor):
    """The two words of a single key outside every transform, else None."""
    return k.tolist() if k.dim() == 1 and not is_functorch_wrapped_tensor(k) else None


def fold_in(k: torch.Tensor, data) -> torch.Tensor:
    """A new key from ``k`` and an integer (or int64 tensor) ``data``: ``(2,) -> (2,)``.

    All 64 bits of ``data`` count: the low word is folded in, mixed, then the high word."""
    _check_key(k, "fold_in")
    words = _plain_words(k)
    if words is not None:
        if isinstance(data, torch.Tensor) and data.dim() == 0 and not is_functorch_wrapped_tensor(data) \
                and not data.dtype.is_floating_point:
            data = int(data)
        if isinstance(data, int) and data in _INT64:
            return torch.tensor(_fold_in2(*words, data), dtype=torch.int64)
    return _key_op(k, torch.as_tensor(data, dtype=torch.int64), _fold_in, 0)


def split(k: torch.Tensor, num: int = 2) -> torch.Tensor:
    """``num`` independent keys from one: ``(..., 2) -> (..., num, 2)``."""
    _check_key(k, "split")
    if num < 1:
        raise ValueError(f"split: num must be >= 1, got {num}")
    words = _plain_words(k) if num <= _FAST_SPLIT else None
    if words is not None:
        return torch.tensor([_split2(*words, i) for i in range(num)], dtype=torch.int64)
    return _key_op(k, torch.zeros((), dtype=torch.int64), _split, num)


def seed_of(k: torch.Tensor) -> int:
    """The 64-bit integer seed of a concrete (unbatched) key.

    torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, which here is the
    key's second word: two keys whose second words agree give the same draws. ``split`` and
    ``fold_in`` mix both words into each, so that happens only by chance, with probability
    2^-32 per pair of keys (about one pair among 10^5 draws, a few hundred among 10^6)."""
    hi, lo = k.tolist()
    return ((hi & _MASK32) << 32) | (lo & _MASK32)


_GENERATOR = torch.Generator()  # reseeded for every draw, which fixes its whole state


def _generator(k: torch.Tensor) -> torch.Generator:
    return _GENERATOR.manual_seed(seed_of(k))


def _draw_concrete(k, kind, shape, dtype, arg):
    g = _generator(k)
    if kind == "normal":
        return torch.randn(shape, generator=g, dtype=dtype)
    if kind == "uniform":
        return torch.rand(shape, generator=g, dtype=dtype)
    if kind == "permutation":
        return torch.randperm(shape[0], generator=g)
    if kind == "randint":
        return torch.randint(0, arg, shape, generator=g)
    if kind == "gamma":
        return torch._standard_gamma(torch.full(shape, arg, dtype=torch.float64), generator=g).to(dtype)
    raise ValueError(f"unknown draw kind {kind!r}")


def _peel(x: torch.Tensor) -> torch.Tensor:
    """Strip the wrappers of non-batching transforms (``grad``): keys and draws are
    constants to them."""
    while is_functorch_wrapped_tensor(x) and not is_batchedtensor(x):
        x = get_unwrapped(x)
    return x


def _lift(fn, args, nb: int = 0):
    """``fn(*plain_args, nb)`` on the plain tensors behind ``vmap``'s batched ones.

    Keys are integers and draws are constants to every transform, so instead of going
    op by op through vmap's batching (slow for the dozens of small ops of a hash, and
    impossible for a seeded generator), each batching level is unwrapped with its batch
    axis moved to the front (arguments it does not batch are expanded), ``fn`` runs
    once on plain tensors with ``nb`` leading batch axes, and the result is wrapped
    back level by level. This is exactly what a loop over the batch computes.
    """
    args = [_peel(a) for a in args]
    levels = [maybe_get_level(a) if is_batchedtensor(a) else -1 for a in args]
    top = max(levels)
    if top < 0:
        if maybe_current_level() is None:
            return fn(*args, nb)
        with torch._C._DisableFuncTorch():
            return fn(*args, nb)
    size = next(get_unwrapped(a).shape[maybe_get_bdim(a)] for a, lv in zip(args, levels) if lv == top)
    inner = [get_unwrapped(a).movedim(maybe_get_bdim(a), 0) if lv == top else a.expand(size, *a.shape)
             for a, lv in zip(args, levels)]
    return _add_batch_dim(_lift(fn, inner, nb + 1), 0, top)


def _dispatch(k, kind, shape, dtype, arg):
    def run(k, nb):
        if nb == 0:
            return _draw_concrete(k, kind, shape, dtype, arg)
        keys = k.reshape(-1, 2)  # one draw per key, as a loop over the batch would
        if kind in ("normal", "uniform"):
            # drawn straight into one buffer (bitwise the per-key draws, without a stack's copy)
            out = torch.empty((keys.shape[0], *shape), dtype=dtype)
            fill = torch.randn if kind == "normal" else torch.rand
            for i in range(keys.shape[0]):
                fill(shape, generator=_generator(keys[i]), dtype=dtype, out=out[i])
            return out.reshape((*k.shape[:nb], *shape))
        draws = [_draw_concrete(keys[i], kind, shape, dtype, arg) for i in range(keys.shape[0])]
        return torch.stack(draws).reshape((*k.shape[:nb], *draws[0].shape))
    return _lift(run, [k])


def _shape(shape) -> tuple:
    if isinstance(shape, int):
        return (shape,)
    return tuple(int(s) for s in shape)


def _draw(k, kind, shape, dtype=torch.float32, arg=None, who=""):
    _check_key(k, who)
    if k.dim() != 1:
        raise ValueError(f"{who}: expected a single key of shape (2,), got {tuple(k.shape)}; "
                         "use vmap over keys or split first")
    return _dispatch(k, kind, _shape(shape), dtype, arg)


def normal(k, shape, dtype=torch.float32) -> torch.Tensor:
    """Standard normal draws of ``shape``."""
    return _draw(k, "normal", shape, dtype, who="normal")


def uniform(k, shape, dtype=torch.float32, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Uniform draws on ``[low, high)``."""
    u = _draw(k, "uniform", shape, dtype, who="uniform")
    return u if (low, high) == (0.0, 1.0) else low + (high - low) * u


def bernoulli(k, p, shape) -> torch.Tensor:
    """Boolean draws, True with probability ``p`` (a float or a tensor broadcastable to ``shape``)."""
    if not isinstance(p, torch.Tensor) and not 0.0 <= p <= 1.0:
        raise ValueError(f"bernoulli: p must be in [0, 1], got {p}")
    return uniform(k, shape) < p


def permutation(k, n: int) -> torch.Tensor:
    """A random permutation of ``range(n)``: ``(n,)`` int64."""
    return _draw(k, "permutation", (n,), torch.int64, who="permutation")


def randint(k, high: int, shape) -> torch.Tensor:
    """Integers uniform on ``[0, high)``."""
    return _draw(k, "randint", shape, torch.int64, arg=int(high), who="randint")


def gamma(k, concentration: float, shape, dtype=torch.float32) -> torch.Tensor:
    """Gamma(concentration, rate=1) draws (torch's sampler, float64 inside); divide by a rate as needed."""
    if not concentration > 0:
        raise ValueError(f"gamma: concentration must be > 0, got {concentration}")
    return _draw(k, "gamma", shape, dtype, arg=float(concentration), who="gamma")
