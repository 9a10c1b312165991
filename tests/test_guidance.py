"""Guidance with exact scores of a two-class Gaussian problem, label dropout, the
label-conditional score helpers, the classifier input map, and a trained noise-conditional
classifier.

Class k of the data is N(mu_k, diag(s_k^2)) with prior weight w_k, so under every linear
SDE p_t(x | k), p_t(x) = sum_k w_k p_t(x | k) and log p_t(k | x) are closed form
(analytic.GaussianMixture). Expected values come from these closed forms and float64
NumPy, never from the code under test.
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sde_lab import guidance, models, parameterization, samplers, sdes
from sde_lab.analytic import GaussianMixture
from sde_lab.models import layers

# Mixture mean exactly 0 (0.3 * mu_0 + 0.7 * mu_1 = 0); class means 2.2 apart, about 4
# class standard deviations; unequal weights and stds, so mixture and classes differ in
# every moment.
WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[-1.4, 0.7], [0.6, -0.3]])
STDS = np.array([[0.5, 0.8], [0.6, 0.4]])
MIXTURE = GaussianMixture.create(MEANS, STDS, WEIGHTS)
CLASSES = [GaussianMixture.create(MEANS[k], STDS[k]) for k in range(2)]

# The samplers start from the SDE's prior, not from the exact p_T; these settings make that
# mismatch negligible (see test_guided_sampling_moments).
SDES = {"vp": dict(beta_max=30.0), "subvp": dict(beta_max=30.0), "ve": dict(sigma_max=1000.0)}


def _class_logp(sde, x, t):
    """[B, 2]: log p_t(x | k) for each class k."""
    return jnp.stack([c.logp(sde, x, t) for c in CLASSES], axis=-1)


def _exact_logits_model(sde):
    """logits(params, x, t) = log w_k + log p_t(x | k): its log-softmax is the exact
    log p_t(k | x), i.e. the Bayes-optimal noise-conditional classifier."""
    return lambda params, x, t: (jnp.log(jnp.asarray(WEIGHTS, x.dtype))[None]
                                 + _class_logp(sde, x, t))


def _exact_cond_score(sde, y):
    """grad_x log p_t(x | y) for labels y (int or [B])."""
    def score(x, t):
        labels = jnp.broadcast_to(jnp.asarray(y), x.shape[:1])
        mask = labels[:, None] == jnp.arange(2)[None]
        total = lambda x_: jnp.sum(jnp.where(mask, _class_logp(sde, x_, t), 0.0))  # noqa: E731
        return jax.grad(total)(x)

    return score


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_classifier_free_equals_classifier_guidance_with_exact_posterior(sde_name):
    """Bayes: cond - uncond = grad_x log p_t(y | x), so both guidances give the same score
    at every scale; at scale 1 both equal the exact class score, at scale 0 the mixture's.
    Checked at random x, t and labels (float32: rtol 1e-4 of the score's scale)."""
    sde = sdes.make(sde_name, **SDES[sde_name])
    kx, kt, ky = jax.random.split(jax.random.PRNGKey(0), 3)
    x = 2.0 * jax.random.normal(kx, (64, 2))
    t = jax.random.uniform(kt, (64,), minval=0.01, maxval=1.0)
    y = jax.random.bernoulli(ky, 0.5, (64,)).astype(jnp.int32)
    cond, uncond = _exact_cond_score(sde, y), MIXTURE.score_fn(sde)
    log_prob = guidance.classifier_log_prob_fn(_exact_logits_model(sde), None, y)

    @jax.jit
    def scores(scale):
        return (guidance.classifier_free(cond, uncond, scale)(x, t),
                guidance.classifier(uncond, log_prob, scale)(x, t), cond(x, t), uncond(x, t))

    for scale in (0.0, 1.0, 2.5, -0.5):
        free, clf, c, u = scores(scale)
        want = u + scale * (c - u)
        tol = 1e-4 * float(jnp.max(jnp.abs(want))) + 1e-6
        np.testing.assert_allclose(free, want, atol=tol)
        np.testing.assert_allclose(clf, want, atol=tol)
        if scale == 1.0:
            np.testing.assert_allclose(clf, c, atol=tol)

N_PER_CASE = 8_192
Z_TOL = 5.0


def _target_moments(components, sde, t):
    """Per-dimension mean, variance and fourth central moment of sum_k w_k N(a mu_k,
    a^2 s_k^2 + std^2) (the target at time t), float64 closed form: with d_k = a mu_k - m,
    E(x - m)^4 = sum_k w_k (d_k^4 + 6 d_k^2 v_k + 3 v_k^2)."""
    a, std = (float(v) for v in sde.marginal(jnp.asarray(t)))
    w, mu, s = (np.array(v, np.float64) for v in zip(*components))
    w, mu, var = w[:, None], a * mu, a**2 * s**2 + std**2
    mean = (w * mu).sum(0)
    d = mu - mean
    second = (w * (var + d**2)).sum(0)
    fourth = (w * (d**4 + 6 * d**2 * var + 3 * var**2)).sum(0)
    return mean, second, fourth


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_guided_sampling_moments(sde_name):
    """UniPC-3 (40 steps, no final denoising) with guided exact scores samples

      classifier-free, scale 0                 -> the mixture p_{t_min}(x),
      classifier-free, scale 1, y = 0 and 1    -> the class p_{t_min}(x | y),
      classifier (exact log p_t(y | x)), scale 1, y = 0 and 1 -> p_{t_min}(x | y),

    five independent cases of n = 8,192 run as one batch (each score function sees its
    own rows). Tolerance: for n i.i.d. draws the sample mean has standard error
    sqrt(V / n) and the sample variance sqrt((mu_4 - V^2) / n), with V and mu_4 the
    target's variance and fourth central moment per dimension (`_target_moments`);
    each of the 20 statistics per SDE must be within 5 standard errors (60 in all:
    P(any false failure) < 60 * 5.7e-7 = 3e-5 under normality).

    Biases, kept below 0.15 standard error: (i) the prior N(0, sigma_T^2) is not p_T. For
    Gaussian data the flow map is affine, so a prior mean off by delta_T moves the
    samples' mean by s delta_T / sigma_T: a_T |mu| s for VP / sub-VP (a_T = mean_coeff(T))
    and |mu| s / sigma_max for VE, i.e. a_T |mu| sqrt(n) or |mu| sqrt(n) / sigma_max
    standard errors. At the default beta_max = 20 (a_T = 6.6e-3) and sigma_max = 50 that is
    0.9 and 2.8 standard errors for |mu| = 1.56, so the test uses beta_max = 30
    (a_T = 5.4e-4: 0.08) and sigma_max = 1000 (0.14); the mixture's mean is 0. (ii)
    discretization: measured with 200,000 draws per case, 40 and 80 steps on the same
    prior draws differ by at most 4e-4 in any mean or variance (0.03 standard error at
    n = 8,192), and both deviate from the closed form by less than 2 of their own standard
    errors.
    """
    sde = sdes.make(sde_name, **SDES[sde_name])
    n = N_PER_CASE
    uncond = MIXTURE.score_fn(sde)
    labels = np.array([0, 0, 1, 0, 1])
    scores = [guidance.classifier_free(_exact_cond_score(sde, 0), uncond, 0.0),
              guidance.classifier_free(_exact_cond_score(sde, 0), uncond, 1.0),
              guidance.classifier_free(_exact_cond_score(sde, 1), uncond, 1.0)]
    logits_model = _exact_logits_model(sde)
    scores += [guidance.classifier(uncond, guidance.classifier_log_prob_fn(logits_model, None, y),
                                   1.0) for y in (0, 1)]

    def score_fn(x, t):
        return jnp.concatenate([s(x[i * n:(i + 1) * n], t[i * n:(i + 1) * n])
                                for i, s in enumerate(scores)])

    sample_fn = samplers.make("unipc", num_steps=40, denoise=False)
    x, _ = jax.jit(lambda k: sample_fn(k, sde, score_fn, (5 * n, 2)))(jax.random.PRNGKey(1))
    x = np.asarray(x, np.float64).reshape(5, n, 2)
    assert np.all(np.isfinite(x))
    mixture = list(zip(WEIGHTS, MEANS, STDS))
    for case, label in enumerate(labels):
        components = mixture if case == 0 else [(1.0, MEANS[label], STDS[label])]
        mean, var, fourth = _target_moments(components, sde, sde.t_min)
        se_mean, se_var = np.sqrt(var / n), np.sqrt((fourth - var**2) / n)
        np.testing.assert_array_less(np.abs(x[case].mean(0) - mean), Z_TOL * se_mean,
                                     err_msg=f"case {case}: mean")
        np.testing.assert_array_less(np.abs(x[case].var(0, ddof=1) - var), Z_TOL * se_var,
                                     err_msg=f"case {case}: variance")


def test_drop_labels():
    """p = 0 keeps, p = 1 drops every label; at p = 0.2 the dropped fraction of 20,000 is
    within 5 binomial standard errors (sqrt(p (1 - p) / n) = 0.0028); kept labels are
    unchanged; per-example keys: example i's draw depends on key i alone."""
    y = jnp.arange(20_000, dtype=jnp.int32) % 10
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(guidance.drop_labels(key, y, 10, 0.0), y)
    np.testing.assert_array_equal(guidance.drop_labels(key, y, 10, 1.0), 10)
    out = guidance.drop_labels(key, y, 10, 0.2)
    dropped = np.asarray(out == 10)
    assert abs(dropped.mean() - 0.2) < 5 * np.sqrt(0.2 * 0.8 / y.shape[0])
    np.testing.assert_array_equal(np.asarray(out)[~dropped], np.asarray(y)[~dropped])
    keys = jax.random.split(key, 8)
    np.testing.assert_array_equal(guidance.drop_labels(keys[:4], y[:4], 10, 0.5),
                                  guidance.drop_labels(keys, y[:8], 10, 0.5)[:4])
    with pytest.raises(ValueError, match=r"label dropout p must be in \[0, 1\], got 1.5"):
        guidance.drop_labels(key, y, 10, 1.5)


def test_label_score_fns_pass_labels_and_the_no_label_index():
    """cond / uncond pass y (an int, broadcast to the batch) and num_classes to the network
    through the parameterization: with a stub network raw = x + y + cond and "eps"
    (cond = 999 t, score = -raw / std), the scores are closed form. The "no label" index
    num_classes is the row LabelEmbedding uses for y=None."""
    sde, eps = sdes.make("vp"), parameterization.make("eps")
    stub = lambda params, x, cond, y: x + (y + cond)[:, None]  # noqa: E731
    score_model = guidance.labelled_score_model(eps, stub, sde)
    cond, uncond = guidance.label_score_fns(score_model, None, 2, num_classes=3)
    x, t = jnp.array([[0.5, -1.0], [2.0, 0.0]]), jnp.array([0.3, 0.7])
    std = np.asarray(sde.marginal(t)[1])[:, None]
    np.testing.assert_allclose(cond(x, t), -(x + 2 + 999 * t[:, None]) / std, rtol=1e-6)
    np.testing.assert_allclose(uncond(x, t), -(x + 3 + 999 * t[:, None]) / std, rtol=1e-6)

    embed = layers.LabelEmbedding(num_classes=3, features=4)
    variables = embed.init(jax.random.PRNGKey(0), None, 2)
    np.testing.assert_array_equal(embed.apply(variables, None, 2),
                                  embed.apply(variables, jnp.array([3, 3]), 2))


def test_classifier_input_is_the_same_for_every_sde_at_equal_log_snr():
    """x_t = alpha x0 + sigma z maps to (x0 + r z) / sqrt(sigma_data^2 + r^2) and cond =
    log r with r = sigma / alpha, whatever the SDE: VP and sub-VP at t = 0.3 and VE at the
    time of the same r agree with this closed form."""
    x0, z = jnp.array([[0.5, -1.0]]), jnp.array([[0.3, 0.8]])
    vp = sdes.make("vp")
    a, s = vp.marginal(jnp.array([0.3]))
    r = float(s[0] / a[0])
    want_x = (np.asarray(x0) + r * np.asarray(z)) / np.sqrt(0.5**2 + r**2)
    for sde in (vp, sdes.make("subvp"), sdes.make("ve")):
        t = sde.t_from_log_snr(jnp.array([-2.0 * np.log(r)]))
        a, s = sde.marginal(t)
        x_in, cond = guidance.classifier_input(sde, a[:, None] * x0 + s[:, None] * z, t)
        np.testing.assert_allclose(x_in, want_x, rtol=1e-4)
        np.testing.assert_allclose(cond, [np.log(r)], rtol=1e-4)


def _bayes_accuracy(sde, x0, z, y, t):
    """Accuracy of the exact posterior argmax on the same noised points (float64)."""
    a, s = (float(v) for v in sde.marginal(jnp.asarray(t)))
    xt = a * x0 + s * z
    var = a**2 * STDS**2 + s**2
    log_post = np.log(WEIGHTS) - 0.5 * (((xt[:, None] - a * MEANS) ** 2 / var)
                                        + np.log(var)).sum(-1)
    return np.mean(np.argmax(log_post, -1) == y)


def test_trained_classifier_beats_chance_at_small_t():
    """The "toy" classifier trained with classifier_loss (VP, 200 Adam steps, batch 256,
    fresh mixture draws each step) classifies noised held-out points at t = 0.05 and 0.2
    far above chance (always guessing class 1: 0.7) and within 0.04 of the Bayes
    classifier on the same 4,000 points (exact posterior argmax: 0.975 and 0.904; the
    binomial standard error of an accuracy is <= 0.0072 at n = 4,000)."""
    sde = sdes.make("vp")
    net = models.make("classifier", size="toy", num_classes=2)
    logits_model = guidance.classifier_logits_model(net.apply, sde)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros(1))
    opt = optax.adam(3e-3)

    def draw(key, n):
        ky, kz = jax.random.split(key)
        y = jax.random.bernoulli(ky, WEIGHTS[1], (n,)).astype(jnp.int32)
        return (jnp.asarray(MEANS, jnp.float32)[y]
                + jnp.asarray(STDS, jnp.float32)[y] * jax.random.normal(kz, (n, 2))), y

    @jax.jit
    def train(params, key):
        def step(carry, key):
            params, opt_state = carry
            k_data, k_loss = jax.random.split(key)
            x0, y = draw(k_data, 256)
            loss, grads = jax.value_and_grad(guidance.classifier_loss)(
                params, logits_model, sde, x0, y, k_loss)
            updates, opt_state = opt.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                           jax.random.split(key, 200))
        return params, losses

    params, losses = train(params, jax.random.PRNGKey(1))
    assert float(losses[-20:].mean()) < float(losses[:20].mean())
    x0, y = draw(jax.random.PRNGKey(2), 4_000)
    key_noise = jax.random.PRNGKey(3)
    z = np.asarray(jax.vmap(lambda k: jax.random.normal(k, (2,)))(
        jax.random.split(key_noise, 4_000)), np.float64)
    for t in (0.05, 0.2):
        acc = float(guidance.noised_accuracy(params, logits_model, sde, x0, y, key_noise, t))
        bayes = _bayes_accuracy(sde, np.asarray(x0, np.float64), z, np.asarray(y), t)
        assert acc > 0.7 + 10 * 0.0072, (t, acc)
        assert acc > bayes - 0.04, (t, acc, bayes)
