import importlib
import math

import pytest
import torch
from torch.distributions import Dirichlet, StudentT, kl_divergence

import fbnn
from fbnn import methods, models, optim, tree
from fbnn import random as fr
from fbnn.predict import predictive

ev = importlib.import_module("fbnn.methods.evidential")  # the module, even if `methods.evidential` names the function

ALPHA = torch.tensor([[2.5, 1.3, 4.0, 1.0],
                      [1.0, 1.0, 1.0, 1.0],
                      [7.0, 1.5, 1.2, 3.3]], dtype=torch.float64)
LABELS = torch.tensor([2, 0, 1])


def _dirichlet_draws(key, alpha_row, n):
    """``(n, K)`` float64 draws of Dir(alpha_row): normalised Gamma(alpha_k, 1) draws."""
    keys = fr.split(key, alpha_row.shape[0])
    g = torch.stack([fr.gamma(keys[k], float(a), (n,), dtype=torch.float64)
                     for k, a in enumerate(alpha_row)], dim=-1)
    return g / g.sum(-1, keepdim=True)


@pytest.fixture(scope="module")
def draws():
    return [_dirichlet_draws(fr.fold_in(fr.key(7), i), ALPHA[i], 200_000) for i in range(ALPHA.shape[0])]


def test_losses_equal_monte_carlo_over_dirichlet_draws(draws):
    # 2e5 draws: the Monte-Carlo standard errors are below 0.3 % of each value; tolerance 1 %.
    for i, p in enumerate(draws):
        a, y = ALPHA[i:i + 1], LABELS[i:i + 1]
        target = ev.one_hot(y, 4, torch.float64)[0]
        mc_ml = -torch.log(p[:, y[0]].mean())                 # -log E[p_y]
        mc_ce = (-torch.log(p[:, y[0]])).mean()                # E[-log p_y]
        mc_mse = ((target - p) ** 2).sum(-1).mean()            # E[||y - p||^2]
        assert torch.allclose(ev.ml_loss(a, y), mc_ml, rtol=1e-2)
        assert torch.allclose(ev.ce_risk(a, y), mc_ce, rtol=1e-2)
        assert torch.allclose(ev.mse_risk(a, y), mc_mse, rtol=1e-2)
        assert torch.allclose(p.mean(0), ev.expected_probs(a)[0], atol=3e-3)


def test_losses_average_over_the_batch_and_take_one_hot_or_weights():
    y1h = ev.one_hot(LABELS, 4, torch.float64)
    for fn in (ev.ml_loss, ev.ce_risk, ev.mse_risk, ev.kl_regulariser):
        rows = torch.stack([fn(ALPHA[i:i + 1], LABELS[i:i + 1]) for i in range(3)])
        assert torch.allclose(fn(ALPHA, LABELS), rows.mean(), rtol=1e-12)
        assert torch.allclose(fn(ALPHA, y1h), rows.mean(), rtol=1e-12)
        w = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
        assert torch.allclose(fn(ALPHA, LABELS, w), (w * rows).sum() / 3, rtol=1e-12)


def test_kl_regulariser_equals_torch_distributions():
    alpha = 1.0 + ev.softplus_evidence(3 * fr.normal(fr.key(1), (6, 5), dtype=torch.float64))
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    target = ev.one_hot(y, 5, torch.float64)
    alpha_tilde = target + (1 - target) * alpha
    ref = kl_divergence(Dirichlet(alpha_tilde), Dirichlet(torch.ones_like(alpha_tilde)))
    assert torch.allclose(ev.kl_uniform(alpha_tilde), ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(ev.kl_regulariser(alpha, y), ref.mean(), rtol=1e-10)
    assert torch.allclose(ev.kl_uniform(torch.ones(3, 4, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64))
    # the true class's evidence is removed: it does not change the regulariser
    bumped = alpha + 10.0 * target
    assert torch.allclose(ev.kl_regulariser(bumped, y), ev.kl_regulariser(alpha, y), rtol=1e-12)


@pytest.mark.parametrize("evidence", ev.EVIDENCE)
def test_belief_and_uncertainty_sum_to_one_and_log_alpha_view(evidence):
    out = 8 * fr.normal(fr.key(2), (50, 7))
    alpha = ev.dirichlet_alpha(ev.evidence_fn(evidence)(out))
    assert (alpha >= 1).all()
    u, b = ev.uncertainty(alpha), ev.belief(alpha)
    assert u.shape == (50,) and b.shape == (50, 7)
    assert torch.allclose(u + b.sum(-1), torch.ones(50), atol=1e-6)
    assert torch.allclose(ev.expected_probs(alpha).sum(-1), torch.ones(50), atol=1e-6)
    assert torch.allclose(u, 7 / ev.strength(alpha), rtol=1e-6)
    # the method's model outputs log alpha: softmax gives alpha / S, logsumexp gives K / S
    model = models.mlp([3, 7])
    params = {"fc0.weight": torch.zeros(7, 3), "fc0.bias": out[0]}
    probs, u0 = ev.dirichlet_from_log_alpha(ev.dirichlet_model(model, evidence).apply(params, torch.zeros(1, 3)))
    assert torch.allclose(probs[0], ev.expected_probs(alpha[0]), rtol=1e-5, atol=1e-7)
    assert torch.allclose(u0[0], u[0], rtol=1e-5)


def test_predicted_class_keeps_the_order_of_vanishing_evidence():
    # outputs near -30: softplus evidence ~1e-13, every alpha_k rounds to 1 in float32 and
    # p_hat ties at 1/K; log alpha = log1p(e) still ranks the classes as the evidence does
    out = torch.tensor([[-31.0, -30.0, -32.0], [-29.5, -33.0, -30.5], [2.0, 5.0, -1.0]])
    identity = {"fc0.weight": torch.eye(3), "fc0.bias": torch.zeros(3)}
    log_alpha = ev.dirichlet_model(models.mlp([3, 3]), "softplus").apply(identity, out)
    probs, _ = ev.dirichlet_from_log_alpha(log_alpha)
    assert torch.equal(probs[0], torch.full((3,), 1 / 3)) and probs[0].argmax() == 0  # the rounding tie
    assert ev.predicted_class(log_alpha).tolist() == [1, 0, 1]
    assert torch.equal(ev.predicted_class(log_alpha), ev.softplus_evidence(out.double()).argmax(-1))


def test_dirichlet_entropy_decomposition_matches_monte_carlo(draws):
    _, aleatoric, epistemic = ev.dirichlet_entropy_decomposition(ALPHA)
    for i, p in enumerate(draws):
        mc_aleatoric = (-(p * torch.log(p)).sum(-1)).mean()
        assert torch.allclose(aleatoric[i], mc_aleatoric, rtol=1e-2)
    assert (epistemic >= 0).all()


def test_annealing_schedules_at_key_points():
    epochs = torch.tensor([0, 1, 5, 10, 25])
    assert torch.allclose(ev.paper_annealing(epochs), torch.tensor([0.0, 0.1, 0.5, 1.0, 1.0]))
    assert torch.allclose(ev.paper_annealing(torch.tensor(2), annealing_epochs=4), torch.tensor(0.5))
    seen = torch.tensor([0, 100, 200, 600, 1000, 3000])
    assert torch.allclose(ev.labml_annealing(seen, 1000),
                          torch.tensor([0.0, 0.005, 0.01, 0.505, 1.0, 1.0]), atol=1e-7)


def test_the_method_anneals_by_examples_seen():
    model = models.mlp([2, 3])
    x, y = fr.normal(fr.key(0), (5, 2)), torch.tensor([0, 1, 2, 0, 1])
    batch = methods.Batch(x, y)

    def coefs(**kw):
        m = ev.evidential(model, optim.sgd(1e-3), n_data=10, **kw)
        st, out = m.init(fr.key(0), model.init(fr.key(0))), []
        for i in range(5):
            st, info = m.step(st, batch, fr.key(i))
            out.append(float(info["annealing"]))
        assert int(st.seen) == 25 and int(st.count) == 5
        return out

    # paper: the epoch index floor(seen / 10) before each step, over 4 epochs
    assert coefs(annealing="paper", annealing_epochs=4) == pytest.approx([0, 0, 0.25, 0.25, 0.5])
    # labml over T = 2 * 10 examples, counting the current batch: seen 5, 10, 15, 20, 25
    ref = [0.01 + 0.99 * (s / 20 - 0.2) / 0.8 for s in (5, 10, 15)] + [1.0, 1.0]
    assert coefs(annealing="labml", epochs=2) == pytest.approx(ref, rel=1e-6)
    assert coefs(annealing="none") == [0.0] * 5
    assert coefs(annealing=lambda seen: 0.5 + 0 * seen) == [0.5] * 5


@pytest.mark.parametrize("loss", ev.LOSSES)
def test_step_is_gradient_descent_on_loss_plus_annealed_kl(loss):
    model = models.mlp([4, 8, 3])
    params = model.init(fr.key(0))
    x, y = fr.normal(fr.key(1), (16, 4)), torch.arange(16) % 3
    m = ev.evidential(model, optim.sgd(1.0), loss=loss, evidence="softplus", annealing=lambda s: 0.3)
    new, info = m.step(m.init(fr.key(0), params), methods.Batch(x, y), fr.key(2))
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    alpha = 1 + torch.nn.functional.softplus(model.apply(leaves, x))
    total = ev.evidential_loss(loss)(alpha, y) + 0.3 * ev.kl_regulariser(alpha, y)
    grads = dict(zip(leaves, torch.autograd.grad(total, list(leaves.values()))))
    assert torch.allclose(info["loss"], total.detach(), rtol=1e-6)
    assert torch.allclose(info["data_loss"] + 0.3 * info["kl"], info["loss"], rtol=1e-6)
    assert tree.allclose(tree.sub(params, new.params), grads, rtol=1e-4, atol=1e-6)


def _gap_problem():
    """Three clusters (sd 0.4) on a circle of radius 3, and seven points in the gaps
    between them, each at least 2.5 from every cluster centre."""
    ang = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    centres = 3 * torch.stack([ang.cos(), ang.sin()], -1)
    y = torch.arange(240) % 3
    x = centres[y] + 0.4 * fr.normal(fr.key(3), (240, 2))
    mid = (centres + centres.roll(1, 0)) / 2
    return x, y, torch.cat([torch.zeros(1, 2), mid, 0.5 * mid])


def test_fit_separates_and_is_unsure_away_from_the_data():
    x, y, gap = _gap_problem()
    model = models.mlp([2, 32, 3])
    m = ev.evidential(model, optim.adam(1e-2), loss="mse", annealing="paper", n_data=240, annealing_epochs=5)
    res = fbnn.fit(m, m.init(fr.key(0), model.init(fr.key(0))), (x, y), fr.key(1), epochs=20,
                   batch_size=32, progress=False)
    probs, u = ev.predict_dirichlet(m, res.state, x)
    assert (probs.argmax(-1) == y).float().mean() >= 0.99
    _, u_gap = ev.predict_dirichlet(m, res.state, gap)
    # measured: u about 0.12 on the training points, 0.25 in the gaps (seeds 0-3)
    assert u_gap.mean() > 1.5 * u.mean()
    assert torch.allclose(predictive(m, res.state, x, fr.key(5), 1)[0], probs, atol=1e-6)


def test_same_key_same_bits_with_dropout():
    x, y, _ = _gap_problem()
    model = models.mlp([2, 16, 3], dropout=0.3)
    m = ev.evidential(model, optim.adamw(1e-2, weight_decay=0.005), loss="ce", evidence="relu",
                      annealing="labml", n_data=240, epochs=2)

    def run(k):
        return fbnn.fit(m, m.init(fr.key(0), model.init(fr.key(0))), (x, y), k, epochs=2, batch_size=64,
                        progress=False).state.params

    a, b, c = run(fr.key(1)), run(fr.key(1)), run(fr.key(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the key drives shuffling and masks


def test_works_on_lenet_batchnorm_modules_and_in_an_ensemble(small_conv_bn_net):
    net = models.lenet(10)
    x, y = fr.normal(fr.key(0), (4, 784)), torch.tensor([1, 7, 3, 9])
    m = ev.evidential(net, optim.adamw(1e-3, weight_decay=0.005), annealing="labml", n_data=4, epochs=1)
    m.check(m.init(fr.key(0), net.init(fr.key(0))), x, y)
    st, info = m.step(m.init(fr.key(0), net.init(fr.key(0))), methods.Batch(x, y), fr.key(1))
    assert set(info) == {"loss", "data_loss", "kl", "annealing"} and torch.isfinite(info["loss"])
    probs, u = ev.predict_dirichlet(m, st, x)
    assert probs.shape == (4, 10) and u.shape == (4,) and ((u > 0) & (u <= 1)).all()

    bn = models.from_module(small_conv_bn_net, input_shape=(1, 6, 6))
    m = ev.evidential(bn, optim.adam(1e-2), loss="ml", evidence="exp", annealing="none")
    st = m.init(fr.key(0), bn.init(fr.key(0)))
    xb, yb = fr.normal(fr.key(3), (8, 36)), torch.arange(8) % 3
    new, _ = m.step(st, methods.Batch(xb, yb), fr.key(4))
    assert not tree.allclose(new.model_state, st.model_state)  # BatchNorm statistics moved

    model = models.mlp([36, 8, 3])
    ens = methods.ensemble(ev.evidential(model, optim.adam(1e-2), n_data=8), 2, resample="bernoulli", n_data=8)
    st = ens.init(fr.key(0), methods.init_members(model, fr.key(0), 2))
    res = fbnn.fit(ens, st, (xb, yb), fr.key(1), epochs=1, batch_size=4, progress=False)  # own shuffles
    st = res.state
    assert torch.isfinite(torch.tensor(res.history[-1]["loss"]))
    assert st.members.seen.tolist() == [8, 8]
    probs, u = ev.predict_dirichlet(ens, st, xb, n_samples=2)
    assert probs.shape == (8, 3) and u.shape == (8,)


def test_bad_input_raises_value_errors():
    model = models.mlp([2, 3])
    opt = optim.sgd(0.1)
    with pytest.raises(ValueError, match="unknown loss 'nll'"):
        ev.evidential(model, opt, loss="nll", n_data=10)
    with pytest.raises(ValueError, match="unknown evidence 'sigmoid'"):
        ev.evidential(model, opt, evidence="sigmoid", n_data=10)
    with pytest.raises(ValueError, match="unknown annealing 'linear'"):
        ev.evidential(model, opt, annealing="linear", n_data=10)
    with pytest.raises(ValueError, match="n_data"):
        ev.evidential(model, opt)
    with pytest.raises(ValueError, match="n_data"):
        ev.evidential(model, opt, n_data=0)
    with pytest.raises(ValueError, match="epochs"):
        ev.evidential(model, opt, annealing="labml", n_data=10)
    with pytest.raises(ValueError, match="annealing_epochs"):
        ev.evidential(model, opt, n_data=10, annealing_epochs=0)
    with pytest.raises(ValueError, match="total"):
        ev.labml_annealing(torch.tensor(0), -5)
    m = ev.evidential(model, opt, n_data=10)
    st = m.init(fr.key(0), model.init(fr.key(0)))
    x = fr.normal(fr.key(1), (4, 2))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        m.check(st, x, torch.tensor([0, 1, 3, 2]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        fbnn.fit(m, st, (x, torch.tensor([0, -1, 2, 2])), fr.key(0), epochs=1, batch_size=2, progress=False)
    one = models.mlp([2, 1])
    m1 = ev.evidential(one, opt, n_data=10)
    with pytest.raises(ValueError, match="K >= 2"):
        m1.check(m1.init(fr.key(0), one.init(fr.key(0))), x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="do not fit the model"):
        m.check(st, fr.normal(fr.key(1), (4, 5)), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        ev.mse_risk(ALPHA, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="do not fit alpha"):
        ev.ce_risk(ALPHA, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be integers"):
        ev.ml_loss(ALPHA, torch.tensor([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match="K >= 2"):
        ev.uncertainty(torch.ones(3, 1))


# --- evidential regression -------------------------------------------------------------------

def test_nig_marginal_is_student_t_and_matches_monte_carlo():
    gamma, nu, alpha, beta = (torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64),
                              torch.tensor([[3.5]], dtype=torch.float64), torch.tensor([[1.2]], dtype=torch.float64))
    y = torch.tensor([[-0.4]], dtype=torch.float64)
    scale = torch.sqrt(beta * (1 + nu) / (nu * alpha))
    ref = -StudentT(2 * alpha, gamma, scale).log_prob(y)
    nll = ev.nig_nll(y, gamma, nu, alpha, beta)
    assert torch.allclose(nll, ref, rtol=1e-10)
    # sigma^2 ~ InvGamma(alpha, beta), mu ~ N(gamma, sigma^2 / nu): E[N(y; mu, sigma^2)] = exp(-nll)
    k1, k2 = fr.split(fr.key(4), 2)
    n = 400_000
    var = beta[0, 0] / fr.gamma(k1, 3.5, (n,), dtype=torch.float64)
    mu = gamma[0, 0] + torch.sqrt(var / nu[0, 0]) * fr.normal(k2, (n,), dtype=torch.float64)
    dens = torch.exp(-0.5 * (y[0, 0] - mu) ** 2 / var) / torch.sqrt(2 * math.pi * var)
    assert torch.allclose(dens.mean(), torch.exp(-nll[0, 0]), rtol=1e-2)
    _, aleatoric, epistemic = ev.nig_predictive(gamma, nu, alpha, beta)
    assert torch.allclose(aleatoric[0, 0], var.mean(), rtol=2e-2)
    assert torch.allclose(epistemic[0, 0], mu.var(), rtol=2e-2)


def test_evidential_regression_fits_a_line():
    x = fr.uniform(fr.key(0), (200, 1), low=-2.0, high=2.0)
    y = (2 * x[:, 0] + 0.1 * fr.normal(fr.key(1), (200,)))
    model = models.mlp([1, 32, 4])
    m = ev.evidential_regression(model, optim.adam(1e-2), coeff=1e-2)
    res = fbnn.fit(m, m.init(fr.key(2), model.init(fr.key(2))), (x, y), fr.key(3), epochs=40, batch_size=50,
                   progress=False)
    gamma = ev.nig_params(model.apply(res.state.params, x))[0]
    assert torch.sqrt(((gamma[:, 0] - 2 * x[:, 0]) ** 2).mean()) < 0.2
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    with pytest.raises(ValueError, match="coeff"):
        ev.evidential_regression(model, optim.adam(1e-2), coeff=-1.0)
    with pytest.raises(ValueError, match="4D"):
        ev.evidential_regression(models.mlp([1, 3]), optim.adam(1e-2)).check(
            m.init(fr.key(0), models.mlp([1, 3]).init(fr.key(0))), x, y)
