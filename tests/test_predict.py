import torch
import torch.nn.functional as F

from fbnn import methods, models, tree
from fbnn import random as fr
from fbnn.predict import chunk_sizes, forward_bytes, predict, predict_probs


def test_vmapped_predictive_equals_a_loop_over_samples():
    model = models.mlp([13, 50, 1])
    samples = methods.init_members(model, fr.key(0), 64)
    x = fr.normal(fr.key(1), (40, 13))
    out = predict(model, samples, x)
    loop = torch.stack([model.apply(tree.index(samples, s), x) for s in range(64)])
    assert out.shape == (64, 40, 1)
    assert torch.allclose(out, loop, atol=1e-6)


def test_chunking_does_not_change_the_result():
    model = models.mlp([13, 50, 3], dropout=0.3)
    samples = methods.init_members(model, fr.key(0), 10)
    x = fr.normal(fr.key(1), (30, 13))
    whole = predict(model, samples, x, key=fr.key(2), sample_chunk=10, input_chunk=30)
    by_sample = predict(model, samples, x, key=fr.key(2), sample_chunk=3, input_chunk=30)
    assert torch.allclose(whole, by_sample, atol=1e-6)  # keys are per sample, not per chunk
    det = predict(model, samples, x, sample_chunk=4, input_chunk=7)
    assert torch.allclose(det, predict(model, samples, x), atol=1e-6)


def test_keyed_predictive_reproducible_and_per_sample():
    model = models.mlp([5, 40, 2], dropout=0.5)
    p = model.init(fr.key(0))
    samples = methods.expand_samples(p, {}, 8)
    x = fr.normal(fr.key(1), (6, 5))
    a = predict(model, samples, x, key=fr.key(3))
    assert torch.equal(a, predict(model, samples, x, key=fr.key(3)))
    assert not torch.equal(a[0], a[1])
    keys = fr.split(fr.key(3), 8)
    assert torch.allclose(a[5], model.apply(p, x, key=keys[5]), atol=1e-6)


def test_predict_probs_are_softmax_per_sample():
    model = models.mlp([5, 7, 4])
    samples = methods.init_members(model, fr.key(0), 3)
    x = fr.normal(fr.key(1), (6, 5))
    assert torch.allclose(predict_probs(model, samples, x), F.softmax(predict(model, samples, x), -1))


def test_memory_budget_sets_chunks():
    model = models.mlp([784, 1200, 1200, 10])
    fixed, per_input = forward_bytes(model, model.init(fr.key(0)), torch.zeros(2, 784))
    assert 4 * (1200 + 1200 + 10) <= per_input < 100_000  # activations, not weights
    s, b = chunk_sizes(100, 10_000, fixed, per_input, 2 ** 30, work_bytes=2 ** 30)
    assert b == 10_000 and 1 <= s <= 100 and s * (fixed + b * per_input) <= 2 ** 30
    assert chunk_sizes(100, 10_000, fixed, per_input, 2 ** 30) == (1, 10_000)  # 4 MiB working set
    s, b = chunk_sizes(100, 10_000, fixed, per_input, 2 ** 24)
    assert s == 1 and fixed + b * per_input <= 2 ** 24
