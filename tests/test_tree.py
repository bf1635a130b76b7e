"""Tests for fbnn.tree: pytree helpers over nested dicts/lists/tuples/NamedTuples."""
from typing import NamedTuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fbnn import random as fr
from fbnn import tree


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _nested(seed=0, dtype=torch.float32, scalar_shape=(1,)):
    """A nested dict/list/tuple tree with differently shaped leaves (58 scalars).

    ``scalar_shape=()`` makes one leaf 0-dimensional."""
    g = _gen(seed)
    return {
        "layer1": {"w": torch.randn(3, 4, generator=g, dtype=dtype),
                   "b": torch.randn(4, generator=g, dtype=dtype)},
        "layer2": [torch.randn(4, 2, 5, generator=g, dtype=dtype),
                   (torch.randn(scalar_shape, generator=g, dtype=dtype),)],
        "scale": torch.randn(1, generator=g, dtype=dtype),
    }


class Params(NamedTuple):
    w: torch.Tensor
    b: torch.Tensor


def _flat(t):
    return torch.cat([x.reshape(-1) for x in tree.leaves(t)])


# ---------------------------------------------------------------------------
# ravel / unravel / size
# ---------------------------------------------------------------------------


def test_ravel_unravel_roundtrip_nested():
    t = _nested()
    vec, unravel = tree.ravel(t)
    assert vec.shape == (12 + 4 + 40 + 1 + 1,) and vec.dim() == 1
    assert tree.size(t) == vec.numel() == 58
    back = unravel(vec)
    assert tree.equal(back, t)
    # The layout is the leaves' flatten order.
    assert torch.equal(vec, _flat(t))
    # unravel of a different vector puts its entries in the right leaves/shapes.
    back2 = unravel(torch.arange(58.0))
    assert back2["layer2"][1][0].shape == (1,)
    assert back2["layer1"]["w"].shape == (3, 4)
    assert torch.equal(tree.ravel(back2)[0], torch.arange(58.0))


@pytest.mark.parametrize("scalar_shape", [(1,), ()])
def test_unravel_fn_handles_leading_batch_dims(scalar_shape):
    t = _nested(scalar_shape=scalar_shape)
    unravel = tree.unravel_fn(t)
    vecs = torch.stack([_flat(_nested(s, scalar_shape=scalar_shape)) for s in range(3)])  # (3, 58)
    batched = unravel(vecs)
    for i in range(3):
        assert tree.equal(tree.index(batched, i), _nested(i, scalar_shape=scalar_shape))


def test_ravel_unravel_roundtrip_with_scalar_leaf():
    for t in ({"w": torch.ones(2, 3), "log_sigma": torch.tensor(0.5)},
              _nested(scalar_shape=())):
        vec, unravel = tree.ravel(t)
        assert vec.shape == (tree.size(t),)
        assert tree.equal(unravel(vec), t)


def test_size_counts_scalars():
    assert tree.size(_nested()) == 58
    assert tree.size({"a": torch.zeros(())}) == 1
    assert tree.size([torch.zeros(0, 3), torch.zeros(2, 2)]) == 4
    assert tree.size({}) == 0


def test_ravel_empty_tree():
    vec, unravel = tree.ravel({})
    assert vec.shape == (0,) and unravel(vec) == {}


# ---------------------------------------------------------------------------
# dot / sq_norm / norm against the flattened computation
# ---------------------------------------------------------------------------


def test_dot_and_norm_match_flattened():
    a, b = _nested(0, torch.float64), _nested(1, torch.float64)
    fa, fb = _flat(a), _flat(b)
    assert torch.allclose(tree.dot(a, b), fa @ fb, rtol=1e-12, atol=1e-12)
    assert torch.allclose(tree.sq_norm(a), fa @ fa, rtol=1e-12, atol=1e-12)
    assert torch.allclose(tree.norm(a), torch.linalg.vector_norm(fa), rtol=1e-12, atol=1e-12)
    assert tree.norm(a).dtype == torch.float64
    # float32 with a stated tolerance
    a32, b32 = _nested(0), _nested(1)
    assert torch.allclose(tree.dot(a32, b32), _flat(a32) @ _flat(b32), rtol=1e-5, atol=1e-5)
    assert torch.allclose(tree.norm(a32), torch.linalg.vector_norm(_flat(a32)), rtol=1e-6)


def test_dot_is_differentiable_under_torch_func():
    a, b = _nested(0), _nested(1)
    g = torch.func.grad(lambda t: tree.dot(t, b))(a)
    assert tree.equal(g, b)
    g2 = torch.func.grad(lambda t: tree.sq_norm(t))(a)
    assert tree.allclose(g2, tree.scale(a, 2.0), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# stack / unstack / index
# ---------------------------------------------------------------------------


def test_stack_unstack_roundtrip():
    trees = [_nested(s, scalar_shape=()) for s in range(4)]  # includes a 0-dim leaf
    st_ = tree.stack(trees)
    assert st_["layer1"]["w"].shape == (4, 3, 4)
    assert st_["layer2"][1][0].shape == (4,)
    back = tree.unstack(st_)
    assert len(back) == 4
    for a, b in zip(back, trees):
        assert tree.equal(a, b)
    assert tree.equal(tree.stack(back), st_)


def test_stack_empty_list_raises():
    with pytest.raises(ValueError, match="empty"):
        tree.stack([])


def test_stack_mismatched_structures_raises():
    with pytest.raises(ValueError, match="structures differ"):
        tree.stack([{"a": torch.zeros(2)}, {"b": torch.zeros(2)}])


def test_index_int_slice_and_tensor():
    st_ = tree.stack([_nested(s) for s in range(5)])
    assert tree.equal(tree.index(st_, 2), _nested(2))
    sl = tree.index(st_, slice(1, 3))
    assert tree.equal(sl, tree.stack([_nested(1), _nested(2)]))
    idx = torch.tensor([4, 0])
    assert tree.equal(tree.index(st_, idx), tree.stack([_nested(4), _nested(0)]))


# ---------------------------------------------------------------------------
# map and arithmetic helpers
# ---------------------------------------------------------------------------


def test_map_over_two_trees():
    a, b = _nested(0), _nested(1)
    out = tree.map(lambda x, y: x * 2 - y, a, b)
    for x, y, z in zip(tree.leaves(a), tree.leaves(b), tree.leaves(out)):
        assert torch.equal(z, x * 2 - y)
    assert tree.structure(out) == tree.structure(a)
    # three trees
    out3 = tree.map(lambda x, y, z: x + y * z, a, b, a)
    for x, y, z in zip(tree.leaves(a), tree.leaves(b), tree.leaves(out3)):
        assert torch.equal(z, x + y * x)


@pytest.mark.parametrize("other", [
    {"a": torch.zeros(2), "c": torch.zeros(3)},               # different key
    {"a": torch.zeros(2)},                                    # missing leaf
    {"a": torch.zeros(2), "b": [torch.zeros(3)]},              # extra nesting
    [torch.zeros(2), torch.zeros(3)],                         # different container
])
def test_map_mismatched_structures_raises(other):
    t = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(ValueError, match="structures differ"):
        tree.map(torch.add, t, other)


def test_arithmetic_helpers():
    a, b = _nested(0), _nested(1)
    assert tree.equal(tree.add(a, b), tree.map(lambda x, y: x + y, a, b))
    assert tree.equal(tree.sub(a, b), tree.map(lambda x, y: x - y, a, b))
    assert tree.equal(tree.scale(a, 3.0), tree.map(lambda x: x * 3.0, a))
    assert tree.equal(tree.axpy(0.5, a, b), tree.map(lambda x, y: 0.5 * x + y, a, b))
    z = tree.zeros_like(a)
    assert all(torch.equal(x, torch.zeros_like(y)) for x, y in zip(tree.leaves(z), tree.leaves(a)))
    o = tree.ones_like(a)
    assert all(bool((x == 1).all()) for x in tree.leaves(o))
    f = tree.full_like(a, 2.5)
    assert all(bool((x == 2.5).all()) and x.shape == y.shape
               for x, y in zip(tree.leaves(f), tree.leaves(a)))
    d = tree.astype(a, torch.float64)
    assert all(x.dtype == torch.float64 for x in tree.leaves(d))
    c = tree.clone(a)
    assert tree.equal(c, a)
    assert all(x.data_ptr() != y.data_ptr() for x, y in zip(tree.leaves(c), tree.leaves(a)))


# ---------------------------------------------------------------------------
# equal / allclose
# ---------------------------------------------------------------------------


def test_equal_and_allclose():
    a = _nested(0)
    b = tree.clone(a)
    assert tree.equal(a, b) and tree.allclose(a, b)
    bumped = tree.map(lambda x: x + 1e-7, a)
    assert not tree.equal(a, bumped)
    assert tree.allclose(a, bumped, atol=1e-6, rtol=0)
    assert not tree.allclose(a, tree.map(lambda x: x + 1e-3, a), atol=1e-6, rtol=0)
    # Same leaves, different structure: neither equal nor allclose.
    x, y = torch.ones(2), torch.zeros(3)
    assert not tree.equal({"a": x, "b": y}, {"a": x, "c": y})
    assert not tree.allclose({"a": x, "b": y}, [x, y])
    # Shape-compatible leaves with different values are not equal.
    assert not tree.equal({"a": x}, {"a": torch.ones(2) * 2})


# ---------------------------------------------------------------------------
# normal_like
# ---------------------------------------------------------------------------


def test_normal_like_deterministic_and_shaped():
    t = _nested(0)
    t["layer1"]["b"] = t["layer1"]["b"].double()
    k = fr.key(0)
    a, b = tree.normal_like(k, t), tree.normal_like(fr.key(0), t)
    assert tree.equal(a, b)
    assert tree.structure(a) == tree.structure(t)
    for x, y in zip(tree.leaves(a), tree.leaves(t)):
        assert x.shape == y.shape and x.dtype == y.dtype
    c = tree.normal_like(fr.key(1), t)
    for x, y in zip(tree.leaves(a), tree.leaves(c)):
        assert not torch.equal(x, y)
    # Two same-shaped leaves are not identical.
    two = tree.normal_like(k, {"p": torch.zeros(16), "q": torch.zeros(16)})
    assert not torch.equal(two["p"], two["q"])
    # Draw equals one flat normal per dtype (a subkey each, in order of first appearance),
    # cut into that dtype's leaves in flatten order.
    leaves_, drawn = tree.leaves(t), tree.leaves(a)
    dtypes = list(dict.fromkeys(x.dtype for x in leaves_))
    for sub, dtype in zip(fr.split(k, len(dtypes)), dtypes):
        mine = [i for i, x in enumerate(leaves_) if x.dtype == dtype]
        flat = fr.normal(sub, (sum(leaves_[i].numel() for i in mine),), dtype)
        assert torch.equal(torch.cat([drawn[i].reshape(-1) for i in mine]), flat)


def test_normal_like_under_vmap_equals_loop():
    t = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    keys = fr.split(fr.key(2), 4)
    out = torch.func.vmap(lambda k: tree.normal_like(k, t))(keys)
    assert tree.equal(out, tree.stack([tree.normal_like(k, t) for k in keys]))


def test_normal_like_moments():
    t = {"big": torch.zeros(200, 250)}  # 50k draws; SE(mean) ~ 0.0045
    x = tree.normal_like(fr.key(3), t)["big"]
    assert abs(x.mean().item()) < 0.02 and abs(x.var().item() - 1.0) < 0.03


def test_normal_like_empty_tree():
    assert tree.normal_like(fr.key(0), {}) == {}


# ---------------------------------------------------------------------------
# NamedTuple containers
# ---------------------------------------------------------------------------


def test_namedtuple_containers():
    g = _gen(5)
    p = Params(torch.randn(3, 2, generator=g), torch.randn(2, generator=g))
    q = Params(torch.randn(3, 2, generator=g), torch.randn(2, generator=g))
    assert tree.leaves(p) == [p.w, p.b]
    out = tree.add(p, q)
    assert isinstance(out, Params)
    assert torch.equal(out.w, p.w + q.w) and torch.equal(out.b, p.b + q.b)
    vec, unravel = tree.ravel(p)
    assert vec.shape == (8,)
    back = unravel(vec)
    assert isinstance(back, Params) and tree.equal(back, p)
    st_ = tree.stack([p, q])
    assert isinstance(st_, Params) and st_.w.shape == (2, 3, 2)
    assert tree.equal(tree.unstack(st_)[1], q)
    nl = tree.normal_like(fr.key(0), p)
    assert isinstance(nl, Params) and nl.w.shape == (3, 2)
    assert torch.allclose(tree.dot(p, q), p.w.flatten() @ q.w.flatten() + p.b @ q.b,
                          rtol=1e-6, atol=1e-6)
    # A NamedTuple is not structurally equal to a plain tuple with the same leaves.
    with pytest.raises(ValueError, match="structures differ"):
        tree.map(torch.add, p, (q.w, q.b))
    # Nested inside a dict.
    d = {"params": p, "extra": [q]}
    assert tree.equal(tree.ravel(d)[1](tree.ravel(d)[0]), d)


# ---------------------------------------------------------------------------
# Property test: unravel(ravel(t)) == t
# ---------------------------------------------------------------------------

# Leaves have ndim >= 1 (dims of size 0 included): 0-dim leaves hit the unravel bug
# documented by test_ravel_unravel_roundtrip_with_scalar_leaf.
_shapes = st.lists(st.integers(0, 3), min_size=1, max_size=3).map(tuple)


@st.composite
def _trees(draw):
    """Small nested dict/list/tuple trees of float tensors with at least one leaf."""
    seed = draw(st.integers(0, 2**16))
    g = _gen(seed)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))

    def leaf(shape):
        return torch.randn(shape, generator=g, dtype=dtype)

    leaf_shapes = st.lists(_shapes, min_size=1, max_size=4)
    kind = draw(st.sampled_from(["dict", "list", "tuple", "nested"]))
    shapes = draw(leaf_shapes)
    if kind == "dict":
        return {f"k{i}": leaf(s) for i, s in enumerate(shapes)}
    if kind == "list":
        return [leaf(s) for s in shapes]
    if kind == "tuple":
        return tuple(leaf(s) for s in shapes)
    inner = draw(leaf_shapes)
    return {"a": [leaf(s) for s in shapes],
            "b": {"c": tuple(leaf(s) for s in inner), "d": leaf((1,))}}


@settings(max_examples=30, deadline=None)
@given(_trees())
def test_ravel_unravel_identity_property(t):
    vec, unravel = tree.ravel(t)
    assert vec.dim() == 1 and vec.numel() == tree.size(t)
    back = unravel(vec)
    assert tree.equal(back, t)
    for x, y in zip(tree.leaves(back), tree.leaves(t)):
        assert x.shape == y.shape and x.dtype == y.dtype
    # and ravel(unravel(v)) == v for an arbitrary vector of the right size
    v = torch.arange(vec.numel(), dtype=vec.dtype)
    assert torch.equal(tree.ravel(unravel(v))[0], v)

