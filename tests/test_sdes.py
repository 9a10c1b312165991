"""SDE contract tests against float64 closed forms written independently of sdes.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, special, stats

from sde_lab import sdes


def _vp_b(t, bmin=0.1, bmax=20.0):
    return bmin * t + 0.5 * (bmax - bmin) * t**2


def _cosine_abar(t, s):
    """Nichol & Dhariwal 2021, eq. 17 (T = 1): f(t) / f(0), f(t) = cos^2((t + s)/(1 + s) pi/2)."""
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0.0)


def _cosine(s=0.008, lmin=-20.0, lmax=None):
    """Closed forms of cosine_vp: eq. 17's log-SNR lambda = log(abar / (1 - abar)), made
    finite as the class documents: over [t_b, 1] (and [0, t_a] if lmax is given) lambda
    follows the tangent line of eq. 17 at t_b (t_a), chosen so that lambda(1) = lmin
    (lambda(0) = lmax). Returns ((mean_coeff, std) function, g^2 function)."""
    abar = lambda t: _cosine_abar(t, s)  # noqa: E731
    lam17 = lambda t: np.log(abar(t)) - np.log1p(-abar(t))  # noqa: E731
    dabar = lambda t: -np.pi / 2 / (1 + s) * np.sin((t + s) / (1 + s) * np.pi) / (  # noqa
        np.cos(s / (1 + s) * np.pi / 2) ** 2)
    dlam17 = lambda t: dabar(t) / (abar(t) * (1 - abar(t)))  # noqa: E731
    t_a = 0.0 if lmax is None else optimize.brentq(
        lambda t: lam17(t) - dlam17(t) * t - lmax, 1e-7, 0.5, rtol=1e-14)
    t_b = optimize.brentq(lambda t: lam17(t) + dlam17(t) * (1 - t) - lmin, 0.5, 1 - 1e-12,
                          rtol=1e-15)

    def lam_and_slope(t):
        t = np.asarray(t, np.float64)
        tc = np.clip(t, t_a, t_b)
        with np.errstate(divide="ignore", invalid="ignore"):  # lambda(0) = +inf without lmax
            lam = np.where(t > t_b, lam17(t_b) + dlam17(t_b) * (t - t_b), lam17(tc))
            if lmax is not None:
                lam = np.where(t < t_a, lam17(t_a) + dlam17(t_a) * (t - t_a), lam)
            return lam, dlam17(tc)

    def g2(t):  # beta = -d log abar / dt = -dabar / abar, = -sigmoid(-lambda) lambda'
        t = np.asarray(t, np.float64)
        lam, slope = lam_and_slope(t)
        tc = np.clip(t, t_a, t_b)
        with np.errstate(invalid="ignore"):  # the tangent branch at t = 0 without lmax
            return np.where((t > t_b) | (t < t_a), -special.expit(-lam) * slope,
                            -dabar(tc) / abar(tc))

    def marginal(t):
        lam = lam_and_slope(t)[0]
        return np.sqrt(special.expit(lam)), np.sqrt(special.expit(-lam))

    return marginal, g2


def _edm_u(t):
    return 0.002 ** (1 / 7) + t * (80.0 ** (1 / 7) - 0.002 ** (1 / 7))


# Standard deviation of each SDE's prior N(0, s^2 I).
PRIOR_STD = {"ve": 50.0, "edm": 80.0, "flow": 0.999}


# name, kwargs, closed-form (mean_coeff, std) in float64, closed-form g(t)^2.
CASES = {
    "vp": ({}, lambda t: (np.exp(-_vp_b(t) / 2), np.sqrt(1 - np.exp(-_vp_b(t)))),
           lambda t: 0.1 + t * 19.9),
    "subvp": ({}, lambda t: (np.exp(-_vp_b(t) / 2), 1 - np.exp(-_vp_b(t))),
              lambda t: (0.1 + t * 19.9) * (1 - np.exp(-2 * _vp_b(t)))),
    "ve": ({}, lambda t: (np.ones_like(t), 0.01 * 5000.0**t),
           lambda t: (0.01 * 5000.0**t) ** 2 * 2 * np.log(5000.0)),
    "cosine_vp": ({}, *_cosine()),
    "cosine_vp_custom": ({"s": 0.0, "log_snr_max": 20.0}, *_cosine(s=0.0, lmax=20.0)),
    # EDM on its rho = 7 grid: u = sigma^(1/7) linear from 0.002^(1/7) to 80^(1/7), so
    # g^2 = d u^14 / dt = 14 u^13 u'.
    "edm": ({}, lambda t: (np.ones_like(t), _edm_u(t) ** 7),
            lambda t: 14 * _edm_u(t) ** 13 * (80.0 ** (1 / 7) - 0.002 ** (1 / 7))),
    # Rectified flow, T = 0.999: g^2 = d t^2 / dt - 2 (-1 / (1 - t)) t^2 = 2 t / (1 - t).
    "flow": ({}, lambda t: (1 - t, t), lambda t: 2 * t / (1 - t)),
    "vp_custom": ({"beta_min": 0.5, "beta_max": 5.0, "T": 2.0},
                  lambda t: (np.exp(-_vp_b(t, .5, 5.) / 2), np.sqrt(1 - np.exp(-_vp_b(t, .5, 5.)))),
                  lambda t: 0.5 + t * 4.5),
}
NAMES = list(CASES)


def make(case):
    return make_from(case, CASES[case][0])


def make_from(case, options):
    """The SDE of `case`; a "bind" option holds trainable parameters to bind (learned SDEs)."""
    kwargs = dict(options)
    params = kwargs.pop("bind", None)
    sde = sdes.make(case.replace("_custom", ""), **kwargs)
    return sde if params is None else sde.bind(params)


def grid(sde):
    return np.concatenate([[sde.t_min], np.linspace(0.01, 1.0, 25) * sde.T])


@pytest.mark.parametrize("case", NAMES)
def test_marginal_matches_closed_form(case):
    sde = make(case)
    t = grid(sde)
    mean_coeff, std = sde.marginal(jnp.asarray(t, jnp.float32))
    want_mean, want_std = CASES[case][1](t)
    np.testing.assert_allclose(mean_coeff, want_mean, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(std, want_std, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("case", NAMES)
def test_diffusion_matches_closed_form_and_drift_is_linear(case):
    sde = make(case)
    t = jnp.asarray(grid(sde), jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(0), (t.shape[0], 3))
    f, g = sde.drift_diffusion(x, t)
    np.testing.assert_allclose(g**2, CASES[case][2](np.asarray(t, np.float64)), rtol=1e-4)
    # f(x, t) = f(t) x with f(t) = d log mean_coeff / dt (central difference in float64).
    h = 1e-7
    tt = np.asarray(t, np.float64).clip(h, sde.T - h)
    m = lambda s: CASES[case][1](s)[0]  # noqa: E731
    f_coeff = (np.log(m(tt + h)) - np.log(m(tt - h))) / (2 * h)
    f2, _ = sde.drift_diffusion(x, jnp.asarray(tt, jnp.float32))
    np.testing.assert_allclose(f2, f_coeff[:, None] * np.asarray(x), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("case", NAMES)
def test_consistency_of_drift_diffusion_with_marginal(case):
    """For a linear SDE, d std^2 / dt = 2 f(t) std^2 + g^2 (the variance ODE)."""
    sde = make(case)
    t = np.linspace(0.05, 0.95, 10) * sde.T
    h = 1e-3
    std2 = lambda s: np.asarray(sde.marginal(jnp.asarray(s, jnp.float32))[1], np.float64) ** 2  # noqa
    lhs = (std2(t + h) - std2(t - h)) / (2 * h)
    mean, _ = CASES[case][1](t)
    f_coeff = (np.log(CASES[case][1](t + 1e-6)[0]) - np.log(CASES[case][1](t - 1e-6)[0])) / 2e-6
    rhs = 2 * f_coeff * std2(t) + CASES[case][2](t)
    np.testing.assert_allclose(lhs, rhs, rtol=5e-3, atol=1e-3)


@pytest.mark.parametrize("case", NAMES)
def test_prior_logp_matches_scipy(case):
    sde = make(case)
    key = jax.random.PRNGKey(1)
    z = sde.prior_sample(key, (6, 2, 3))
    std_t = CASES[case][1](np.array(sde.T))[1]
    prior_std = PRIOR_STD.get(case, 1.0)
    want = stats.norm(0, prior_std).logpdf(np.asarray(z, np.float64)).reshape(6, -1).sum(-1)
    np.testing.assert_allclose(sde.prior_logp(z), want, rtol=1e-5)
    # The prior is close to the true terminal marginal of a centred unit-scale datum.
    assert abs(std_t - prior_std) / prior_std < 1e-2


@pytest.mark.parametrize("case", NAMES)
def test_log_snr_inverse_round_trips(case):
    sde = make(case)
    t = jnp.asarray(np.linspace(sde.t_min, sde.T * 0.999, 50), jnp.float32)
    lam = sde.log_snr(t)
    mean, std = CASES[case][1](np.asarray(t, np.float64))
    np.testing.assert_allclose(lam, 2 * np.log(mean / std), rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(np.asarray(lam)) < 0)
    np.testing.assert_allclose(sde.t_from_log_snr(lam), t, rtol=2e-4, atol=2e-5)
    # The generic bisection of the base class agrees with each closed-form inverse.
    np.testing.assert_allclose(sdes.SDE.t_from_log_snr(sde, lam), t, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("case", NAMES)
def test_transitions_compose_to_the_marginal(case):
    """N(a_{t|s} x_s, b^2) applied to x_s ~ N(m_s x0, std_s^2) gives N(m_t x0, std_t^2)."""
    sde = make(case)
    s = jnp.asarray([0.1, 0.3, 0.5]) * sde.T
    t = s + 0.2 * sde.T
    a, b = sde.transition(s, t)
    ms, ss = CASES[case][1](np.asarray(s, np.float64))
    mt, st = CASES[case][1](np.asarray(t, np.float64))
    np.testing.assert_allclose(a * ms, mt, rtol=1e-5)
    np.testing.assert_allclose(a**2 * ss**2 + b**2, st**2, rtol=1e-4)


def _simulate_forward(sde, x_init, key, num_steps):
    """Euler-Maruyama from t=0 to T in float32, returning samples at T/2 and T."""
    dt = sde.T / num_steps

    def step(x, inp):
        i, k = inp
        t = jnp.full(x.shape[:1], i * dt)
        f, g = sde.drift_diffusion(x, t)
        x = x + f * dt + g[:, None] * math.sqrt(dt) * jax.random.normal(k, x.shape)
        return x, None

    keys = jax.random.split(key, num_steps)
    half = num_steps // 2
    x_half, _ = jax.lax.scan(step, x_init, (jnp.arange(half), keys[:half]))
    x_end, _ = jax.lax.scan(step, x_half, (jnp.arange(half, num_steps), keys[half:]))
    return x_half, x_end


def _em_moments(sde_case, x0, std0, num_steps, T):
    """Exact mean/std of the Euler-Maruyama chain itself (float64 recursion): its bias."""
    _, closed, g2 = CASES[sde_case]
    dt = T / num_steps
    mean, var = x0, std0**2
    out = {}
    for i in range(num_steps):
        t = i * dt
        f = (np.log(closed(t + 1e-7)[0]) - np.log(closed(max(t - 1e-7, 0) + 0.0)[0])) / (
            (t + 1e-7) - max(t - 1e-7, 0))
        mean, var = (1 + f * dt) * mean, (1 + f * dt) ** 2 * var + g2(t) * dt
        if i + 1 in (num_steps // 2, num_steps):
            out[i + 1] = (mean, np.sqrt(var))
    return out


@pytest.mark.parametrize("case", NAMES)
def test_forward_simulation_matches_marginal(case):
    """Point mass x0 = 1.5 simulated with 1000 EM steps, n = 40,000 paths x 4 coordinates.

    Tolerance: 5 Monte-Carlo standard errors (mean: std / sqrt(n); std: std / sqrt(2n)),
    plus the Euler-Maruyama chain's own deterministic bias, computed exactly by the float64
    moment recursion. False-failure probability < 1e-5 per assertion.
    """
    sde = make(case)
    x0, n, d, num_steps = 1.5, 40_000, 4, 1000
    std0 = float(CASES[case][1](np.array(0.0))[1])  # VE starts perturbed by sigma_min.
    z0 = jax.random.normal(jax.random.PRNGKey(2), (n, d))
    x_half, x_end = _simulate_forward(sde, x0 + std0 * z0, jax.random.PRNGKey(3), num_steps)
    em = _em_moments(case, x0, std0, num_steps, sde.T)
    for k, x in ((num_steps // 2, x_half), (num_steps, x_end)):
        t = k * sde.T / num_steps
        want_mean, want_std = CASES[case][1](np.array(t))
        want_mean = want_mean * x0
        x = np.asarray(x, np.float64).ravel()
        m = x.size
        bias_mean, bias_std = abs(em[k][0] - want_mean), abs(em[k][1] - want_std)
        assert abs(x.mean() - want_mean) < 5 * want_std / np.sqrt(m) + bias_mean
        assert abs(x.std() - want_std) < 5 * want_std / np.sqrt(2 * m) + bias_std


@pytest.mark.parametrize("case", NAMES)
def test_discrete_chain_tracks_marginal(case):
    """The forward `discretize` chain over N = 1000 steps ends near the SDE marginal
    (DDPM / SMLD chains are consistent discretizations: O(1/N) moment error)."""
    sde = make(case)
    num_steps = 1000
    dt = sde.T / num_steps
    mean, var = 1.0, float(CASES[case][1](np.array(0.0))[1]) ** 2
    for i in range(1, num_steps + 1):
        t = jnp.asarray([i * dt])
        f, g = sde.discretize(jnp.ones((1, 1)), t, dt)  # F is linear in x: F(1) = coefficient
        a = 1.0 + float(f[0, 0])
        mean, var = a * mean, a**2 * var + float(g[0]) ** 2
    want_mean, want_std = CASES[case][1](np.array(sde.T))
    np.testing.assert_allclose(mean, want_mean, rtol=0.05, atol=1e-4)
    np.testing.assert_allclose(np.sqrt(var), want_std, rtol=0.01)


@pytest.mark.parametrize("case", NAMES)
def test_probability_flow_maps_prior_to_data_gaussian(case):
    """Gaussian data N(m, s^2 I): the PF ODE with the exact score is linear, so each path
    lands exactly on x_0 = a_0 m + sqrt(v_0 / v_T) (x_T - a_T m), v_t = a_t^2 s^2 + std_t^2.
    RK4 with 500 steps from T to 0; the per-path error must be below 1e-3 relative."""
    from sde_lab.analytic import GaussianMixture

    sde = make(case)
    m, s = 0.7, 0.4
    data = GaussianMixture.create([[m] * 3], [s])
    rev = sdes.reverse(sde, data.score_fn(sde), probability_flow=True)
    x_T = sde.prior_sample(jax.random.PRNGKey(4), (2000, 3))
    num_steps = 500
    h = -sde.T / num_steps

    def rk4(x, i):
        t = sde.T + i * h
        k = lambda x_, s_: rev.drift_diffusion(  # noqa: E731
            x_, jnp.full(x.shape[:1], jnp.maximum(s_, 0.0)))[0]
        k1 = k(x, t)
        k2 = k(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = k(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = k(x + h * k3, t + h)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

    x_0, _ = jax.lax.scan(rk4, x_T, jnp.arange(num_steps))
    (a0, s0), (aT, sT) = CASES[case][1](np.array(0.0)), CASES[case][1](np.array(sde.T))
    v0, vT = a0**2 * s**2 + s0**2, aT**2 * s**2 + sT**2
    want = a0 * m + np.sqrt(v0 / vT) * (np.asarray(x_T, np.float64) - aT * m)
    np.testing.assert_allclose(x_0, want, rtol=1e-3, atol=1e-3 * np.sqrt(v0))
    # And the pushed-forward prior is N(m, s^2) up to the prior/terminal-marginal gap.
    assert abs(float(jnp.std(x_0)) - s) < 0.05 * s
    assert abs(float(jnp.mean(x_0)) - m) < 0.05


def test_reverse_sde_drift_formula():
    sde = sdes.make("vp")
    score = lambda x, t: -x  # noqa: E731
    x = jnp.ones((2, 3))
    t = jnp.asarray([0.2, 0.7])
    f, g = sde.drift_diffusion(x, t)
    drift, g_rev = sdes.reverse(sde, score).drift_diffusion(x, t)
    np.testing.assert_allclose(drift, f + (g**2)[:, None] * x, rtol=1e-6)
    np.testing.assert_allclose(g_rev, g)
    drift_pf, g_pf = sdes.reverse(sde, score, probability_flow=True).drift_diffusion(x, t)
    np.testing.assert_allclose(drift_pf, f + 0.5 * (g**2)[:, None] * x, rtol=1e-6)
    np.testing.assert_allclose(g_pf, 0.0)


def test_defaults_are_score_sde_cifar10_values():
    vp, subvp, ve = sdes.make("vp"), sdes.make("subvp"), sdes.make("ve")
    assert (vp.beta_min, vp.beta_max, vp.T, vp.t_min) == (0.1, 20.0, 1.0, 1e-3)
    assert (subvp.beta_min, subvp.beta_max, subvp.t_min) == (0.1, 20.0, 1e-3)
    assert (ve.sigma_min, ve.sigma_max, ve.T, ve.t_min) == (0.01, 50.0, 1.0, 1e-5)


@pytest.mark.parametrize("name, kwargs, match", [
    ("vpp", {}, r"unknown sde 'vpp'; available: \['cosine_vp', 'edm', 'flow', 'subvp', 'vdm', "
     r"'ve', 'vp'\]"),
    ("vp", {"beta_min": 5.0, "beta_max": 1.0}, "beta_min < beta_max"),
    ("subvp", {"beta_min": 20.0, "beta_max": 20.0}, "beta_min < beta_max"),
    ("ve", {"sigma_min": 0.0}, "0 < sigma_min"),
    ("ve", {"sigma_min": 60.0}, "sigma_min < sigma_max"),
    ("vp", {"t_min": 2.0}, "t_min < T"),
    ("vp", {"sigma_max": 3.0}, r"unknown option\(s\) \['sigma_max'\]; valid options"),
    ("vp", {"beta_max": float("inf")}, "beta_max < inf"),
    ("cosine_vp", {"log_snr_min": 3.0, "log_snr_max": 1.0}, "log_snr_min < log_snr_max"),
    ("cosine_vp", {"s": -0.1}, "cosine_vp: need finite s >= 0 .* got s=-0.1"),
    ("cosine_vp", {"log_snr_min": -1.0}, "cosine_vp: log_snr_min=-1.0 must be below"),
    ("cosine_vp", {"log_snr_max": 2.0}, "cosine_vp: log_snr_max=2.0 must be above"),
    ("cosine_vp", {"log_snr_max": -30.0}, "log_snr_min < log_snr_max"),
    ("edm", {"sigma_max": 0.001}, "edm: need 0 < sigma_min < sigma_max"),
    ("edm", {"rho": 0.0}, "edm: need finite rho > 0"),
    ("flow", {"T": 1.0}, r"flow: need 0 < t_min < T < 1 \(alpha = 1 - t vanishes"),
])
def test_make_rejects_bad_input(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sdes.make(name, **kwargs)


def test_rank_promotion_is_an_error_in_tests():
    with pytest.raises(ValueError):
        _ = jnp.ones((3,)) + jnp.ones((2, 3))


def test_cosine_vp_is_nichol_dhariwal_eq17_in_float64():
    """alpha_bar = mean_coeff^2 equals eq. 17 with s = 0.008 in float64 on [0, t_b] (1 - t_b
    = 7.9e-5; checked on [0, 1 - 1e-4]) and the log-SNR is exactly -20 at T: finite, so
    the prior N(0, I) is the marginal at T to sigmoid(-20) = 2e-9."""
    s = 0.008
    t = np.concatenate([np.linspace(0.0, 1 - 1e-4, 2001), [1e-7, 1e-3, 0.5, 0.999]])
    with jax.enable_x64(True):
        sde = sdes.make("cosine_vp")
        mean, std = (np.asarray(v) for v in sde.marginal(jnp.asarray(t)))
        ends = np.asarray(sde.log_snr(jnp.asarray([0.0, 1.0])))
        beta0 = float(sde.beta(jnp.float64(0.0)))
        assert mean.dtype == np.float64
    want = _cosine_abar(t, s)
    np.testing.assert_allclose(mean**2, want, rtol=1e-12, atol=0)
    np.testing.assert_allclose(std**2, 1 - want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ends, [np.inf, -20.0], rtol=1e-12)
    # beta(0) = -d log abar / dt at 0 = pi / (1 + s) tan(pi s / (2 (1 + s))).
    np.testing.assert_allclose(beta0, np.pi / (1 + s) * np.tan(np.pi * s / (2 + 2 * s)),
                               rtol=1e-12)
    assert sde.s == 0.008 and sde.log_snr_max is None


def test_cosine_vp_discrete_chain_is_nichol_dhariwal():
    """`discretize` on the 1000-step grid gives Nichol & Dhariwal's betas:
    beta_i = min(1 - abar(i / N) / abar((i - 1) / N), 0.999) from eq. 17 (their
    betas_for_alpha_bar), the last one clipped; the first is 4.13e-5 (2.6e-6 with s = 0)."""
    n = 1000
    i = np.arange(1, n + 1)
    want = np.minimum(1 - _cosine_abar(i / n, 0.008) / _cosine_abar((i - 1) / n, 0.008), 0.999)
    with jax.enable_x64(True):
        sde = sdes.make("cosine_vp")
        f, g = sde.discretize(jnp.ones((n, 1)), jnp.asarray(i / n), 1.0 / n)
        f, g = np.asarray(f)[:, 0], np.asarray(g)
    np.testing.assert_allclose(g**2, want, rtol=1e-10)
    np.testing.assert_allclose(f, np.sqrt(1 - want) - 1, rtol=1e-10)
    assert want[-1] == 0.999 and abs(want[0] - 4.128e-5) < 1e-8
