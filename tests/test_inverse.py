"""Inverse problems with exact scores: Tweedie denoising against the closed-form posterior
mean, posterior sampling against the exact posterior's moments, inpainting (bit-exact
observations, exact conditionals for independent coordinates, the bias table on correlated
Gaussians), colorization, SDEdit's limits and bad input.

Expected values are float64 NumPy closed forms (Gaussian-mixture posteriors, Gaussian
conditionals); Monte-Carlo tolerances are Z_TOL standard errors, derived in each docstring.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_lab import inverse, sdes
from sde_lab.analytic import GaussianMixture

Z_TOL = 5.0   # P(|N(0,1)| > 5) = 5.7e-7 per statistic
GM = GaussianMixture.create([[-1.0, 0.0], [1.0, 0.5]], [[0.4, 0.3], [0.3, 0.5]], [0.4, 0.6])


def _jit_run(fn, seed=0):
    return jax.jit(fn)(jax.random.PRNGKey(seed))


def _mixture_moments(weights, means, variances):
    """Per-dimension mean, variance and 4th central moment of sum_k w_k N(m_k, v_k) (each
    [K, D]): E(x - mu)^4 = sum_k w_k [d_k^4 + 6 d_k^2 v_k + 3 v_k^2], d_k = m_k - mu."""
    mu = weights @ means
    d = means - mu
    var = weights @ (variances + d**2)
    m4 = weights @ (d**4 + 6 * d**2 * variances + 3 * variances**2)
    return mu, var, m4


def _check_mean_var(x, mu, var, m4):
    """Sample mean and (biased) variance of n draws per dimension within Z_TOL standard
    errors: SE(mean) = sqrt(var / n), SE(variance) = sqrt((m4 - var^2) / n) (the delta
    method; the O(1/n) bias of the variance, var / n, is far below it)."""
    n = x.shape[0]
    np.testing.assert_array_less(np.abs(x.mean(0) - mu), Z_TOL * np.sqrt(var / n))
    np.testing.assert_array_less(np.abs(x.var(0) - var), Z_TOL * np.sqrt((m4 - var**2) / n))


def _gm_posterior(y, noise_std):
    """Exact p(x_0 | y) for x_0 ~ GM, y = x_0 + s n: a mixture with weights
    w_k N(y; mu_k, s_k^2 + s^2), means mu_k + s_k^2 / (s_k^2 + s^2) (y - mu_k) and variances
    s_k^2 s^2 / (s_k^2 + s^2) (diagonal components). y: [B, D] -> ([B, K], [B, K, D] x2)."""
    v = GM.stds**2 + noise_std**2
    diff = y[:, None] - GM.means[None]
    logw = np.log(GM.weights) - 0.5 * np.sum(diff**2 / v + np.log(2 * np.pi * v), -1)
    w = np.exp(logw - logw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    means = GM.means[None] + GM.stds[None] ** 2 / v[None] * diff
    variances = np.broadcast_to(GM.stds**2 * noise_std**2 / v, means.shape)
    return w, means, variances


# ----------------------------------------------------------------------------------------
# Denoising and posterior sampling.


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_denoise_is_the_exact_posterior_mean(sde_name):
    """Tweedie with the exact score equals E[x_0 | y] in closed form at noise levels 0.05
    to 3 (scalar and per-example noise_std). Float32 rounding: the largest error measured
    was 2e-6 on values of size ~3; the tolerance is 2e-5."""
    sde = sdes.make(sde_name)
    rng = np.random.default_rng(0)
    y = 1.5 * rng.standard_normal((32, 2))
    levels = np.array([0.05, 0.3, 1.0, 3.0])
    per_example = np.repeat(levels, 8)
    score_fn = GM.score_fn(sde)
    got = jax.jit(lambda y, s: inverse.denoise(sde, score_fn, y, s))(
        jnp.asarray(y, jnp.float32), jnp.asarray(per_example, jnp.float32))
    for i, s in enumerate(levels):
        rows = slice(8 * i, 8 * i + 8)
        w, means, _ = _gm_posterior(y[rows], s)
        want = np.einsum("bk,bkd->bd", w, means)
        np.testing.assert_allclose(got[rows], want, atol=2e-5)
    scalar = inverse.denoise(sde, score_fn, jnp.asarray(y[:8], jnp.float32), 0.05)
    np.testing.assert_allclose(scalar, got[:8], atol=1e-6)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_posterior_sample_matches_the_exact_posterior(sde_name):
    """n = 2,000 posterior samples for one y between the two modes (the exact posterior is
    a two-component mixture with weights ~0.3 / 0.7 at noise 0.5) match its per-dimension
    mean and variance within 5 standard errors (`_check_mean_var`; 4 statistics per SDE).
    Ancestral sampling with 300 steps on [t_min, t_s]; its discretization bias (measured:
    < 0.04 relative on the variance with 500 steps and n = 4,000, i.e. within noise) is
    below one standard error of the variance (sqrt(2 / n) ~ 3% relative)."""
    sde = sdes.make(sde_name)
    n, noise_std, y0 = 2000, 0.5, np.array([0.1, 0.3])
    y = jnp.broadcast_to(jnp.asarray(y0, jnp.float32), (n, 2))
    x, stats = _jit_run(lambda key: inverse.posterior_sample(
        key, sde, GM.score_fn(sde), y, noise_std, sampler_options={"num_steps": 300}))
    mean_coeff, std = sde.marginal(stats["t_start"])
    np.testing.assert_allclose(std / mean_coeff, noise_std, rtol=1e-4)
    assert int(stats["nfe"]) == 301
    w, means, variances = _gm_posterior(y0[None], noise_std)
    _check_mean_var(np.asarray(x, np.float64), *_mixture_moments(w[0], means[0],
                                                                 variances[0]))


# ----------------------------------------------------------------------------------------
# Inpainting and colorization.

# Independent coordinates that are not Gaussian: x_1 ~ 0.5 N(-1, 0.3^2) + 0.5 N(1, 0.3^2),
# x_2 ~ 0.3 N(-1.2, 0.4^2) + 0.7 N(0.8, 0.4^2), as a 4-component product mixture.
_W1, _M1, _W2, _M2 = np.array([0.5, 0.5]), np.array([-1.0, 1.0]), np.array([0.3, 0.7]), \
    np.array([-1.2, 0.8])
PRODUCT = GaussianMixture.create(
    [[a, b] for a in _M1 for b in _M2], [[0.3, 0.4]],
    [wa * wb for wa in _W1 for wb in _W2])


@pytest.mark.parametrize("method, sde_name, per_example_mask, min_alpha", [
    ("replacement", "vp", False, 0.0), ("replacement", "ve", True, 0.0),
    ("guidance", "vp", True, 0.0), ("guidance", "vp", True, 0.1)])
def test_inpaint_independent_coordinates_is_exact(method, sde_name, per_example_mask,
                                                  min_alpha):
    """Observed x_1 = y (y from the data) is kept bit-exactly; the unobserved x_2, being
    independent of x_1, must follow its marginal mixture whatever y is: mean, variance
    (`_check_mean_var`) and the fraction above the midpoint -0.2 between its modes (within
    5 binomial standard errors sqrt(p (1 - p) / n); p is the exact fraction). n = 2,000,
    Euler-Maruyama with 200 steps (the samplers' moment tests use 250 at n = 4,000)."""
    sde = sdes.make(sde_name)
    n = 2000
    y = PRODUCT.sample(jax.random.PRNGKey(1), n).at[:, 1].set(jnp.nan)  # never read
    mask = jnp.array([1.0, 0.0])
    if per_example_mask:
        mask = jnp.broadcast_to(mask, (n, 2))
    x, stats = _jit_run(lambda key: inverse.inpaint(
        key, sde, PRODUCT.score_fn(sde), y, mask, method=method, sampler="euler_maruyama",
        sampler_options={"num_steps": 200}, guidance_min_alpha=min_alpha))
    x = np.asarray(x, np.float64)
    assert np.array_equal(x[:, 0], np.asarray(y[:, 0], np.float64))
    assert int(stats["nfe"]) == 201
    var2 = np.full(2, 0.4**2)
    mu, var, m4 = _mixture_moments(_W2, _M2[:, None], var2[:, None])
    _check_mean_var(x[:, 1:], mu, var, m4)
    from scipy.stats import norm
    p_high = float(_W2 @ norm.sf(-0.2, _M2, 0.4))
    assert abs(np.mean(x[:, 1] > -0.2) - p_high) < Z_TOL * math.sqrt(p_high * (1 - p_high) / n)


def test_guidance_is_off_exactly_where_alpha_is_below_guidance_min_alpha():
    """The guided score equals the plain score where alpha(t) < min_alpha (VP: alpha = 0.1
    at t = 0.68) and adds the reconstruction term elsewhere; out-of-range values fail."""
    sde = sdes.make("vp")
    score_fn = PRODUCT.score_fn(sde)
    y = jnp.array([[0.5, 0.0]])
    guided = inverse._guided_score(sde, score_fn, y, lambda v: v * jnp.array([[1.0, 0.0]]),
                                   1.0, 1.0, min_alpha=0.1)
    x = jnp.array([[0.3, -0.2]])
    for t, on in ((0.9, False), (0.7, False), (0.66, True), (0.3, True)):
        tt = jnp.full((1,), t)
        assert (float(sde.marginal(tt)[0][0]) >= 0.1) == on
        same = np.array_equal(np.asarray(guided(x, tt)), np.asarray(score_fn(x, tt)))
        assert same != on, t
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"inpaint: guidance_min_alpha must be in \[0, 1\)"):
            inverse.inpaint(jax.random.PRNGKey(0), sde, score_fn, y, jnp.array([1.0, 0.0]),
                            method="guidance", guidance_min_alpha=bad)


def _batched_gaussian_score(mean, cov, sde):
    """Exact score of N(mean_b, cov_b) per example b (mean [B, D], cov [B, D, D]) under sde."""
    def score(x, t):
        a, std = sde.marginal(t)
        cov_t = a[:, None, None] ** 2 * cov + std[:, None, None] ** 2 * jnp.eye(x.shape[1])[None]
        diff = x - a[:, None] * mean
        return -jnp.linalg.solve(cov_t, diff[..., None])[..., 0]

    return score


def test_inpaint_bias_on_correlated_gaussians():
    """N(0, [[1, rho], [rho, 1]]) with x_1 = y = 1.5 observed: the exact conditional of x_2
    is N(rho y, 1 - rho^2). n = 2,000 per rho, one batch holding rho = 0.5, 0.9, 0.99,
    Euler-Maruyama with 300 steps. Printed: each method's error in mean and std, in
    standard errors of the mean (sqrt((1 - rho^2) / n)). Replacement's bias must be
    visible (> 5 SE at every rho) and guidance's mean error smaller than replacement's."""
    sde = sdes.make("vp")
    rhos, n, y_obs = np.array([0.5, 0.9, 0.99]), 2000, 1.5
    rho = np.repeat(rhos, n)
    cov = np.stack([np.ones_like(rho), rho, rho, np.ones_like(rho)], 1).reshape(-1, 2, 2)
    score_fn = _batched_gaussian_score(jnp.zeros((rho.size, 2)), jnp.asarray(cov, jnp.float32),
                                       sde)
    y = jnp.tile(jnp.array([[y_obs, 0.0]], jnp.float32), (rho.size, 1))
    lines = [f"{'rho':>5} {'method':>12} {'mean':>7} {'exact':>7} {'err/SE':>7} "
             f"{'std':>6} {'exact':>6}"]
    errors = {}
    for method in ("replacement", "guidance"):
        x, _ = _jit_run(lambda key: inverse.inpaint(
            key, sde, score_fn, y, jnp.array([1.0, 0.0]), method=method,
            sampler="euler_maruyama", sampler_options={"num_steps": 300}))
        x2 = np.asarray(x[:, 1], np.float64).reshape(len(rhos), n)
        for r, xs in zip(rhos, x2):
            mean, std = r * y_obs, math.sqrt(1 - r**2)
            err = (xs.mean() - mean) / (std / math.sqrt(n))
            errors[method, r] = abs(err)
            lines.append(f"{r:5.2f} {method:>12} {xs.mean():7.3f} {mean:7.3f} {err:7.1f} "
                         f"{xs.std():6.3f} {std:6.3f}")
    print("\n" + "\n".join(lines))
    for r in rhos:
        assert errors["replacement", r] > Z_TOL
        assert errors["guidance", r] < errors["replacement", r]


def test_colorize_keeps_gray_and_samples_independent_colour():
    """Pixels x in R^3 ~ N(mu, I c + b 1 1^T): (1, 1, 1) is an eigenvector of the covariance,
    so the colour part (I - P) x is independent of the gray value and its conditional is its
    marginal N((I - P) mu, c (I - P)), where replacement is exact. Checks: channel mean =
    gray to float rounding (1e-5), colour mean and variance per channel within 5 SE
    (`_check_mean_var`, variance c (1 - 1/3), Gaussian m4 = 3 var^2). Gray is given with
    one channel ([B, 1], repeated to 3). n = 2,000, Euler-Maruyama with 200 steps."""
    sde = sdes.make("vp")
    n, c, b = 2000, 0.3, 0.5
    mu = np.array([0.5, -0.2, 0.1])
    cov = c * np.eye(3) + b * np.ones((3, 3))
    score_fn = _batched_gaussian_score(jnp.broadcast_to(jnp.asarray(mu, jnp.float32), (n, 3)),
                                       jnp.broadcast_to(jnp.asarray(cov, jnp.float32),
                                                        (n, 3, 3)), sde)
    gray = jnp.asarray(np.random.default_rng(2).normal(mu.mean(), 0.5, (n, 1)), jnp.float32)
    x, _ = _jit_run(lambda key: inverse.colorize(
        key, sde, score_fn, gray, sampler="euler_maruyama", sampler_options={"num_steps": 200}))
    x = np.asarray(x, np.float64)
    np.testing.assert_allclose(x.mean(1), np.asarray(gray[:, 0]), atol=1e-5)
    colour = x - x.mean(1, keepdims=True)
    var = np.full(3, c * (1 - 1 / 3))
    _check_mean_var(colour, mu - mu.mean(), var, 3 * var**2)


# ----------------------------------------------------------------------------------------
# SDEdit.


def test_sdedit_small_t0_returns_its_input():
    """As t0 -> 0 the edit tends to the guide: for guides drawn from the data the result is
    a sample of p(x_0 | x_{t0}), within a few sigma(t0) / alpha(t0) =: s of x_guide
    (the noise added, then a posterior spread of at most s). Bound 8 s over 2 x 500
    coordinates. t0 = 1e-4 is below t_min (one Tweedie step), t0 = 0.01 runs the sampler."""
    sde = sdes.make("vp")
    x_guide = GM.sample(jax.random.PRNGKey(3), 500)
    errors = []
    for t0 in (1e-4, 1e-2):
        x, stats = _jit_run(lambda key: inverse.sdedit(
            key, sde, GM.score_fn(sde), x_guide, t0, sampler_options={"num_steps": 50}))
        mean_coeff, std = sde.marginal(jnp.asarray(t0))
        errors.append(float(jnp.max(jnp.abs(x - x_guide))))
        assert errors[-1] < 8 * float(std / mean_coeff)
        assert int(stats["nfe"]) == (1 if t0 < sde.t_min else 51)
    assert errors[0] < errors[1]


def test_sdedit_mask_keeps_the_guide_exactly():
    """With a mask, entries marked 1 equal the guide bit-exactly; the others are edited."""
    sde = sdes.make("ve")
    x_guide = GM.sample(jax.random.PRNGKey(4), 64)
    x, _ = _jit_run(lambda key: inverse.sdedit(
        key, sde, GM.score_fn(sde), x_guide, 0.5, mask=jnp.array([0.0, 1.0]),
        sampler_options={"num_steps": 20}))
    assert np.array_equal(np.asarray(x[:, 1]), np.asarray(x_guide[:, 1]))
    assert np.all(np.asarray(x[:, 0]) != np.asarray(x_guide[:, 0]))


def test_sdedit_at_T_samples_the_data_distribution():
    """From t0 = T the guide's trace alpha(T) x_guide is 0.0067 x_guide (VP), negligible
    against sigma(T) = 1: whatever the guide (here a point off the data), the edits are
    samples of GM. Mean and variance per dimension (`_check_mean_var`, exact mixture
    moments) and the fraction nearest to the first mean (exact: Gaussian half-plane
    probabilities; 5 binomial SE) at n = 2,000, Euler-Maruyama with 200 steps."""
    sde = sdes.make("vp")
    n = 2000
    x_guide = jnp.full((n, 2), 1.5)
    x, _ = _jit_run(lambda key: inverse.sdedit(
        key, sde, GM.score_fn(sde), x_guide, sde.T, sampler_options={"num_steps": 200}))
    x = np.asarray(x, np.float64)
    _check_mean_var(x, *_mixture_moments(GM.weights, GM.means, GM.stds**2))
    # Nearest mean 0 <=> a.x < c with a = mu_1 - mu_0, c = (|mu_1|^2 - |mu_0|^2) / 2; under
    # component k, a.x ~ N(a.mu_k, sum_i a_i^2 s_ki^2).
    from scipy.stats import norm
    a = GM.means[1] - GM.means[0]
    c = 0.5 * (GM.means[1] @ GM.means[1] - GM.means[0] @ GM.means[0])
    p = float(GM.weights @ norm.cdf(c, GM.means @ a, np.sqrt(GM.stds**2 @ a**2)))
    first = np.mean(x @ a < c)
    assert abs(first - p) < Z_TOL * math.sqrt(p * (1 - p) / n)


# ----------------------------------------------------------------------------------------
# Bad input: one-line ValueErrors naming the argument, before tracing.


_SDE = sdes.make("vp")
_Y = jnp.zeros((4, 2))


@pytest.mark.parametrize("call, match", [
    (lambda: inverse.inpaint(jax.random.PRNGKey(0), _SDE, GM.score_fn(_SDE), _Y,
                             jnp.ones((3,))), r"inpaint: mask must have the shape"),
    (lambda: inverse.inpaint(jax.random.PRNGKey(0), _SDE, GM.score_fn(_SDE), _Y,
                             jnp.array([1.0, 0.5])), r"inpaint: mask must hold only 0 and 1"),
    (lambda: inverse.inpaint(jax.random.PRNGKey(0), _SDE, GM.score_fn(_SDE), _Y,
                             jnp.array([1.0, 0.0]), method="dps"), r"unknown method 'dps'"),
    (lambda: inverse.inpaint(jax.random.PRNGKey(0), _SDE, GM.score_fn(_SDE), _Y,
                             jnp.array([1.0, 0.0]), sampler="ode"),
     r"inpaint: sampler 'ode': unknown option\(s\) \['project_fn'\]"),
    (lambda: inverse.inpaint(jax.random.PRNGKey(0), _SDE, GM.score_fn(_SDE), _Y,
                             jnp.array([1.0, 0.0]),
                             sampler_options={"project_fn": lambda x, t, k: x}),
     r"sampler_options may not set \['project_fn'\]"),
    (lambda: inverse.sdedit(jax.random.PRNGKey(0), _SDE, GM.score_fn(_SDE), _Y, 0.0),
     r"sdedit: t0 must be in \(0, T\]"),
    (lambda: inverse.sdedit(jax.random.PRNGKey(0), _SDE, GM.score_fn(_SDE), _Y, 1.5),
     r"sdedit: t0 must be in \(0, T\]"),
    (lambda: inverse.sdedit(jax.random.PRNGKey(0), _SDE, GM.score_fn(_SDE), _Y, 0.5,
                            mask=jnp.ones((4, 3))), r"sdedit: mask must have the shape"),
    (lambda: inverse.denoise(_SDE, GM.score_fn(_SDE), _Y, 0.0),
     r"denoise: noise_std must be > 0"),
    (lambda: inverse.denoise(_SDE, GM.score_fn(_SDE), _Y, jnp.array([0.1, -1.0, 0.1, 0.1])),
     r"denoise: noise_std must be > 0"),
    (lambda: inverse.denoise(sdes.make("ve"), GM.score_fn(_SDE), _Y, 0.001),
     r"noise_std must lie within the SDE's noise levels"),
    (lambda: inverse.denoise(_SDE, GM.score_fn(_SDE), _Y, jnp.ones(3)),
     r"noise_std must be a scalar or of shape \[4\]"),
    (lambda: inverse.posterior_sample(jax.random.PRNGKey(0), _SDE, GM.score_fn(_SDE), _Y,
                                      -0.1), r"posterior_sample: noise_std must be > 0"),
    (lambda: inverse.posterior_sample(jax.random.PRNGKey(0), _SDE, GM.score_fn(_SDE), _Y,
                                      0.1, sampler="dpm_solver++"),
     r"sampler 'dpm_solver\+\+' does not sample the reverse SDE's conditionals"),
    (lambda: jax.jit(lambda t0: inverse.sdedit(jax.random.PRNGKey(0), _SDE, GM.score_fn(_SDE),
                                               _Y, t0))(0.5),
     r"sdedit: t0 must be a concrete number"),
    (lambda: inverse.colorize(jax.random.PRNGKey(0), _SDE, GM.score_fn(_SDE), jnp.zeros(4)),
     r"colorize: gray must be \[B, ...\]"),
])
def test_bad_input_is_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
