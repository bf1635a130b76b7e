"""SG-MCMC samplers: exact posteriors, the seed's update rules, determinism, vmap, validation.

The exact-posterior tests run many chains at once as C independent copies of a small
parameter vector inside one sampler state (the potential is a sum over copies, and every
update is elementwise, so the copies are independent chains). Each copy sees the data in
its own order, so minibatch noise is independent across copies too. This keeps them to
one random draw per step: vmapped chains (``methods.ensemble``) draw once per chain and
key, and ``test_ensemble_of_chains_equals_a_loop`` checks that they equal single chains.
"""
import math

import pytest
import torch

import fbnn
from fbnn import likelihoods, methods, models, optim, priors, tree
from fbnn import random as fr
from fbnn.methods import base, sgmcmc

COPIES = 1024


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (and contend with other work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
MU = torch.tensor([1.0, -1.0])
COV = torch.tensor([[1.0, 0.8], [0.8, 1.0]])


def _no_check(out, y):
    return None


def _stateless_model(init, apply, name):
    return models.Model(init, apply, lambda: {},
                        lambda params, state, x, *, key=None: (apply(params, x), state), name)


def _per_copy_orders(key, n, copies):
    """``(n, copies)`` int64: one permutation of the data per copy."""
    return torch.stack([fr.permutation(k, n) for k in fr.split(key, copies)], dim=1)


def _gaussian_target(n=32, spread=1.0):
    """N(MU, COV) as the posterior of ``n`` pseudo-observations under a flat prior.

    Example i contributes ``-(z_i - theta)' COV^-1 (z_i - theta) / (2 n)``, and the z_i
    average exactly to MU, so ``U = n * mean_i`` is ``(theta - MU)' COV^-1 (theta - MU) / 2``
    up to a constant; a minibatch of 8 adds zero-mean gradient noise.
    """
    prec = torch.linalg.inv(COV)
    e = fr.normal(fr.key(50), (n, 2))
    z = MU + spread * (e - e.mean(0))
    x = z[_per_copy_orders(fr.key(51), n, COPIES)]                      # (n, C, 2)

    def apply(params, x, *, key=None, state=None):
        return x - params["theta"]                                      # (B, C, 2)

    def log_lik(out, y):
        return -0.5 * ((out @ prec) * out).sum((-1, -2)) / n            # (B,)

    model = _stateless_model(lambda key: {"theta": fr.normal(key, (COPIES, 2))}, apply, "gauss2d")
    return model, likelihoods.Likelihood(log_lik, _no_check, "gauss2d"), (x, torch.zeros(n))


def _linear_regression(n=32, sigma=3.0, sigma_prior=1.0, likelihood_temperature=1.0):
    """y = x w + b + N(0, sigma^2), prior N(0, sigma_prior^2) on (w, b): the exact posterior
    N(mean, cov) over (w1, w2, b) in closed form; data ``(n, C, 2)``, ``(n, C)``. With
    ``likelihood_temperature`` T the posterior is that of p(D | w, b)^(1/T) p(w, b), the
    likelihood's noise variance sigma^2 T."""
    k1, k2, k3 = fr.split(fr.key(100), 3)
    u = fr.normal(k1, (n, 2))
    x = torch.stack([u[:, 0], 0.5 * u[:, 0] + math.sqrt(0.75) * u[:, 1]], 1)
    y = x @ torch.tensor([0.7, -1.2]) + 0.3 + sigma * fr.normal(k2, (n,))
    phi = torch.cat([x, torch.ones(n, 1)], 1).double()
    noise_var = sigma ** 2 * likelihood_temperature
    cov = torch.linalg.inv(phi.T @ phi / noise_var + torch.eye(3, dtype=torch.float64) / sigma_prior ** 2)
    mean = cov @ phi.T @ y.double() / noise_var
    order = _per_copy_orders(k3, n, COPIES)

    def init(key):
        ka, kb = fr.split(key, 2)
        return {"w": fr.normal(ka, (COPIES, 2)), "b": fr.normal(kb, (COPIES,))}

    def apply(params, x, *, key=None, state=None):
        return (x * params["w"]).sum(-1) + params["b"]                  # (B, C)

    def log_lik(out, y):
        r = (y - out) / sigma
        return (-0.5 * r ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)

    model = _stateless_model(init, apply, "linreg")
    return model, likelihoods.Likelihood(log_lik, _no_check, "gauss"), (x[order], y[order]), mean, cov


def _warm_preconditioner(state, model, likelihood, prior, n, data):
    """pSGLD with V_0 = 0 (the seed's) makes the first step's noise sqrt(lr / (0.1 |g_0|))
    unbounded where g_0 ~ 0; start V at the full-data g^2 instead, as one would in practice."""
    loss = base.neg_log_joint(model, likelihood, prior, "dataset", n)
    g = torch.func.grad(lambda p: loss(p, {}, base.Batch(*data), None)[0])(state.params)
    return state._replace(square_avg=tree.map(lambda a: a * a, g))


def _assert_moments(draws, mean, cov, mean_tol=0.1, cov_tol=0.15):
    """``draws (S, d)``: |mean error| <= mean_tol sd, |cov error|_ij <= cov_tol sqrt(cov_ii cov_jj)."""
    d = draws.double()
    sd = cov.diagonal().sqrt()
    mean_err = ((d.mean(0) - mean).abs() / sd).max().item()
    cov_err = ((torch.cov(d.T) - cov).abs() / torch.outer(sd, sd)).max().item()
    assert mean_err < mean_tol, f"mean off by {mean_err:.3f} sd"
    assert cov_err < cov_tol, f"covariance off by {cov_err:.3f} (relative to sd_i sd_j)"


def _minibatch_chain(method, state, data, key, steps, batch_size):
    """Direct ``step`` loop over key-shuffled minibatches; returns the params after every step."""
    x, y = data
    n = x.shape[0]
    out = []
    for t in range(steps):
        epoch, j = divmod(t, n // batch_size)
        if j == 0:
            order = fr.permutation(fr.fold_in(key, 1_000_000 + epoch), n)
        idx = order[j * batch_size:(j + 1) * batch_size]
        state, info = method.step(state, base.Batch(x[idx], y[idx], idx), fr.fold_in(key, t))
        assert torch.isfinite(info["loss"])
        out.append(state.params)
    return out


GAUSS_SAMPLERS = {
    "sgld": lambda m, l, n: sgmcmc.sgld(m, l, None, n, 0.1),
    "psgld": lambda m, l, n: sgmcmc.psgld(m, l, None, n, 0.1),
    "sghmc": lambda m, l, n: sgmcmc.sghmc(m, l, None, n, 0.02, friction=0.1),
    # no adaptation (V_hat = 1, m ~ 1): the sampling dynamics alone, eta^2 / (2 m C) = 2.5 %
    "sghmc_sa": lambda m, l, n: sgmcmc.sghmc_sa(m, l, n, 0.1, burn_in=0, friction=0.2, prior_sigma=None,
                                                resample_prior_every=None, clip_std_mul=None),
}


@pytest.mark.parametrize("name", list(GAUSS_SAMPLERS))
def test_correlated_gaussian_posterior(name):
    # 1024 chains from MU + 1.5 N(0, I) (overdispersed), 8-of-32 minibatches, 300 steps,
    # the last 150 kept: mean within 0.1 sd, covariance within 0.15 sd_i sd_j.
    model, lik, data = _gaussian_target()
    method = GAUSS_SAMPLERS[name](model, lik, 32)
    state = method.init(fr.key(0), {"theta": MU + 1.5 * fr.normal(fr.key(1), (COPIES, 2))})
    if name == "psgld":
        state = _warm_preconditioner(state, model, lik, None, 32, data)
    out = _minibatch_chain(method, state, data, fr.key(7), 300, 8)
    draws = torch.stack([p["theta"] for p in out[150:]]).reshape(-1, 2)
    _assert_moments(draws, MU.double(), COV.double())


TEMPERED_SAMPLERS = {
    "sgld": lambda m, l, n, t: sgmcmc.sgld(m, l, None, n, 0.1, temperature=t),
    "psgld": lambda m, l, n, t: sgmcmc.psgld(m, l, None, n, 0.1, temperature=t),
    "sghmc": lambda m, l, n, t: sgmcmc.sghmc(m, l, None, n, 0.02, friction=0.1, temperature=t),
}


@pytest.mark.parametrize("name", list(TEMPERED_SAMPLERS))
def test_tempered_gaussian_posterior(name):
    # exp(-U / T) with T = 0.25 is N(MU, COV / 4): the same chains, moments and tolerances as above
    model, lik, data = _gaussian_target()
    method = TEMPERED_SAMPLERS[name](model, lik, 32, 0.25)
    state = method.init(fr.key(0), {"theta": MU + 0.75 * fr.normal(fr.key(1), (COPIES, 2))})
    if name == "psgld":
        state = _warm_preconditioner(state, model, lik, None, 32, data)
    out = _minibatch_chain(method, state, data, fr.key(7), 300, 8)
    draws = torch.stack([p["theta"] for p in out[150:]]).reshape(-1, 2)
    _assert_moments(draws, MU.double(), COV.double() / 4)


# builders (model, likelihood, prior, n, lr scale, **sampler keywords), steps
LINREG_SAMPLERS = {
    "sgld": (lambda m, l, p, n, s=1.0, **kw: sgmcmc.sgld(m, l, p, n, 0.03 * s, **kw), 300),
    "psgld": (lambda m, l, p, n, s=1.0, **kw: sgmcmc.psgld(m, l, p, n, 0.1 * s, **kw), 300),
    "sghmc": (lambda m, l, p, n, s=1.0, **kw: sgmcmc.sghmc(m, l, p, n, 0.01 * s, friction=0.1,
                                                           resample_momentum_every=50, **kw), 300),
    # 50 steps of adaptation first; the seed's own order makes m heavy-tailed on a problem
    # this small (see sghmc_sa's docstring), pybnn's order does not
    # (its prior is its own: prior_sigma, not p)
    "sghmc_sa": (lambda m, l, p, n, s=1.0, prior_sigma=1.0, **kw: sgmcmc.sghmc_sa(
        m, l, n, 0.05 * s, burn_in=50, friction=0.1, prior_sigma=prior_sigma, resample_prior_every=None,
        clip_std_mul=None, adaptation="pybnn", **kw), 400),
}


def _linreg_draws(name, method, model, lik, prior, data, mean, cov, steps, data_weight=32):
    """Chains from mean + 1.5 sd N(0, 1) through fit with real 8-of-32 minibatches and a
    per-step Collector that drops the first half: draws ``(steps / 2, C, 3)`` of (w1, w2, b)."""
    sd = cov.diagonal().sqrt().float()
    p0 = model.init(fr.key(1))
    params = {"w": mean[:2].float() + 1.5 * sd[:2] * p0["w"], "b": mean[2].float() + 1.5 * sd[2] * p0["b"]}
    state = method.init(fr.key(0), params)
    if name == "psgld":
        state = _warm_preconditioner(state, model, lik, prior, data_weight, data)
    res = fbnn.fit(method, state, data, fr.key(7), epochs=steps // 4, batch_size=8, progress=False,
                   collector=fbnn.Collector(burn_in=steps // 2, every="step"))
    s = res.samples.params
    return torch.cat([s["w"], s["b"].unsqueeze(-1)], -1)


@pytest.mark.parametrize("name", list(LINREG_SAMPLERS))
def test_linear_regression_posterior_through_fit(name):
    model, lik, data, mean, cov = _linear_regression()
    prior = priors.normal(1.0)
    make, steps = LINREG_SAMPLERS[name]
    draws = _linreg_draws(name, make(model, lik, prior, 32), model, lik, prior, data, mean, cov, steps)
    assert draws.shape == (steps // 2, COPIES, 3)
    _assert_moments(draws.reshape(-1, 3), mean, cov)


@pytest.mark.parametrize("name", list(LINREG_SAMPLERS))
def test_likelihood_tempered_linear_regression_posterior(name):
    # T_lik = 0.25 under a N(0, 0.5^2) prior: the exact posterior of p(D | w, b)^4 p(w, b), which
    # is not the fully tempered posterior (cov / 4: its covariance is off by more than twice the
    # tolerance). The steps shrink with the 4x sharper likelihood: by T_lik for (p)SGLD; by 0.1
    # for SGHMC, whose heating by minibatch noise (B-hat = 0) grows with the N / T_lik gradient;
    # by sqrt(T_lik) for SGHMC-SA, whose adapted mass already follows the gradient's scale, over
    # twice the steps. The rest as the test above.
    t_lik, sigma_prior = 0.25, 0.5
    lr_scale, more_steps = {"sghmc": 0.1, "sghmc_sa": 0.5}.get(name, t_lik), 2 if name == "sghmc_sa" else 1
    model, lik, data, mean, cov = _linear_regression(sigma_prior=sigma_prior, likelihood_temperature=t_lik)
    cov_untempered = _linear_regression(sigma_prior=sigma_prior)[4]
    sd = cov.diagonal().sqrt()
    assert ((cov_untempered / 4 - cov).abs() / torch.outer(sd, sd)).max() > 0.3
    prior = priors.normal(sigma_prior)
    make, steps = LINREG_SAMPLERS[name]
    kw = {"prior_sigma": sigma_prior} if name == "sghmc_sa" else {}
    method = make(model, lik, prior, 32, lr_scale, likelihood_temperature=t_lik, **kw)
    draws = _linreg_draws(name, method, model, lik, prior, data, mean, cov, steps * more_steps, 32 / t_lik)
    _assert_moments(draws.reshape(-1, 3), mean, cov)


# --- the seed's update rules --------------------------------------------------------------

def _small_problem():
    x = fr.normal(fr.key(11), (24, 3))
    y = (x[:, 0] > 0).long()
    model = models.mlp([3, 5, 2])
    return model, likelihoods.categorical(), x, y


def test_psgld_preconditioner_is_rmsprops_square_avg():
    model, lik, x, y = _small_problem()
    prior = priors.normal(1.0)
    method = sgmcmc.psgld(model, lik, prior, 24, 1e-3, alpha=0.9, eps=1e-8)
    state = method.init(fr.key(0), model.init(fr.key(1)))
    loss = base.neg_log_joint(model, lik, prior, "dataset", 24)
    tensors = {k: torch.zeros_like(v, requires_grad=True) for k, v in state.params.items()}
    opt = torch.optim.RMSprop(list(tensors.values()), lr=1e-3, alpha=0.9, eps=1e-8)
    for t in range(6):
        batch = base.Batch(x[4 * t:4 * t + 8], y[4 * t:4 * t + 8])
        g = torch.func.grad(lambda p: loss(p, {}, batch, None)[0])(state.params)
        for k, p in tensors.items():
            p.grad = g[k].clone()
        opt.step()
        state, _ = method.step(state, batch, fr.fold_in(fr.key(2), t))
        for k, p in tensors.items():
            torch.testing.assert_close(state.square_avg[k], opt.state[p]["square_avg"], rtol=1e-6, atol=0)


def _flat_model(size=20_000, dtype=torch.float32):
    """theta (size,) with a zero potential gradient: every move is the sampler's own noise."""
    def apply(params, x, *, key=None, state=None):
        return params["theta"].expand(x.shape[0], size)
    model = _stateless_model(lambda key: {"theta": torch.zeros(size, dtype=dtype)}, apply, "flat")
    lik = likelihoods.Likelihood(lambda out, y: 0.0 * out.sum(-1), _no_check, "flat")
    return model, lik, base.Batch(torch.zeros(2, 1), torch.zeros(2))


@pytest.mark.parametrize("lr, temperature, expected_var", [
    (1.0, 1.0, 1e-16), (0.1, 1.0, 2 * 0.01 * 0.05 - 1e-4), (0.1, 0.5, 2 * 0.01 * 0.05 * 0.5 - 1e-4)])
def test_sghmc_sa_noise_variance_and_its_floor(lr, temperature, expected_var):
    # m = 1 / (sqrt(V_hat) + 1e-6) with V_hat = 1; lr 1: 2 eta^2 m C T - eta^4 = 0.1 - 1 < 0 -> 1e-16
    model, lik, batch = _flat_model()
    method = sgmcmc.sghmc_sa(model, lik, 10, lr, burn_in=0, friction=0.05, prior_sigma=None,
                             resample_momentum_every=None, resample_prior_every=None, clip_std_mul=None,
                             temperature=temperature)
    state, _ = method.step(method.init(fr.key(0), model.init(fr.key(0))), batch, fr.key(3))
    v = state.momentum["theta"].double()
    assert torch.equal(state.params["theta"], state.momentum["theta"])
    assert v.var().item() == pytest.approx(expected_var, rel=0.05)


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_gibbs_precision_matches_the_conjugate_posterior(temperature):
    # (Gamma(10, 10) prior x N(theta; 0, 1/lambda) likelihood)^(1/T), normalised in lambda
    theta = {"w": torch.linspace(-1.0, 1.0, 12).reshape(3, 4)}
    shape = (10.0 - 1 + 12 / 2) / temperature + 1
    rate = (10.0 + 0.5 * float((theta["w"] ** 2).sum())) / temperature
    draws = torch.func.vmap(lambda k: sgmcmc.gibbs_precision(k, theta, 10.0, 10.0, temperature))(
        fr.split(fr.key(4), 3000))["w"]
    assert draws.shape == (3000,)
    assert draws.double().mean().item() == pytest.approx(shape / rate, rel=0.02)
    assert draws.double().var().item() == pytest.approx(shape / rate ** 2, rel=0.08)


def test_cold_gibbs_step_raises_a_free_tensors_precision_by_about_one_over_t():
    # the runaway sghmc_sa's docstring warns of: at temperature T a tensor the likelihood
    # leaves free has theta ~ N(0, T / lambda), and the tempered Gibbs draw (mode n / sum
    # theta^2) lands near lambda / T. n = 1e5 makes the relative sd about 0.5 %; beta0 1e-2 adds 0.02 %.
    lam, temperature = 100.0, 0.1
    theta = {"w": fr.normal(fr.key(5), (100_000,), dtype=torch.float64) * math.sqrt(temperature / lam)}
    drawn = sgmcmc.gibbs_precision(fr.key(6), theta, 1.0, 1e-2, temperature)["w"]
    assert drawn.item() == pytest.approx(lam / temperature, rel=0.02)


def test_sghmc_sa_with_gibbs_steps_samples_the_hierarchical_posterior():
    # a silent likelihood: the joint posterior of (theta (3,), lambda) is the prior
    # lambda ~ Gamma(10, rate 10), theta | lambda ~ N(0, 1/lambda), whose marginals are
    # E lambda = 1, Var lambda = 0.1 and E theta^2 = E 1/lambda = 10/9. From the seed's
    # initial sigma 0.1 (lambda 100) the chain's precision must move to the hyperprior's:
    # a tensor the data barely constrain has its prior widen toward sigma ~ 1. 256 vmapped chains, steps
    # 300..1500 every 30; eta^2 / (2 m C) = 2.5 % shrinks theta's spread (docstring).
    model, lik, batch = _flat_model(3)
    method = sgmcmc.sghmc_sa(model, lik, 10, 0.1, burn_in=0, friction=0.2, prior_sigma=0.1, alpha0=10.0,
                             beta0=10.0, resample_momentum_every=None, resample_prior_every=15, clip_std_mul=None)
    chains = methods.ensemble(method, 256, batches="shared")
    state = chains.init(fr.key(0), methods.init_members(model, fr.key(1), 256))
    lams, sq = [], []
    for t in range(1500):
        state, _ = chains.step(state, batch, fr.fold_in(fr.key(2), t))
        if t >= 300 and t % 30 == 0:
            lams.append(state.members.precision["theta"])
            sq.append(state.members.params["theta"].pow(2).mean(-1))
    lam, sq = torch.stack(lams).double(), torch.stack(sq).double()
    assert lam.mean().item() == pytest.approx(1.0, rel=0.03)
    assert lam.var().item() == pytest.approx(0.1, rel=0.12)
    assert sq.mean().item() == pytest.approx(10 / 9, rel=0.06)


def test_sghmc_sa_resamples_precision_and_momentum_on_schedule(toy_classification):
    x, y = toy_classification
    model = models.mlp([8, 6, 3])
    method = sgmcmc.sghmc_sa(model, likelihoods.categorical(), 256, 1e-3, burn_in=5,
                             resample_momentum_every=4, resample_prior_every=3)
    state = method.init(fr.key(0), model.init(fr.key(1)))
    assert float(state.precision["fc0.weight"]) == pytest.approx(100.0)
    for t in range(7):
        before = state
        state, info = method.step(state, base.Batch(x[:32], y[:32]), fr.fold_in(fr.key(2), t))
        changed = not tree.equal(before.precision, state.precision)
        assert changed == (t % 3 == 0), t
        adapted = not tree.equal(before.v_hat, state.v_hat)
        assert adapted == (t < 5), t
        # info["loss"]: N * mean NLL + sum_tensors -log N(theta; 0, 1 / lambda), with the new lambda
        data = -256 * likelihoods.categorical().log_lik(model.apply(before.params, x[:32]), y[:32]).mean()
        prior = sum(0.5 * lam * (p ** 2).sum() - 0.5 * p.numel() * torch.log(lam / (2 * math.pi))
                    for p, lam in zip(tree.leaves(before.params), tree.leaves(state.precision)))
        torch.testing.assert_close(info["loss"], data + prior, rtol=1e-5, atol=1e-3)


def _linear_model(n_params=3):
    """U = -n_data * mean_b (theta . y_b): the gradient -n_data * mean(y) does not depend on theta."""
    def apply(params, x, *, key=None, state=None):
        return params["theta"].expand(x.shape[0], n_params)
    model = _stateless_model(lambda key: {"theta": torch.zeros(n_params)}, apply, "linear")
    return model, likelihoods.Likelihood(lambda out, y: (out * y).sum(-1), _no_check, "linear")


def _seed_adaptation(grads, eps=1e-6, rule="seed"):
    """The seed's per-element burn-in updates (SPEC 3.9), written out step by step."""
    tau, g, v = torch.ones(3), torch.ones(3), torch.ones(3)
    for d_p in grads:
        r_old = 1.0 / (tau + 1.0)
        tau = tau + (-tau * g ** 2 / (v + eps) + 1)
        r = 1.0 / (tau + eps) if rule == "seed" else r_old
        g = g + (-r * g + r * d_p)
        v = v + (-r * v + r * d_p ** 2)
    return tau, g, v


@pytest.mark.parametrize("rule", ["seed", "pybnn"])
def test_sghmc_sa_burn_in_adaptation_follows_the_seed(rule):
    model, lik = _linear_model()
    ys = [torch.tensor([[0.5, -2.0, 0.01]]) * (1 + 0.3 * t) + 0.2 * fr.normal(fr.key(t), (1, 3))
          for t in range(8)]
    method = sgmcmc.sghmc_sa(model, lik, 4, 1e-3, burn_in=5, prior_sigma=None, resample_prior_every=None,
                             clip_std_mul=None, adaptation=rule)
    state = method.init(fr.key(0), model.init(fr.key(0)))
    for t, yt in enumerate(ys):
        state, _ = method.step(state, base.Batch(torch.zeros(1, 1), yt), fr.fold_in(fr.key(1), t))
    tau, g, v = _seed_adaptation([-4 * yt[0] for yt in ys[:5]], rule=rule)   # frozen after 5 steps
    torch.testing.assert_close(state.tau["theta"], tau, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.g_avg["theta"], g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.v_hat["theta"], v, rtol=1e-5, atol=1e-6)
    if rule == "seed":
        # where |g| >> 1e-3 the seed's order keeps tau ~ 1, so V_hat ~ the last g^2
        assert torch.allclose(state.tau["theta"][:2], torch.ones(2), atol=1e-3)
        torch.testing.assert_close(state.v_hat["theta"][:2], (4 * ys[4][0, :2]) ** 2, rtol=1e-3, atol=0)


def _seed_clip_reference(norms, warmup, k):
    """The seed's list-based dynamic clipping: (max_norm used, buffer length) per step."""
    buf, max_grad, out = [], 1e20, []
    for n in norms:
        if len(buf) > warmup:
            mean = sum(buf) / len(buf)
            max_grad = mean + k * math.sqrt(sum((b - mean) ** 2 for b in buf) / len(buf))
            buf.pop(0)
        buf.append(n)
        if buf[-1] >= max_grad:
            buf.pop()
        out.append((max_grad, len(buf)))
    return out


def test_sghmc_sa_dynamic_clipping_matches_the_seeds_buffer():
    model, lik = _linear_model(1)
    scales = [1.0, 1.2, 0.9, 1.1, 1.0, 5.0, 1.05, 0.95, 30.0, 1.0, 1.1, 0.9, 1.0, 40.0, 1.2]
    method = sgmcmc.sghmc_sa(model, lik, 1, 1e-3, burn_in=0, prior_sigma=None, resample_prior_every=None,
                             clip_std_mul=2.0, clip_warmup=4)
    state = method.init(fr.key(0), model.init(fr.key(0)))
    seen = []
    for t, s in enumerate(scales):
        state, info = method.step(state, base.Batch(torch.zeros(1, 1), torch.tensor([[s]])),
                                  fr.fold_in(fr.key(1), t))
        assert info["grad_norm"].item() == pytest.approx(s, rel=1e-6)
        seen.append((info["max_norm"].item(), int(state.norm_size)))
    expected = _seed_clip_reference(scales, 4, 2.0)
    assert [n for _, n in seen] == [n for _, n in expected]
    assert [m for m, _ in seen] == pytest.approx([m for m, _ in expected], rel=1e-6)
    assert expected[8][0] < 30.0 and expected[13][0] < 40.0   # the outliers were clipped


# --- determinism, vmap, the Method contract -------------------------------------------------

def _all_samplers(model, lik, n):
    prior = priors.normal(1.0)
    return [
        sgmcmc.sgld(model, lik, prior, n, 1e-3),
        sgmcmc.psgld(model, lik, prior, n, 1e-3),
        sgmcmc.sghmc(model, lik, prior, n, 1e-3, resample_momentum_every=2),
        sgmcmc.sghmc_sa(model, lik, n, 1e-2, burn_in=2, resample_momentum_every=2, resample_prior_every=3,
                        clip_warmup=2),
    ]


def _run(method, state, batches, key):
    for t, b in enumerate(batches):
        state, info = method.step(state, b, fr.fold_in(key, t))
    return state, info


@pytest.mark.parametrize("index", range(4))
def test_same_key_same_bits(index, toy_classification):
    x, y = toy_classification
    model = models.mlp([8, 6, 3])
    method = _all_samplers(model, likelihoods.categorical(), 256)[index]
    batches = [base.Batch(x[16 * t:16 * t + 16], y[16 * t:16 * t + 16]) for t in range(5)]
    a, _ = _run(method, method.init(fr.key(0), model.init(fr.key(1))), batches, fr.key(2))
    b, _ = _run(method, method.init(fr.key(0), model.init(fr.key(1))), batches, fr.key(2))
    c, _ = _run(method, method.init(fr.key(0), model.init(fr.key(1))), batches, fr.key(3))
    assert tree.equal(a, b)
    assert not tree.equal(a.params, c.params)
    draws = method.sample(a, fr.key(4), 3)
    assert draws.params["fc0.weight"].shape == (3, 6, 8)
    assert torch.equal(draws.params["fc0.weight"][2], a.params["fc0.weight"])
    assert method.name == ["sgld", "psgld", "sghmc", "sghmc_sa"][index] and not method.keyed


@pytest.mark.parametrize("index", range(4))
def test_ensemble_of_chains_equals_a_loop(index, toy_classification):
    # float64: batched and single gradients differ by rounding, and pSGLD's 1 / sqrt(G)
    # amplifies that on coordinates with a near-zero gradient
    x, y = toy_classification
    x = x.double()
    model = models.mlp([8, 6, 3])
    method = _all_samplers(model, likelihoods.categorical(), 256)[index]
    n = 3
    batches = [base.Batch(x[16 * t:16 * t + 16], y[16 * t:16 * t + 16]) for t in range(5)]
    params = tree.astype(methods.init_members(model, fr.key(1), n), torch.float64)
    ens = methods.ensemble(method, n, batches="shared")
    vmapped, info = _run(ens, ens.init(fr.key(0), params), batches, fr.key(2))
    assert info["loss"].shape == (n,)
    init_keys = fr.split(fr.split(fr.key(0), 2)[0], n)
    for i in range(n):
        state = method.init(init_keys[i], tree.index(params, i))
        for t, b in enumerate(batches):
            state, _ = method.step(state, b, fr.split(fr.fold_in(fr.key(2), t), n)[i])
        assert tree.allclose(tree.index(vmapped.members, i), state, rtol=1e-6, atol=1e-6)


def _increments(method, model, batch, keys):
    """theta's move at each step, one step per key, from ``model.init(key(0))``."""
    state = method.init(fr.key(0), model.init(fr.key(0)))
    out = []
    for k in keys:
        new, _ = method.step(state, batch, k)
        out.append(new.params["theta"] - state.params["theta"])
        state = new
    return out


def test_lr_schedule_and_temperature_scale_the_noise():
    # zero gradient: each SGLD step moves by sqrt(lr(count) T) xi with xi from the step's key
    model, lik, batch = _flat_model(1000)
    keys = [fr.fold_in(fr.key(5), t) for t in range(3)]
    unit = _increments(sgmcmc.sgld(model, lik, None, 10, 1.0), model, batch, keys)
    scheduled = _increments(sgmcmc.sgld(model, lik, None, 10, lambda c: 4.0 ** c.to(torch.float32),
                                        temperature=0.25), model, batch, keys)
    for t in range(3):
        torch.testing.assert_close(scheduled[t], unit[t] * math.sqrt(4.0 ** t * 0.25))


@pytest.mark.parametrize("build", [
    lambda m, l, t: sgmcmc.sgld(m, l, None, 10, 1.0, temperature=t),
    lambda m, l, t: sgmcmc.psgld(m, l, None, 10, 1.0, temperature=t),
    lambda m, l, t: sgmcmc.sghmc(m, l, None, 10, 1.0, friction=1.0, temperature=t),  # v = the step's noise
], ids=["sgld", "psgld", "sghmc"])
def test_temperature_schedule_scales_each_step_noise_by_sqrt_t(build):
    # zero gradient: step t moves by sqrt(T(t)) times the T = 1 move drawn from the same key
    # (float64: pSGLD's moves are ~1e4 with its preconditioner at eps)
    model, lik, batch = _flat_model(1000, torch.float64)
    keys = [fr.fold_in(fr.key(6), t) for t in range(4)]
    cycle = optim.cyclical_cosine(1.0, 4)
    unit = _increments(build(model, lik, 1.0), model, batch, keys)
    scheduled = _increments(build(model, lik, lambda c: cycle(c) + 0.01), model, batch, keys)
    for t in range(4):
        factor = math.sqrt(float(cycle(torch.tensor(t))) + 0.01)
        torch.testing.assert_close(scheduled[t], unit[t] * factor)
    assert not torch.allclose(scheduled[2], unit[2])


def test_non_finite_potential_stops_fit(toy_classification):
    x, y = toy_classification
    model = models.mlp([8, 6, 3])
    method = sgmcmc.sgld(model, likelihoods.categorical(), priors.normal(1.0), 256, 1e12)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        fbnn.fit(method, method.init(fr.key(0), model.init(fr.key(1))), (x, y), fr.key(2), epochs=3,
                 batch_size=64, progress=False)


def test_loss_is_the_potential(toy_classification):
    x, y = toy_classification
    model = models.mlp([8, 6, 3])
    prior = priors.normal(0.5)
    method = sgmcmc.sghmc(model, likelihoods.categorical(), prior, 256, 1e-3)
    state = method.init(fr.key(0), model.init(fr.key(1)))
    _, info = method.step(state, base.Batch(x[:32], y[:32]), fr.key(2))
    nll = -likelihoods.categorical().log_lik(model.apply(state.params, x[:32]), y[:32]).mean()
    torch.testing.assert_close(info["loss"], 256 * nll - prior.log_prob(state.params))


# --- validation ------------------------------------------------------------------------------

def _bad(**kw):
    model, lik, _ = _flat_model(4)
    name = kw.pop("sampler")
    args = {"sgld": dict(prior=None, n_data=10, lr=0.1), "psgld": dict(prior=None, n_data=10, lr=0.1),
            "sghmc": dict(prior=None, n_data=10, lr=0.1), "sghmc_sa": dict(n_data=10, burn_in=0)}[name]
    args.update(kw)
    return getattr(sgmcmc, name)(model, lik, **args)


@pytest.mark.parametrize("sampler, kw, match", [
    (s, {"lr": v}, "lr") for s in ("sgld", "psgld", "sghmc", "sghmc_sa")
    for v in (0.0, -1e-3, float("nan"), float("inf"), lambda c: torch.tensor(0.0), "0.1")
] + [
    (s, {"n_data": v}, "n_data") for s in ("sgld", "psgld", "sghmc", "sghmc_sa") for v in (0, -5, 2.5)
] + [
    (s, {"temperature": v}, "temperature") for s in ("sgld", "psgld", "sghmc")
    for v in (0.0, -1.0, float("nan"), lambda c: torch.tensor(0.0))
] + [
    ("sghmc_sa", {"temperature": v}, "temperature") for v in (0.0, -1.0, lambda c: 1.0)
] + [
    (s, {"likelihood_temperature": v}, "likelihood_temperature") for s in ("sgld", "psgld", "sghmc", "sghmc_sa")
    for v in (0.0, -1.0, float("inf"), lambda c: 1.0)
] + [
    (s, {"friction": v}, "friction") for s in ("sghmc", "sghmc_sa") for v in (0.0, 1.5, -0.1)
] + [
    ("psgld", {"alpha": v}, "alpha") for v in (0.0, 1.0, 1.5)
] + [
    ("psgld", {"eps": 0.0}, "eps"),
    ("sghmc", {"resample_momentum_every": 0}, "resample_momentum_every"),
    ("sghmc_sa", {"burn_in": -1}, "burn_in"),
    ("sghmc_sa", {"burn_in": 1.5}, "burn_in"),
    ("sghmc_sa", {"prior_sigma": 0.0}, "prior_sigma"),
    ("sghmc_sa", {"prior_sigma": None}, "resample_prior_every"),
    ("sghmc_sa", {"alpha0": -1.0}, "alpha0"),
    ("sghmc_sa", {"beta0": 0.0}, "beta0"),
    ("sghmc_sa", {"resample_prior_every": 0}, "resample_prior_every"),
    ("sghmc_sa", {"clip_std_mul": -1.0}, "clip_std_mul"),
    ("sghmc_sa", {"clip_warmup": 0}, "clip_warmup"),
    ("sghmc_sa", {"adaptation": "rmsprop"}, "adaptation"),
])
def test_bad_arguments_raise_naming_them(sampler, kw, match):
    with pytest.raises(ValueError, match=match):
        _bad(sampler=sampler, **kw)
