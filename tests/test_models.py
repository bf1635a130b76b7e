import math

import pytest
import torch
import torch.nn.functional as F

from fbnn import models, tree
from fbnn import random as fr


def test_mlp_shapes_and_default_init_bounds():
    model = models.mlp([784, 1200, 1200, 10])
    params = model.init(fr.key(0))
    assert tree.size(params) == 2_395_210  # SPEC 1.2
    assert params["fc0.weight"].shape == (1200, 784)
    bound = 1 / math.sqrt(784)
    assert params["fc0.weight"].abs().max() <= bound
    assert params["fc0.weight"].abs().max() > 0.99 * bound
    out = model.apply(params, torch.zeros(5, 784))
    assert out.shape == (5, 10)


def test_mlp_matches_torch_linear_stack():
    model = models.mlp([6, 5, 3], activation="tanh")
    params = model.init(fr.key(1))
    x = fr.normal(fr.key(2), (4, 6))
    h = torch.tanh(F.linear(x, params["fc0.weight"], params["fc0.bias"]))
    expected = F.linear(h, params["fc1.weight"], params["fc1.bias"])
    assert torch.allclose(model.apply(params, x), expected)


def test_dropout_active_exactly_with_a_key():
    model = models.mlp([10, 50, 50, 2], dropout=0.5)
    params = model.init(fr.key(0))
    x = fr.normal(fr.key(1), (8, 10))
    assert torch.equal(model.apply(params, x), model.apply(params, x))
    a = model.apply(params, x, key=fr.key(5))
    assert torch.equal(a, model.apply(params, x, key=fr.key(5)))
    assert not torch.equal(a, model.apply(params, x, key=fr.key(6)))
    assert not torch.equal(a, model.apply(params, x))


def test_dropout_is_unbiased_on_preactivations():
    # E[mask / (1 - p)] = 1: averaged over many keys, a linear net's output matches no dropout
    model = models.mlp([3, 400, 1], activation="relu", dropout=0.5)
    params = model.init(fr.key(0))
    x = torch.ones(1, 3)
    outs = torch.stack([model.apply(params, x, key=k) for k in fr.split(fr.key(3), 2000)])
    assert torch.allclose(outs.mean(), model.apply(params, x).squeeze(), atol=0.02)


def test_hetero_and_homo_heads():
    hetero = models.mlp([2, 8, 1], head="hetero")
    p = hetero.init(fr.key(0))
    assert hetero.apply(p, torch.zeros(3, 2)).shape == (3, 2)
    homo = models.mlp([2, 8, 1], head="homo")
    p = homo.init(fr.key(0))
    out = homo.apply(p, torch.zeros(3, 2))
    assert out.shape == (3, 2) and torch.equal(out[:, 1], torch.zeros(3))


def test_wrong_input_shape_is_named():
    model = models.mlp([4, 3, 2])
    with pytest.raises(ValueError, match=r"does not fit: expected \(\.\.\., 4\)"):
        model.apply(model.init(fr.key(0)), torch.zeros(2, 5))


def test_bad_builder_arguments():
    with pytest.raises(ValueError, match="dropout"):
        models.mlp([2, 2], dropout=1.5)
    with pytest.raises(ValueError, match="activation"):
        models.mlp([2, 2], activation="swishy")
    with pytest.raises(ValueError, match="head"):
        models.mlp([2, 2], head="bimodal")


def test_from_module_matches_module_in_eval_and_train(small_conv_bn_net):
    net = small_conv_bn_net
    model = models.from_module(net, input_shape=(1, 6, 6))
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    state = model.init_state()
    x = fr.normal(fr.key(0), (16, 36))
    net.eval()
    with torch.no_grad():
        assert torch.allclose(model.apply(params, x, state=state), net(x.reshape(16, 1, 6, 6)), atol=1e-6)
    # training mode: batch statistics and running-stat updates as torch's module (no dropout: no key)
    ref = models.from_module(net)  # independent copy
    out, new_state = model.apply_train(params, state, x)
    net.train()
    net[5].p = 0.0
    with torch.no_grad():
        expected = net(x.reshape(16, 1, 6, 6))
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(new_state["1.running_mean"], net[1].running_mean, atol=1e-6)
    assert torch.allclose(new_state["1.running_var"], net[1].running_var, atol=1e-6)
    assert int(new_state["1.num_batches_tracked"]) == 1
    # pure: the state passed in is unchanged
    assert torch.equal(state["1.running_mean"], torch.zeros(4))
    assert ref is not model


def test_from_module_never_touches_the_module_or_global_rng(small_conv_bn_net):
    before = {k: v.clone() for k, v in small_conv_bn_net.state_dict().items()}
    rng = torch.random.get_rng_state()
    model = models.from_module(small_conv_bn_net, input_shape=(1, 6, 6))
    params = model.init(fr.key(0))
    x = fr.normal(fr.key(1), (4, 36))
    model.apply_train(params, model.init_state(), x, key=fr.key(2))
    model.apply(params, x, key=fr.key(3))
    assert torch.equal(rng, torch.random.get_rng_state())
    after = small_conv_bn_net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_from_module_dropout_is_keyed(small_conv_bn_net):
    model = models.from_module(small_conv_bn_net, input_shape=(1, 6, 6))
    params = model.init(fr.key(0))
    x = fr.normal(fr.key(1), (4, 36))
    a = model.apply(params, x, key=fr.key(3))
    assert torch.equal(a, model.apply(params, x, key=fr.key(3)))
    assert not torch.equal(a, model.apply(params, x, key=fr.key(4)))
    assert torch.equal(model.apply(params, x), model.apply(params, x))


def test_from_module_keyed_init_follows_torch_defaults(small_conv_bn_net):
    model = models.from_module(small_conv_bn_net)
    p = model.init(fr.key(0))
    assert torch.equal(p["1.weight"], torch.ones(4)) and torch.equal(p["4.bias"], torch.zeros(64))
    assert p["0.weight"].abs().max() <= 1 / 3  # fan_in = 1 * 3 * 3
    assert p["6.weight"].abs().max() <= 1 / 8  # fan_in = 64
    assert tree.equal(p, model.init(fr.key(0))) and not tree.equal(p, model.init(fr.key(1)))


def test_from_module_bad_input_shape(small_conv_bn_net):
    model = models.from_module(small_conv_bn_net, input_shape=(1, 6, 6))
    with pytest.raises(ValueError, match="does not fit"):
        model.apply(model.init(fr.key(0)), torch.zeros(2, 35))


def test_lenet_shapes_and_rng():
    rng = torch.random.get_rng_state()
    model = models.lenet()
    params = model.init(fr.key(0))
    assert torch.equal(rng, torch.random.get_rng_state())
    assert model.apply(params, torch.zeros(3, 784)).shape == (3, 10)
    assert model.apply(params, torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert tree.size(params) == 20 * 25 + 20 + 50 * 20 * 25 + 50 + 800 * 500 + 500 + 5010
