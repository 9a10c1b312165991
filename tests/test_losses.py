"""DSM losses with the exact score of Gaussian data equal their analytic expectations.

For x_0 ~ N(m, s^2 I) and x_t = a x_0 + std z, the exact score is
-(x_t - a m) / v with v = a^2 s^2 + std^2, and per dimension

    E[(std * score + z)^2 | t] = a^2 s^2 / v,

since std * score + z = (a^2 s^2 / v) z - (a s std / v) w for x_0 = m + s w, whose
variance is a^4 s^4 / v^2 + a^2 s^2 std^2 / v^2 = a^2 s^2 / v.

Expectations over t are integrated with scipy.integrate.quad in float64; Monte-Carlo
tolerances are 5 standard errors estimated from 16 independent batches.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from sde_lab import losses, parameterization, sdes
from sde_lab.analytic import GaussianMixture
from test_sdes import CASES

M, S, D = 0.3, 0.6, 4
SDE_CASES = ["vp", "subvp", "ve", "cosine_vp", "edm", "flow"]


def _residual(case, t):
    a, std = CASES[case][1](t)
    return a**2 * S**2 / (a**2 * S**2 + std**2)


def _exact_model(sde):
    score = GaussianMixture.create([[M] * D], [S]).score_fn(sde)
    return lambda params, x, t: score(x, t) + params  # params: a constant score offset


def _mc(loss_fn, sde, offset=0.0, batch=16384, repeats=16, seed=0):
    data = GaussianMixture.create([[M] * D], [S])
    fn = jax.jit(lambda key: loss_fn(offset, _exact_model(sde), sde,
                                     data.sample(jax.random.fold_in(key, 1), batch), key))
    vals = np.array([float(fn(jax.random.PRNGKey(seed + i))) for i in range(repeats)])
    return vals.mean(), vals.std(ddof=1) / np.sqrt(repeats)


@pytest.mark.parametrize("case", SDE_CASES)
def test_std2_weighting_matches_analytic(case):
    sde = sdes.make(case)
    eps, T = 1e-5, sde.T
    want = integrate.quad(lambda t: _residual(case, t), eps, T, limit=200)[0] / (T - eps)
    got, se = _mc(losses.make("dsm", eps=eps), sde)
    assert abs(got - want) < 5 * se, (got, want, se)
    got_sum, se_sum = _mc(losses.make("dsm", eps=eps, reduce="sum"), sde)
    assert abs(got_sum - 0.5 * D * want) < 5 * se_sum


@pytest.mark.parametrize("case", SDE_CASES)
@pytest.mark.parametrize("importance_sampling", [False, True])
def test_likelihood_weighting_matches_analytic(case, importance_sampling):
    """lambda = g^2: E = int g^2 / std^2 * a^2 s^2 / v dt / (T - eps). eps = 1e-3 keeps the
    uniform estimator's variance finite enough (g^2/std^2 ~ 1/t) for a 5-SE check."""
    sde = sdes.make(case)
    eps, T = 1e-3, sde.T
    g2 = CASES[case][2]
    integrand = lambda t: g2(t) / CASES[case][1](t)[1] ** 2 * _residual(case, t)  # noqa
    want = integrate.quad(integrand, eps, T, limit=400, points=[0.01, 0.1])[0] / (T - eps)
    loss = losses.make("dsm", eps=eps, weighting="likelihood",
                       importance_sampling=importance_sampling)
    got, se = _mc(loss, sde)
    assert abs(got - want) < 5 * se, (got, want, se)
    if importance_sampling:  # Importance sampling must also reduce the variance ...
        _, se_uniform = _mc(losses.make("dsm", eps=eps, weighting="likelihood"), sde)
        ts = np.linspace(eps, T, 1001)
        density = g2(ts) / CASES[case][1](ts)[1] ** 2
        spread = density.max() / density.min()
        if spread < 1 + 1e-6:  # ve: uniform t already is the IS density.
            assert abs(se - se_uniform) < 1e-3 * se_uniform
        else:  # ... a lot where g^2 / std^2 ~ 1/t (VP family, flow; edm's spread is 4.5).
            assert se < (0.5 if spread > 100 else 1.0) * se_uniform


@pytest.mark.parametrize("case", ["vp", "ve"])
def test_discrete_losses_match_analytic(case):
    sde = sdes.make(case)
    n = 1000
    t = np.linspace(sde.t_min, sde.T, n)
    want = np.mean(_residual(case, t))
    name = "ddpm" if case == "vp" else "smld"
    got, se = _mc(losses.make(name, num_levels=n), sde)
    assert abs(got - want) < 5 * se, (got, want, se)


@pytest.mark.parametrize("name, sde_name", [("dsm", "vp"), ("ddpm", "vp"), ("smld", "ve")])
def test_sum_reduction_is_score_sde_half_sum(name, sde_name):
    """score_sde's losses.py: reduce_mean=True averages the squared residual over data
    dimensions, reduce_mean=False takes 0.5 * sum. reduce="sum" is the latter, so with the
    same draws it is exactly D / 2 times reduce="mean"."""
    sde = sdes.make(sde_name)
    x = GaussianMixture.create([[M] * D], [S]).sample(jax.random.PRNGKey(0), 64)
    args = (0.1, _exact_model(sde), sde, x, jax.random.PRNGKey(1))
    got_sum = losses.make(name, reduce="sum")(*args)
    got_mean = losses.make(name, reduce="mean")(*args)
    np.testing.assert_allclose(got_sum, 0.5 * D * got_mean, rtol=1e-6)


def test_ddpm_loss_levels_are_the_vp_sde_marginals_not_ddpm_chain():
    """The discrete VP loss has DDPM's eps-MSE form but perturbs at the VP SDE's marginals
    at t_i = linspace(t_min, T, N), not at DDPM's alpha_bar_i = prod_j (1 - beta_j),
    beta_j = linspace(1e-4, 0.02, 1000): their std differ by up to 4.9% (at the first
    level), their mean_coeff by up to 3.4% (at the last)."""
    sde = sdes.make("vp")
    with jax.enable_x64(True):
        mean, std = (np.asarray(v) for v in sde.marginal(sde.discrete_times(1000)))
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    rel_std = np.abs(std / np.sqrt(1 - abar) - 1)
    rel_mean = np.abs(mean / np.sqrt(abar) - 1)
    assert rel_std.argmax() == 0 and 0.048 < rel_std.max() < 0.049
    assert rel_mean.argmax() == 999 and 0.034 < rel_mean.max() < 0.035


@pytest.mark.parametrize("case", SDE_CASES)
def test_exact_score_beats_perturbed_score(case):
    """With a score offset delta, the loss grows by delta^2 E_t[std^2] (std2 weighting)."""
    sde = sdes.make(case)
    delta = 0.2 / float(np.mean(CASES[case][1](np.linspace(0, sde.T, 101))[1]))
    loss = losses.make("dsm")
    exact, _ = _mc(loss, sde)
    perturbed, _ = _mc(loss, sde, offset=delta)  # same keys: common random numbers
    diffs = []
    for i in range(16):
        key = jax.random.PRNGKey(i)
        data = GaussianMixture.create([[M] * D], [S]).sample(jax.random.fold_in(key, 1), 16384)
        diffs.append(float(loss(delta, _exact_model(sde), sde, data, key)
                           - loss(0.0, _exact_model(sde), sde, data, key)))
    want = delta**2 * integrate.quad(lambda t: CASES[case][1](t)[1] ** 2, 1e-5, sde.T)[0] / (
        sde.T - 1e-5)
    assert perturbed > exact
    assert abs(np.mean(diffs) - want) < 5 * np.std(diffs, ddof=1) / 4 + 1e-6


def _lognormal_mean(fn, p_mean=-1.2, p_std=1.2):
    """E[fn(sigma)] for ln sigma ~ N(p_mean, p_std^2), by quadrature over the normal
    (|n| <= 12: the tails beyond hold 4e-33)."""
    return integrate.quad(lambda n: fn(np.exp(p_mean + p_std * n)) * stats.norm.pdf(n),
                          -12, 12, limit=200)[0]


@pytest.mark.parametrize("case, sigma_data", [
    ("vp", 0.5), ("ve", 0.5), ("edm", 0.5), ("flow", 0.5), ("edm", S)])
def test_edm_loss_with_the_exact_denoiser_matches_analytic(case, sigma_data):
    """EDM's loss lambda(sigma) E|D - x_0|^2 per dimension with the exact denoiser of
    N(m, s^2) data is lambda(sigma) times the posterior variance s^2 sigma^2 / (s^2 +
    sigma^2), i.e. (sigma^2 + sigma_data^2) s^2 / (sigma_data^2 (s^2 + sigma^2)),
    averaged over EDM's log-normal sigma: the same value on every SDE, and exactly 1 when
    sigma_data = s. (The loss clips sigma to the SDE's range, where this integrand is flat:
    at most 0.2% of the draws move, changing it by < 1e-5.)"""
    sde = sdes.make(case)
    want = _lognormal_mean(lambda sig: (sig**2 + sigma_data**2) * S**2
                           / (sigma_data**2 * (S**2 + sig**2)))
    if sigma_data == S:
        assert abs(want - 1.0) < 1e-9
    got, se = _mc(losses.make("edm", sigma_data=sigma_data), sde)
    assert abs(got - want) < 5 * se, (got, want, se)


def _flow_matching_minimum(s, eps, T):
    """min of the CFM loss per dimension on alpha = 1 - t, sigma = t, t ~ U[eps, T], for
    data N(m, s^2): E_t[s^2 / (s^2 (1 - t)^2 + t^2)] in closed form,
    s [atan((T - t0) / w) - atan((eps - t0) / w)] / (T - eps), t0 = s^2 / (1 + s^2),
    w = s / (1 + s^2); pi s / 2 for eps = 0, T = 1."""
    t0, w = s**2 / (1 + s**2), s / (1 + s**2)
    return s * (np.arctan((T - t0) / w) - np.arctan((eps - t0) / w)) / (T - eps)


@pytest.mark.parametrize("case, options", [
    ("flow", {}), ("flow", {"time_sampling": "logit_normal", "logit_mean": 0.5}),
    ("vp", {})])
def test_flow_matching_loss_with_the_exact_velocity_is_its_minimum(case, options):
    """E|v_hat - v|^2 per dimension with the exact velocity is E_t[c^2 a^2 s^2 / (a^2 s^2
    + std^2)], c = g^2 / (2 std) (v_hat - v = -c (std score + z)): on flow with uniform t
    the closed form of `_flow_matching_minimum`, otherwise by quadrature over t."""
    sde = sdes.make(case)
    eps, T = 1e-5, sde.T
    a_std, g2 = CASES[case][1], CASES[case][2]
    per_t = lambda t: (g2(t) / (2 * a_std(t)[1])) ** 2 * _residual(case, t)  # noqa: E731
    if case == "flow" and not options:
        want = _flow_matching_minimum(S, eps, T)
        quad = integrate.quad(per_t, eps, T, limit=200)[0] / (T - eps)
        np.testing.assert_allclose(want, quad, rtol=1e-8)
        np.testing.assert_allclose(_flow_matching_minimum(S, 0.0, 1.0), np.pi * S / 2)
    elif options:
        m, sd = options["logit_mean"], 1.0
        want = integrate.quad(lambda n: per_t(eps + (T - eps) / (1 + np.exp(-(m + sd * n))))
                              * stats.norm.pdf(n), -12, 12, limit=200)[0]
    else:
        want = integrate.quad(per_t, eps, T, limit=400, points=[0.01, 0.1])[0] / (T - eps)
    got, se = _mc(losses.make("flow_matching", eps=eps, **options), sde)
    assert abs(got - want) < 5 * se, (got, want, se)


def test_flow_matching_loss_is_the_velocity_regression():
    """With a network that predicts v (the `velocity` parameterization), the loss equals
    mean((net - (z - x_0))^2) computed directly from the same t and z on `flow`."""
    sde = sdes.make("flow")
    param = parameterization.make("velocity")
    apply_fn = lambda w, x, cond: w * x + jnp.sin(cond / 999.0)[:, None]  # noqa: E731
    model = param.score_model(apply_fn, sde)
    x0 = jax.random.normal(jax.random.PRNGKey(0), (64, D))
    keys = losses.example_keys(jax.random.PRNGKey(1), 64)
    got = losses.flow_matching_loss(0.3, model, sde, x0, keys)
    u, z = jax.vmap(lambda k: (jax.random.uniform(jax.random.split(k)[0]),
                               jax.random.normal(jax.random.split(k)[1], (D,))))(keys)
    t = 1e-5 + u * (sde.T - 1e-5)
    xt = (1 - t)[:, None] * x0 + t[:, None] * z
    want = jnp.mean((apply_fn(0.3, xt, 999.0 * t) - (z - x0)) ** 2)
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("bad, match", [
    ({"weighting": "snr"}, r"weighting='snr' is not valid; choose from \['std2', 'likelihood'\]"),
    ({"reduce": "max"}, r"reduce='max' is not valid"),
    ({"importance_sampling": True}, "needs weighting='likelihood'"),
])
def test_bad_options(bad, match):
    sde = sdes.make("vp")
    with pytest.raises(ValueError, match=match):
        losses.dsm_loss(0.0, _exact_model(sde), sde, jnp.ones((2, D)), jax.random.PRNGKey(0),
                        **bad)


@pytest.mark.parametrize("name, bad, match", [
    ("edm", {"p_std": 0.0}, r"edm: p_std must be > 0, got p_std=0.0"),
    ("edm", {"sigma_data": -1.0}, "edm: sigma_data must be > 0"),
    ("edm", {"eps": 1.0}, r"edm: eps=1.0 must be in \(0, T = 1.0\)"),
    ("flow_matching", {"time_sampling": "beta"},
     r"time_sampling='beta' is not valid; choose from \['uniform', 'logit_normal'\]"),
    ("flow_matching", {"logit_std": 0.0}, "flow_matching: logit_std must be > 0"),
    ("flow_matching", {"reduce": "max"}, r"reduce='max' is not valid"),
])
def test_bad_options_of_edm_and_flow_matching(name, bad, match):
    sde = sdes.make("vp")
    with pytest.raises(ValueError, match=match):
        losses.make(name, **bad)(0.0, _exact_model(sde), sde, jnp.ones((2, D)),
                                 jax.random.PRNGKey(0))


def test_unknown_loss():
    with pytest.raises(ValueError, match=r"unknown loss 'l2'; available: "
                                         r"\['ddpm', 'dsm', 'edm', 'flow_matching', 'smld', "
                                         r"'vdm_vlb'\]"):
        losses.make("l2")


def test_loss_is_differentiable_and_jittable():
    sde = sdes.make("vp")
    model = lambda w, x, t: -w * x  # noqa: E731  (score of N(0, 1/w))
    x = jax.random.normal(jax.random.PRNGKey(0), (64, D))
    g = jax.jit(jax.grad(lambda w: losses.dsm_loss(w, model, sde, x, jax.random.PRNGKey(1))))(1.0)
    assert np.isfinite(float(g))


def test_per_example_keys_make_the_loss_shard_invariant():
    """Splitting the batch and the per-example keys in two and averaging the halves gives
    the full-batch loss: what a data-parallel step relies on."""
    sde = sdes.make("vp")
    model = _exact_model(sde)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, D))
    keys = losses.example_keys(jax.random.PRNGKey(1), 8)
    full = losses.dsm_loss(0.0, model, sde, x, keys)
    halves = [losses.dsm_loss(0.0, model, sde, x[i:i + 4], keys[i:i + 4]) for i in (0, 4)]
    np.testing.assert_allclose(full, np.mean(halves), rtol=1e-6)
    np.testing.assert_allclose(full, losses.dsm_loss(0.0, model, sde, x, jax.random.PRNGKey(1)),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="got 4 per-example keys for a batch of 8"):
        losses.dsm_loss(0.0, model, sde, x, keys[:4])
