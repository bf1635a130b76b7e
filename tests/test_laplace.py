"""Laplace approximations: exact curvature blocks, conjugate posteriors, samples, predictives.

Every check compares against an independent computation: ``torch.func.jacrev``/``hessian``
Jacobians and Hessians (float64, so agreement is to round-off), the closed-form Bayesian
linear-regression posterior and evidence, or Monte Carlo with a stated tolerance.
"""
import math

import pytest
import torch
from torch.func import hessian, jacrev

import fbnn
from fbnn import likelihoods, models, tree
from fbnn import random as fr
from fbnn.methods import laplace as fl
from fbnn.methods.base import Batch
from fbnn.predict import predict

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _net(sizes=(5, 7, 6, 3), seed=0):
    model = models.mlp(list(sizes))
    return model, tree.astype(model.init(fr.key(seed)), F64)


def _data(n=12, d=5, k=3, seed=1):
    x = fr.normal(fr.key(seed), (n, d), dtype=F64)
    y = fr.randint(fr.key(seed + 1), k, (n,))
    return x, y


def _packed_jacobian(model, params, xn, weight, bias, state=None):
    """``d out / d vec(M)`` for ``M = [W | b]`` row-major: ``(K, O (I + 1))``."""
    def f(w, b):
        return model.apply({**params, weight: w, bias: b}, xn[None], state=state)[0]
    jw, jb = jacrev(f, argnums=(0, 1))(params[weight], params[bias])
    jw = jw.reshape(jw.shape[0], jw.shape[1], -1)      # a conv weight (O, C, kh, kw) -> (O, C kh kw)
    return torch.cat([jw, jb[..., None]], dim=-1).reshape(jw.shape[0], -1)


def _ce_hessian(logits):
    p = torch.softmax(logits, -1)
    return torch.diag(p) - torch.outer(p, p)


LAYERS = [("fc0.weight", "fc0.bias"), ("fc1.weight", "fc1.bias"), ("fc2.weight", "fc2.bias")]


# --- exact curvature ------------------------------------------------------------------------

def test_kfac_per_example_factors_are_the_exact_gauss_newton_blocks():
    # SPEC 9.5: per example, Q = a~ a~', H = the pre-activation GGN (from jacrev/hessian on the
    # pre-activations), and H (x) Q is the layer's exact GGN block J' Hout J.
    model, params = _net()
    x, y = _data(3)
    la = fl.kfac_laplace(model, likelihoods.categorical())
    for n in range(3):
        state, _ = la.step(la.init(None, params), Batch(x[n:n + 1], y[n:n + 1]), None)
        acts = [x[n]]
        for i in range(2):
            acts.append(torch.relu(torch.nn.functional.linear(acts[-1], params[f"fc{i}.weight"],
                                                              params[f"fc{i}.bias"])))
        logits = model.apply(params, x[n:n + 1])[0]
        h_out = hessian(lambda o, n=n: -likelihoods.categorical().log_lik(o[None], y[n:n + 1]).sum())(logits)
        assert torch.allclose(h_out, _ce_hessian(logits), atol=1e-14)
        for i, (w, b) in enumerate(LAYERS):
            q, h = state.kron[w]
            a1 = torch.cat([acts[i], torch.ones(1, dtype=F64)])
            pre = torch.nn.functional.linear(acts[i], params[w], params[b])

            def rest_of_net(hl, i=i):      # logits as a function of layer i's pre-activation
                a = hl
                for j in range(i + 1, 3):
                    a = torch.nn.functional.linear(torch.relu(a), params[f"fc{j}.weight"], params[f"fc{j}.bias"])
                return a
            jh = jacrev(rest_of_net)(pre)
            assert torch.allclose(q, torch.outer(a1, a1), atol=1e-13)
            assert torch.allclose(h, jh.T @ h_out @ jh, atol=1e-13)
            jm = _packed_jacobian(model, params, x[n], w, b)
            assert torch.allclose(torch.kron(h, q), jm.T @ h_out @ jm, atol=1e-13)


def test_batch_sums_equal_per_example_sums_and_fit_driver():
    model, params = _net()
    x, y = _data(12)
    la = fl.kfac_laplace(model, likelihoods.categorical())
    whole = fl.fit_laplace(la, params, (x, y), batch_size=5)
    per = [la.step(la.init(None, params), Batch(x[i:i + 1], y[i:i + 1]), None)[0] for i in range(12)]
    for w, _ in LAYERS:
        assert torch.allclose(whole.kron[w][0], sum(s.kron[w][0] for s in per), atol=1e-12)
        assert torch.allclose(whole.kron[w][1], sum(s.kron[w][1] for s in per), atol=1e-12)
    assert int(whole.count) == 12
    ll = likelihoods.categorical().log_lik(model.apply(params, x), y).sum()
    assert torch.allclose(whole.log_lik, ll)
    # one epoch of fbnn.fit (shuffled minibatches) accumulates the same sums
    res = fbnn.fit(la, la.init(None, params), (x, y), fr.key(0), epochs=1, batch_size=4, progress=False)
    for w, _ in LAYERS:
        assert torch.allclose(res.state.kron[w][1], whole.kron[w][1], atol=1e-12)


def _exact_ggn(model, params, x, y, names, state=None):
    """``sum_n J_n' Hout_n J_n`` over the leaves ``names`` (ravel order), by jacrev/hessian."""
    lik = likelihoods.categorical()
    sub = {k: params[k] for k in names}
    flat, unravel = tree.ravel(sub)
    total = 0
    for n in range(x.shape[0]):
        def f(v, n=n):
            return model.apply({**params, **unravel(v)}, x[n:n + 1], state=state)[0]
        j = jacrev(f)(flat)
        h_out = hessian(lambda o, n=n: -lik.log_lik(o[None], y[n:n + 1]).sum())(f(flat))
        total = total + j.T @ h_out @ j
    return total


def test_diag_full_and_last_layer_equal_the_exact_ggn(small_conv_bn_net):
    # An MLP, and a conv net with BatchNorm and LayerNorm (conv patches, per-example norm-layer
    # gradients): the GGN diagonal, the full GGN and the last-layer block are exact.
    conv = models.from_module(small_conv_bn_net, input_shape=(1, 6, 6))
    bn_state = {k: v.to(F64) + 0.5 * (k.endswith("running_var")) for k, v in conv.init_state().items()}
    cases = [(_net(), {}, _data(6)),
             ((conv, tree.astype(conv.init(fr.key(3)), F64)), bn_state,
              (fr.normal(fr.key(4), (5, 36), dtype=F64), fr.randint(fr.key(5), 3, (5,))))]
    lik = likelihoods.categorical()
    for (model, params), ms, (x, y) in cases:
        exact = _exact_ggn(model, params, x, y, list(params), ms)
        state = fl.fit_laplace(fl.diag_laplace(model, lik), params, (x, y), batch_size=4, model_state=ms)
        diag = torch.cat([state.diag[k].reshape(-1) for k in params])
        assert torch.allclose(diag, torch.diagonal(exact), rtol=1e-10, atol=1e-13)
        state = fl.fit_laplace(fl.full_laplace(model, lik), params, (x, y), batch_size=4, model_state=ms)
        assert torch.allclose(state.dense, exact, rtol=1e-10, atol=1e-13)
        la = fl.last_layer_laplace(model, lik)
        state = fl.fit_laplace(la, params, (x, y), batch_size=4, model_state=ms)
        last = state.layers[-1]
        blocks = []
        for n in range(x.shape[0]):
            j = _packed_jacobian(model, params, x[n], last.weight, last.bias, ms)
            blocks.append(j.T @ _ce_hessian(model.apply(params, x[n:n + 1], state=ms)[0]) @ j)
        assert torch.allclose(state.dense, sum(blocks), rtol=1e-10, atol=1e-13)
    # K-FAC on the conv net: the norm layers' affine parameters get the exact GGN diagonal
    (model, params), ms, (x, y) = cases[1]
    state = fl.fit_laplace(fl.kfac_laplace(model, lik), params, (x, y), model_state=ms)
    assert set(state.kron) == {"0.weight", "6.weight"}
    assert set(state.diag) == {"1.weight", "1.bias", "4.weight", "4.bias"}
    names = list(state.diag)
    exact = torch.diagonal(_exact_ggn(model, params, x, y, names, ms))
    assert torch.allclose(torch.cat([state.diag[k].reshape(-1) for k in names]), exact, rtol=1e-10, atol=1e-13)


def test_sampled_fisher_and_empirical_fisher():
    model, params = _net()
    x, y = _data(4)
    lik = likelihoods.categorical()
    # sampled-label Fisher: E_y[g g'] = the GGN; 3000 copies of one example, 5 % tolerance
    xs, ys = x[:1].expand(3000, 5), y[:1].expand(3000)
    ggn = fl.fit_laplace(fl.kfac_laplace(model, lik), params, (x[:1], y[:1]))
    fisher = fl.fit_laplace(fl.kfac_laplace(model, lik, curvature="fisher"), params, (xs, ys),
                            batch_size=1000, key=fr.key(7))
    for w, _ in LAYERS:
        h_exact, h_mc = ggn.kron[w][1], fisher.kron[w][1] / 3000
        assert (h_mc - h_exact).norm() < 0.05 * h_exact.norm()
    # empirical Fisher: the diagonal is the sum of squared per-example gradients
    state = fl.fit_laplace(fl.diag_laplace(model, lik, curvature="empirical"), params, (x, y), batch_size=3)
    for k in params:
        grads = [torch.func.grad(lambda p, n=n: -lik.log_lik(model.apply(p, x[n:n + 1]), y[n:n + 1]).sum())(params)[k]
                 for n in range(4)]
        assert torch.allclose(state.diag[k], sum(g ** 2 for g in grads), rtol=1e-10, atol=1e-14)


# --- conjugate linear-Gaussian model ----------------------------------------------------------

SIGMA = 0.5


def _regression(n=40, d=3, k=2):
    x = fr.normal(fr.key(20), (n, d), dtype=F64)
    w = fr.normal(fr.key(21), (k, d), dtype=F64)
    y = x @ w.T + 0.3 + SIGMA * fr.normal(fr.key(22), (n, k), dtype=F64)
    return x, y


def _ridge(x, y, tau):
    """The MAP / posterior mean and the posterior precision ``A`` (per output) of Bayesian
    linear regression with a bias feature and prior N(0, 1/tau)."""
    xt = torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], 1)
    a = xt.T @ xt / SIGMA ** 2 + tau * torch.eye(xt.shape[1], dtype=F64)
    m = torch.linalg.solve(a, xt.T @ y / SIGMA ** 2).T          # (K, D + 1)
    return {"fc0.weight": m[:, :-1].contiguous(), "fc0.bias": m[:, -1].contiguous()}, a, xt


def _log_evidence(x, y, tau):
    xt = torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], 1)
    cov = SIGMA ** 2 * torch.eye(x.shape[0], dtype=F64) + xt @ xt.T / tau
    dist = torch.distributions.MultivariateNormal(torch.zeros(x.shape[0], dtype=F64), covariance_matrix=cov)
    return dist.log_prob(y.T).sum()


@pytest.mark.parametrize("structure", ["full", "kfac", "last_layer"])
def test_linear_gaussian_posterior_and_evidence_are_exact(structure):
    x, y = _regression()
    tau = 2.0
    params, a, _ = _ridge(x, y, tau)
    model = models.mlp([3, 2])
    lik = likelihoods.gaussian(SIGMA)
    la = fl.laplace(model, lik, structure=structure, prior_precision=tau)
    state = fl.fit_laplace(la, params, (x, y), batch_size=16)
    # predictive covariance of f(x) = M x~: x~' A^-1 x~ I_K for every output
    xq = fr.normal(fr.key(23), (6, 3), dtype=F64)
    xq1 = torch.cat([xq, torch.ones(6, 1, dtype=F64)], 1)
    mean, cov = la.glm_predictive(state, xq)
    exact_var = (xq1 @ torch.linalg.solve(a, xq1.T)).diagonal()
    assert torch.allclose(mean, model.apply(params, xq))
    assert torch.allclose(cov, exact_var[:, None, None] * torch.eye(2, dtype=F64), rtol=1e-10, atol=1e-14)
    # the Laplace evidence at the MAP is the exact evidence
    assert torch.allclose(la.log_marginal_likelihood(state), _log_evidence(x, y, tau), rtol=1e-10)


def test_marginal_likelihood_is_maximised_at_the_evidence_maximiser():
    # With theta* the MAP for tau*, d/dtau of the Laplace evidence at fixed theta* equals the
    # total derivative of the exact evidence (envelope theorem): both peak at tau*.
    x, y = _regression()
    lo, hi = math.log(1e-3), math.log(1e3)
    for _ in range(200):                       # golden section on the closed-form evidence
        m1, m2 = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        if _log_evidence(x, y, math.exp(m1)) > _log_evidence(x, y, math.exp(m2)):
            hi = m2
        else:
            lo = m1
    tau_star = math.exp((lo + hi) / 2)
    params, _, _ = _ridge(x, y, tau_star)
    for structure in ("full", "kfac", "last_layer"):
        la = fl.laplace(models.mlp([3, 2]), likelihoods.gaussian(SIGMA), structure=structure)
        state = fl.fit_laplace(la, params, (x, y))
        assert la.optimize_prior_precision(state) == pytest.approx(tau_star, rel=1e-5)
        assert la.optimize_prior_precision(state, per_layer=True)["fc0"] == pytest.approx(tau_star, rel=1e-5)


def test_per_layer_prior_precision_maximises_each_group():
    model, params = _net()
    x, y = _data(30)
    for structure, damping in (("kfac", "standard"), ("kfac", "ritter"), ("diag", "standard")):
        la = fl.laplace(model, likelihoods.categorical(), structure=structure, damping=damping, n_data=300)
        state = la.decompose(fl.fit_laplace(la, params, (x, y)))
        taus = la.optimize_prior_precision(state, per_layer=True)
        assert set(taus) == set(la.groups(state)) == {"fc0", "fc1", "fc2"}
        best = la.log_marginal_likelihood(state, taus)
        scalar = la.optimize_prior_precision(state)
        assert best >= la.log_marginal_likelihood(state, scalar) - 1e-9
        for g in taus:
            for f in (0.9, 1.1):
                assert la.log_marginal_likelihood(state, {**taus, g: taus[g] * f}) < best


# --- samples ----------------------------------------------------------------------------------

def _kron_covariances(la, state, tau, n_data):
    """Per layer the intended covariance of vec(M) (row-major): (H~^-1 (x) Q~^-1) for the
    seed's damping, (N E[H] (x) E[Q] + tau I)^-1 for the standard form (E = sum / count)."""
    out = {}
    c = float(state.count)
    for w, (q, h) in state.kron.items():
        if la.config["damping"] == "ritter":
            qt = math.sqrt(n_data) * q / c + math.sqrt(tau) * torch.eye(q.shape[0], dtype=F64)
            ht = math.sqrt(n_data) * h / c + math.sqrt(tau) * torch.eye(h.shape[0], dtype=F64)
            out[w] = torch.kron(torch.linalg.inv(ht), torch.linalg.inv(qt))
        else:
            prec = n_data * torch.kron(h / c, q / c) + tau * torch.eye(h.shape[0] * q.shape[0], dtype=F64)
            out[w] = torch.linalg.inv(prec)
    return out


@pytest.mark.parametrize("damping", ["ritter", "standard"])
def test_matrix_normal_samples_have_the_intended_covariance(damping):
    model, params = _net()
    x, y = _data(20)
    la = fl.kfac_laplace(model, likelihoods.categorical(), damping=damping, prior_precision=3.0, n_data=50)
    state = fl.fit_laplace(la, params, (x, y))
    s = 20000
    samples = la.sample(state, fr.key(9), s)
    covs = _kron_covariances(la, state, 3.0, 50)
    for w, b in LAYERS:
        m = torch.cat([samples.params[w], samples.params[b][..., None]], -1).reshape(s, -1)
        m0 = torch.cat([params[w], params[b][:, None]], -1).reshape(-1)
        emp = torch.cov(m.T)
        # Monte Carlo: E|emp - cov|_F^2 = (|cov|_F^2 + tr(cov)^2) / S, i.e. a relative error of
        # at most sqrt((1 + P) / S) ~ 0.05 for P <= 48 parameters; bound 0.1. Means: 5 standard errors.
        assert (emp - covs[w]).norm() < 0.1 * covs[w].norm()
        assert ((m.mean(0) - m0).abs() / covs[w].diagonal().sqrt()).max() < 5 / math.sqrt(s)


def test_same_key_same_samples_and_prefix_consistency():
    model, params = _net()
    x, y = _data(10)
    for structure in ("kfac", "diag", "last_layer", "full"):
        la = fl.laplace(model, likelihoods.categorical(), structure=structure)
        state = fl.fit_laplace(la, params, (x, y))
        a, b = la.sample(state, fr.key(1), 20), la.sample(state, fr.key(1), 20)
        assert tree.equal(a.params, b.params)
        assert not tree.equal(a.params, la.sample(state, fr.key(2), 20).params)
        assert tree.equal(tree.index(a.params, slice(0, 5)), la.sample(state, fr.key(1), 5).params)
        out = predict(model, a, x)
        assert out.shape == (20, 10, 3)
    # float32 parameters give float32 samples
    model32 = models.mlp([5, 7, 3])
    p32 = model32.init(fr.key(0))
    la = fl.kfac_laplace(model32, likelihoods.categorical())
    st = fl.fit_laplace(la, p32, (x.float(), y))
    assert all(v.dtype == torch.float32 for v in tree.leaves(la.sample(st, fr.key(0), 2).params))


# --- the GLM predictive ---------------------------------------------------------------------

def _explicit_sigma(la, state, tau, n_data):
    """The posterior covariance in the packed-layer order (fc0's M, fc1's M, fc2's M)."""
    c = float(state.count)
    structure = la.config["structure"]
    sizes = [params_m.numel() for params_m in
             (torch.cat([state.params[w], state.params[b][:, None]], -1) for w, b in LAYERS)]
    p = sum(sizes)
    sigma = torch.zeros(p, p, dtype=F64)
    offsets = [0, sizes[0], sizes[0] + sizes[1], p]
    if structure == "kfac":
        for i, cov in enumerate(_kron_covariances(la, state, tau, n_data).values()):
            sigma[offsets[i]:offsets[i + 1], offsets[i]:offsets[i + 1]] = cov
    elif structure == "diag":
        d = torch.cat([torch.cat([state.diag[w], state.diag[b][:, None]], -1).reshape(-1) for w, b in LAYERS])
        sigma = torch.diag(1.0 / (n_data * d / c + tau))
    elif structure == "last_layer":
        prec = n_data * state.dense / c + tau * torch.eye(sizes[2], dtype=F64)
        sigma[offsets[2]:, offsets[2]:] = torch.linalg.inv(prec)
    return sigma


@pytest.mark.parametrize("structure,damping", [("kfac", "standard"), ("kfac", "ritter"), ("diag", "standard"),
                                               ("last_layer", "standard"), ("full", "standard")])
def test_glm_covariance_equals_explicit_jacobian_products(structure, damping):
    model, params = _net()
    x, y = _data(25)
    tau, n_data = 1.5, 80
    la = fl.laplace(model, likelihoods.categorical(), structure=structure, damping=damping,
                    prior_precision=tau, n_data=n_data)
    state = fl.fit_laplace(la, params, (x, y), batch_size=10)
    xq = fr.normal(fr.key(30), (7, 5), dtype=F64)
    mean, cov = la.glm_predictive(state, xq, chunk=3)
    assert torch.allclose(mean, model.apply(params, xq))
    if structure == "full":
        sigma = torch.linalg.inv(n_data * state.dense / float(state.count) + tau * torch.eye(state.dense.shape[0],
                                                                                             dtype=F64))
        flat, unravel = tree.ravel(params)
        jac = [jacrev(lambda v, n=n: model.apply(unravel(v), xq[n:n + 1])[0])(flat) for n in range(7)]
    else:
        sigma = _explicit_sigma(la, state, tau, n_data)
        jac = [torch.cat([_packed_jacobian(model, params, xq[n], w, b) for w, b in LAYERS], 1) for n in range(7)]
    exact = torch.stack([j @ sigma @ j.T for j in jac])
    assert torch.allclose(cov, exact, rtol=1e-9, atol=1e-13)
    probs = la.glm_probs(state, xq)
    kappa = 1 / torch.sqrt(1 + math.pi / 8 * exact.diagonal(dim1=-2, dim2=-1))
    assert torch.allclose(probs, torch.softmax(kappa * mean, -1), atol=1e-12)


def test_glm_covariance_of_a_conv_layer_kfac():
    # T > 1 positions: J_k = sum_t g_kt a_t', checked against jacrev and the explicit H~^-1 (x) Q~^-1
    with torch.random.fork_rng(devices=[]):
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(32, 3))
    model = models.from_module(net, input_shape=(1, 6, 6))
    params = tree.astype(model.init(fr.key(0)), F64)
    x, y = fr.normal(fr.key(1), (8, 36), dtype=F64), fr.randint(fr.key(2), 3, (8,))
    xq = fr.normal(fr.key(3), (4, 36), dtype=F64)
    layers = [("0.weight", "0.bias"), ("3.weight", "3.bias")]
    for damping in ("ritter", "standard"):
        la = fl.kfac_laplace(model, likelihoods.categorical(), damping=damping, prior_precision=2.0, n_data=40)
        state = fl.fit_laplace(la, params, (x, y))
        covs = _kron_covariances(la, state, 2.0, 40)
        sigma = torch.block_diag(covs["0.weight"], covs["3.weight"])

        def jac(n):
            return torch.cat([_packed_jacobian(model, params, xq[n], w, b) for w, b in layers], 1)
        exact = torch.stack([jac(n) @ sigma @ jac(n).T for n in range(4)])
        assert torch.allclose(la.glm_predictive(state, xq)[1], exact, rtol=1e-9, atol=1e-13)


# --- grid search, regression heads, errors ---------------------------------------------------

def test_grid_search_picks_the_best_validation_likelihood():
    model, params = _net()
    x, y = _data(40)
    la = fl.kfac_laplace(model, likelihoods.categorical())
    state = fl.fit_laplace(la, params, (x[:30], y[:30]))
    grid = [0.1, 1.0, 10.0, 100.0]
    best, scores = fl.grid_search_prior_precision(la, state, x[30:], y[30:], grid)
    assert best == max(scores, key=scores.get) and set(scores) == set(grid)
    probs = la.glm_probs(state, x[30:], prior_precision=10.0)
    assert scores[10.0] == pytest.approx(float(torch.log(probs[torch.arange(10), y[30:]]).mean()))
    best_mc, _ = fl.grid_search_prior_precision(la, state, x[30:], y[30:], grid, predictive="mc",
                                                likelihood=likelihoods.categorical(), key=fr.key(0), n_samples=8)
    assert best_mc in grid


def test_regression_with_a_learnt_noise_level_runs():
    model = models.mlp([3, 8, 1], head="homo")
    params = tree.astype(model.init(fr.key(0)), F64)
    x = fr.normal(fr.key(1), (20, 3), dtype=F64)
    y = x[:, :1] + 0.1 * fr.normal(fr.key(2), (20, 1), dtype=F64)
    la = fl.kfac_laplace(model, likelihoods.gaussian(), prior_precision=1.0)
    state = fl.fit_laplace(la, params, (x, y))
    assert set(state.diag) == {"log_sigma"} and bool((state.diag["log_sigma"] >= 0).all())
    mean, cov = la.glm_predictive(state, x[:4])
    assert mean.shape == (4, 2) and cov.shape == (4, 2, 2)
    assert bool((torch.linalg.eigvalsh(cov) > -1e-12).all())


def test_bad_input_errors():
    model, params = _net()
    x, y = _data(6)
    lik = likelihoods.categorical()
    for bad in (0.0, -1.0, float("nan"), {"fc0": -2.0}):
        with pytest.raises(ValueError, match="prior_precision"):
            fl.kfac_laplace(model, lik, prior_precision=bad)
    with pytest.raises(ValueError, match="structure"):
        fl.laplace(model, lik, structure="block")
    with pytest.raises(ValueError, match="curvature"):
        fl.laplace(model, lik, curvature="hessian")
    with pytest.raises(ValueError, match="damping"):
        fl.laplace(model, lik, structure="diag", damping="ritter")
    with pytest.raises(ValueError, match="n_data"):
        fl.kfac_laplace(model, lik, n_data=0)
    la = fl.kfac_laplace(model, lik)
    with pytest.raises(ValueError, match="no curvature"):
        la.sample(la.init(None, params), fr.key(0), 2)
    with pytest.raises(ValueError, match="do not fit"):
        fl.fit_laplace(la, params, (x[:, :4], y))
    with pytest.raises(ValueError, match="rows"):
        fl.fit_laplace(la, params, (x, y[:3]))
    state = fl.fit_laplace(la, params, (x, y))
    with pytest.raises(ValueError, match="prior_precision"):
        la.sample(state, fr.key(0), 2, prior_precision=-1.0)
    with pytest.raises(ValueError, match="unknown"):
        la.glm_predictive(state, x, prior_precision={"fc0": 1.0, "fc1": 1.0, "fc2": 1.0, "fc9": 1.0})
    with pytest.raises(ValueError, match="missing"):
        la.log_marginal_likelihood(state, {"fc0": 1.0})
    with pytest.raises(ValueError, match="number of samples"):
        la.sample(state, fr.key(0), 0)
    with pytest.raises(ValueError, match="separable"):
        fl.full_laplace(model, lik).optimize_prior_precision(
            fl.fit_laplace(fl.full_laplace(model, lik), params, (x, y)), per_layer=True)
    with pytest.raises(ValueError, match="needs a key"):
        fl.fit_laplace(fl.kfac_laplace(model, lik, curvature="fisher"), params, (x, y))
    # a model without any Linear/Conv2d layer
    scale = models.Model(lambda key: {"scale": torch.ones(3, dtype=F64)},
                         lambda p, x, *, key=None, state=None: x[:, :3] * p["scale"], dict,
                         lambda p, s, x, *, key=None: (x[:, :3] * p["scale"], s), "scale")
    with pytest.raises(ValueError, match="no Linear or Conv2d|none that K-FAC supports"):
        fl.fit_laplace(fl.kfac_laplace(scale, lik), {"scale": torch.ones(3, dtype=F64)}, (x, y))
    # ...which the diagonal structure handles (its parameter gets a diagonal block)
    st = fl.fit_laplace(fl.diag_laplace(scale, lik), {"scale": torch.ones(3, dtype=F64)}, (x, y))
    assert st.diag["scale"].shape == (3,)
