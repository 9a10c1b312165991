"""Parameterizations: exact inverses, and the ideal network output gives the exact score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_lab import parameterization, sdes

SDES = ["vp", "subvp", "ve", "cosine_vp"]
PARAMS = ["eps", "score", "x0", "edm"]


def _setup(sde_name, seed=0):
    sde = sdes.make(sde_name)
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    t = jax.random.uniform(keys[0], (16,), minval=0.01, maxval=0.99)
    x0 = jax.random.normal(keys[1], (16, 4, 4, 2))
    eps = jax.random.normal(keys[2], x0.shape)
    mean_coeff, std = (np.asarray(v, np.float64).reshape(16, 1, 1, 1) for v in sde.marginal(t))
    xt = mean_coeff * np.asarray(x0, np.float64) + std * np.asarray(eps, np.float64)
    return sde, t, np.asarray(x0, np.float64), np.asarray(eps, np.float64), xt, mean_coeff, std


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("name", PARAMS)
def test_round_trip(sde_name, name):
    sde, t, _, _, xt, _, std = _setup(sde_name)
    p = parameterization.make(name)
    xt = jnp.asarray(xt, jnp.float32)
    # A score of realistic scale, |score| ~ 1 / std (the conditional score is -eps / std).
    score = jax.random.normal(jax.random.PRNGKey(9), xt.shape) / jnp.asarray(std, jnp.float32)
    raw = p.from_score(sde, score, xt, t)
    # float32 relative precision, measured against each example's score scale 1 / std.
    np.testing.assert_allclose(p.to_score(sde, raw, xt, t) * std, score * std, atol=1e-4)


def _ideal_output(name, x0, eps, xt, mean_coeff, std, sigma_data=0.5):
    """What a perfect network outputs for (x0, eps), from each paper's definition."""
    if name == "eps":
        return eps
    if name == "score":          # sigma * grad log p(x_t | x_0) = -eps
        return -eps
    if name == "x0":
        return x0
    sigma = std / mean_coeff     # EDM: F = (D - c_skip x~) / c_out with D = x0.
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / np.sqrt(sigma**2 + sigma_data**2)
    return (x0 - c_skip * xt / mean_coeff) / c_out


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("name", PARAMS)
def test_ideal_output_gives_conditional_score(sde_name, name):
    """grad log p(x_t | x_0) = -eps / std, computed in float64 NumPy."""
    sde, t, x0, eps, xt, mean_coeff, std = _setup(sde_name, seed=1)
    raw = _ideal_output(name, x0, eps, xt, mean_coeff, std)
    p = parameterization.make(name)
    got = p.to_score(sde, jnp.asarray(raw, jnp.float32), jnp.asarray(xt, jnp.float32), t)
    want = -eps / std
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


@pytest.mark.parametrize("sde_name", SDES)
def test_conditioning_values(sde_name):
    sde, t, _, _, xt, mean_coeff, std = _setup(sde_name)
    xt = jnp.asarray(xt, jnp.float32)
    _, cond = parameterization.make("eps").net_input(sde, xt, t)
    np.testing.assert_allclose(cond, 999 * np.asarray(t), rtol=1e-6)
    _, cond = parameterization.make("score").net_input(sde, xt, t)
    np.testing.assert_allclose(cond, np.log(std.ravel()), rtol=1e-4, atol=1e-5)
    x_in, cond = parameterization.make("edm").net_input(sde, xt, t)
    sigma = (std / mean_coeff).ravel()
    np.testing.assert_allclose(cond, np.log(sigma) / 4, rtol=1e-4, atol=1e-5)
    c_in = 1 / np.sqrt(sigma**2 + 0.25)
    np.testing.assert_allclose(x_in, c_in.reshape(-1, 1, 1, 1) * np.asarray(xt) / mean_coeff,
                               rtol=1e-4, atol=1e-5)


def test_score_model_composes_apply_fn():
    sde = sdes.make("vp")
    p = parameterization.make("eps")
    apply_fn = lambda params, x, cond: params * x + cond[:, None]  # noqa: E731
    x, t = jnp.ones((3, 2)), jnp.asarray([0.1, 0.5, 0.9])
    got = p.score_model(apply_fn, sde)(2.0, x, t)
    std = np.asarray(sde.marginal(t)[1])
    want = -(2.0 + 999 * np.asarray(t))[:, None] / std[:, None]
    np.testing.assert_allclose(got, np.broadcast_to(want, (3, 2)), rtol=1e-5)


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown parameterization 'v'; available: \["):
        parameterization.make("v")
