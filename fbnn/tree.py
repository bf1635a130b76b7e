"""Pytree helpers over nested dicts, lists, tuples and NamedTuples of tensors.

Built on ``torch.utils._pytree`` (the pytree module ``torch.func`` itself uses), so any
container ``vmap`` and ``grad`` accept works here too.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

from . import random as fr

__all__ = [
    "map", "leaves", "flatten", "unflatten", "structure", "ravel", "unravel_fn",
    "dot", "sq_norm", "norm", "size", "stack", "unstack", "index", "zeros_like",
    "ones_like", "full_like", "normal_like", "add", "sub", "scale", "axpy", "allclose",
    "equal", "astype", "clone",
]

PyTree = Any
_builtin_map = map


def flatten(tree: PyTree):
    """``(leaves, spec)``."""
    return pytree.tree_flatten(tree)


def unflatten(leaves_, spec) -> PyTree:
    return pytree.tree_unflatten(list(leaves_), spec)


def leaves(tree: PyTree) -> list:
    return pytree.tree_leaves(tree)


def structure(tree: PyTree):
    return pytree.tree_structure(tree)


def map(fn: Callable, tree: PyTree, *rest: PyTree) -> PyTree:
    """Apply ``fn`` leafwise over one or more trees of the same structure."""
    flat, spec = flatten(tree)
    others = []
    for r in rest:
        r_flat, r_spec = flatten(r)
        if r_spec != spec:
            raise ValueError(f"tree.map: structures differ:\n  {spec}\nvs\n  {r_spec}")
        others.append(r_flat)
    return unflatten([fn(*xs) for xs in zip(flat, *others)], spec)


def ravel(tree: PyTree) -> tuple[torch.Tensor, Callable[[torch.Tensor], PyTree]]:
    """Concatenate all leaves into one vector ``(P,)``; return it with its inverse."""
    flat = [x.reshape(-1) for x in leaves(tree)]
    return (torch.cat(flat) if flat else torch.zeros(0)), unravel_fn(tree)


def unravel_fn(tree: PyTree) -> Callable[[torch.Tensor], PyTree]:
    """The inverse of ``ravel`` for trees shaped like ``tree``: ``(P,) -> tree``."""
    flat, spec = flatten(tree)
    shapes = [x.shape for x in flat]
    sizes = [x.numel() for x in flat]

    def unravel(vec: torch.Tensor) -> PyTree:
        parts = torch.split(vec, sizes, dim=-1)
        return unflatten([p.reshape((*vec.shape[:-1], *s)) for p, s in zip(parts, shapes)], spec)

    return unravel


def dot(a: PyTree, b: PyTree) -> torch.Tensor:
    return sum(leaves(map(lambda x, y: (x * y).sum(), a, b)), torch.tensor(0.0))


def sq_norm(tree: PyTree) -> torch.Tensor:
    return sum((x.pow(2).sum() for x in leaves(tree)), torch.tensor(0.0))


def norm(tree: PyTree) -> torch.Tensor:
    return sq_norm(tree).sqrt()


def size(tree: PyTree) -> int:
    """Total number of scalars."""
    return sum(x.numel() for x in leaves(tree))


def stack(trees: list) -> PyTree:
    """Stack a list of same-shaped trees along a new leading axis."""
    if not trees:
        raise ValueError("tree.stack: empty list")
    return map(lambda *xs: torch.stack(xs), *trees)


def unstack(tree: PyTree) -> list:
    """The inverse of ``stack``: a list along the leading axis."""
    n = leaves(tree)[0].shape[0]
    return [index(tree, i) for i in range(n)]


def index(tree: PyTree, i) -> PyTree:
    """Index every leaf on its leading axis (an int, slice or index tensor)."""
    return map(lambda x: x[i], tree)


def zeros_like(tree: PyTree) -> PyTree:
    return map(torch.zeros_like, tree)


def ones_like(tree: PyTree) -> PyTree:
    return map(torch.ones_like, tree)


def full_like(tree: PyTree, value: float) -> PyTree:
    return map(lambda x: torch.full_like(x, value), tree)


def normal_like(key: torch.Tensor, tree: PyTree) -> PyTree:
    """Independent standard normals shaped like each leaf.

    One flat draw per dtype (subkey ``i`` of ``split(key, #dtypes)`` for the ``i``-th
    dtype in flatten order), cut into the leaves in flatten order: one draw per step
    however many tensors a model has, which keeps ``vmap`` over many keys cheap."""
    flat, spec = flatten(tree)
    dtypes = list(dict.fromkeys(x.dtype for x in flat))
    out: list = [None] * len(flat)
    for k, dtype in zip(fr.split(key, max(len(dtypes), 1)), dtypes):
        where = [i for i, x in enumerate(flat) if x.dtype == dtype]
        sizes = [flat[i].numel() for i in where]
        draw = fr.normal(k, (sum(sizes),), dtype)
        for i, piece in zip(where, torch.split(draw, sizes)):
            out[i] = piece.reshape(flat[i].shape)
    return unflatten(out, spec)


def add(a: PyTree, b: PyTree) -> PyTree:
    return map(torch.add, a, b)


def sub(a: PyTree, b: PyTree) -> PyTree:
    return map(torch.sub, a, b)


def scale(tree: PyTree, c) -> PyTree:
    return map(lambda x: x * c, tree)


def axpy(a, x: PyTree, y: PyTree) -> PyTree:
    """``a * x + y`` leafwise."""
    return map(lambda xi, yi: a * xi + yi, x, y)


def astype(tree: PyTree, dtype) -> PyTree:
    return map(lambda x: x.to(dtype), tree)


def clone(tree: PyTree) -> PyTree:
    return map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, tree)


def equal(a: PyTree, b: PyTree) -> bool:
    """Same structure and bitwise-equal leaves."""
    fa, sa = flatten(a)
    fb, sb = flatten(b)
    return sa == sb and all(torch.equal(x, y) for x, y in zip(fa, fb))


def allclose(a: PyTree, b: PyTree, **kw) -> bool:
    fa, sa = flatten(a)
    fb, sb = flatten(b)
    return sa == sb and all(torch.allclose(x, y, **kw) for x, y in zip(fa, fb))
