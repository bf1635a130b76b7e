import math

import pytest
import torch
import torch.nn.functional as F

from fbnn import likelihoods, priors
from fbnn import random as fr


def test_categorical_is_minus_cross_entropy():
    logits = fr.normal(fr.key(0), (7, 5)) * 3
    y = fr.randint(fr.key(1), 5, (7,))
    ll = likelihoods.categorical().log_lik(logits, y)
    assert torch.allclose(ll, -F.cross_entropy(logits, y, reduction="none"), atol=1e-6)


def test_categorical_label_checks():
    lik = likelihoods.categorical()
    out = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\].*\[0, 4\]"):
        lik.check(out, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"got range \[-1"):
        lik.check(out, torch.tensor([-1, 0, 1]))
    with pytest.raises(ValueError, match="shape"):
        lik.check(out, torch.zeros(3, 1, dtype=torch.long))


@pytest.mark.parametrize("include_2pi", [True, False])
def test_gaussian_fixed_and_per_input(include_2pi):
    mean = fr.normal(fr.key(0), (6, 1))
    y = fr.normal(fr.key(1), (6,))
    shift = 0.0 if include_2pi else 0.5 * math.log(2 * math.pi)
    fixed = likelihoods.gaussian(0.3, include_2pi=include_2pi).log_lik(mean, y)
    ref = torch.distributions.Normal(mean[:, 0], 0.3).log_prob(y) + shift
    assert torch.allclose(fixed, ref, atol=1e-5)
    log_sigma = fr.normal(fr.key(2), (6, 1)) * 0.5
    hetero = likelihoods.gaussian(include_2pi=include_2pi).log_lik(torch.cat([mean, log_sigma], -1), y)
    ref = torch.distributions.Normal(mean[:, 0], log_sigma[:, 0].exp()).log_prob(y) + shift
    assert torch.allclose(hetero, ref, atol=1e-5)


def test_gaussian_checks():
    with pytest.raises(ValueError, match="sigma must be > 0"):
        likelihoods.gaussian(0.0)
    with pytest.raises(ValueError, match="NaN"):
        likelihoods.gaussian().check(torch.zeros(2, 2), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match=r"\(B, 2D\)"):
        likelihoods.gaussian().check(torch.zeros(2, 3), torch.zeros(2))


def test_normal_and_laplace_priors_match_torch_distributions():
    params = {"a": fr.normal(fr.key(0), (3, 4)), "b": {"c": fr.normal(fr.key(1), (5,))}}
    flat = torch.cat([params["a"].flatten(), params["b"]["c"]])
    assert torch.allclose(priors.normal(0.1).log_prob(params),
                          torch.distributions.Normal(0.0, 0.1).log_prob(flat).sum(), rtol=1e-5)
    assert torch.allclose(priors.laplace(0.1).log_prob(params),
                          torch.distributions.Laplace(0.0, 0.1).log_prob(flat).sum(), rtol=1e-5)


def test_normal_kl_closed_form_equals_monte_carlo():
    # SPEC 9.1: closed-form KL(q || p) equals E_q[log q - log p] by Monte Carlo (1e6 draws)
    mean = torch.tensor([0.05, -0.1, 0.2])
    std = torch.tensor([0.05, 0.1, 0.02])
    prior = priors.normal(0.1)
    closed = prior.kl({"w": mean}, {"w": std})
    w = mean + std * fr.normal(fr.key(4), (1_000_000, 3))
    q = torch.distributions.Normal(mean, std)
    p = torch.distributions.Normal(0.0, 0.1)
    mc = (q.log_prob(w) - p.log_prob(w)).sum(-1).mean()
    assert abs(float(closed) - float(mc)) / float(closed) < 0.005


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "1"])
def test_prior_scale_must_be_positive(bad):
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        priors.normal(bad)
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        priors.laplace(bad)
