"""Time-conditioned MLP: shapes and parameter counts per size, bad input, and DSM training
on a 2-D Gaussian mixture against the loss of the exact score (analytic.GaussianMixture)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sde_lab import losses, models, parameterization, sdes
from sde_lab.analytic import GaussianMixture


def _count(hidden, num_blocks, embed_dim, d, fourier=False):
    """Layer arithmetic: embedding MLP, input layer, blocks (LayerNorm + 3 dense), final
    LayerNorm and output layer (+ the fixed Fourier frequencies)."""
    dense = lambda i, o: i * o + o  # noqa: E731
    return (dense(embed_dim, hidden) + dense(hidden, hidden) + dense(d, hidden)
            + num_blocks * (2 * hidden + 3 * dense(hidden, hidden)) + 2 * hidden
            + dense(hidden, d) + (embed_dim // 2 if fourier else 0))


@pytest.mark.parametrize("size", ["tiny", "toy", "tabular"])
@pytest.mark.parametrize("d, embedding", [(2, "sinusoidal"), (30, "fourier")])
def test_shapes_and_parameter_counts(size, d, embedding):
    net = models.make("mlp", size=size, embedding=embedding)
    x, t = jnp.zeros((5, d)), jnp.zeros(5)
    variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, t)
    assert jax.eval_shape(net.apply, variables, x, t).shape == (5, d)
    count = sum(math.prod(v.shape) for v in jax.tree_util.tree_leaves(variables))
    assert count == _count(net.hidden, net.num_blocks, net.embed_dim, d, embedding == "fourier")


def test_output_is_zero_at_init_and_traces_once():
    net = models.make("mlp", size="tiny")
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    params = jax.jit(net.init)(jax.random.PRNGKey(1), x, jnp.zeros(4))
    traces = []

    @jax.jit
    def apply(p, x, t):
        traces.append(1)
        return net.apply(p, x, t)

    for i in range(3):
        np.testing.assert_array_equal(apply(params, x + i, jnp.full(4, 10.0 * i)), 0.0)
    assert len(traces) == 1


@pytest.mark.parametrize("fields, x_shape, match", [
    ({"embedding": "gaussian"}, (2, 2),
     r"embedding='gaussian' is not valid; choose from \['sinusoidal', 'fourier'\]"),
    ({}, (2, 2, 2), r"need x \[B, D\] and cond \[B\]"),
    ({"embed_dim": 7}, (2, 2), "even embed_dim"),
])
def test_bad_input_fails_before_compilation(fields, x_shape, match):
    net = models.make("mlp", size="tiny", **fields)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros(x_shape), jnp.zeros(2))


def test_sizes_are_listed():
    assert models.sizes("mlp") == ["tabular", "tiny", "toy"]


def test_dsm_training_on_2d_mixture_approaches_the_exact_score():
    """`toy` MLP, eps parameterization on the VP SDE, 400 Adam steps of DSM (std^2
    weighting) on 8 Gaussians on a circle. Evaluated on 8 fixed (batch of 2048, key)
    pairs, common to every model (common random numbers):

      * untrained (zero output): per-example loss E[z^2] = 1 exactly in expectation;
      * exact score: the minimum of the loss over all score functions;
      * trained: must fall below the untrained loss by > 5 standard errors of the paired
        difference, stay above the exact-score loss minus 5 standard errors (the exact
        score is the minimiser), and close at least half of the gap between them.
    """
    sde = sdes.make("vp")
    angles = 2 * np.pi * np.arange(8) / 8
    data = GaussianMixture.create(np.stack([np.cos(angles), np.sin(angles)], 1) * 2.0, [0.2])
    net = models.make("mlp", size="toy")
    score = parameterization.make("eps").score_model(net.apply, sde)
    exact = data.score_fn(sde)
    opt = optax.adam(2e-3)

    @jax.jit
    def step(params, opt_state, key):
        batch = data.sample(jax.random.fold_in(key, 1), 512)
        grads = jax.grad(losses.dsm_loss)(params, score, sde, batch, key)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def evaluate(params, key):
        batch = data.sample(jax.random.fold_in(key, 1), 2048)
        return jnp.stack([losses.dsm_loss(params, score, sde, batch, key),
                          losses.dsm_loss(None, lambda _, x, t: exact(x, t), sde, batch, key)])

    params = jax.jit(net.init)(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros(1))
    eval_keys = [jax.random.PRNGKey(1000 + i) for i in range(8)]
    before = np.array([evaluate(params, k) for k in eval_keys])
    # Untrained: the mean over D = 2 of z^2 has variance 1 per example: 5 SE = 5 / sqrt(2048).
    np.testing.assert_allclose(before[:, 0], 1.0, atol=5 / math.sqrt(2048))
    opt_state = opt.init(params)
    for i in range(400):
        params, opt_state = step(params, opt_state, jax.random.PRNGKey(i))
    after = np.array([evaluate(params, k) for k in eval_keys])
    untrained, trained, best = before[:, 0], after[:, 0], after[:, 1]
    se = lambda v: v.std(ddof=1) / math.sqrt(len(v))  # noqa: E731
    assert (untrained - trained).mean() > 5 * se(untrained - trained)
    assert (trained - best).mean() > -5 * se(trained - best)
    assert (untrained - trained).mean() > 0.5 * (untrained - best).mean(), (
        untrained.mean(), trained.mean(), best.mean())
