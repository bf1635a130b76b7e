"""Bayes by Backprop (fbnn.methods.vi) and weight pruning (fbnn.pruning): estimators'
moments, the seed's loss convention, KL schedules and reductions, vmap vs loop, keys,
a conjugate posterior, any from_module model, pruning fractions (SPEC 3.3, 3.4, 4.6, 9.1, 9.2)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fbnn
from fbnn import likelihoods, models, optim, priors, pruning, tree
from fbnn import random as fr
from fbnn.fit import load_checkpoint
from fbnn.methods import Batch, vi
from fbnn.predict import predict, predictive


def _bbp(model, prior=None, n_batches=4, **kw):
    return vi.bbp(model, likelihoods.categorical(), kw.pop("opt", optim.adam(1e-2)),
                  prior or priors.normal(1.0), n_batches, **kw)


def _single_layer(layer: nn.Module):
    with torch.random.fork_rng(devices=[]):
        return models.from_module(layer)


def _state_with(method, model, sigma_scale=1.0):
    st = method.init(fr.key(0), model.init(fr.key(0)))
    rho = {n: r + math.log(sigma_scale) for n, r in st.rho.items()}
    return st._replace(rho=rho)


# --- sigma parametrisation -------------------------------------------------------------------

def test_sigma_is_floor_plus_softplus_with_threshold():
    rho = torch.tensor([-1000.0, -3.0, 0.0, 19.0, 30.0])
    std = vi.std_from_rho(rho)
    assert std[0] == 1e-6  # a pruned weight (rho = -1000): sigma is exactly the floor
    assert torch.allclose(std[1:4], 1e-6 + torch.log1p(torch.exp(rho[1:4])), rtol=1e-6)
    assert std[4] == 30.0 + 1e-6
    s = torch.tensor([1e-3, 0.05, 0.1, 2.0, 25.0])
    assert torch.allclose(vi.std_from_rho(vi.rho_from_std(s)), s, rtol=1e-5)
    with pytest.raises(ValueError, match="std must be finite and > 1e-06"):
        vi.rho_from_std(0.0)


# --- local reparametrisation and Flipout: moments (SPEC 9.2) -----------------------------------

def _moment_setup(layer, x_shape, estimator, **kw):
    model = _single_layer(layer)
    vmodel = vi.variational(model, estimator=estimator, **kw)
    method = _bbp(vmodel, mean_scale=0.5, rho_init=(-1.5, -0.5))
    st = method.init(fr.key(1), model.init(fr.key(1)))
    x = fr.normal(fr.key(2), x_shape)
    return vmodel, st, x


def _layer_moments(layer, st, x):
    w, b = st.mean["weight"], st.mean["bias"]
    sw, sb = vi.std_from_rho(st.rho["weight"]), vi.std_from_rho(st.rho["bias"])
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, b), F.linear(x * x, sw ** 2, sb ** 2)
    return F.conv2d(x, w, b), F.conv2d(x * x, sw ** 2, sb ** 2)


@pytest.mark.parametrize("layer, x_shape", [(nn.Linear(5, 3), (4, 5)), (nn.Conv2d(2, 3, 3), (2, 2, 5, 5))],
                         ids=["linear", "conv2d"])
@pytest.mark.parametrize("estimator", ["sample", "lrt", "flipout"])
def test_pre_activation_moments_match_the_closed_form(layer, x_shape, estimator):
    # Each estimator's output has mean X mu + mu_b and variance X^2 sigma^2 + sigma_b^2 per
    # element: LRT and Flipout have the marginal moments of weight sampling. 3000 draws:
    # the mean within 5 standard errors, the variance within 12 % (its relative standard
    # error is sqrt(2 / 3000) = 2.6 %).
    vmodel, st, x = _moment_setup(layer, x_shape, estimator)
    out = vi.stochastic_forward(vmodel, st, x, fr.key(3), 3000)
    mean, var = _layer_moments(layer, st, x)
    se = (var / out.shape[0]).sqrt()
    assert ((out.mean(0) - mean).abs() <= 5 * se).all()
    assert torch.allclose(out.var(0), var, rtol=0.12)


def test_lrt_noise_is_per_example_and_the_seed_shares_bias_noise():
    # Covariance of unit 0 between examples 0 and 1: weight sampling
    # sum_i x0i x1i sigma_i^2 + sigma_b^2; LRT 0 (independent per example); the seed's
    # shared bias noise sigma_b^2; Flipout 0 (random signs per example).
    layer = nn.Linear(5, 3)
    cov = {}
    for est, kw in [("sample", {}), ("lrt", {}), ("lrt", {"shared_bias_noise": True}), ("flipout", {})]:
        vmodel, st, x = _moment_setup(layer, (2, 5), est, **kw)
        out = vi.stochastic_forward(vmodel, st, x, fr.key(4), 3000)[:, :, 0]
        cov[est + str(bool(kw))] = float(((out[:, 0] - out[:, 0].mean()) * (out[:, 1] - out[:, 1].mean())).mean())
    sw, sb = vi.std_from_rho(st.rho["weight"][0]), vi.std_from_rho(st.rho["bias"][0])
    exact = float((x[0] * x[1] * sw ** 2).sum() + sb ** 2)
    tol = 0.1 * float((x[0] ** 2 * sw ** 2).sum() + sb ** 2)  # ~5 standard errors of a covariance
    assert abs(cov["sampleFalse"] - exact) < tol
    assert abs(cov["lrtFalse"]) < tol and abs(cov["flipoutFalse"]) < tol
    assert abs(cov["lrtTrue"] - float(sb ** 2)) < tol


# --- the loss ----------------------------------------------------------------------------------

def test_loss_is_the_seeds_summed_nll_plus_kl_over_m():
    # SPEC 3.3.1: L = sum_batch CE + KL / M. With sigma ~ 1e-6 the sampled net is the mean net.
    model = models.mlp([4, 6, 3])
    x, y = fr.normal(fr.key(5), (10, 4)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    prior = priors.normal(0.5)
    for reduction, scale in (("sum", 1.0), ("mean", 1 / 10)):
        m = _bbp(model, prior, n_batches=7, kl="closed", reduction=reduction, rho_init=-30.0)
        st = m.init(fr.key(0), model.init(fr.key(0)))
        _, info = m.step(st, Batch(x, y), fr.key(1))
        ce = F.cross_entropy(model.apply(st.mean, x), y, reduction="sum")
        kl = prior.kl(st.mean, tree.map(lambda p: torch.full_like(p, 1e-6), st.mean))
        assert torch.allclose(info["loss"], scale * (ce + kl / 7), rtol=1e-5)
        assert torch.allclose(info["kl"], kl, rtol=1e-5) and torch.allclose(info["nll"], ce, rtol=1e-5)


@pytest.mark.parametrize("prior", [priors.normal(0.1), priors.laplace(0.1),
                                   priors.scale_mixture(0.75, 0.1, 5e-4, "joint_sum_additive")],
                         ids=["normal", "laplace", "seed_gmm"])
def test_monte_carlo_loss_is_the_seeds_estimator_exactly(prior):
    # SPEC 3.3.1 with kl="mc": L = (1/S) sum_s [sum_b CE(f(x_b; w_s)) + (log q(w_s) - log p(w_s)) / M],
    # recomputed in float64 from the step's own weight draws (vi._draw_noise): rel. 1e-6.
    model = models.mlp([20, 30, 5])
    x, y = fr.normal(fr.key(1), (16, 20)), fr.randint(fr.key(2), 5, (16,))
    for vmapped in (True, False):
        m = vi.bbp(model, likelihoods.categorical(), optim.sgd(1e-3), prior, 7, n_samples=3, kl="mc",
                   mean_scale=0.2, vmap_samples=vmapped)
        st = m.init(fr.key(0), model.init(fr.key(0)))
        _, info = m.step(st, Batch(x, y), fr.key(5))
        names = list(st.mean)
        plan = vi._Plan(names, [True] * len(names), frozenset(), frozenset(), 0)
        eps, _, _ = vi._draw_noise("sample", plan, st.rho, fr.split(fr.key(5), 3), set(names))
        total = 0.0
        for s in range(3):
            std = {n: vi.std_from_rho(st.rho[n]).double() for n in names}
            w = {n: st.mean[n].double() + std[n] * eps[n][s].double() for n in names}
            ce = F.cross_entropy(model.apply(tree.astype(w, torch.float32), x), y, reduction="sum").double()
            log_q = sum(torch.distributions.Normal(st.mean[n].double(), std[n]).log_prob(w[n]).sum() for n in names)
            total += float(ce + (log_q - prior.log_prob(w)) / 7) / 3
        assert float(info["loss"]) == pytest.approx(total, rel=1e-6)


def test_monte_carlo_kl_is_unbiased_for_the_closed_form():
    # SPEC 9.1 through the method: the mean over S = 4000 samples of log q - log p at the
    # sampled weights equals the closed-form KL within 1 % (its standard error is ~0.2 %).
    model = models.mlp([2, 3, 2])
    closed = _bbp(model, priors.normal(0.3), kl="closed", opt=optim.sgd(1e-9))
    st = closed.init(fr.key(0), model.init(fr.key(0)))
    x, y = fr.normal(fr.key(1), (3, 2)), torch.tensor([0, 1, 0])
    _, info_closed = closed.step(st, Batch(x, y), fr.key(2))
    for kl in ("mc", "mc_entropy"):
        mc = _bbp(model, priors.normal(0.3), kl=kl, n_samples=4000, opt=optim.sgd(1e-9))
        _, info = mc.step(st, Batch(x, y), fr.key(2))
        assert abs(float(info["kl"]) / float(info_closed["kl"]) - 1) < 0.01
    assert torch.allclose(vi.kl_divergence(st, priors.normal(0.3)), info_closed["kl"], rtol=1e-6)


def test_torchbnn_mean_kl_reduction_is_sum_over_parameter_count():
    model = models.mlp([3, 4, 2])
    prior = priors.normal(0.2)
    m = _bbp(model, prior, kl="closed")
    st = m.init(fr.key(0), model.init(fr.key(0)))
    n = tree.size(st.mean)
    total = vi.kl_divergence(st, prior)
    assert torch.allclose(vi.kl_divergence(st, prior, reduction="mean"), total / n, rtol=1e-6)
    last = vi.kl_divergence(st, prior, last_only=True)  # torchbnn's last_layer_only bug: last tensor only
    assert torch.allclose(last, prior.kl(st.mean["fc1.bias"], vi.std_from_rho(st.rho["fc1.bias"])))
    x, y = fr.normal(fr.key(1), (5, 3)), torch.tensor([0, 1, 0, 1, 1])
    _, info = _bbp(model, prior, kl="closed", kl_reduction="mean").step(st, Batch(x, y), fr.key(2))
    assert torch.allclose(info["kl"], total / n, rtol=1e-5)


def test_kl_weight_schedules():
    for m in (1, 7, 600, 5000):
        weights = torch.stack([vi.kl_weight(torch.tensor(c), m, "geometric") for c in range(m)])
        assert abs(float(weights.sum()) - 1.0) < 1e-12  # Blundell's pi_i sums to 1 over an epoch
        assert (weights[1:] <= weights[:-1]).all()
        assert vi.kl_weight(torch.tensor(m), m, "geometric") == weights[0]  # restarts every epoch
        assert vi.kl_weight(torch.tensor(3), m, "uniform") == 1 / m
    assert float(vi.kl_weight(torch.tensor(0), 3, "geometric")) == pytest.approx(4 / 7)  # 2^(M-1) / (2^M - 1)


def test_temperature_and_point_prior_enter_the_loss_linearly():
    with torch.random.fork_rng(devices=[]):
        net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model = models.from_module(net)
    vmodel = vi.variational(model, deterministic=vi.norm_params(net))
    x, y = fr.normal(fr.key(1), (6, 3)), torch.tensor([0, 1, 0, 1, 1, 0])
    losses = {}
    for t, pp in ((0.0, None), (1.0, None), (2.0, None), (1.0, priors.normal(0.5))):
        m = _bbp(vmodel, priors.normal(1.0), kl="closed", temperature=t, point_prior=pp)
        st = m.init(fr.key(0), model.init(fr.key(0)))
        losses[(t, pp is not None)] = m.step(st, Batch(x, y), fr.key(2))[1]
    nll, kl = losses[(1.0, False)]["nll"], losses[(1.0, False)]["kl"]
    assert torch.allclose(losses[(0.0, False)]["loss"], nll)
    assert torch.allclose(losses[(2.0, False)]["loss"], nll + 2 * kl / 4, rtol=1e-6)
    point = -priors.normal(0.5).log_prob({k: st.mean[k] for k in ("1.weight", "1.bias")})
    assert torch.allclose(losses[(1.0, True)]["loss"], nll + (kl + point) / 4, rtol=1e-6)


def test_n_samples_schedule_follows_the_epoch():
    asked = []

    def schedule(epoch):
        asked.append(epoch)
        return 1 if epoch < 2 else 2

    model = models.mlp([3, 2])
    m = _bbp(model, n_batches=3, n_samples=schedule)
    st = m.init(fr.key(0), model.init(fr.key(0)))
    x, y = fr.normal(fr.key(1), (4, 3)), torch.tensor([0, 1, 1, 0])
    for i in range(8):
        st, _ = m.step(st, Batch(x, y), fr.key(i))
    assert asked == [0, 0, 0, 1, 1, 1, 2, 2]  # epoch = count // M
    dict_method = _bbp(model, n_batches=3, n_samples={0: 1, 2: 3})  # the seed's {0: 3, 61: 5} form
    assert dict_method.step(st, Batch(x, y), fr.key(0))[1]["loss"].isfinite()


# --- transforms and keys ---------------------------------------------------------------------------

@pytest.mark.parametrize("estimator", ["sample", "lrt", "flipout"])
def test_vmap_over_samples_equals_a_loop_and_keys_fix_every_bit(small_conv_bn_net, estimator):
    model = models.from_module(small_conv_bn_net, input_shape=(1, 6, 6))
    x = fr.normal(fr.key(3), (16, 36))
    y = (x[:, 0] > 0).long()
    states = {}
    for vmapped in (True, False):
        vm = vi.variational(model, estimator=estimator, deterministic=vi.norm_params(small_conv_bn_net))
        m = _bbp(vm, n_samples=3, kl="mc", vmap_samples=vmapped)
        st = m.init(fr.key(0), model.init(fr.key(0)))
        states[vmapped] = m.step(st, Batch(x, y), fr.key(5))
        if vmapped:
            again = m.step(st, Batch(x, y), fr.key(5))
            assert tree.equal(again[0], states[True][0]) and torch.equal(again[1]["loss"], states[True][1]["loss"])
            other = m.step(st, Batch(x, y), fr.key(6))
            assert not torch.equal(other[1]["loss"], states[True][1]["loss"])
    (a, ia), (b, ib) = states[True], states[False]
    assert torch.allclose(ia["loss"], ib["loss"], rtol=1e-6)
    assert tree.allclose((a.mean, a.rho, a.model_state), (b.mean, b.rho, b.model_state), rtol=1e-5, atol=1e-7)


def test_sample_draws_weight_sets_for_predict():
    model = models.mlp([4, 5, 3])
    m = _bbp(model)
    st = m.init(fr.key(0), model.init(fr.key(0)))
    s = m.sample(st, fr.key(1), 6)
    assert s.params["fc0.weight"].shape == (6, 5, 4)
    assert tree.equal(s, m.sample(st, fr.key(1), 6))
    assert not torch.equal(s.params["fc0.weight"][0], s.params["fc0.weight"][1])
    chunks = list(vi.sample_chunks(st, fr.key(1), 6, 4))
    assert [c.params["fc0.bias"].shape[0] for c in chunks] == [4, 2]
    assert tree.equal(tree.map(lambda *xs: torch.cat(xs), *chunks), s)
    # draws are mu + sigma * eps
    z = (s.params["fc1.weight"] - st.mean["fc1.weight"]) / vi.std_from_rho(st.rho["fc1.weight"])
    assert z.abs().max() < 6
    x = fr.normal(fr.key(2), (7, 4))
    assert predictive(m, st, x, fr.key(3), 6).shape == (6, 7, 3)
    mean_out = predict(model, vi.posterior_mean(st), x)
    assert torch.allclose(mean_out[0], model.apply(st.mean, x))


# --- the fast paths of a step ------------------------------------------------------------------------

def test_reparam_has_addcmuls_values_and_gradients_for_any_gradient_layout():
    # vi._Reparam (mu + sigma * eps, (S, ...)) makes the incoming gradient contiguous before
    # summing over S; under grad, vmap and with a transposed upstream gradient it must give
    # addcmul's numbers.
    from torch.func import grad, vmap
    mu, sigma = fr.normal(fr.key(0), (5, 4)), fr.uniform(fr.key(1), (5, 4)) + 0.1
    eps, x = fr.normal(fr.key(2), (3, 5, 4)), fr.normal(fr.key(3), (3, 6, 4))

    def loss(op, mu, sigma):  # the weight enters transposed, as F.linear under vmap
        w = op(mu, sigma, eps)
        return (vmap(lambda w_s, x_s: F.linear(x_s, w_s).tanh())(w, x) ** 2).sum() + (w ** 3).sum()

    want = grad(lambda m, s: loss(torch.addcmul, m, s), argnums=(0, 1))(mu, sigma)
    got = grad(lambda m, s: loss(vi._Reparam.apply, m, s), argnums=(0, 1))(mu, sigma)
    assert torch.equal(vi._Reparam.apply(mu, sigma, eps), torch.addcmul(mu, sigma, eps))
    assert all(torch.allclose(g, w, rtol=1e-6, atol=1e-6) for g, w in zip(got, want))
    # under an outer vmap (an ensemble of BBP states)
    mus, sigmas = torch.stack([mu, 2 * mu]), torch.stack([sigma, sigma + 1])
    per = vmap(grad(lambda m, s: loss(vi._Reparam.apply, m, s), argnums=(0, 1)))(mus, sigmas)
    assert torch.allclose(per[0][1], grad(lambda m, s: loss(torch.addcmul, m, s))(2 * mu, sigma + 1), rtol=1e-5)


def test_half_squared_norms_per_sample():
    eps = {"a": fr.normal(fr.key(0), (3, 4, 5)), "b": fr.normal(fr.key(1), (3, 7))}
    want = -0.5 * sum(e.reshape(3, -1).double().pow(2).sum(1) for e in eps.values())
    assert torch.allclose(vi._half_sq_norms(eps, ["a", "b"], 3).double(), want, rtol=1e-6)
    assert torch.equal(vi._half_sq_norms(eps, [], 3), torch.zeros(3))


def test_whole_tensor_prior_sums_match_their_elementwise_definitions():
    # priors.normal's KL, laplace's log density and the seed's joint-sum mixtures are computed
    # as whole-tensor sums (dot products); the elementwise formulas in float64 agree.
    m, s = fr.normal(fr.key(0), (30, 20)) * 0.1, fr.uniform(fr.key(1), (30, 20)) * 0.1 + 0.01
    m64, s64 = m.double(), s.double()
    kl = (math.log(0.1) - torch.log(s64) + (s64 ** 2 + m64 ** 2) / (2 * 0.01) - 0.5).sum()
    assert float(priors.normal(0.1).kl(m, s)) == pytest.approx(float(kl), rel=1e-5)
    assert float(priors.laplace(0.1, 0.02).log_prob(m)) == pytest.approx(
        float((-math.log(0.2) - (m64 - 0.02).abs() / 0.1).sum()), rel=1e-5)
    log_n1 = (-0.5 * (m64 / 0.1) ** 2 - math.log(0.1) - 0.5 * math.log(2 * math.pi)).sum()
    log_n2 = (-0.5 * (m64 / 5e-4) ** 2 - math.log(5e-4) - 0.5 * math.log(2 * math.pi)).sum()
    src = torch.logsumexp(torch.stack([math.log(0.75) + log_n1, math.log(0.25) + log_n2]), 0)
    assert float(priors.scale_mixture(0.75, 0.1, 5e-4, "joint_sum").log_prob(m)) == pytest.approx(
        float(src), rel=1e-5)


def test_vmapped_draws_fill_one_buffer_with_the_loops_bits():
    from torch.func import vmap
    keys = fr.split(fr.key(9), 4)
    for draw in (lambda k: fr.normal(k, (3, 17)), lambda k: fr.uniform(k, (5,), low=-1.0, high=2.0),
                 lambda k: fr.normal(k, ())):
        assert torch.equal(vmap(draw)(keys), torch.stack([draw(k) for k in keys]))
    nested = vmap(vmap(lambda k: fr.normal(k, (6,))))(fr.split(keys, 2))
    assert torch.equal(nested[2, 1], fr.normal(fr.split(keys, 2)[2, 1], (6,)))


# --- fitting -----------------------------------------------------------------------------------------

def test_bbp_fit_reduces_the_loss_and_classifies(toy_classification):
    x, y = toy_classification
    model = models.mlp([8, 32, 3])
    m = _bbp(vi.variational(model, estimator="lrt"), n_batches=8, n_samples=2)
    res = fbnn.fit(m, m.init(fr.key(0), model.init(fr.key(0))), (x, y), fr.key(1), epochs=12,
                   batch_size=32, progress=False)
    assert res.history[-1]["loss"] < 0.7 * res.history[0]["loss"]
    probs = predictive(m, res.state, x, fr.key(2), 20).mean(0)
    assert (probs.argmax(-1) == y).float().mean() > 0.85


def test_conjugate_linear_regression_posterior_is_recovered():
    # One Linear layer, Gaussian likelihood (sigma_n = 0.5), N(0, 1) prior, and a design
    # [X, 1] with orthogonal columns (Gram = n I): the exact posterior is diagonal with
    # precision n / sigma_n^2 + 1, so mean-field VI is exact. The full-batch ELBO (M = 1,
    # closed-form KL) is then maximised at the true posterior; 200 steps of 16-sample LRT
    # gradients with a decaying Adam step get the means within 0.1 posterior std and the
    # stds within 5 % (measured: 0.03 std and 1 % on three seeds).
    n, d, noise = 40, 3, 0.5
    q, _ = torch.linalg.qr(torch.cat([torch.ones(n, 1), fr.normal(fr.key(0), (n, d))], 1).double())
    x = (q[:, 1:] * math.sqrt(n)).float()
    w_true = torch.tensor([[0.8, -0.5, 0.3]])
    y = (x @ w_true.T + 0.2 + noise * fr.normal(fr.key(1), (n, 1)))
    precision = n / noise ** 2 + 1.0
    post_std = 1 / math.sqrt(precision)
    post_w = (x.T @ y / noise ** 2).T / precision
    post_b = (y.sum() / noise ** 2) / precision
    model = models.mlp([d, 1])
    lik = likelihoods.gaussian(noise)
    m = vi.bbp(vi.variational(model, estimator="lrt"), lik, optim.adam(optim.exponential_decay(0.05, 0.01, 200)),
               priors.normal(1.0), 1, n_samples=16, kl="closed", rho_init=-3.0)
    st = m.init(fr.key(2), model.init(fr.key(2)))
    for i in range(200):
        st, _ = m.step(st, Batch(x, y[:, 0]), fr.key(10 + i))
    assert (st.mean["fc0.weight"] - post_w).abs().max() < 0.1 * post_std
    assert abs(float(st.mean["fc0.bias"]) - float(post_b)) < 0.1 * post_std
    stds = torch.cat([vi.std_from_rho(r).flatten() for r in st.rho.values()])
    assert torch.allclose(stds, torch.full_like(stds, post_std), rtol=0.05)


def test_variational_from_module_conv_bn_trains_with_deterministic_norm_layers(small_conv_bn_net):
    model = models.from_module(small_conv_bn_net, input_shape=(1, 6, 6))
    x = fr.normal(fr.key(3), (64, 36))
    y = (x[:, :18].sum(1) > 0).long()
    keep = vi.norm_params(small_conv_bn_net)
    vm = vi.variational(model, estimator="flipout", deterministic=keep)
    m = _bbp(vm, n_batches=4, n_samples=2)
    st0 = m.init(fr.key(0), model.init(fr.key(0)))
    assert sorted(st0.rho) == ["0.bias", "0.weight", "6.bias", "6.weight"]  # conv and linear only
    res = fbnn.fit(m, st0, (x, y), fr.key(1), epochs=6, batch_size=16, progress=False)
    st = res.state
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    for name in ("1.weight", "1.bias", "4.weight", "4.bias"):       # BatchNorm2d and LayerNorm
        assert not torch.equal(st.mean[name], st0.mean[name])         # trained (as MAP) ...
        draws = m.sample(st, fr.key(2), 5).params[name]
        assert (draws == st.mean[name]).all()                         # ... and never sampled
    assert not torch.equal(st.model_state["1.running_mean"], st0.model_state["1.running_mean"])
    assert predictive(m, st, x, fr.key(4), 5).shape == (5, 64, 3)


def test_bayesify_starts_at_the_given_weights_with_the_given_sigma():
    model = models.mlp([3, 4, 2])
    params = model.init(fr.key(0))
    mean, rho = vi.bayesify(params, 0.1, deterministic=lambda n: n == "fc1.bias")
    assert tree.equal(mean, params) and sorted(rho) == ["fc0.bias", "fc0.weight", "fc1.weight"]
    assert all(torch.allclose(vi.std_from_rho(r), torch.full_like(r, 0.1)) for r in rho.values())
    m = _bbp(vi.variational(model, deterministic=lambda n: n == "fc1.bias"), mean_init="model", sigma_init=0.1)
    st = m.init(fr.key(5), params)
    assert tree.equal(st.mean, mean) and tree.allclose(st.rho, rho)
    pv = _bbp(model, priors.pyvarinf_gaussian(params), mean_init="zero", sigma_init=priors.pyvarinf_sigma(params))
    st = pv.init(fr.key(5), params)
    assert torch.allclose(vi.std_from_rho(st.rho["fc0.weight"]), torch.full((4, 3), 1 / math.sqrt(3)))
    assert float(vi.kl_divergence(st, priors.pyvarinf_gaussian(params))) == pytest.approx(0.0, abs=1e-4)


# --- pruning -----------------------------------------------------------------------------------------

def _trained_small(toy_classification):
    x, y = toy_classification
    model = models.mlp([8, 16, 3])
    m = _bbp(model, priors.normal(0.5), n_batches=8)
    st = fbnn.fit(m, m.init(fr.key(0), model.init(fr.key(0))), (x, y), fr.key(1), epochs=3, batch_size=32,
                  progress=False).state
    return m, st, x, y


def test_pruning_removes_exactly_the_requested_fraction(toy_classification):
    _, st, _, _ = _trained_small(toy_classification)
    scores = pruning.snr(st)
    n = sum(s.numel() for s in scores.values())
    flat = torch.cat([s.flatten() for s in scores.values()])
    for fraction in pruning.SEED_FRACTIONS:
        pruned = pruning.prune(st, scores, fraction)
        gone = torch.cat([(pruned.rho[k] == pruning.PRUNED_RHO).flatten() for k in st.rho])
        assert int(gone.sum()) == round(fraction * n)
        # the lowest scores went, and they hold mu = 0, sigma = 1e-6
        if gone.any():
            assert flat[gone].max() <= flat[~gone].min()
        for k in st.rho:
            was = pruned.rho[k] == pruning.PRUNED_RHO
            assert (pruned.mean[k][was] == 0).all() and (vi.std_from_rho(pruned.rho[k])[was] == 1e-6).all()
        # the seed's rule: np.percentile and a strict '>'
        keep, t = pruning.keep_mask(scores, fraction, rule="percentile")
        assert t == pytest.approx(float(np.percentile(flat.double().numpy(), 100 * fraction)))
        assert int(sum(k.sum() for k in keep.values())) == int((flat.double() > t).sum())
    assert tree.equal(st.mean, _trained_small(toy_classification)[1].mean)  # nothing modified in place


def test_pruned_sigma_of_1e_6_does_not_change_predictions(toy_classification):
    m, st, x, _ = _trained_small(toy_classification)
    pruned = pruning.prune(st, pruning.snr(st), 0.9)
    draws = m.sample(pruned, fr.key(3), 8)
    zeroed = tree.map(lambda d, r: torch.where(r == pruning.PRUNED_RHO, torch.zeros_like(d), d),
                      draws.params, {k: pruned.rho[k].expand_as(draws.params[k]) for k in pruned.rho})
    a = predict(m.model, draws, x).softmax(-1)
    b = predict(m.model, fbnn.methods.Samples(zeroed, draws.model_state), x).softmax(-1)
    assert (a - b).abs().max() < 1e-5


def test_kl_scores_closed_form_and_monte_carlo(toy_classification):
    _, st, _, _ = _trained_small(toy_classification)
    prior = priors.normal(0.5)
    closed = pruning.kl_scores(st, prior, closed_form=True)
    mc = pruning.kl_scores(st, prior, fr.key(4), n_samples=200)
    for k in closed:
        assert closed[k].shape == st.rho[k].shape
        assert torch.allclose(closed[k].sum(), prior.kl(st.mean[k], vi.std_from_rho(st.rho[k])), rtol=1e-5)
    total_closed = sum(float(v.sum()) for v in closed.values())
    assert total_closed == pytest.approx(float(vi.kl_divergence(st, prior)), rel=1e-5)
    assert sum(float(v.sum()) for v in mc.values()) == pytest.approx(total_closed, rel=0.03)
    assert torch.equal(pruning.kl_scores(st, prior, fr.key(4), 20)["fc0.weight"],
                       pruning.kl_scores(st, prior, fr.key(4), 20)["fc0.weight"])
    with pytest.raises(ValueError, match="does not factorise"):
        pruning.kl_scores(st, priors.scale_mixture(0.75, 0.1, 5e-4, "joint_sum"), fr.key(4))


def test_pruning_evaluation_and_markdown(toy_classification, tmp_path):
    from experiments import bbp_mnist
    m, st, x, y = _trained_small(toy_classification)
    res = bbp_mnist.prune_run(m, st, priors.normal(0.5), x, y, fr.key(5), ["snr", "kl"], [0.0, 0.5, 0.99],
                              n_samples=10)
    for criterion, rows in res.items():
        assert [r["fraction"] for r in rows] == [0.0, 0.5, 0.99]
        assert rows[-1]["n_kept"] < 0.02 * (rows[0]["n_kept"] + rows[0]["n_pruned"])
        assert rows[0]["error_pct"] < 40 < rows[-1]["error_pct"]  # chance is 2/3; 99 % pruned is near it
        bbp_mnist.record_pruning(f"toy/{criterion}", {"row": "bbp_gaussian", "criterion": criterion, "rows": rows,
                                                      "command": "pytest"}, results_dir=tmp_path)
    md = (tmp_path / "pruning.md").read_text()
    assert "| bbp_gaussian | snr |" in md and "| bbp_gaussian (seed) | kl | 2.64 |" in md
    assert set(json.loads((tmp_path / "pruning.json").read_text())) == {"toy/snr", "toy/kl"}


# --- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    ({"n_batches": 0}, "n_batches"),
    ({"n_samples": 0}, "n_samples must be"),
    ({"n_samples": {1: 3}}, "schedule must map"),
    ({"kl": "exact"}, "unknown kl"),
    ({"kl_schedule": "linear"}, "unknown kl_schedule"),
    ({"temperature": -1.0}, "temperature must be"),
    ({"kl_reduction": "batch"}, "unknown kl_reduction"),
    ({"reduction": "dataset"}, "unknown reduction"),
    ({"mean_init": "normal"}, "unknown mean_init"),
    ({"mean_scale": 0.0}, "mean_scale must be"),
    ({"rho_init": (-2.0, -3.0)}, "low < high"),
    ({"sigma_init": 0.0}, "sigma_init must be"),
    ({"prior": None}, "a prior is required"),
])
def test_bbp_rejects_bad_settings(kw, match):
    args = {"prior": priors.normal(1.0), "n_batches": 4, **kw}
    with pytest.raises(ValueError, match=match):
        vi.bbp(models.mlp([2, 2]), likelihoods.categorical(), optim.sgd(0.1), args.pop("prior"), args.pop("n_batches"),
               **args)


def test_bad_variational_settings_and_priors():
    model = models.mlp([2, 3, 2])
    with pytest.raises(ValueError, match="unknown estimator"):
        vi.variational(model, estimator="reparam")
    with pytest.raises(ValueError, match="shared_bias_noise applies to estimator='lrt'"):
        vi.variational(model, shared_bias_noise=True)
    with pytest.raises(ValueError, match="no closed-form KL"):
        _bbp(model, priors.laplace(0.1), kl="closed").init(fr.key(0), model.init(fr.key(0)))
    with pytest.raises(ValueError, match="no prior for the variational tensor 'fc1.bias'"):
        prior = {"fc0.weight": priors.normal(1.0), "fc0.bias": priors.normal(1.0), "fc1.weight": priors.normal(1.0),
                 "fc1.bias": None}
        _bbp(model, prior).init(fr.key(0), model.init(fr.key(0)))
    with pytest.raises(ValueError, match="leaves no variational tensor"):
        _bbp(vi.variational(model, deterministic=lambda n: True)).init(fr.key(0), model.init(fr.key(0)))
    # LRT needs layer calls on variational weights
    homo = models.Model(lambda k: {"w": torch.zeros(3)}, lambda p, x, key=None, state=None: x * p["w"], dict,
                        lambda p, s, x, key=None: (x * p["w"], s))
    m = _bbp(vi.variational(homo, estimator="lrt"))
    st = m.init(fr.key(0), homo.init(fr.key(0)))
    with pytest.raises(ValueError, match="found no F.linear/F.conv call"):
        m.step(st, Batch(torch.ones(2, 3), torch.tensor([0, 1])), fr.key(1))
    scores = {"w": torch.tensor([1.0, 2.0])}
    with pytest.raises(ValueError, match="fraction must be in"):
        pruning.keep_mask(scores, 1.5)
    with pytest.raises(ValueError, match="unknown rule"):
        pruning.keep_mask(scores, 0.5, rule="top")


# --- the MNIST experiment's plumbing ------------------------------------------------------------------

def test_bbp_mnist_configs_follow_spec8():
    from experiments import bbp_mnist
    built = {row: bbp_mnist.build(bbp_mnist.config(row), 60000) for row in bbp_mnist.CONFIGS}
    assert {row: b[1].name for row, b in built.items()} == {
        "bbp_gaussian": "bbp", "bbp_gmm": "bbp", "bbp_laplace": "bbp", "bbp_lrt": "bbp_lrt"}
    assert all(b[2] == 600 for b in built.values())  # M = N / B = 600
    cfg = bbp_mnist.config("bbp_gmm", epochs=1)
    assert cfg["epochs"] == 1 and cfg["select"] == "best_on_test" and cfg["n_samples"] == {0: 3, 61: 5}
    assert "joint_sum_additive" in bbp_mnist.make_prior(cfg["prior"]).name
    with pytest.raises(ValueError, match="unknown row"):
        bbp_mnist.config("bbp_dropout")


def test_a_bbp_run_of_other_epochs_needs_a_row_name_of_its_own(tmp_path, capsys):
    from experiments import bbp_mnist
    argv = ["train", "bbp_lrt", "--epochs", "30", "--results-dir", str(tmp_path), "--runs-dir", str(tmp_path / "r")]
    assert bbp_mnist.main(argv) == 2
    assert "--epochs 30 is not the seed's 140 for bbp_lrt" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "mnist.json").exists()
    args = bbp_mnist.parser().parse_args([*argv, "--row-name", "bbp_lrt_30ep"])
    assert bbp_mnist.row_name(args) == "bbp_lrt_30ep"
    for ok in (["--no-record"], ["--subset", "100"], []):  # a smoke run or no record; the seed's epochs
        args = bbp_mnist.parser().parse_args(["train", "bbp_lrt", *ok, *([] if not ok else ["--epochs", "30"])])
        assert bbp_mnist.row_name(args) == "bbp_lrt"


def test_best_on_test_keeps_the_lowest_error_state(toy_classification, tmp_path):
    from experiments import bbp_mnist
    m, st, x, y = _trained_small(toy_classification)
    worse = st._replace(mean=tree.map(torch.zeros_like, st.mean))  # the zero net: 2/3 error
    eval_fn = bbp_mnist.dev_eval_fn(m, x, y, tmp_path / "best.pt")
    errs = [eval_fn(s, e)["dev_error_pct"] for e, s in enumerate([worse, st, worse])]
    assert errs[1] < errs[0] == errs[2]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 1 and tree.equal(best["state"].mean, st.mean)
    # a resumed run starts from the stored best error
    assert bbp_mnist.dev_eval_fn(m, x, y, tmp_path / "best.pt")(worse, 3) == {"dev_error_pct": errs[0]}
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
