"""VDM: score network, learned noise schedule, learned-schedule SDE and the VLB loss.

References are independent of the code under test: a float64 NumPy re-derivation of the
schedule network, closed forms of the VP marginals (std^2 = sigmoid(gamma)), the layer
arithmetic of the official CIFAR-10 network, and the analytic diffusion loss of Gaussian
data with its exact score.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

import test_sdes
from sde_lab import losses, models, parameterization, schedules, sdes
from sde_lab.analytic import GaussianMixture

# ---------------------------------------------------------------- schedule reference


def np_schedule(params, t):
    """gamma(t) and d gamma / dt of `NoiseSchedule` in float64, written from its formula."""
    p = {k: np.asarray(v, np.float64) for k, v in params["params"].items()}
    w1, w2, b2, w3 = abs(p["w1"][0, 0]), abs(p["w2"][0]), p["b2"][0], abs(p["w3"][:, 0])
    n = w2.shape[0]

    def g_tilde(s):
        sig = special.expit(np.multiply.outer(2 * s - 1, w2) + b2)
        return w1 * s + (2 * sig - 1) @ w3 / n, w1 + (2 * sig * (1 - sig) * 2 * w2) @ w3 / n

    t = np.asarray(t, np.float64)
    g, dg = g_tilde(t)
    g0, g1 = g_tilde(np.array(0.0))[0], g_tilde(np.array(1.0))[0]
    scale = abs(p["delta"]) / (g1 - g0)
    return p["gamma_0"] + scale * (g - g0), scale * dg


def random_schedule(seed, num_features=1024, gamma_min=-13.3, gamma_max=5.0,
                    endpoints=False):
    """NoiseSchedule params with every inner weight drawn at random (of either sign: the
    network takes abs) and, with endpoints=True, random endpoints too. Built directly (no
    init: faster), in the layout that `init` gives (checked with eval_shape)."""
    schedule = schedules.NoiseSchedule(gamma_min, gamma_max, num_features)
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    gamma_0, delta = gamma_min, gamma_max - gamma_min
    if endpoints:
        gamma_0 = jax.random.uniform(k[4], (), minval=-15.0, maxval=-5.0)
        delta = jax.random.uniform(k[5], (), minval=5.0, maxval=20.0) * (-1.0) ** seed
    params = {"params": {
        "gamma_0": jnp.asarray(gamma_0, jnp.float32), "delta": jnp.asarray(delta, jnp.float32),
        "w1": jax.random.normal(k[0], (1, 1)),
        "w2": 3.0 * jax.random.normal(k[1], (1, num_features)),
        "b2": 3.0 * jax.random.normal(k[2], (1, num_features)),
        "w3": 3.0 * jax.random.normal(k[3], (num_features, 1))}}
    layout = jax.eval_shape(schedule.init, jax.random.PRNGKey(0), jnp.zeros(1))
    assert jax.tree_util.tree_map(jnp.shape, params) == jax.tree_util.tree_map(
        lambda v: v.shape, layout)
    return schedule, params


@pytest.mark.parametrize("seed, num_features", [(0, 1024), (1, 1024), (2, 16), (3, 1)])
def test_schedule_is_monotone_with_exact_endpoints(seed, num_features):
    schedule, params = random_schedule(seed, num_features, endpoints=True)
    t = jnp.linspace(0.0, 1.0, 2001)
    gamma = np.asarray(schedule.apply(params, t))
    assert np.all(np.diff(gamma) > 0)
    gamma_0 = np.float32(params["params"]["gamma_0"])
    assert gamma[0] == gamma_0
    assert gamma[-1] == np.float32(gamma_0 + abs(np.float32(params["params"]["delta"])))
    want, _ = np_schedule(params, np.asarray(t, np.float64))
    np.testing.assert_allclose(gamma, want, rtol=1e-5, atol=2e-5)
    # Scalars and other shapes go through unchanged.
    assert schedule.apply(params, jnp.asarray(1.0)).shape == ()
    assert schedule.apply(params, t.reshape(3, 667)).shape == (3, 667)


def test_schedule_starts_at_the_configured_endpoints():
    schedule = schedules.NoiseSchedule(gamma_min=-13.3, gamma_max=5.0)
    params = schedule.init(jax.random.PRNGKey(3), jnp.zeros(1))
    gamma = schedule.apply(params, jnp.asarray([0.0, 1.0]))
    np.testing.assert_allclose(gamma, [-13.3, 5.0], rtol=1e-6)
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):
        schedules.NoiseSchedule(gamma_min=5.0, gamma_max=1.0).init(jax.random.PRNGKey(0), jnp.zeros(1))


# ---------------------------------------------------------------- SDE contract

SCHEDULE, SCHEDULE_PARAMS = random_schedule(seed=7, num_features=64)


def _vp_closed_forms(gamma_fn):
    """(mean_coeff, std) and g^2 of a VP SDE from gamma and gamma' (float64):
    std^2 = sigmoid(gamma), mean_coeff^2 = sigmoid(-gamma), g^2 = sigmoid(gamma) gamma'."""
    marginal = lambda t: (np.sqrt(special.expit(-gamma_fn(t)[0])),  # noqa: E731
                          np.sqrt(special.expit(gamma_fn(t)[0])))
    g2 = lambda t: special.expit(gamma_fn(t)[0]) * gamma_fn(t)[1]  # noqa: E731
    return marginal, g2


_linear = lambda t: (-13.3 + 18.3 * np.asarray(t, np.float64), 18.3 + 0 * np.asarray(t))  # noqa
VDM_CASES = {
    "vdm": ({}, *_vp_closed_forms(_linear)),
    "vdm_custom": ({"learned": True, "num_features": 64, "bind": SCHEDULE_PARAMS},
                   *_vp_closed_forms(functools.partial(np_schedule, SCHEDULE_PARAMS))),
}
CONTRACT = ["test_marginal_matches_closed_form",
            "test_diffusion_matches_closed_form_and_drift_is_linear",
            "test_consistency_of_drift_diffusion_with_marginal", "test_prior_logp_matches_scipy",
            "test_log_snr_inverse_round_trips", "test_transitions_compose_to_the_marginal",
            "test_forward_simulation_matches_marginal",
            "test_probability_flow_maps_prior_to_data_gaussian"]


# The discrete-chain check runs a 1000-step host loop: on the fixed schedule only (25 s
# with the learned one, whose chain uses the same base-class `transition`).
PAIRS = [(c, k) for c in VDM_CASES for k in CONTRACT] + [
    ("vdm", "test_discrete_chain_tracks_marginal")]


@pytest.mark.parametrize("case, check", PAIRS)
def test_sde_contract(monkeypatch, case, check):
    """The fixed-SDE contract tests of test_sdes.py, run on the fixed linear-gamma "vdm" SDE
    and on a learned schedule with random inner weights (bound to the learned SDE)."""
    monkeypatch.setitem(test_sdes.CASES, case, VDM_CASES[case])
    getattr(test_sdes, check)(case)


def _learned(params, num_features=64, **kw):
    return sdes.make("vdm", learned=True, num_features=num_features, **kw).bind(params)


def test_learned_sde_is_a_pytree_whose_leaves_are_its_parameters():
    sde = _learned(SCHEDULE_PARAMS)
    assert jax.tree.structure(sde.params) == jax.tree.structure(SCHEDULE_PARAMS)
    leaves = jax.tree.leaves(sde)
    assert len(leaves) == len(jax.tree.leaves(SCHEDULE_PARAMS))
    again = jax.tree.unflatten(jax.tree.structure(sde), leaves)
    np.testing.assert_array_equal(again.marginal(jnp.asarray([0.3]))[1],
                                  sde.marginal(jnp.asarray([0.3]))[1])
    assert jax.tree.leaves(sdes.make("vp")) == [] and sdes.make("vp").init(None) == {}
    init = sdes.make("vdm", learned=True, num_features=8).init(jax.random.PRNGKey(0))
    assert set(init["params"]) == {"gamma_0", "delta", "w1", "w2", "b2", "w3"}


def test_gradients_reach_the_schedule_through_bind():
    base = sdes.make("vdm", learned=True, num_features=64)

    def std_at_half(p):
        return base.bind(p).marginal(jnp.asarray([0.5]))[1][0]

    grads = jax.jit(jax.grad(std_at_half))(SCHEDULE_PARAMS)["params"]
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    assert abs(float(grads["gamma_0"])) > 0 and abs(float(grads["delta"])) > 0
    # The bound SDE passes through jit as an argument (its parameters are traced).
    std = jax.jit(lambda sde: sde.marginal(jnp.asarray([0.5]))[1])(base.bind(SCHEDULE_PARAMS))
    np.testing.assert_allclose(std, std_at_half(SCHEDULE_PARAMS), rtol=1e-6)


def test_learned_sde_rejects_bad_input():
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):
        sdes.make("vdm", gamma_min=2.0, gamma_max=1.0)
    with pytest.raises(ValueError, match="unknown option"):
        sdes.make("vdm", gamma_fn=lambda s: s)
    with pytest.raises(ValueError, match=r"bind\(params\)"):
        sdes.make("vdm", learned=True).marginal(jnp.asarray([0.5]))


# ---------------------------------------------------------------- VLB loss


def _grid_batch(key, shape, num_levels, lo=-1.0, hi=1.0):
    k = jax.random.randint(key, shape, 0, num_levels)
    return lo + (hi - lo) * k.astype(jnp.float32) / (num_levels - 1)


def _np_vlb_terms(x, t, eps, eps_0, a, gamma_fn, num_levels, lo, hi):
    """Per-example (diffusion, prior, reconstruction) nats in float64 for the linear eps
    model eps_hat = a z_t."""
    x, t, eps, eps_0 = (np.asarray(v, np.float64) for v in (x, t, eps, eps_0))
    (g_t, dg_t), g_0, g_1 = gamma_fn(t), gamma_fn(np.array(0.0))[0], gamma_fn(np.array(1.0))[0]
    col = lambda v: v.reshape(-1, *[1] * (x.ndim - 1))  # noqa: E731
    alpha, sigma = np.sqrt(special.expit(-col(g_t))), np.sqrt(special.expit(col(g_t)))
    z_t = alpha * x + sigma * eps
    diffusion = 0.5 * dg_t * ((eps - a * z_t) ** 2).reshape(len(x), -1).sum(-1)
    a1, s1 = special.expit(-g_1), special.expit(g_1)
    prior = 0.5 * (a1 * x**2 + s1 - np.log(s1) - 1).reshape(len(x), -1).sum(-1)
    levels = np.linspace(lo, hi, num_levels)
    z0_scaled = x + np.exp(0.5 * g_0) * eps_0        # z_0 / mean_coeff(0)
    logits = -0.5 * (z0_scaled[..., None] - levels) ** 2 / np.exp(g_0)
    log_probs = logits - special.logsumexp(logits, axis=-1, keepdims=True)
    index = np.rint((x - lo) / (hi - lo) * (num_levels - 1)).astype(int)
    recon = -np.take_along_axis(log_probs, index[..., None], -1).reshape(len(x), -1).sum(-1)
    return diffusion, prior, recon


@pytest.mark.parametrize("num_levels, lo, hi", [(17, -1.0, 1.0), (256, 0.0, 1.0)])
def test_vlb_matches_independent_computation(num_levels, lo, hi):
    """Learned schedule (random inner weights, gamma in [-4, 2] so that every term
    matters), eps_hat = a z_t; float64 reference with the same t, eps, eps_0."""
    schedule, sp = random_schedule(seed=11, num_features=32, gamma_min=-4.0, gamma_max=2.0)
    sde = _learned(sp, num_features=32, gamma_min=-4.0, gamma_max=2.0)
    score = parameterization.make("eps_gamma").score_model(lambda a, z, gamma: a * z, sde)
    x = _grid_batch(jax.random.PRNGKey(0), (8, 3, 2, 2), num_levels, lo, hi)
    loss = losses.make("vdm_vlb", num_levels=num_levels, data_range=(lo, hi))
    assert loss.func is losses.vdm_vlb_loss
    got, (t, eps, eps_0) = jax.jit(lambda a, x, key: (
        loss(a, score, sde, x, key), losses.vdm_vlb_noise(key, x)))(
            jnp.asarray(0.7), x, jax.random.PRNGKey(1))
    terms = _np_vlb_terms(x, t, eps, eps_0, 0.7, functools.partial(np_schedule, sp),
                          num_levels, lo, hi)
    want = sum(terms).mean() / (12 * math.log(2))
    np.testing.assert_allclose(got, want, rtol=2e-5)
    assert all(v.mean() > 0.1 for v in terms)   # each term matters in this case


def _vdm_official_recon_and_klz(x, eps_0, g_0, g_1, vocab_size):
    """google-research/vdm model_vdm.py in float64 NumPy: EncDec.encode maps the integer
    x to f = 2 (x + 0.5) / vocab_size - 1 (bin centres: spacing 2 / vocab_size), the
    reconstruction loss is -logprob(x | z_0 / sqrt(1 - var_0)) of the softmax decoder over
    the encoded levels, the latent loss KL(q(z_1 | x) || N(0, I))."""
    encode = lambda k: 2 * ((k + 0.5) / vocab_size) - 1  # noqa: E731
    f = encode(x.astype(np.float64))
    z_0_rescaled = f + np.exp(0.5 * g_0) * eps_0
    x_vals = encode(np.arange(vocab_size, dtype=np.float64))
    logits = -0.5 * np.square((z_0_rescaled[..., None] - x_vals) * np.exp(-0.5 * g_0))
    logprobs = logits - special.logsumexp(logits, axis=-1, keepdims=True)
    recon = -np.take_along_axis(logprobs, x[..., None], -1).reshape(len(x), -1).sum(-1)
    var_1 = special.expit(g_1)
    klz = 0.5 * ((1 - var_1) * f**2 + var_1 - np.log(var_1) - 1).reshape(len(x), -1).sum(-1)
    return f, recon, klz


def test_vdm_data_grid_is_reachable_exactly():
    """VDM's data grid is the bin centres 2 (k + 1/2) / 256 - 1 (spacing 2/256), not
    sde_lab's k / 255 scaling (spacing 2/255): vdm_vlb with data_range = (-1 + 1/256,
    1 - 1/256) on data so encoded gives VDM's reconstruction and prior terms."""
    vocab = 256
    sde = sdes.make("vdm", gamma_min=-6.0, gamma_max=5.0)  # a decoder that matters
    x = np.asarray(jax.random.randint(jax.random.PRNGKey(0), (4, 3, 2, 2), 0, vocab))
    eps_0 = np.asarray(jax.random.normal(jax.random.PRNGKey(1), x.shape), np.float64)
    f, recon, klz = _vdm_official_recon_and_klz(x, eps_0, -6.0, 5.0, vocab)
    zeros = lambda params, z, t: jnp.zeros_like(z)  # noqa: E731 (diffusion term unused)
    terms = jax.jit(lambda f, eps_0: losses.vdm_vlb_terms(
        None, zeros, sde, f, jnp.full((4,), 0.5), jnp.zeros(f.shape), eps_0,
        num_levels=vocab, data_range=(-1 + 1 / vocab, 1 - 1 / vocab)))(
            jnp.asarray(f, jnp.float32), jnp.asarray(eps_0, jnp.float32))
    np.testing.assert_allclose(terms["reconstruction"], recon, rtol=1e-4)
    np.testing.assert_allclose(terms["prior"], klz, rtol=1e-4)
    assert recon.mean() > 1.0


def test_antithetic_times_are_stratified_and_keys_are_per_example():
    x = jnp.zeros((16, 3))
    noise = jax.jit(losses.vdm_vlb_noise, static_argnames=("antithetic", "t_min"))
    t, eps, eps_0 = noise(jax.random.PRNGKey(0), x)
    gaps = np.diff(np.sort(np.asarray(t, np.float64)))
    np.testing.assert_allclose(gaps, 1 / 16, atol=1e-6)
    assert 0 <= float(t.min()) and float(t.max()) < 1
    # Per-example noise: the first half of the batch with the first half of the keys.
    keys = losses.example_keys(jax.random.PRNGKey(0), 16)
    _, eps_half, eps_0_half = noise(keys[:8], x[:8])
    np.testing.assert_array_equal(eps_half, eps[:8])
    np.testing.assert_array_equal(eps_0_half, eps_0[:8])
    t_iid, _, _ = noise(jax.random.PRNGKey(0), x, antithetic=False, t_min=0.2)
    assert 0.2 <= float(t_iid.min()) and np.std(np.diff(np.sort(np.asarray(t_iid)))) > 1e-3


@pytest.mark.parametrize("case", ["vdm", "vdm_custom"])
@pytest.mark.parametrize("antithetic", [True, False])
def test_diffusion_term_of_exact_score_matches_analytic(case, antithetic):
    """x ~ N(m, s^2 I_D) with its exact score: per dimension E||eps - eps_hat||^2 =
    s^2 / (s^2 + e^gamma) (the Gaussian MMSE), so the diffusion term is

        1/2 D int_{gamma_0}^{gamma_1} s^2 / (s^2 + e^g) dg
          = 1/2 D [g - log(s^2 + e^g)]_{gamma_0}^{gamma_1},

    the same for every schedule with these endpoints (VDM's invariance): the fixed linear
    and the learned one (both from -13.3 to 5) must match it. 16 batches of 4096;
    tolerance 5 standard errors of the mean across batches.
    """
    m, s, d = 0.3, 0.5, 4
    sde = test_sdes.make_from(case, VDM_CASES[case][0])
    data = GaussianMixture.create([[m] * d], [s])
    exact = data.score_fn(sde)
    score = lambda params, x, t: exact(x, t)  # noqa: E731
    g = lambda v: v - np.log(s**2 + np.exp(v))  # noqa: E731
    want = 0.5 * d * (g(5.0) - g(-13.3))

    @jax.jit
    def diffusion(key):
        x = data.sample(jax.random.fold_in(key, 1), 4096)
        t, eps, eps_0 = losses.vdm_vlb_noise(key, x, antithetic=antithetic)
        return jnp.mean(losses.vdm_vlb_terms(None, score, sde, x, t, eps, eps_0)["diffusion"])

    vals = np.array([float(diffusion(jax.random.PRNGKey(i))) for i in range(16)])
    se = vals.std(ddof=1) / 4
    assert abs(vals.mean() - want) < 5 * se, (vals.mean(), want, se)


@pytest.fixture(scope="module")
def tiny():
    """The tiny VDM and its initial parameters (one compiled init shared by the tests)."""
    net = models.make("vdm", size="tiny")
    return net, jax.jit(net.init)(jax.random.PRNGKey(1), jnp.zeros((1, 8, 8, 1)), jnp.zeros(1))


def _digits():
    """sklearn's 8x8 digits: integers 0..16, i.e. 17 levels, scaled to [-1, 1]."""
    from sklearn.datasets import load_digits

    x = load_digits().images.astype(np.float32)
    return jnp.asarray(x / 16.0 * 2.0 - 1.0)[..., None]


def test_vlb_decreases_when_training_tiny_vdm_and_schedule(tiny):
    """30 Adam steps on the digits (17 levels), network and schedule together. The VLB on 8
    fixed (batch of 64, key) pairs (common random numbers before and after) must drop by
    more than 5 standard errors of the mean difference; the schedule endpoints must move.
    (One compiled step serves training and evaluation: it returns the loss at its input.)"""
    x_all = _digits()
    net, net_params = tiny
    base = sdes.make("vdm", learned=True, num_features=64)
    param = parameterization.make("eps_gamma")
    opt = optax.adam(3e-3)

    @jax.jit
    def init(key):
        params = {"net": net_params, "sde": base.init(key)}
        return params, opt.init(params)

    def vlb(params, batch, key):
        sde = base.bind(params["sde"])
        return losses.vdm_vlb_loss(params["net"], param.score_model(net.apply, sde), sde,
                                   batch, key, num_levels=17)

    @jax.jit
    def step(params, opt_state, batch, key):
        value, grads = jax.value_and_grad(vlb)(params, batch, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    def evaluate(params, opt_state):
        return np.array([float(step(params, opt_state, x_all[64 * i:64 * (i + 1)],
                                    jax.random.PRNGKey(100 + i))[2]) for i in range(8)])

    params, opt_state = init(jax.random.PRNGKey(0))
    start, before = params, evaluate(params, opt_state)
    rng = np.random.default_rng(0)
    for i in range(30):
        batch = x_all[rng.integers(0, x_all.shape[0], 64)]
        params, opt_state, _ = step(params, opt_state, batch, jax.random.PRNGKey(i))
    diff = before - evaluate(params, opt_state)
    assert diff.mean() > 5 * diff.std(ddof=1) / math.sqrt(len(diff)), (before, diff)
    for name in ("gamma_0", "delta"):
        assert float(params["sde"]["params"][name]) != float(
            start["sde"]["params"][name])


# ---------------------------------------------------------------- network


def _official_cifar10_count(c=128, n=32, data_channels=3, num_fourier=2):
    """Layer arithmetic of the official ScoreUNet (google-research/vdm, model_vdm.py) with
    configs/cifar10.py, without its scalar class-conditioning input."""
    cin, e = data_channels * (1 + 2 * num_fourier), 4 * c

    def block(ci, co):
        short = ci * co + co if ci != co else 0
        return 2 * ci + 9 * ci * co + co + e * co + 2 * co + 9 * co * co + co + short

    attn = 2 * c + 4 * (c * c + c)
    return (c * e + e + e * e + e + 9 * cin * c + c + n * block(c, c) + 2 * block(c, c) + attn
            + (n + 1) * block(2 * c, c) + 2 * c + 9 * c * data_channels + data_channels)


@pytest.fixture(scope="module")
def cifar10_shapes():
    net = models.make("vdm", size="cifar10")
    return net, jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                               jnp.zeros(1))


def test_cifar10_parameter_count(cifar10_shapes):
    """30,577,667 parameters: the official ScoreUNet at configs/cifar10.py has 30,578,179
    (counted with jax.eval_shape on google-research/vdm's model_vdm.py), of which 512 are
    the weights of its scalar class-conditioning input, absent in an unconditional model."""
    count = sum(math.prod(v.shape) for v in jax.tree_util.tree_leaves(cifar10_shapes[1]))
    assert count == _official_cifar10_count() == 30_578_179 - 512


@pytest.mark.parametrize("hw", [8, 32, 64])
def test_output_shape_equals_input_shape(hw, cifar10_shapes, tiny):
    """No resampling: any H, W work, and the parameters do not depend on them."""
    for net, variables in (cifar10_shapes, tiny):
        x = jnp.zeros((2, hw, hw, 3 if net.channels == 128 else 1))
        assert jax.eval_shape(net.apply, variables, x, jnp.zeros(2)).shape == x.shape


def test_tiny_forward_is_identity_at_init_and_traces_once(tiny):
    """Zero-initialised output layer + the input skip: eps_hat = z_t at initialisation."""
    net, params = tiny
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
    traces = []

    @jax.jit
    def apply(p, x, g):
        traces.append(1)
        return net.apply(p, x, g)

    for i in range(3):
        out = apply(params, x + i, jnp.full(3, -5.0 + i))
        np.testing.assert_array_equal(out, x + i)
    assert len(traces) == 1


def test_bad_network_input_fails_before_compilation():
    with pytest.raises(ValueError, match="num_groups=32 must divide channels=48"):
        models.make("vdm", size="tiny", channels=48, num_groups=32).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros(1))
    with pytest.raises(ValueError, match=r"need x \[B, H, W, C\]"):
        models.make("vdm", size="tiny").init(jax.random.PRNGKey(0), jnp.zeros((1, 8)),
                                             jnp.zeros(1))


def test_registry_rejects_unknown_names():
    assert models.sizes("vdm") == ["cifar10", "tiny"]
    with pytest.raises(ValueError, match=r"unknown model 'vdn'; available: \['classifier', 'ddpm', 'mlp', 'ncsnpp', 'ncsnv2', 'vdm'\]"):
        models.make("vdn")
    with pytest.raises(ValueError, match=r"unknown size 'cifar' for model 'vdm'; available: "
                                         r"\['cifar10', 'tiny'\]"):
        models.make("vdm", size="cifar")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['width'\] for model 'vdm'; "
                                         r"available: \["):
        models.make("vdm", width=3)
