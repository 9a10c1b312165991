"""Score networks: parameter counts, shapes, build-time errors, conditioning paths, retracing,
FIR resampling identities, and that a tiny network trains with the DSM loss.

Parameter counts come from two independent sources: the numbers published in score_sde's
README/paper table (62.8M, 107.6M, 61.8M, 106.6M, 35.2M; DESIGN.md) and exact integers
counted by running score_sde's own Flax models (yang-song/score_sde, models/*.py with the
configs named below) under `jax.eval_shape`, and EDM's PyTorch SongUNet for its sizes. Big networks are only traced
(`jax.eval_shape`), never materialised.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sde_lab import losses, models, parameterization, sdes
from sde_lab.models import layers, ncsnv2

KEY = jax.random.PRNGKey(0)
# Each test program runs a handful of times on tiny inputs, so XLA's CPU backend
# optimisation costs more than it saves (measured: 2-3x less compile time); semantics are
# unchanged.
fast_jit = functools.partial(jax.jit, compiler_options={
    "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})

# (model, size, input side, published millions or None, exact count of score_sde's model).
PUBLISHED = [
    ("ncsnpp", "ncsnpp_cont", 32, 62.8, 62_758_915),        # ve/cifar10_ncsnpp_continuous
    ("ncsnpp", "ncsnpp_cont_deep", 32, 107.6, 107_587_075),  # ve/cifar10_ncsnpp_deep_continuous
    ("ncsnpp", "ddpmpp_cont", 32, 61.8, 61_804_419),         # vp/cifar10_ddpmpp_continuous
    ("ncsnpp", "ddpmpp_cont_deep", 32, 106.6, 106_632_579),  # vp/cifar10_ddpmpp_deep_continuous
    ("ddpm", "cifar10", 32, 35.2, 35_218_947),               # vp/ddpm/cifar10
    # NVlabs/edm training/networks.py SongUNet as train.py builds it for --arch=ddpmpp /
    # ncsnpp, counted with torch (NCSN++: 56,395,523 + 128 Fourier frequencies, a buffer
    # in EDM, a parameter here).
    ("ncsnpp", "ddpmpp_edm", 32, None, 55_732_739),
    ("ncsnpp", "ncsnpp_edm", 32, None, 56_395_651),
    ("ncsnv2", "cifar10", 32, None, 33_970_563),             # ve/ncsnv2/cifar10 (ncsnv2_64)
    ("ncsnv2", "bedroom128", 128, None, 83_445_379),         # ve/ncsnv2/bedroom (ncsnv2_128)
    ("ncsnpp", "ncsnpp_256", 256, None, 65_574_549),         # ve/church_ncsnpp_continuous
    ("ddpm", "lsun256", 256, None, 111_569_923),             # vp/ddpm/church
]
ALL_SIZES = [(name, size) for name in ("ncsnpp", "ddpm", "ncsnv2") for size in models.sizes(name)]


def _abstract_init(net, shape, **kw):
    """(output, params) as ShapeDtypeStructs: one trace, no weights materialised."""
    x, t = jnp.zeros(shape), jnp.zeros(shape[:1])
    return jax.eval_shape(lambda: net.init_with_output(KEY, x, t, **kw))


def _num_params(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,size,side,published_m,exact", PUBLISHED,
                         ids=[f"{n}-{s}" for n, s, *_ in PUBLISHED])
def test_parameter_counts_match_reference(name, size, side, published_m, exact):
    _, params = _abstract_init(models.make(name, size=size), (1, side, side, 3))
    count = _num_params(params)
    assert count == exact
    if published_m is not None:
        assert abs(count / 1e6 - published_m) / published_m < 0.005


def _min_side(name, size) -> int:
    net = models.make(name, size=size)
    if name == "ncsnv2":
        return 2 ** sum(1 for d in net.dilations[1:] if d == 1)
    return 2 ** (len(net.ch_mult) - 1)


@pytest.mark.parametrize("name,size", ALL_SIZES, ids=[f"{n}-{s}" for n, s in ALL_SIZES])
def test_output_shape_equals_input_shape(name, size):
    """8x8, 32x32, 64x64 where the downsampling depth allows; otherwise a ValueError."""
    net = models.make(name, size=size)
    for side in (8, 32, 64):
        shape = (2, side, side, 3)
        if side % _min_side(name, size):
            with pytest.raises(ValueError, match="divisible"):
                _abstract_init(net, shape)
        else:
            out, _ = _abstract_init(net, shape)
            assert out.shape == shape and out.dtype == jnp.float32


@pytest.fixture(scope="module")
def tiny():
    """One compiled tiny NCSN++ (every feature on: FIR, BigGAN blocks, residual input
    pyramid, attention, labels, dropout 0.5) shared by the real-forward tests: XLA
    compilation, not arithmetic, dominates these tests on CPU."""
    net = models.make("ncsnpp", size="tiny", num_classes=10, dropout=0.5)
    x = jax.random.normal(KEY, (3, 8, 8, 1))
    t = jnp.array([0.1, 1.0, 10.0])
    y = jnp.array([0, 1, 2])
    out, params = fast_jit(lambda x, t, y: net.init_with_output(KEY, x, t, y=y))(x, t, y)
    apply = fast_jit(net.apply, static_argnames="train")
    return dict(net=net, x=x, t=t, y=y, out=out, params=params, apply=apply)


def _assert_zero_head(out):
    """DDPM and NCSN++ end in GroupNorm -> swish -> conv with variance-scaling scale 1e-10
    (score_sde's "init_scale 0"): weight variance 1e-10 / fan_avg, and |swish(u)| <= |u|
    keeps the head input rms <= 1 (GroupNorm at init), so each output has std <=
    sqrt(1e-10 * fan_in / fan_avg) <= 1.5e-5; a few hundred outputs stay below 7 std."""
    assert bool(jnp.all(jnp.isfinite(out)))
    assert 0 < float(jnp.max(jnp.abs(out))) < 1e-4


def test_tiny_ncsnpp_forward_zero_initialised_output(tiny):
    assert tiny["out"].shape == tiny["x"].shape
    _assert_zero_head(tiny["out"])


@pytest.mark.parametrize("name", ["ddpm", "ncsnv2"])
def test_tiny_forward(name):
    """Real init + forward at 8x8x1. NCSNv2 has PyTorch init and no zero head: O(1) outputs."""
    net = models.make(name, size="tiny")
    x = jax.random.normal(KEY, (3, 8, 8, 1))
    out, _ = fast_jit(lambda x, t: net.init_with_output(KEY, x, t))(x, jnp.array([0.1, 1.0, 10.0]))
    assert out.shape == x.shape
    if name == "ncsnv2":
        assert bool(jnp.all(jnp.isfinite(out))) and 0.01 < float(jnp.std(out)) < 100.0
    else:
        _assert_zero_head(out)


VARIANTS = [
    dict(resblock_type="ddpm", fir=False),
    dict(resblock_type="ddpm", fir=True),
    dict(resblock_type="biggan", fir=False, embedding_type="positional"),
    dict(progressive="output_skip", progressive_input="input_skip"),
    dict(progressive="output_skip", progressive_input="input_skip", progressive_combine="cat"),
    dict(progressive="residual", progressive_input="residual", skip_rescale=False),
    dict(progressive_input="none", resamp_with_conv=False),
    dict(resblock_type="ddpm", resamp_with_conv=False, fir=True),
    dict(conditional=False, nonlinearity="elu"),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_ncsnpp_variants_shapes(variant):
    net = models.make("ncsnpp", size="tiny", ch_mult=(1, 2, 2), **variant)
    for shape in [(2, 8, 8, 1), (2, 16, 16, 3)]:
        out, _ = _abstract_init(net, shape)
        assert out.shape == shape


def test_ncsnpp_variant_forward_runs():
    """One real forward through the progressive-growing paths (pyramids, FIR resampling)."""
    net = models.make("ncsnpp", size="tiny", progressive="residual",
                      progressive_input="input_skip", progressive_combine="cat", init_scale=1.0)
    x = jax.random.normal(KEY, (2, 8, 8, 1))
    t = jnp.array([-1.0, 2.0])
    out, _ = fast_jit(lambda x, t: net.init_with_output(KEY, x, t))(x, t)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))


def test_registry_errors_name_the_choices():
    with pytest.raises(ValueError,
                       match=r"unknown model 'nope'; available: \['classifier', 'ddpm'"):
        models.make("nope")
    with pytest.raises(ValueError, match="unknown size 'huge'.*ncsnpp_cont"):
        models.make("ncsnpp", size="huge")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['nff'\].*'nf'"):
        models.make("ncsnpp", nff=3)
    with pytest.raises(ValueError, match="progressive='sideways'.*output_skip"):
        models.make("ncsnpp", progressive="sideways")
    with pytest.raises(ValueError, match="resblock_type"):
        models.make("ncsnpp", size="tiny", resblock_type="wide")
    with pytest.raises(ValueError, match="nonlinearity"):
        models.make("ddpm", nonlinearity="gelu2")
    with pytest.raises(ValueError, match="refine_mult"):
        models.make("ncsnv2", refine_mult=(1, 2))
    assert "ncsnpp_cont" in models.sizes("ncsnpp") and "tiny" in models.sizes("ddpm")
    # make() with overrides keeps the size's other fields.
    net = models.make("ncsnpp", size="ddpmpp_cont", nf=64)
    assert net.nf == 64 and net.embedding_type == "positional" and net.num_res_blocks == 4


@pytest.mark.parametrize("name,size,shape", [
    ("ncsnpp", "tiny", (1, 9, 9, 1)),
    ("ncsnpp", "ncsnpp_cont", (1, 36, 36, 3)),       # 3 downsamplings: needs multiples of 8
    ("ddpm", "cifar10", (1, 32, 20, 3)),
    ("ncsnv2", "bedroom128", (1, 30, 30, 3)),
    ("ncsnpp", "tiny", (8, 8, 1)),                   # no batch axis
])
def test_bad_input_size_fails_at_build_time(name, size, shape):
    with pytest.raises(ValueError, match="NCSNpp|DDPM|NCSNv2"):
        _abstract_init(models.make(name, size=size), shape)


def test_bad_t_and_label_shapes():
    net = models.make("ncsnpp", size="tiny")
    x = jnp.zeros((2, 8, 8, 1))
    with pytest.raises(ValueError, match=r"t must have shape \[2\]"):
        jax.eval_shape(lambda: net.init(KEY, x, jnp.zeros(())))
    with pytest.raises(ValueError, match="num_classes=0"):
        jax.eval_shape(lambda: net.init(KEY, x, jnp.zeros(2), y=jnp.zeros(2, jnp.int32)))
    net_c = models.make("ncsnpp", size="tiny", num_classes=10)
    with pytest.raises(ValueError, match=r"y must have shape \[2\]"):
        jax.eval_shape(lambda: net_c.init(KEY, x, jnp.zeros(2), y=jnp.zeros(3, jnp.int32)))


def _label_table_shapes(net, x, t):
    params = jax.eval_shape(lambda: net.init(KEY, x, t, y=jnp.zeros(x.shape[:1], jnp.int32)))
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [v.shape for p, v in flat if "LabelEmbedding" in jax.tree_util.keystr(p)]


def _perturbed(params):
    """Params with O(0.05) noise added, so the zero-initialised head passes a signal."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    return tree.unflatten([v + 0.05 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)])


def test_class_conditional_path(tiny):
    """Labels change the output; y=None uses the extra 'no label' row (index num_classes)."""
    x, t, apply = tiny["x"], tiny["t"], tiny["apply"]
    assert _label_table_shapes(tiny["net"], x, t) == [(11, 64)]
    assert _label_table_shapes(models.make("ddpm", size="tiny", num_classes=3), x, t) == [(4, 64)]
    params = _perturbed(tiny["params"])
    out_a = apply(params, x, t, y=jnp.array([3, 3, 3]))
    out_b = apply(params, x, t, y=jnp.array([7, 7, 7]))
    out_null = apply(params, x, t, y=jnp.array([10, 10, 10]))
    out_none = apply(params, x, t)
    assert float(jnp.max(jnp.abs(out_a - out_b))) > 1e-3
    np.testing.assert_allclose(out_none, out_null, rtol=1e-5, atol=1e-6)


def test_mlp_and_vdm_take_labels():
    """The vector MLP and VDM's U-Net have the same label table (num_classes + 1 rows, the
    last one "no label", also used for y=None); labels change the MLP's output."""
    x, t = jnp.zeros((3, 8, 8, 1)), jnp.zeros(3)
    vdm = models.make("vdm", size="tiny", num_classes=4)
    assert _label_table_shapes(vdm, x, t) == [(5, 64)]
    mlp = models.make("mlp", size="tiny", num_classes=4)
    xv = jax.random.normal(KEY, (3, 2))
    assert _label_table_shapes(mlp, xv, t) == [(5, 32)]
    params = _perturbed(jax.jit(mlp.init)(KEY, xv, t, y=jnp.zeros(3, jnp.int32)))
    apply = jax.jit(mlp.apply)
    out = [apply(params, xv, t, y=jnp.full(3, k)) for k in (1, 2, 4)]
    assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 1e-3
    np.testing.assert_allclose(apply(params, xv, t), out[2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_classes=0"):
        jax.eval_shape(lambda: models.make("mlp", size="tiny").init(
            KEY, xv, t, y=jnp.zeros(3, jnp.int32)))


def test_dropout_path(tiny):
    x, t, y, apply = tiny["x"], tiny["t"], tiny["y"], tiny["apply"]
    params = _perturbed(tiny["params"])
    k1, k2 = jax.random.split(jax.random.PRNGKey(7))
    eval_out = apply(params, x, t, y=y)
    a = apply(params, x, t, y=y, train=True, rngs={"dropout": k1})
    a_again = apply(params, x, t, y=y, train=True, rngs={"dropout": k1})
    b = apply(params, x, t, y=y, train=True, rngs={"dropout": k2})
    np.testing.assert_array_equal(a, a_again)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3
    assert float(jnp.max(jnp.abs(a - eval_out))) > 1e-3
    np.testing.assert_array_equal(apply(params, x, t, y=y, train=False), eval_out)
    with pytest.raises(Exception, match="dropout"):
        apply(params, x, t, y=y, train=True)


def test_tiny_model_trains_with_dsm_without_retracing(tiny):
    """VE SDE, "score" parameterization (the network sees log sigma through its Fourier
    embedding and its output is divided by sigma), DSM loss, Adam.

    With a zero-output network the per-dimension residual (out + z)^2 has mean E[z^2] = 1
    exactly; the held-out estimate (4 fixed keys x 64 images x 64 dims = n) is checked
    against 1 within 5 standard errors sqrt(2 / n) (Var z^2 = 2). The data sit on two
    images, where the optimum is far below 1, so 40 Adam steps must cut the held-out loss
    clearly. The jitted step is traced once over the 40 steps and again only for a new
    batch shape."""
    net, params = tiny["net"], tiny["params"]
    sde = sdes.make("ve")
    score = parameterization.make("score").score_model(net.apply, sde)
    patterns = jnp.stack([jnp.linspace(-1, 1, 64), -jnp.linspace(-1, 1, 64)]).reshape(2, 8, 8, 1)
    data = jnp.tile(patterns, (32, 1, 1, 1))
    opt = optax.adam(2e-3)
    traces = []

    @fast_jit
    def loss_and_grad(p, batch, key):
        traces.append(batch.shape)
        return jax.value_and_grad(losses.dsm_loss)(p, score, sde, batch, key)

    update = fast_jit(opt.update)
    held_out = jax.random.split(jax.random.PRNGKey(123), 4)
    evaluate = lambda p: np.mean([float(loss_and_grad(p, data, k)[0]) for k in held_out])  # noqa: E731
    before = evaluate(params)
    assert abs(before - 1.0) < 5 * np.sqrt(2.0 / (4 * data.size))
    state = opt.init(params)
    for key in jax.random.split(jax.random.PRNGKey(1), 40):
        _, grads = loss_and_grad(params, data, key)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    after = evaluate(params)
    assert after < 0.7 * before, (before, after)
    assert traces == [data.shape]
    loss_and_grad.lower(params, data[:5], held_out[0])  # traces, does not compile
    assert traces == [data.shape, (5, 8, 8, 1)]


# ---------------------------------------------------------------------------------------
# Layers: embeddings and FIR resampling against independent NumPy computations.
# ---------------------------------------------------------------------------------------


def test_timestep_embedding_matches_formula():
    t = np.array([0.0, 1.0, 17.0, 999.0])
    dim = 10
    freqs = np.exp(-np.log(10000.0) * np.arange(5) / 4)
    want = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], axis=1)
    np.testing.assert_allclose(layers.timestep_embedding(jnp.asarray(t), dim), want,
                               rtol=1e-4, atol=1e-4)


def test_fourier_features_are_unit_circle_pairs_and_frozen():
    proj = layers.GaussianFourierProjection(embedding_size=8, scale=16.0)
    t = jnp.array([-3.0, 0.0, 2.5])
    params = proj.init(KEY, t)
    emb = proj.apply(params, t)
    np.testing.assert_allclose(emb[:, :8] ** 2 + emb[:, 8:] ** 2, 1.0, rtol=1e-5)
    w = np.asarray(params["params"]["W"])
    assert 4.0 < np.std(w) < 40.0  # N(0, 16^2) with 8 draws
    grads = jax.grad(lambda p: jnp.sum(proj.apply(p, t)))(params)
    assert float(jnp.max(jnp.abs(grads["params"]["W"]))) == 0.0


def _fir_1d_up(x, k):
    """Zero-insert x2 along axis 1, full convolution with 2 k / sum(k), keep [1 : 1 + 2H]."""
    up = np.zeros((x.shape[0], 2 * x.shape[1]))
    up[:, ::2] = x
    kk = 2 * np.asarray(k, float) / np.sum(k)
    full = np.stack([np.convolve(row[:-1], kk) for row in up])
    return full[:, 1:1 + 2 * x.shape[1]]


def _fir_1d_down(x, k):
    """Full convolution with k / sum(k), keep samples 2, 4, ..., (H/2 of them)."""
    kk = np.asarray(k, float) / np.sum(k)
    full = np.stack([np.convolve(row, kk) for row in x])
    return full[:, 2::2][:, : x.shape[1] // 2]


@pytest.mark.parametrize("k", [(1, 3, 3, 1), (1, 1)])
def test_fir_resampling_matches_numpy_separable_convolution(k):
    """StyleGAN2's upfirdn2d with a separable filter = 1-D FIR along H then W (float64
    NumPy). For k = (1, 1) the padding offsets differ from (1, 3, 3, 1), so this case is
    checked against nearest upsampling / 2x2 average pooling instead."""
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3))
    up = np.asarray(layers.upsample_2d(jnp.asarray(x, jnp.float32), k))
    down = np.asarray(layers.downsample_2d(jnp.asarray(x, jnp.float32), k))
    if k == (1, 1):
        want_up = x.repeat(2, axis=1).repeat(2, axis=2)
        want_down = x.reshape(2, 3, 2, 3, 2, 3).mean(axis=(2, 4))
    else:
        def sep(fn, img):  # img [H, W] -> along W then H
            return fn(fn(img, k).T, k).T
        want_up = np.stack([np.stack([sep(_fir_1d_up, x[b, :, :, c]) for c in range(3)], -1)
                            for b in range(2)])
        want_down = np.stack([np.stack([sep(_fir_1d_down, x[b, :, :, c]) for c in range(3)], -1)
                              for b in range(2)])
    np.testing.assert_allclose(up, want_up, atol=1e-5)
    np.testing.assert_allclose(down, want_down, atol=1e-5)


@pytest.mark.parametrize("up", [True, False])
def test_fused_fir_conv_with_identity_kernel_is_fir_resampling(up):
    """With a 3x3 kernel that is the identity at its centre tap (and zero elsewhere) and
    zero bias, the fused conv reduces to pure FIR resampling: the transposed conv puts
    x[i] at 2i + 1, the pads (len(k) - 2 -/+ (3 - 1)) then align it with upsample_2d's
    zero insertion; downwards the centre tap samples the filtered image at 2i + 1."""
    x = jax.random.normal(KEY, (2, 8, 8, 4))
    conv = layers.FIRConv(4, up=up, down=not up, kernel=3)
    kernel = jnp.zeros((3, 3, 4, 4)).at[1, 1].set(jnp.eye(4))
    params = {"params": {"kernel": kernel, "bias": jnp.zeros(4)}}
    want = layers.upsample_2d(x, (1, 3, 3, 1)) if up else layers.downsample_2d(x, (1, 3, 3, 1))
    np.testing.assert_allclose(conv.apply(params, x), want, atol=1e-5)


def test_group_norm_groups():
    assert layers.num_groups(128) == 32 and layers.num_groups(256) == 32
    assert layers.num_groups(64) == 16 and layers.num_groups(144) == 24
    for c in range(1, 300):
        assert c % layers.num_groups(c) == 0


def test_modules_are_typed_dataclasses_without_configdict():
    for name in ("ncsnpp", "ddpm", "ncsnv2"):
        net = models.make(name)
        assert isinstance(net, nn.Module)
        for field in dataclasses.fields(net):
            if field.name not in ("parent", "name"):
                assert isinstance(getattr(net, field.name), (int, float, str, bool, tuple))


def _random_params(net, x, t):
    """Parameters drawn N(0, 0.3^2) (no init run): the zero-initialised output layers
    would hide the rest of the network."""
    leaves, tree = jax.tree.flatten(jax.eval_shape(net.init, KEY, x, t))
    rng = np.random.default_rng(0)
    return tree.unflatten([0.3 * rng.standard_normal(p.shape, np.float32) for p in leaves])


@pytest.mark.parametrize("name,size", [("ncsnpp", "tiny"), ("ddpm", "tiny"), ("ncsnv2", "tiny")])
def test_rescale_input_is_the_network_on_two_x_minus_one(name, size):
    """score_sde's networks trained on [0, 1] data (data.centered=False) see 2 x - 1."""
    x = jax.random.uniform(KEY, (2, 8, 8, 3))
    t = jnp.array([0.3, 2.0])
    plain = models.make(name, size=size)
    params = _random_params(plain, x, t)
    rescaled = models.make(name, size=size, rescale_input=True)
    np.testing.assert_allclose(fast_jit(rescaled.apply)(params, x, t),
                               fast_jit(plain.apply)(params, 2 * x - 1, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_groups,want", [(0, {8, 16}), (32, {32})])
def test_ddpm_norm_groups_sets_every_group_norm(norm_groups, want):
    """0: min(C // 4, 32) per layer (8 at 32 channels, 16 at the 64-channel concat);
    score_sde's DDPM: 32 everywhere."""
    groups = set()

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, layers.GroupNorm):   # every GroupNorm of the models
            groups.add(context.module.num_groups)
        return next_fun(*args, **kwargs)

    net = models.make("ddpm", nf=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,),
                      norm_groups=norm_groups)
    with nn.intercept_methods(record):
        jax.eval_shape(net.init, KEY, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)))
    assert groups == want
    with pytest.raises(ValueError, match="norm_groups=24"):
        models.make("ddpm", nf=32, norm_groups=24)


def test_align_corners_resize_samples_input_at_scaled_positions():
    """Output pixel i samples input position i (n - 1) / (m - 1), linearly interpolated
    (PyTorch's bilinear interpolate with align_corners=True); separable in H and W."""
    col = np.array([1.0, 3.0, 7.0])
    row = np.array([0.0, 10.0])
    x = jnp.asarray((col[:, None] + row[None, :]).reshape(1, 3, 2, 1), jnp.float32)
    out = np.asarray(ncsnv2.resize_align_corners(x, (5, 3)))[0, :, :, 0]
    want_col = np.interp(np.arange(5) * 2 / 4, np.arange(3), col)   # 1, 2, 3, 5, 7
    want_row = np.interp(np.arange(3) * 1 / 2, np.arange(2), row)   # 0, 5, 10
    np.testing.assert_allclose(out, want_col[:, None] + want_row[None, :], rtol=1e-6)


@pytest.mark.parametrize("unbiased", [False, True])
def test_instance_norm_plus_against_float64_formula(unbiased):
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)) * [1.0, 2.0, 3.0] + [0.0, 1.0, -2.0]
    norm = ncsnv2.InstanceNormPlus(unbiased=unbiased)
    params = norm.init(KEY, jnp.asarray(x, jnp.float32))
    out = np.asarray(norm.apply(params, jnp.asarray(x, jnp.float32)))
    p = {k: np.asarray(v, np.float64) for k, v in params["params"].items()}
    means = x.mean(axis=(1, 2))
    mu = (means - means.mean(-1, keepdims=True)) / np.sqrt(
        means.var(-1, ddof=int(unbiased), keepdims=True) + 1e-5)
    h = (x - means[:, None, None]) / np.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-5)
    want = (h + mu[:, None, None] * p["alpha"]) * p["gamma"] + p["beta"]
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ dropout and nin's VJP


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 6, 6, 8), (2, 1, 1, 9)])
@pytest.mark.parametrize("make_key", [jax.random.PRNGKey, jax.random.key])
def test_bernoulli_draws_jaxs_masks_bit_for_bit(shape, make_key):
    """layers.bernoulli is jax.random.bernoulli (raw and typed Threefry keys, any p)."""
    for seed in range(3):
        key = make_key(seed)
        for p in (0.9, 0.5, 0.87, 1e-3, 0.0, 1.0):
            got = jax.jit(lambda k, p=p: layers.bernoulli(k, p, shape))(key)
            want = jax.random.bernoulli(key, p, shape)
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
    mean = float(jnp.mean(layers.bernoulli(make_key(5), 0.9, (64, 1024))))
    assert abs(mean - 0.9) < 4 * np.sqrt(0.9 * 0.1 / 65536)


def test_bernoulli_has_no_threefry_loop_and_defers_to_jax_for_other_prngs():
    """The fused form has no threefry2x32 primitive (JAX's is a 5-iteration loop on CPU);
    an rbg key, not Threefry, gets jax.random.bernoulli's own draw."""
    jaxpr = str(jax.make_jaxpr(lambda k: layers.bernoulli(k, 0.9, (4, 8)))(KEY))
    assert "threefry2x32" not in jaxpr and "while" not in jaxpr
    rbg = jax.random.key(1, impl="rbg")
    np.testing.assert_array_equal(layers.bernoulli(rbg, 0.7, (5, 6)),
                                  jax.random.bernoulli(rbg, 0.7, (5, 6)))


def test_dropout_module_equals_flax_dropout():
    """Same names, same rng stream, same masks and scaling as flax.linen.Dropout."""
    class Net(nn.Module):
        cls: type

        @nn.compact
        def __call__(self, x, train):
            x = self.cls(0.3)(x, deterministic=not train)
            return self.cls(0.1, broadcast_dims=(1, 2))(x, deterministic=not train)

    x = jax.random.normal(KEY, (4, 8, 8, 16))
    for key in (jax.random.PRNGKey(3), jax.random.key(3)):
        got = Net(layers.Dropout).apply({}, x, True, rngs={"dropout": key})
        want = Net(nn.Dropout).apply({}, x, True, rngs={"dropout": key})
        np.testing.assert_array_equal(got, want)
        assert 0.3 < float(jnp.mean(got == 0)) < 0.45   # 1 - 0.7 * 0.9 = 0.37 dropped
    np.testing.assert_array_equal(Net(layers.Dropout).apply({}, x, False), x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_nin_training_vjp_equals_dense_autodiff(dtype):
    """nin(train=True)'s kernel gradient, computed as (g^T x)^T, equals nn.Dense's own to
    rounding; train=False stays differentiable in forward mode (the likelihood's JVPs)."""
    x = jax.random.normal(KEY, (2, 3, 5, 16))
    g = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 5, 8))

    class Nin(nn.Module):
        train: bool

        @nn.compact
        def __call__(self, x):
            return layers.nin(x, 8, init_scale=1.0, dtype=dtype, train=self.train)

    params = Nin(False).init(KEY, x)

    def grads(train):
        def f(p, x):
            return jnp.sum(Nin(train).apply(p, x).astype(jnp.float32) * g)
        return jax.jit(jax.grad(f, argnums=(0, 1)))(params, x)

    got, want = grads(True), grads(False)
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(jnp.max(jnp.abs(b))))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(Nin(True).apply(p, x))))(params))
    assert "custom_vjp_call" in jaxpr
    _, tangent = jax.jvp(lambda x: Nin(False).apply(params, x), (x,), (jnp.ones_like(x),))
    assert tangent.shape == (2, 3, 5, 8)
