"""Priors for variational inference: scale mixtures (paper and seed modes), per-tensor
prior trees, PyVarInf's families (SPEC 3.3.2-3.3.3, 6.2, 9.3, 9.9)."""
import math

import pytest
import torch
from torch.func import grad

from fbnn import priors
from fbnn import random as fr

LOG_2PI = math.log(2 * math.pi)


def _log_normal64(x, s):
    return -0.5 * (x / s) ** 2 - math.log(s) - 0.5 * LOG_2PI


def test_scale_mixture_per_weight_is_an_elementwise_log_sum_exp():
    # SPEC 9.3: per_weight = sum_w log[pi N(w; 0, s1^2) + (1 - pi) N(w; 0, s2^2)]
    w = fr.normal(fr.key(0), (40,)) * 0.05
    w64 = w.double()
    ref = torch.log(0.75 * _log_normal64(w64, 0.1).exp() + 0.25 * _log_normal64(w64, 5e-4).exp()).sum()
    got = priors.scale_mixture(0.75, 0.1, 5e-4, "per_weight").log_prob({"w": w})
    assert abs(float(got) - float(ref)) < 1e-3 * abs(float(ref))
    # elementwise log-sum-exp stays finite where the narrow component underflows
    far = priors.scale_mixture(0.5, 1.0, 1e-3).log_prob(torch.tensor([30.0]))
    assert torch.isfinite(far) and abs(float(far) - (math.log(0.5) + float(_log_normal64(torch.tensor(30.0), 1.0)))) < 1e-3


def test_scale_mixture_seed_modes_are_a_gaussian_plus_a_constant():
    # SPEC 3.3.3 / 9.3: with sigma2 = 5e-4 and weights ~0.05 the seed's "mixtures" are
    # log 0.75 + sum log N(w; 0, 0.1^2) (src) and log 2 + sum log N(w; 0, 0.1^2) (notebook),
    # per tensor, with the Gaussian prior's gradient.
    params = {"w": fr.normal(fr.key(1), (6, 5)) * 0.05, "b": fr.normal(fr.key(2), (5,)) * 0.05}
    gauss = priors.normal(0.1)
    per_tensor_gauss = [float(gauss.log_prob(params[k])) for k in ("w", "b")]
    src = priors.scale_mixture(0.75, 0.1, 5e-4, "joint_sum")
    nb = priors.scale_mixture(0.75, 0.1, 5e-4, "joint_sum_additive")
    assert abs(float(src.log_prob(params)) - sum(math.log(0.75) + g for g in per_tensor_gauss)) < 1e-3
    assert abs(float(nb.log_prob(params)) - sum(math.log(2.0) + g for g in per_tensor_gauss)) < 1e-3
    g_gauss = grad(gauss.log_prob)(params)
    for prior in (src, nb):
        g = grad(prior.log_prob)(params)
        assert all(torch.allclose(g[k], g_gauss[k], rtol=1e-5, atol=1e-3) for k in params)
    # the paper's mode differs: the narrow component matters per weight
    assert abs(float(priors.scale_mixture(0.75, 0.1, 5e-4).log_prob(params)) - float(src.log_prob(params))) > 1.0


def test_prior_tree_assigns_a_prior_per_tensor():
    params = {"fc0.weight": fr.normal(fr.key(3), (4, 3)), "fc0.bias": fr.normal(fr.key(4), (4,))}
    tree_prior = {"fc0.weight": priors.normal(0.5), "fc0.bias": priors.laplace(0.2)}
    want = priors.normal(0.5).log_prob(params["fc0.weight"]) + priors.laplace(0.2).log_prob(params["fc0.bias"])
    assert torch.allclose(priors.log_prior(tree_prior, params), want)
    # None: no prior on that tensor; one Prior still applies to every tensor as before
    assert torch.allclose(priors.log_prior({"fc0.weight": None, "fc0.bias": priors.laplace(0.2)}, params),
                          priors.laplace(0.2).log_prob(params["fc0.bias"]))
    assert torch.equal(priors.log_prior(priors.normal(1.0), params), priors.normal(1.0).log_prob(params))
    built = priors.per_tensor(params, lambda name, x: priors.normal(0.5) if x.dim() == 2 else priors.laplace(0.2))
    assert torch.allclose(priors.log_prior(built, params), want)
    with pytest.raises(ValueError, match="structure differs"):
        priors.log_prior({"fc0.weight": priors.normal(1.0)}, params)
    with pytest.raises(ValueError, match="Prior or None"):
        priors.log_prior({"fc0.weight": 1.0, "fc0.bias": None}, params)


def test_pyvarinf_default_prior_scales():
    # SPEC 6.2: 1/sqrt(fan_in) for >= 2-D tensors (fan_in = prod of all dims but the first), 0.01 for 1-D
    params = {"conv.weight": torch.zeros(4, 2, 3, 3), "conv.bias": torch.zeros(4), "fc.weight": torch.zeros(3, 64)}
    sig = priors.pyvarinf_sigma(params)
    assert sig == {"conv.weight": 1 / math.sqrt(18), "conv.bias": 0.01, "fc.weight": 1 / 8}
    prior = priors.pyvarinf_gaussian(params)
    x = fr.normal(fr.key(5), (4,)) * 0.01
    assert torch.allclose(prior["conv.bias"].log_prob(x), torch.distributions.Normal(0.0, 0.01).log_prob(x).sum())


def _trapezoid_log(log_f, x, dim):
    """log of the trapezoid integral of exp(log_f) over the grid ``x`` along ``dim``."""
    dx = x[1] - x[0]
    w = torch.full((x.numel(),), float(dx), dtype=torch.float64)
    w[0] = w[-1] = dx / 2
    shape = [1] * log_f.dim()
    shape[dim] = -1
    return torch.logsumexp(log_f + w.log().reshape(shape), dim=dim)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_normal_gamma_log_marginal_equals_numerical_integration(n):
    # SPEC 9.9: p(theta) = int int prod_i N(theta_i; mu, 1/lam) N(mu; mu0, 1/(k0 lam)) Gamma(lam; a0, b0)
    a0, b0, mu0, k0 = 2.0, 1.5, 0.3, 0.7
    theta = torch.tensor([0.1, -0.4, 0.9], dtype=torch.float64)[:n]
    u = torch.linspace(-20.0, 6.0, 3001, dtype=torch.float64)        # lam = e^u
    t = torch.linspace(-12.0, 12.0, 801, dtype=torch.float64)        # mu = c + t / sqrt((k0 + n) lam)
    lam = u.exp()[:, None]
    scale = 1 / torch.sqrt((k0 + n) * lam)
    centre = (k0 * mu0 + theta.sum()) / (k0 + n)
    mu = centre + t[None, :] * scale
    log_lik = sum(0.5 * torch.log(lam / (2 * math.pi)) - 0.5 * lam * (th - mu) ** 2 for th in theta)
    log_mu = 0.5 * torch.log(k0 * lam / (2 * math.pi)) - 0.5 * k0 * lam * (mu - mu0) ** 2
    log_lam = a0 * math.log(b0) - math.lgamma(a0) + (a0 - 1) * torch.log(lam) - b0 * lam
    log_f = log_lik + log_mu + log_lam + torch.log(scale) + torch.log(lam)   # Jacobians dmu/dt, dlam/du
    numeric = _trapezoid_log(_trapezoid_log(log_f, t, 1), u, 0)
    closed = priors.normal_gamma(a0, b0, mu0, k0).log_prob(theta)
    assert abs(float(closed) - float(numeric)) < 1e-6


@pytest.mark.parametrize("n", [1, 2, 3])
def test_known_mean_gamma_log_marginal_equals_numerical_integration(n):
    a0, b0, mean = 1.5, 0.8, -0.2
    theta = torch.tensor([0.1, -0.4, 0.9], dtype=torch.float64)[:n]
    u = torch.linspace(-20.0, 6.0, 4001, dtype=torch.float64)
    lam = u.exp()
    log_f = sum(0.5 * torch.log(lam / (2 * math.pi)) - 0.5 * lam * (th - mean) ** 2 for th in theta) \
        + a0 * math.log(b0) - math.lgamma(a0) + (a0 - 1) * torch.log(lam) - b0 * lam + torch.log(lam)
    numeric = _trapezoid_log(log_f, u, 0)
    closed = priors.known_mean_gamma(mean, a0, b0).log_prob(theta)
    assert abs(float(closed) - float(numeric)) < 1e-6


def test_conjugate_priors_are_per_tensor_and_differentiable():
    params = {"a": fr.normal(fr.key(6), (5,)), "b": fr.normal(fr.key(7), (2, 3))}
    prior = priors.normal_gamma(1.0, 1.0, 0.0, 1.0)
    total = prior.log_prob(params)
    assert torch.allclose(total, prior.log_prob(params["a"]) + prior.log_prob(params["b"]))
    g = grad(prior.log_prob)(params)
    assert all(torch.isfinite(v).all() for v in g.values())
    assert prior.kl is None and priors.known_mean_gamma().kl is None


def test_pyvarinf_mixture_matches_its_formula():
    w = torch.linspace(-0.5, 0.5, 21)
    s1, s2, pi = 0.3, 0.01, 0.4
    w64 = w.double()
    ref = torch.log(pi * torch.exp(-w64 ** 2 / (2 * s1 ** 2)) / s1 + (1 - pi) * torch.exp(-w64 ** 2 / (2 * s2 ** 2)) / s2
                    + 1e-8) - 0.5 * LOG_2PI
    got = priors.pyvarinf_mixture(s1, s2, pi).log_prob(w)
    assert abs(float(got) - float(ref.sum())) < 1e-4
    elems = priors.log_prob_elements(priors.pyvarinf_mixture(s1, s2, pi), w)
    assert torch.allclose(elems.double(), ref, atol=1e-5)


def test_elementwise_log_prob_and_kl():
    x = fr.normal(fr.key(8), (3, 4)) * 0.1
    assert torch.allclose(priors.log_prob_elements(priors.normal(0.1), x),
                          torch.distributions.Normal(0.0, 0.1).log_prob(x), atol=1e-5)
    assert torch.allclose(priors.log_prob_elements(priors.laplace(0.1), x),
                          torch.distributions.Laplace(0.0, 0.1).log_prob(x), atol=1e-5)
    std = torch.full_like(x, 0.05)
    per = priors.kl_elements(priors.normal(0.1), x, std)
    assert per.shape == x.shape and torch.allclose(per.sum(), priors.normal(0.1).kl(x, std), rtol=1e-5)
    for bad in (priors.scale_mixture(0.75, 0.1, 5e-4, "joint_sum"), priors.normal_gamma()):
        with pytest.raises(ValueError, match="does not factorise"):
            priors.log_prob_elements(bad, x)
    with pytest.raises(ValueError, match="no closed-form KL"):
        priors.kl_elements(priors.laplace(0.1), x, std)


@pytest.mark.parametrize("make, match", [
    (lambda: priors.scale_mixture(1.5, 0.1, 0.01), "pi must be in"),
    (lambda: priors.scale_mixture(0.5, -0.1, 0.01), "sigma1 must be"),
    (lambda: priors.scale_mixture(0.5, 0.1, 0.01, mode="layer"), "unknown mixture_mode"),
    (lambda: priors.normal_gamma(alpha0=0.0), "alpha0 must be"),
    (lambda: priors.normal_gamma(kappa0=-1.0), "kappa0 must be"),
    (lambda: priors.known_mean_gamma(beta0=float("nan")), "beta0 must be"),
    (lambda: priors.pyvarinf_mixture(pi=0.0), "pi must be in"),
])
def test_bad_prior_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()
