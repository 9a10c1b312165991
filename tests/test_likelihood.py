"""Probability-flow likelihood and bits/dim against closed forms.

With the exact score of a Gaussian mixture, the PF-ODE log-density is exact up to the solver
and the prior gap: log_likelihood(x) = log p_{t_min}(x) - [log p_T(z) - prior_logp(z)],
z = x_T. Both log p_{t_min} and the gap are computed here in float64 NumPy/SciPy from the
closed-form marginals of test_sdes.CASES (p_t = sum_k w_k N(a mu_k, a^2 s_k^2 + std^2)), so the
tests measure the solver and the divergence estimators alone. Everything runs in float32:
at rtol = atol = 1e-5 the solver error (about 1e-5 nats/dim with the default max error norm)
is far above float32 round-off, so float64 is not needed.

Monte-Carlo tolerances: Hutchinson means are compared within 3 standard errors (SE from the
sample of 512 independent probes) plus the 1e-4 nats/dim solver allowance; bits/dim of a
dequantized data set within 4 SE of the dequantization noise, whose variance is integrated
exactly (polynomial moments of u ~ U[0, 1)).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from sde_lab import likelihood, sdes
from sde_lab.analytic import GaussianMixture
from test_sdes import CASES

SDE_NAMES = ["vp", "subvp", "ve", "edm", "flow"]
PRIOR_STD = {"vp": 1.0, "subvp": 1.0, "ve": 50.0, "edm": 80.0, "flow": 0.999}
T_MIN = 1e-5
TOL_PER_DIM = 1e-4


@functools.lru_cache(maxsize=None)
def _setup(case: str, dim: int):
    """(sde, mixture, exact score), cached: one score object per case, so compiled solves are
    reused across tests (the likelihood's jit cache is keyed on the score function)."""
    sde, gm = sdes.make(case), _mixture(dim)
    return sde, gm, gm.score_fn(sde)


def _mixture(dim: int) -> GaussianMixture:
    """Zero-mean, unit-order mixtures: the prior gap is negligible, the score is not linear."""
    if dim == 2:
        return GaussianMixture.create([[0.6, 0.3], [-0.6, -0.3], [0.0, 0.0]],
                                      [[0.3, 0.2], [0.2, 0.3], [0.25, 0.25]], [0.3, 0.3, 0.4])
    rng = np.random.default_rng(0)
    half = rng.choice([-0.4, 0.4], size=(2, dim))
    return GaussianMixture.create(np.concatenate([half, -half]), rng.uniform(0.2, 0.4, (4, dim)))


def _logp64(gm: GaussianMixture, case: str, x, t: float) -> np.ndarray:
    """log p_t(x) in float64 from the closed-form marginal of test_sdes.CASES: [B]."""
    a, std = (float(v) for v in CASES[case][1](np.float64(t)))
    x = np.asarray(x, np.float64)[:, None, :]                             # [B, 1, D]
    var = a**2 * gm.stds[None] ** 2 + std**2                              # [1, K, D]
    log_n = -0.5 * np.sum((x - a * gm.means[None]) ** 2 / var + np.log(2 * np.pi * var), -1)
    return special.logsumexp(np.log(gm.weights)[None] + log_n, axis=-1)


def _prior_gap64(gm, case, z) -> np.ndarray:
    """log p_T(z) - log N(z; 0, prior_std^2 I) in float64: [B]."""
    z = np.asarray(z, np.float64)
    s = PRIOR_STD[case]
    prior = -0.5 * np.sum(z**2, -1) / s**2 - 0.5 * z.shape[-1] * np.log(2 * np.pi * s**2)
    return _logp64(gm, case, z, sdes.make(case).T) - prior


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("case", SDE_NAMES)
def test_exact_estimator_matches_analytic_density(case, dim):
    sde, gm, score = _setup(case, dim)
    x = gm.sample(jax.random.PRNGKey(dim), 32)
    logp, stats = likelihood.log_likelihood(jax.random.PRNGKey(0), sde, score, x,
                                            estimator="exact", rtol=1e-5, atol=1e-5, t_min=T_MIN)
    assert logp.shape == (32,) and logp.dtype == jnp.float32 and stats["estimator"] == "exact"
    gap = _prior_gap64(gm, case, stats["z"])
    # Zero-mean, unit-order data: the gap is small (VE: ~ tr(Cov)/(2 sigma_max^2) per dim
    # times a chi-square fluctuation), and it is subtracted exactly below.
    assert np.max(np.abs(gap)) < 1e-3 * dim
    want = _logp64(gm, case, x, T_MIN) - gap
    np.testing.assert_allclose(logp, want, rtol=0, atol=TOL_PER_DIM * dim)
    np.testing.assert_allclose(stats["prior_logp"] + stats["delta_logp"], logp, rtol=1e-6)


def test_prior_gap_of_an_off_centre_mixture_is_what_the_method_misses():
    """With little noise at T (beta_max = 5) and data centred at 2, p_T is far from N(0, I):
    the result is off by the analytic gap, and exact once the gap is added back."""
    sde = sdes.make("vp", beta_max=5.0)
    gm = GaussianMixture.create([[2.0, 2.5], [2.5, 1.5]], 0.3)
    x = gm.sample(jax.random.PRNGKey(3), 16)
    logp, stats = likelihood.log_likelihood(jax.random.PRNGKey(0), sde, gm.score_fn(sde), x,
                                            estimator="exact")
    z = np.asarray(stats["z"], np.float64)
    # Independent float64 evaluation with this SDE's closed form B(t) = 0.1 t + 2.45 t^2.
    def logp_t(pts, t):
        b = 0.1 * t + 2.45 * t**2
        a, var_t = math.exp(-b / 2), -math.expm1(-b)
        var = a**2 * gm.stds[None] ** 2 + var_t
        ln = -0.5 * np.sum((np.asarray(pts, np.float64)[:, None] - a * gm.means[None]) ** 2 / var
                           + np.log(2 * np.pi * var), -1)
        return special.logsumexp(np.log(gm.weights)[None] + ln, axis=-1)
    gap = logp_t(z, 1.0) - (-0.5 * np.sum(z**2, -1) - np.log(2 * np.pi))
    want = logp_t(x, T_MIN)
    assert np.min(np.abs(gap)) > 0.1  # a real bias, far above the solver tolerance ...
    np.testing.assert_allclose(logp, want - gap, atol=TOL_PER_DIM * 2)  # ... and all of it


@functools.lru_cache(maxsize=None)
def _hutchinson_sample(case, noise, num_probes=1, n=512, dim=16):
    sde, gm, score = _setup(case, dim)
    x = gm.sample(jax.random.PRNGKey(5), 1)
    # Each row of the batch is the same point with its own probes: n independent estimates.
    logp, _ = likelihood.log_likelihood(jax.random.PRNGKey(1), sde, score,
                                        jnp.broadcast_to(x, (n, dim)), noise=noise,
                                        num_probes=num_probes)
    exact, _ = likelihood.log_likelihood(jax.random.PRNGKey(1), sde, score, x, estimator="exact")
    return np.asarray(logp, np.float64), float(exact[0])


# The Hutchinson estimator's bias does not depend on the SDE (its trajectory is the exact
# estimator's): three SDEs suffice; every SDE's density is checked by the exact test above.
@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
@pytest.mark.parametrize("case", ["vp", "subvp", "ve"])
def test_hutchinson_is_unbiased(case, noise):
    samples, exact = _hutchinson_sample(case, noise)
    se = samples.std(ddof=1) / math.sqrt(samples.size)
    assert se > 1e-3  # the estimator is really random here (the Jacobian is not diagonal)
    assert abs(samples.mean() - exact) <= 3 * se + TOL_PER_DIM * 16


def test_more_probes_divide_the_variance():
    """Var(mean of 4 probes) = Var(1 probe) / 4; with 512 samples each, the ratio of sample
    variances has relative SD sqrt(2 * 2 / 511) ~ 9%, so [0.7, 1.4] x 4 is a 4-SD band."""
    one, _ = _hutchinson_sample("vp", "gaussian")
    four, _ = _hutchinson_sample("vp", "gaussian", num_probes=4)
    ratio = one.var(ddof=1) / four.var(ddof=1)
    assert 0.7 * 4 < ratio < 1.4 * 4


@pytest.mark.parametrize("num_probes", [1, 3])
def test_hutchinson_divergence_is_the_probe_quadratic_form(num_probes):
    """One probe takes a path without vmap, several a vmapped one: both must give
    mean_p eps_p^T A_b eps_p for a linear map with a different matrix A_b per example."""
    rng = np.random.default_rng(0)
    mats = rng.normal(size=(2, 6, 6)).astype(np.float32)          # [B, D, D]
    probes = rng.choice([-1.0, 1.0], size=(num_probes, 2, 2, 3)).astype(np.float32)
    jvp_fn = lambda v: jnp.einsum("bij,bj->bi", mats, v.reshape(2, 6)).reshape(v.shape)  # noqa: E731
    flat = probes.reshape(num_probes, 2, 6).astype(np.float64)
    want = np.einsum("pbi,bij,pbj->b", flat, mats.astype(np.float64), flat) / num_probes
    got = likelihood._hutchinson_div(jvp_fn, jnp.asarray(probes))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("solver", ["tsit5", "dopri5"])
def test_nfe_counts_every_drift_evaluation(solver):
    calls = []
    sde, gm = sdes.make("ve"), _mixture(2)
    exact_score = gm.score_fn(sde)

    def score(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return exact_score(x, t)

    x = gm.sample(jax.random.PRNGKey(0), 4)
    _, stats = likelihood.log_likelihood(jax.random.PRNGKey(0), sde, score, x,
                                         solver=solver, rtol=1e-3, atol=1e-3)
    jax.effects_barrier()
    assert int(stats["nfe"]) == len(calls) > 0
    assert int(stats["nfe"]) == 6 * int(stats["num_steps"]) + 1


def test_traceable_under_jit_with_the_solve_in_graph():
    sde, gm, score = _setup("vp", 2)
    x = gm.sample(jax.random.PRNGKey(2), 32)   # the eager call reuses an earlier compilation

    def fn(key, x):
        logp, stats = likelihood.log_likelihood(key, sde, score, x, estimator="exact")
        return logp, stats["nfe"]

    jaxpr = str(jax.make_jaxpr(fn)(jax.random.PRNGKey(0), x))
    assert "while" in jaxpr
    jit_logp, _ = jax.jit(fn)(jax.random.PRNGKey(0), x)
    eager_logp, _ = fn(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(jit_logp, eager_logp, rtol=1e-6)


def test_parameters_in_a_partial_are_traced_not_baked_in():
    """An eval runner passes jax.tree_util.Partial(score, params): new params, no retrace."""
    traces = []
    sde, gm = sdes.make("vp"), _mixture(2)
    exact_score = gm.score_fn(sde)

    def score(scale, x, t):
        traces.append(1)  # runs only while tracing
        return scale * exact_score(x, t)

    x = gm.sample(jax.random.PRNGKey(0), 4)
    out = []
    for scale in (1.0, 0.5):
        fn = jax.tree_util.Partial(score, jnp.float32(scale))
        out.append(likelihood.log_likelihood(jax.random.PRNGKey(0), sde, fn, x, "exact")[0])
    n_traces = len(traces)
    likelihood.log_likelihood(jax.random.PRNGKey(0), sde,
                              jax.tree_util.Partial(score, jnp.float32(2.0)), x, "exact")
    assert len(traces) == n_traces
    assert np.all(np.abs(np.asarray(out[0]) - np.asarray(out[1])) > 1e-3)


def test_a_new_tolerance_does_not_retrace():
    """rtol/atol are traced: a tolerance sweep compiles the solve once per norm."""
    traces = []
    sde, gm = sdes.make("vp"), _mixture(2)
    exact_score = gm.score_fn(sde)

    def score(x, t):
        traces.append(1)  # runs only while tracing
        return exact_score(x, t)

    x = gm.sample(jax.random.PRNGKey(0), 4)
    stats = {}
    for tol in (1e-3, 1e-6):
        logp, stats[tol] = likelihood.log_likelihood(jax.random.PRNGKey(0), sde, score, x,
                                                     "exact", rtol=tol, atol=tol)
        if tol == 1e-3:
            n_traces = len(traces)
    assert len(traces) == n_traces > 0
    # The tolerance reaches the controller: the tighter solve takes more steps and lands
    # on the float64 marginal.
    assert int(stats[1e-6]["num_steps"]) > 2 * int(stats[1e-3]["num_steps"])
    want = _logp64(gm, "vp", x, T_MIN) - _prior_gap64(gm, "vp", stats[1e-6]["z"])
    np.testing.assert_allclose(logp, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"estimator": "skilling"},
     r"unknown estimator 'skilling'; available: \['hutchinson', 'exact'\]"),
    ({"solver": "rk45"}, r"unknown solver 'rk45'; available: \['dopri5', 'tsit5'\]"),
    ({"noise": "uniform"}, r"unknown noise 'uniform'; available: \['rademacher', 'gaussian'\]"),
    ({"error_norm": "l1"}, r"unknown error_norm 'l1'; available: \['max', 'rms'\]"),
    ({"num_probes": 0}, "num_probes"),
    ({"rtol": 0.0}, "rtol"),
    ({"atol": -1e-5}, "atol"),
    ({"t_min": 1.0}, "t_min"),
    ({"t_min": 0.0}, "t_min"),
    ({"max_steps": 0}, "max_steps"),
])
def test_bad_options_fail_before_tracing(kwargs, match):
    def score(x, t):
        raise AssertionError("validation must happen before tracing")

    with pytest.raises(ValueError, match=match):
        likelihood.log_likelihood(jax.random.PRNGKey(0), sdes.make("vp"), score,
                                  jnp.zeros((2, 3)), **kwargs)


# ---------------------------------------------------------------------------------------
# bits/dim
# ---------------------------------------------------------------------------------------

class _Scaler:
    """The data-module interface: levels k and noise u -> model input 2 (k + u) / L - 1."""

    def __init__(self, num_levels, centered=True):
        self.num_levels, self.centered = num_levels, centered

    def to_model(self, k, u):
        y = (np.asarray(k, np.float32) + u) / self.num_levels
        return (2 * y - 1 if self.centered else y).astype(np.float32)


@pytest.mark.parametrize("num_levels", [256, 17, 2])
@pytest.mark.parametrize("scaler, low, high", [
    (None, 0.0, 1.0),                       # model sees y in [0, 1]
    (lambda y: 2 * y - 1, -1.0, 1.0),       # score_sde's centered scaler
    (lambda y: 255 * y, 0.0, 255.0),        # raw pixel units
    (lambda y: 1 - 2 * y, -1.0, 1.0),       # orientation does not matter
])
def test_uniform_density_on_the_data_cube_gives_log2_levels(num_levels, scaler, low, high):
    """p uniform on the model-input image of [0,1]^D: each level has probability 1/L, so the
    dequantized bound is tight, bpd = log2 L exactly."""
    shape = (3, 4, 2)
    dim = math.prod(shape)
    logp = jnp.full((5,), -dim * math.log(high - low))
    np.testing.assert_allclose(likelihood.bits_per_dim(logp, shape, num_levels, scaler),
                               math.log2(num_levels), rtol=1e-6)


def test_bits_per_dim_offsets_match_score_sde():
    """score_sde adds log2(d inverse_scaler / dx) + 8 to -logp / (D ln 2): 7 for data scaled
    to [-1, 1], 8 for [0, 1]."""
    logp = jax.random.uniform(jax.random.PRNGKey(0), (6,), minval=-9000.0, maxval=3000.0)
    base = -np.asarray(logp, np.float64) / (3072 * math.log(2))
    for scaler, offset in [(None, 8.0), (_Scaler(256, centered=False), 8.0),
                           (_Scaler(256), 7.0), (lambda y: 2 * y - 1, 7.0)]:
        np.testing.assert_allclose(likelihood.bits_per_dim(logp, (32, 32, 3), 256, scaler),
                                   base + offset, rtol=1e-6)
    # 17 levels (sklearn digits) on [-1, 1]: log2 17 - 1.
    np.testing.assert_allclose(likelihood.bits_per_dim(logp, (8, 8, 1), 17, _Scaler(17)),
                               -np.asarray(logp, np.float64) / (64 * math.log(2))
                               + math.log2(17) - 1, rtol=1e-6)


@pytest.mark.parametrize("num_levels", [256, 17])
def test_discrete_and_dequantized_bits_agree_on_the_uniform_model(num_levels):
    """P(k) = L^-D (discrete) and the uniform density on [-1, 1]^D (dequantized, scaled) are
    the same model: both conventions must give log2 L, so VLB and PF-ODE columns compare."""
    shape = (4, 4, 3)
    dim = math.prod(shape)
    discrete = likelihood.discrete_bits_per_dim(jnp.full((3,), -dim * math.log(num_levels)),
                                                shape)
    continuous = likelihood.bits_per_dim(jnp.full((3,), -dim * math.log(2.0)), shape,
                                         num_levels, _Scaler(num_levels))
    np.testing.assert_allclose(discrete, math.log2(num_levels), rtol=1e-6)
    np.testing.assert_allclose(continuous, discrete, rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_levels": 1}, "num_levels"),
    ({"num_levels": 2.5}, "num_levels"),
    ({"scaler": lambda y: y**2}, "affine"),
    ({"scaler": lambda y: 0 * y}, "affine"),
    ({"scaler": "centered"}, "scaler"),
])
def test_bits_per_dim_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        likelihood.bits_per_dim(jnp.zeros(2), (4,), **{"num_levels": 256, **kwargs})


def _poly_moments(d, e):
    """E and Var over u ~ U[0,1) of (d + e u)^2, elementwise, by exact polynomial moments."""
    m2 = d**2 + d * e + e**2 / 3
    m4 = d**4 + 2 * d**3 * e + 2 * d**2 * e**2 + d * e**3 + e**4 / 5
    return m2, m4 - m2**2


@pytest.mark.parametrize("split, pad_to", [(48, None), (56, 56)])
def test_dataset_bits_per_dim_matches_closed_form(split, pad_to):
    """Gaussian model N(0, s^2 I) in [-1, 1] space, 17 levels, D = 4, exact score under VP.

    For x = c + e u (c = 2k/L - 1, e = 2/L), with p_{t_min} = N(0, v I),
    E_u[-log p(x)] = D/2 log(2 pi v) + sum_i E[(c_i + e u)^2] / (2 v), and its variance over u
    is the sum of the Var[(c_i + e u)^2] / (4 v^2): both exact. bpd adds log2 L - log2 2.
    With pad_to, batches of 56 and 40 (+ 16 padding copies) are one shape: one trace, and
    the copies' values are dropped (the mean and SE are over the 96 real examples).
    """
    num_levels, s, shape, n, passes = 17, 0.5, (2, 2), 96, 5
    dim, sde = math.prod(shape), sdes.make("vp")
    gm = GaussianMixture.create([[0.0] * dim], [s])
    levels = np.random.default_rng(0).integers(0, num_levels, (n,) + shape)
    batches = [levels[:split], levels[split:]]
    traced_shapes = set()

    def score(x, t):
        traced_shapes.add(x.shape)
        return gm.score_fn(sde)(x.reshape(x.shape[0], -1), t).reshape(x.shape)

    out = likelihood.dataset_bits_per_dim(
        jax.random.PRNGKey(0), sde, score, iter(batches), scaler=_Scaler(num_levels),
        num_passes=passes, pad_to=pad_to, estimator="exact")
    assert traced_shapes == {(split,) + shape} if pad_to else len(traced_shapes) == 1

    a, std = (float(v) for v in CASES["vp"][1](np.float64(T_MIN)))
    var = a**2 * s**2 + std**2
    c = (2.0 * levels / num_levels - 1.0).reshape(n, dim)
    m2, v2 = _poly_moments(c, 2.0 / num_levels)
    nats = 0.5 * dim * np.log(2 * np.pi * var) + m2.sum(-1) / (2 * var)            # [n]
    to_bits = 1 / (dim * math.log(2))
    want = nats.mean() * to_bits + math.log2(num_levels) - 1.0
    deq_sd = math.sqrt((v2.sum(-1) / (4 * var**2)).sum() / passes) / n * to_bits
    # Solver and prior-gap allowance: 1e-4 nats/dim each, in bits.
    assert abs(out["bpd"] - want) < 4 * deq_sd + 2 * TOL_PER_DIM / math.log(2)
    assert out["num_examples"] == n and out["num_passes"] == passes and out["nfe"] > 0
    # SE over examples: the spread of the per-example expectations dominates it.
    se_want = nats.std(ddof=1) * to_bits / math.sqrt(n)
    assert 0.75 < out["bpd_se"] / se_want < 1.3


@pytest.mark.parametrize("batches, kwargs, match", [
    ([np.full((2, 3), 0.5)], {}, "integers"),
    ([np.full((2, 3), 17)], {"num_levels": 17}, r"integers in \[0, 16\]"),
    ([np.zeros((2, 3), np.int32)], {"num_levels": 256, "scaler": _Scaler(17)}, "disagrees"),
    ([np.zeros((2, 3), np.int32)], {"num_passes": 0}, "num_passes"),
    ([np.zeros((2, 3), np.int32)], {"rtl": 1e-3}, r"unknown log_likelihood options \['rtl'\]"),
    ([np.zeros((2, 3), np.int32)], {"estimator": "nope"}, "unknown estimator"),
    ([], {}, "empty"),
    ([np.zeros((2, 3), np.int32)], {"pad_to": 0}, "pad_to"),
    ([np.zeros((3, 3), np.int32)], {"pad_to": 2}, "more than pad_to=2"),
])
def test_dataset_bits_per_dim_bad_input(batches, kwargs, match):
    with pytest.raises(ValueError, match=match):
        likelihood.dataset_bits_per_dim(jax.random.PRNGKey(0), sdes.make("vp"),
                                        lambda x, t: -x, batches, **kwargs)
