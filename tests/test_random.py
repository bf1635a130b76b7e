"""Tests for fbnn.random: explicit, JAX-style PRNG keys on torch.

Checks determinism (same key => bitwise same draws), independence of derived keys,
isolation from torch's global RNG, vmap == loop bit for bit, draws under grad,
statistical sanity with fixed keys, and clear errors on bad input.
"""

import pytest
import torch
from torch.func import grad, vmap

from fbnn import random as fr

# One entry per draw kind; each maps a single key (2,) to a tensor.
DRAWS = {
    "normal": lambda k: fr.normal(k, (4, 3)),
    "normal64": lambda k: fr.normal(k, (5,), dtype=torch.float64),
    "uniform": lambda k: fr.uniform(k, (6,)),
    "uniform_low_high": lambda k: fr.uniform(k, (6,), low=-2.0, high=3.0),
    "bernoulli": lambda k: fr.bernoulli(k, 0.5, (64,)),
    "permutation": lambda k: fr.permutation(k, 50),
    "randint": lambda k: fr.randint(k, 10, (40,)),
    "gamma_small": lambda k: fr.gamma(k, 0.5, (7,)),
    "gamma_large": lambda k: fr.gamma(k, 3.0, (2, 3)),
}
KINDS = sorted(DRAWS)


def _distinct_rows(keys: torch.Tensor) -> int:
    return len({tuple(r) for r in keys.reshape(-1, 2).tolist()})


# ---------------------------------------------------------------------------
# Keys: shape, determinism, derived keys
# ---------------------------------------------------------------------------


def test_key_is_int64_pair_of_32bit_words_and_deterministic():
    k = fr.key(0)
    assert k.dtype == torch.int64 and k.shape == (2,)
    assert fr.is_key(k)
    assert ((k >= 0) & (k < 2**32)).all()
    assert torch.equal(k, fr.key(0))
    # Different seeds give different keys (including large seeds, folded to 64 bits).
    assert _distinct_rows(torch.stack([fr.key(s) for s in range(500)])) == 500
    assert torch.equal(fr.key(2**70 + 5), fr.key((2**70 + 5) & (2**64 - 1)))
    assert not torch.equal(fr.key(2**40), fr.key(0))


@pytest.mark.parametrize("kind", KINDS)
def test_same_key_gives_bitwise_same_draws(kind):
    f = DRAWS[kind]
    k = fr.key(1234)
    a, b = f(k), f(fr.key(1234))
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_different_keys_give_different_draws(kind):
    f = DRAWS[kind]
    k = fr.key(7)
    k1, k2 = fr.split(k)
    derived = [k, k1, k2, fr.fold_in(k, 0), fr.fold_in(k, 1), fr.key(8)]
    outs = [f(d) for d in derived]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.equal(outs[i], outs[j]), (kind, i, j)


def test_split_rows_distinct_and_deterministic():
    k = fr.key(3)
    ks = fr.split(k, 1000)
    assert ks.shape == (1000, 2) and ks.dtype == torch.int64
    assert ((ks >= 0) & (ks < 2**32)).all()
    assert _distinct_rows(ks) == 1000
    assert torch.equal(ks, fr.split(fr.key(3), 1000))
    # Default num=2, and the parent key is not among its children.
    two = fr.split(k)
    assert two.shape == (2, 2)
    assert _distinct_rows(torch.cat([two, k[None]])) == 3
    assert fr.split(k, 1).shape == (1, 2)
    # A prefix property: split(k, n)[i] does not depend on n.
    assert torch.equal(fr.split(k, 5), ks[:5])


def test_split_on_batched_keys_equals_per_key_split():
    keys = fr.split(fr.key(0), 4)
    out = fr.split(keys, 3)
    assert out.shape == (4, 3, 2)
    for i in range(4):
        assert torch.equal(out[i], fr.split(keys[i], 3))


def test_fold_in_distinct_and_deterministic():
    k = fr.key(5)
    folded = torch.stack([fr.fold_in(k, i) for i in range(300)])
    assert _distinct_rows(folded) == 300
    assert torch.equal(fr.fold_in(k, 17), fr.fold_in(fr.key(5), 17))
    assert not torch.equal(fr.fold_in(k, 0), k)
    # fold_in and split outputs do not collide with each other either.
    assert _distinct_rows(torch.cat([folded, fr.split(k, 300), k[None]])) == 601
    # Tensor data equals the int form, also batched over data.
    data = torch.arange(5)
    assert torch.equal(fr.fold_in(k, torch.tensor(3)), fr.fold_in(k, 3))
    batched = fr.fold_in(k, data)
    assert batched.shape == (5, 2)
    for i in range(5):
        assert torch.equal(batched[i], fr.fold_in(k, i))


def test_keys_are_pinned_across_versions():
    """The words every derived key has had since the first release: results files name seeds,
    and the same seed must keep giving the same run."""
    k = fr.key(0)
    assert k.tolist() == [2388965617, 2849410560]
    assert fr.split(k, 3).tolist() == [[3039382036, 3786295195], [779653467, 1005006457], [939736459, 4156741543]]
    assert fr.fold_in(k, 7).tolist() == [3887868266, 4016767151]


@pytest.mark.parametrize("data", [0, 1, -1, 7, 2**31 + 3, 2**32, -(2**62) - 5, 2**63 - 1, -(2**63)])
def test_plain_key_fast_path_equals_the_tensor_hash(data):
    """A single key outside every transform is hashed in Python ints; batches and keys under
    vmap go through int64 tensors. Both give the same words, for any 64-bit data and for
    keys whose words lie outside [0, 2^32)."""
    odd = torch.tensor([-(2**62) + 12345, 2**62 + 99], dtype=torch.int64)
    for k in (fr.key(3), fr.key(2**64 - 1), odd):
        two = torch.stack([k, k])  # a batch of keys: the tensor path
        assert torch.equal(fr.fold_in(k, data), fr.fold_in(two, data)[0])
        assert torch.equal(fr.fold_in(k, torch.tensor(data)), fr.fold_in(two, data)[1])
        assert torch.equal(fr.fold_in(k, data), vmap(lambda kk: fr.fold_in(kk, data))(two)[0])
        for num in (1, 2, 16, 17):
            assert torch.equal(fr.split(k, num), fr.split(two, num)[0])
            assert torch.equal(fr.split(k, num), vmap(lambda kk: fr.split(kk, num))(two)[1])


@pytest.mark.parametrize("i, j", [(0, 2**32), (-1, 2**32 - 1)])
def test_fold_in_uses_all_bits_of_data(i, j):
    k = fr.key(0)
    assert not torch.equal(fr.fold_in(k, i), fr.fold_in(k, j))


def test_distinct_keys_never_share_a_stream():
    a = torch.tensor([5, 7], dtype=torch.int64)
    b = torch.tensor([4, 7 + 2**31], dtype=torch.int64)
    assert fr.is_key(a) and fr.is_key(b) and not torch.equal(a, b)
    assert not torch.equal(fr.normal(a, (8,)), fr.normal(b, (8,)))


# ---------------------------------------------------------------------------
# Isolation from torch's global RNG
# ---------------------------------------------------------------------------


def test_global_rng_is_never_read_or_changed():
    torch.manual_seed(2024)
    state = torch.random.get_rng_state().clone()
    k = fr.key(9)
    ks = fr.split(k, 3)
    fr.fold_in(k, 4)
    for kind in KINDS:
        DRAWS[kind](k)
        vmap(DRAWS[kind])(ks)
    grad(lambda x: (x * fr.normal(k, (3,))).sum())(torch.ones(3))
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("kind", KINDS)
def test_global_seed_does_not_affect_draws(kind):
    f = DRAWS[kind]
    k = fr.key(42)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        a = f(k)
        torch.manual_seed(1)
        b = f(k)
        torch.manual_seed(1)
        torch.randn(100)  # advance the global stream: still no effect
        c = f(k)
    assert torch.equal(a, b) and torch.equal(a, c)


# ---------------------------------------------------------------------------
# vmap == loop (bit for bit), nested vmap, draws inside grad
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_vmap_over_keys_equals_loop(kind):
    f = DRAWS[kind]
    keys = fr.split(fr.key(11), 5)
    out = vmap(f)(keys)
    loop = torch.stack([f(k) for k in keys])
    assert out.dtype == loop.dtype and torch.equal(out, loop)


@pytest.mark.parametrize("kind", ["normal", "permutation", "gamma_small", "bernoulli"])
def test_vmap_keys_on_non_leading_dim(kind):
    f = DRAWS[kind]
    keys = fr.split(fr.key(12), 4)  # (4, 2)
    out = vmap(f, in_dims=1)(keys.T.contiguous())  # keys laid out as (2, 4)
    assert torch.equal(out, torch.stack([f(k) for k in keys]))


@pytest.mark.parametrize("kind", KINDS)
def test_nested_vmap_equals_nested_loop(kind):
    f = DRAWS[kind]
    keys = fr.split(fr.split(fr.key(13), 3), 2)  # (3, 2, 2)
    out = vmap(vmap(f))(keys)
    loop = torch.stack([torch.stack([f(k) for k in row]) for row in keys])
    assert torch.equal(out, loop)


@pytest.mark.parametrize("kind", KINDS)
def test_vmap_of_split_fold_in_then_draw_equals_loop(kind):
    f = DRAWS[kind]

    def g(k):
        a, b = fr.split(k)
        return f(fr.fold_in(b, 3)), f(a)

    keys = fr.split(fr.key(14), 4)
    out1, out2 = vmap(g)(keys)
    loop = [g(k) for k in keys]
    assert torch.equal(out1, torch.stack([l[0] for l in loop]))
    assert torch.equal(out2, torch.stack([l[1] for l in loop]))


def test_vmap_unbatched_key_broadcasts_same_draw():
    k = fr.key(15)
    xs = torch.arange(4.0)
    out = vmap(lambda x: x + fr.normal(k, (3,)), in_dims=0)(xs)
    expected = torch.stack([x + fr.normal(k, (3,)) for x in xs])
    assert torch.equal(out, expected)


def test_vmap_over_data_and_fold_in_equals_loop():
    k = fr.key(16)
    idx = torch.arange(6)
    out = vmap(lambda i: fr.normal(fr.fold_in(k, i), (2,)))(idx)
    assert torch.equal(out, torch.stack([fr.normal(fr.fold_in(k, i), (2,)) for i in range(6)]))


def test_draws_inside_grad():
    k = fr.key(17)
    x = torch.tensor([0.5, -1.0, 2.0])

    def loss(x):
        a, b = fr.split(k)
        eps = fr.normal(a, (3,))
        g = fr.gamma(b, 2.0, (3,))
        return (x * eps).sum() + (x ** 2 * g).sum()

    a, b = fr.split(k)
    expected = fr.normal(a, (3,)) + 2 * x * fr.gamma(b, 2.0, (3,))
    assert torch.allclose(grad(loss)(x), expected, rtol=0, atol=1e-6)


def test_vmap_of_grad_with_keyed_draws_equals_loop():
    keys = fr.split(fr.key(18), 3)
    x = torch.tensor([1.0, 2.0])

    def g(k):
        return grad(lambda x: (x * fr.normal(k, (2,))).sum() + fr.uniform(k, (2,)).sum())(x)

    out = vmap(g)(keys)
    assert torch.equal(out, torch.stack([g(k) for k in keys]))
    assert torch.equal(out, torch.stack([fr.normal(k, (2,)) for k in keys]))


def test_draws_are_not_differentiable_leaves():
    k = fr.key(19)
    y = fr.normal(k, (3,))
    assert not y.requires_grad and y.grad_fn is None


# ---------------------------------------------------------------------------
# Statistical sanity (fixed keys; tolerances stated)
# ---------------------------------------------------------------------------

N = 200_000


def test_normal_moments():
    x = fr.normal(fr.key(100), (N,), dtype=torch.float64)
    # SE(mean) ~ 0.0022, SE(var) ~ 0.0032.
    assert abs(x.mean().item()) < 0.01
    assert abs(x.var().item() - 1.0) < 0.02
    assert fr.normal(fr.key(100), (3, 4)).dtype == torch.float32


def test_uniform_range_and_moments():
    u = fr.uniform(fr.key(101), (N,), dtype=torch.float64)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 0.005          # SE ~ 0.00065
    assert abs(u.var().item() - 1.0 / 12) < 0.002      # SE ~ 0.00017
    v = fr.uniform(fr.key(101), (N,), low=-2.0, high=3.0)
    assert v.min() >= -2.0 and v.max() <= 3.0
    assert abs(v.mean().item() - 0.5) < 0.03


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_bernoulli_frequency(p):
    b = fr.bernoulli(fr.key(102), p, (N,))
    assert b.dtype == torch.bool
    freq = b.float().mean().item()
    if p in (0.0, 1.0):
        assert freq == p
    else:
        assert abs(freq - p) < 0.005  # SE <= 0.0011


def test_bernoulli_tensor_p_broadcasts():
    p = torch.tensor([0.0, 0.25, 1.0])
    b = fr.bernoulli(fr.key(103), p, (50_000, 3)).float().mean(0)
    assert b[0] == 0.0 and b[2] == 1.0 and abs(b[1].item() - 0.25) < 0.01


@pytest.mark.parametrize("n", [1, 2, 10, 1000])
def test_permutation_is_a_permutation(n):
    perm = fr.permutation(fr.key(104), n)
    assert perm.dtype == torch.int64 and perm.shape == (n,)
    assert torch.equal(torch.sort(perm).values, torch.arange(n))


def test_permutation_is_uniform_over_positions():
    # P(perm[0] == j) = 1/5 for each j, across 4000 keys; tolerance 0.04 (SE ~ 0.0063).
    firsts = vmap(lambda k: fr.permutation(k, 5))(fr.split(fr.key(105), 4000))[:, 0]
    freq = torch.bincount(firsts, minlength=5).double() / 4000
    assert (freq - 0.2).abs().max() < 0.04


def test_randint_range_and_frequency():
    r = fr.randint(fr.key(106), 7, (N,))
    assert r.dtype == torch.int64 and r.min() >= 0 and r.max() <= 6
    freq = torch.bincount(r, minlength=7).double() / N
    assert (freq - 1 / 7).abs().max() < 0.005  # SE ~ 0.0008


@pytest.mark.parametrize("a", [0.5, 2.0, 10.0])
def test_gamma_moments(a):
    # Gamma(a, rate 1): mean a, var a. Relative tolerance 3% on both
    # (relative SE of the mean <= 0.32%, of the variance <= 0.85% at n=200k).
    g = fr.gamma(fr.key(107), a, (N,), dtype=torch.float64)
    assert g.shape == (N,) and (g > 0).all()
    assert abs(g.mean().item() - a) < 0.03 * a
    assert abs(g.var().item() - a) < 0.03 * a
    assert fr.gamma(fr.key(107), a, (2, 3)).dtype == torch.float32


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

NOT_KEYS = [
    torch.zeros(2),                          # float
    torch.zeros(3, dtype=torch.int64),       # wrong length
    torch.zeros((), dtype=torch.int64),      # scalar
    torch.zeros(2, dtype=torch.int32),       # wrong integer dtype
    [0, 1],                                  # not a tensor
]


@pytest.mark.parametrize("bad", NOT_KEYS, ids=["float", "len3", "scalar", "int32", "list"])
@pytest.mark.parametrize("call", [
    lambda k: fr.normal(k, (2,)),
    lambda k: fr.uniform(k, (2,)),
    lambda k: fr.bernoulli(k, 0.5, (2,)),
    lambda k: fr.permutation(k, 3),
    lambda k: fr.randint(k, 3, (2,)),
    lambda k: fr.gamma(k, 1.0, (2,)),
    lambda k: fr.split(k),
    lambda k: fr.fold_in(k, 1),
], ids=["normal", "uniform", "bernoulli", "permutation", "randint", "gamma", "split", "fold_in"])
def test_non_key_rejected(bad, call):
    with pytest.raises(TypeError, match="expected a key"):
        call(bad)
    assert not fr.is_key(bad)


def test_batch_of_keys_rejected_by_draws():
    keys = fr.split(fr.key(0), 3)
    with pytest.raises(ValueError, match=r"single key.*vmap"):
        fr.normal(keys, (2,))


def test_negative_seed_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        fr.key(-1)


@pytest.mark.parametrize("seed", [True, False])
def test_bool_seed_rejected(seed):
    with pytest.raises(TypeError, match="must be an int.*bool"):
        fr.key(seed)


@pytest.mark.parametrize("seed", [1.0, "1", None, torch.tensor(1)])
def test_non_int_seed_rejected(seed):
    with pytest.raises(TypeError, match="must be an int"):
        fr.key(seed)


@pytest.mark.parametrize("p", [-0.1, 1.1, float("nan"), float("inf")])
def test_bernoulli_p_outside_unit_interval_rejected(p):
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        fr.bernoulli(fr.key(0), p, (3,))


@pytest.mark.parametrize("a", [0.0, -1.0, float("nan")])
def test_gamma_nonpositive_concentration_rejected(a):
    with pytest.raises(ValueError, match="concentration must be > 0"):
        fr.gamma(fr.key(0), a, (3,))


@pytest.mark.parametrize("num", [0, -2])
def test_split_num_below_one_rejected(num):
    with pytest.raises(ValueError, match="num must be >= 1"):
        fr.split(fr.key(0), num)
