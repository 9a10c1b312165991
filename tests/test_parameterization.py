"""Parameterizations: exact inverses, and the ideal network output gives the exact score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_lab import parameterization, sdes
from test_sdes import CASES

SDES = ["vp", "subvp", "ve", "cosine_vp", "edm", "flow"]
PARAMS = ["eps", "score", "x0", "edm", "velocity", "v"]


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


def _path_derivatives(sde_name, t):
    """(alpha'(t), sigma'(t)) [16, 1, 1, 1] by central differences of test_sdes.CASES'
    float64 closed forms (truncation error ~1e-10 relative)."""
    t, h = np.asarray(t, np.float64), 1e-5
    plus, minus = CASES[sde_name][1](t + h), CASES[sde_name][1](t - h)
    return tuple(((p - m) / (2 * h)).reshape(16, 1, 1, 1) for p, m in zip(plus, minus))


def _ideal_output(name, x0, eps, xt, mean_coeff, std, sigma_data=0.5, derivatives=None):
    """What a perfect network outputs for (x0, eps), from each paper's definition."""
    if name == "velocity":       # d x_t / dt along the path
        d_mean, d_std = derivatives
        return d_mean * x0 + d_std * eps
    if name == "v":              # Salimans & Ho's v of the VP process x_t / r
        r = np.sqrt(mean_coeff**2 + std**2)
        return (mean_coeff * eps - std * x0) / r
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
    raw = _ideal_output(name, x0, eps, xt, mean_coeff, std,
                        derivatives=_path_derivatives(sde_name, t))
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
    x_in, cond = parameterization.make("v").net_input(sde, xt, t)
    np.testing.assert_allclose(cond, 999 * np.asarray(t), rtol=1e-6)
    np.testing.assert_allclose(x_in, np.asarray(xt) / np.sqrt(mean_coeff**2 + std**2),
                               rtol=1e-4, atol=1e-5)
    x_in, cond = parameterization.make("velocity").net_input(sde, xt, t)
    np.testing.assert_allclose(cond, 999 * np.asarray(t), rtol=1e-6)
    np.testing.assert_array_equal(x_in, xt)


def test_velocity_on_flow_is_noise_minus_data_and_v_on_ve_is_edm_with_unit_sigma_data():
    """Two identities the docstrings state: on `flow` the velocity of (x0, eps) is
    eps - x0; on VE, v = -F of EDM's preconditioning with sigma_data = 1."""
    sde, t, x0, eps, xt, _, std = _setup("flow", seed=2)
    got = parameterization.make("velocity").from_score(
        sde, jnp.asarray(-eps / std, jnp.float32), jnp.asarray(xt, jnp.float32), t)
    # from_score of the conditional score -eps / std gives E[v | x_t, x0] = eps - x0.
    np.testing.assert_allclose(got, eps - x0, rtol=1e-4, atol=1e-4)
    sde, t, x0, eps, xt, _, std = _setup("ve", seed=2)
    score = jnp.asarray(-eps / std, jnp.float32)
    xt = jnp.asarray(xt, jnp.float32)
    v = parameterization.make("v").from_score(sde, score, xt, t)
    f = parameterization.make("edm", sigma_data=1.0).from_score(sde, score, xt, t)
    np.testing.assert_allclose(v, -f, rtol=1e-4, atol=1e-4)


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
    with pytest.raises(ValueError, match=r"unknown parameterization 'vel'; available: \["):
        parameterization.make("vel")
