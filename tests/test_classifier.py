"""Noise-conditional classifier network: shapes and parameter counts per size (layer
arithmetic, and WRN-28-10's published count), uniform prediction at init, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_lab import models


def _image_count(net, channels, num_classes):
    """Layer arithmetic of the image trunk: bias-free 3x3 convs, GroupNorm scale + bias,
    per-block Dense(4 embed_dim -> width) of the embedding, WRN's parameter-free shortcut,
    final GroupNorm and Dense; plus the embedding (fixed Fourier frequencies and two dense
    layers). Returns (WRN part, embedding part)."""
    dense = lambda i, o: i * o + o  # noqa: E731
    conv = lambda i, o: 9 * i * o  # noqa: E731
    e = 4 * net.embed_dim
    wrn, emb = conv(channels, net.nf), net.embed_dim + dense(2 * net.embed_dim, e) + dense(e, e)
    c_in = net.nf
    for m in net.ch_mult:
        c = net.nf * net.widen_factor * m
        for _ in range(net.num_res_blocks):
            wrn += 2 * c_in + conv(c_in, c) + 2 * c + conv(c, c)
            emb += dense(e, c)
            c_in = c
    return wrn + 2 * c_in + dense(c_in, num_classes), emb


def _vector_count(net, d, num_classes):
    """Embedding, input Dense, mlp.ResidualBlocks (LayerNorm + 3 Dense), LayerNorm, head."""
    dense = lambda i, o: i * o + o  # noqa: E731
    e, w = 4 * net.embed_dim, net.nf * net.widen_factor * net.ch_mult[-1]
    emb = net.embed_dim + dense(2 * net.embed_dim, e) + dense(e, e)
    blocks = net.num_res_blocks * (2 * w + 2 * dense(w, w) + dense(e, w))
    return emb + dense(d, w) + blocks + 2 * w + dense(w, num_classes)


def _count(net, x):
    variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, jnp.zeros(x.shape[:1]))
    assert jax.eval_shape(net.apply, variables, x, jnp.zeros(x.shape[:1])).shape == (
        x.shape[0], net.num_classes)
    return sum(math.prod(v.shape) for v in jax.tree_util.tree_leaves(variables))


@pytest.mark.parametrize("size, shape", [("cifar10", (2, 32, 32, 3)), ("digits", (2, 8, 8, 1)),
                                         ("tiny", (2, 8, 8, 1)), ("tiny", (2, 16, 16, 3)),
                                         ("toy", (2, 2)), ("tiny", (2, 5))])
def test_shapes_and_parameter_counts(size, shape):
    net = models.make("classifier", size=size)
    if len(shape) == 4:
        assert _count(net, jnp.zeros(shape)) == sum(_image_count(net, shape[-1], 10))
    else:
        assert _count(net, jnp.zeros(shape)) == _vector_count(net, shape[-1], 10)


def test_cifar10_size_is_wrn_28_10():
    """The WRN part of the "cifar10" size plus the 1x1 projection shortcuts of the original
    WRN (16->160, 160->320, 320->640: 258,560 weights) is Zagoruyko & Komodakis' 36.5M
    parameters for WRN-28-10 (Table 1 of Wide Residual Networks), within 0.5%."""
    net = models.make("classifier", size="cifar10")
    wrn, _ = _image_count(net, 3, 10)
    assert abs(wrn + 16 * 160 + 160 * 320 + 320 * 640 - 36.5e6) < 0.005 * 36.5e6
    assert (net.num_res_blocks, net.widen_factor, net.nonlinearity) == (4, 10, "relu")


def test_untrained_classifier_predicts_uniform():
    """The zero-initialised head gives logits 0 for any input and noise level (vector
    input: the image trunk ends in the same head, and compiling its init costs ~10 s)."""
    net = models.make("classifier", size="tiny", num_classes=4)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 2))
    cond = jnp.array([-3.0, 0.0, 2.0])
    params = jax.jit(net.init)(jax.random.PRNGKey(1), x, cond)
    np.testing.assert_array_equal(jax.jit(net.apply)(params, x, cond), 0.0)


@pytest.mark.parametrize("fields, shape, match", [
    ({"nonlinearity": "tanh"}, (2, 2), r"nonlinearity='tanh' is not valid"),
    ({"ch_mult": (2, 1)}, (2, 2), "non-decreasing ch_mult"),
    ({"num_classes": 1}, (2, 2), "num_classes must be >= 2, got 1"),
    ({}, (2, 4, 4), r"need x \[B, H, W, C\] or \[B, D\] and cond \[B\]"),
    ({}, (2, 5, 5, 1), "must have H and W divisible by 2"),
])
def test_bad_input_fails_before_compilation(fields, shape, match):
    with pytest.raises(ValueError, match=match):
        net = models.make("classifier", size="tiny", **fields)
        jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros(2))
