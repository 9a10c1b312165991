"""Mixed precision, rematerialisation and the GroupNorm layer of every network family.

* bfloat16 compute (`dtype="bfloat16"`) keeps the parameters (structure, shapes, float32
  dtype), computes every convolution and matmul in bfloat16, returns float32, and agrees
  with the float32 network to a tolerance that follows from bfloat16's 8-bit significand:
  unit roundoff u = 2^-8. A layer rounds its input, weights and output, each a relative
  error of at most u (RMS u / sqrt(3) for round-to-nearest); independent errors through L
  such layers add in quadrature to about sqrt(L) u, so the relative RMS error of the output
  is bounded here by 2 sqrt(L) u (factor 2: normalisation and residual sums neither amplify
  nor fully cancel errors), with L the number of parameterised layers. It must also be
  far above float32's rounding (> u / 16), or bfloat16 was not used. Gradients of a
  float32 loss with respect to the float32 parameters are finite and float32 and obey the
  same bound (one backward pass roughly doubles L), except through a max-pool (NCSNv2),
  whose gradient only keeps its direction.
* `remat=True` gives the same parameters, outputs and gradients (dropout included: the
  recomputation reuses the dropout key).
* `layers.GroupNorm` equals a float64 NumPy GroupNorm.
"""

import functools
import math
import os
from unittest import mock

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
import numpy as np
import pytest

from sde_lab import models, parallel
from sde_lab.models import layers

KEY = jax.random.PRNGKey(0)
U_BF16 = 2.0**-8
# Few calls per program on tiny inputs: XLA's backend optimisation costs more than it saves.
fast_jit = functools.partial(jax.jit, compiler_options={
    "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})

# (model, size, field overrides, input shape): every family and the NCSN++ paths that
# have their own layers (FIR/BigGAN/pyramids; DDPM blocks with output-skip pyramid).
FAMILIES = {
    "ncsnpp": ("ncsnpp", "tiny", {}, (2, 8, 8, 3)),
    "ncsnpp_ddpm_blocks": ("ncsnpp", "tiny", dict(
        resblock_type="ddpm", progressive="output_skip", progressive_input="input_skip",
        embedding_type="positional"), (2, 8, 8, 3)),
    "ddpm": ("ddpm", "tiny", {}, (2, 8, 8, 3)),
    "ncsnv2": ("ncsnv2", "tiny", {}, (2, 16, 16, 3)),
    "vdm": ("vdm", "tiny", {}, (2, 8, 8, 3)),
    "mlp": ("mlp", "tiny", {}, (4, 5)),
}
MAX_POOL_FAMILIES = ("ncsnv2",)  # RefineNet's chained residual pooling
# NCSNv2's tiny RefineNet compiles slowest (75 layers): its network-level tests are slow.
SLOW = ("ncsnv2",)


def _params(families):
    return [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in families]


def _perturbed(params):
    """O(0.05) noise on every parameter: the zero-initialised heads then pass a signal."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    return tree.unflatten([v + 0.05 * jax.random.normal(k, v.shape, v.dtype)
                           for k, v in zip(keys, leaves)])


def _inputs(shape):
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    return x, jnp.linspace(0.2, 2.0, shape[0])


def _num_layers(params) -> int:
    """Parameterised layers: kernels of convs/dense layers (one per layer)."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return sum(1 for p, v in paths if "kernel" in jax.tree_util.keystr(p) and v.ndim >= 2)


def _rel_rms(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)))


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(tree)])


@pytest.fixture(scope="module", params=_params(FAMILIES))
def pair(request):
    """fp32 and bf16 versions of one family: params, outputs and gradients (one compiled
    value_and_grad per dtype)."""
    name, size, fields, shape = FAMILIES[request.param]
    nets = {dt: models.make(name, size=size, dtype=dt, **fields)
            for dt in ("float32", "bfloat16")}
    x, t = _inputs(shape)
    params = _perturbed(fast_jit(nets["float32"].init)(KEY, x, t))
    out = {}
    for dt, net in nets.items():
        def loss(p, net=net):
            y = net.apply(p, x, t)
            return jnp.mean(y**2), y

        (_, y), grads = fast_jit(jax.value_and_grad(loss, has_aux=True))(params)
        out[dt] = dict(y=y, grads=grads)
    return dict(family=request.param, nets=nets, x=x, t=t, params=params, out=out)


def test_bf16_keeps_float32_parameters(pair):
    x, t = pair["x"], pair["t"]
    shapes = {dt: jax.eval_shape(net.init, KEY, x, t) for dt, net in pair["nets"].items()}
    assert jax.tree.structure(shapes["float32"]) == jax.tree.structure(shapes["bfloat16"])
    for a, b in zip(jax.tree.leaves(shapes["float32"]), jax.tree.leaves(shapes["bfloat16"])):
        assert a.shape == b.shape and a.dtype == b.dtype == jnp.float32


def test_bf16_computes_convs_and_matmuls_in_bf16(pair):
    """Every convolution and dot of the bf16 forward takes bfloat16 operands."""
    net = pair["nets"]["bfloat16"]
    jaxpr = jax.make_jaxpr(net.apply)(pair["params"], pair["x"], pair["t"])
    ops = []

    def visit(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                ops.append((eqn.primitive.name, [v.aval.dtype for v in eqn.invars]))
            for sub in jax_core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jaxpr.jaxpr)
    assert ops
    assert all(d == jnp.bfloat16 for _, dtypes in ops for d in dtypes), ops


def test_bf16_forward_and_gradients_agree_with_fp32(pair):
    out32, out16 = pair["out"]["float32"], pair["out"]["bfloat16"]
    assert out16["y"].dtype == jnp.float32 and out16["y"].shape == pair["x"].shape
    num_layers = _num_layers(pair["params"])
    bound = 2 * math.sqrt(num_layers) * U_BF16
    err = _rel_rms(out16["y"], out32["y"])
    assert U_BF16 / 16 < err < bound, (pair["family"], num_layers, err, bound)

    grads16 = out16["grads"]
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
    g16, g32 = _flat(grads16), _flat(out32["grads"])
    assert np.all(np.isfinite(g16))
    grad_err = _rel_rms(g16, g32)
    if pair["family"] in MAX_POOL_FAMILIES:
        # A max-pool's gradient is discontinuous in its input: rounding that reorders two
        # nearly equal inputs sends the whole gradient to the other one. Only the
        # direction is comparable.
        cosine = g16 @ g32 / np.linalg.norm(g16) / np.linalg.norm(g32)
        assert cosine > 0.95, (pair["family"], grad_err, cosine)
    else:
        assert grad_err < 2 * math.sqrt(2 * num_layers) * U_BF16, (pair["family"], grad_err)


def test_bad_dtype_is_one_line_value_error():
    with pytest.raises(ValueError, match=r"dtype='int8' is not valid; choose from \['float32'"):
        models.make("ncsnpp", size="tiny", dtype="int8")
    with pytest.raises(ValueError, match="param_dtype='fp33'"):
        models.make("mlp", size="tiny", param_dtype="fp33")


# ---------------------------------------------------------------------------------------
# Rematerialisation.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", _params(["ncsnpp", "ddpm", "ncsnv2", "vdm"]))
def test_remat_gives_same_params_outputs_and_gradients(family):
    """(ncsnpp_ddpm_blocks' residual block is ddpm's.)"""
    name, size, fields, shape = FAMILIES[family]
    x, t = _inputs(shape)
    nets = [models.make(name, size=size, remat=r, dropout=0.3, **fields)
            if name != "ncsnv2" else models.make(name, size=size, remat=r)
            for r in (False, True)]
    shapes = [jax.eval_shape(net.init, KEY, x, t) for net in nets]
    assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
    params = _perturbed(fast_jit(nets[0].init)(KEY, x, t))
    train = {} if name == "ncsnv2" else dict(train=True, rngs={"dropout": jax.random.PRNGKey(3)})

    def run(net):
        def loss(p):
            y = net.apply(p, x, t, **train)
            return jnp.mean(y**2), y

        return fast_jit(jax.value_and_grad(loss, has_aux=True))(params)

    (loss0, y0), g0 = run(nets[0])
    (loss1, y1), g1 = run(nets[1])
    # Same operations; only XLA's fusion inside the checkpointed blocks differs, i.e. float32
    # rounding (u = 6e-8) accumulated over up to ~75 layers: allow ~100 u of the largest value.
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(y0))))
    np.testing.assert_allclose(_flat(g1), _flat(g0), rtol=1e-4,
                               atol=1e-5 * float(np.max(np.abs(_flat(g0)))))


def test_remat_recomputes_in_the_backward_pass():
    """The gradient's jaxpr holds checkpoint (remat) regions only when remat=True."""
    x, t = _inputs((2, 8, 8, 3))
    counts = []
    for remat in (False, True):
        net = models.make("ncsnpp", size="tiny", remat=remat)
        params = jax.eval_shape(net.init, KEY, x, t)
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(net.apply(p, x, t))))(params)
        counts.append(str(jaxpr).count("checkpoint") + str(jaxpr).count("remat"))
    assert counts[0] == 0 and counts[1] > 0


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's scheduler")
def test_remat_shrinks_the_training_gradients_temporaries():
    """XLA's temporary allocation for a training gradient (dropout on) is smaller with
    remat. With plain nn.remat, XLA:CPU scheduled the recomputations and the parameter
    gradients so that remat saved nothing (14.9 MiB both ways here; layers.checkpointed
    orders them: 9.4 MiB)."""
    x, t = jnp.zeros((8, 16, 16, 3)), jnp.full((8,), 0.5)
    temps = []
    for remat in (False, True):
        net = models.make("ncsnpp", size="tiny", remat=remat)
        params = jax.eval_shape(net.init, KEY, x[:1], t[:1])

        def loss(p, net=net):
            y = net.apply(p, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
            return jnp.mean(y**2)

        compiled = jax.jit(jax.grad(loss)).lower(params).compile()
        temps.append(compiled.memory_analysis().temp_size_in_bytes)
    assert temps[1] < 0.8 * temps[0], temps


# ---------------------------------------------------------------------------------------
# GroupNorm.
# ---------------------------------------------------------------------------------------


def _np_group_norm(x, groups, scale, bias, eps=1e-6):
    b, h, w, c = x.shape
    g = x.reshape(b, h * w, groups, c // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_group_norm_matches_float64_numpy(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2.0, size=(3, 4, 5, 12))
    scale, bias = rng.normal(size=12), rng.normal(size=12)
    norm = layers.GroupNorm(num_groups=4, dtype=dtype)
    params = {"params": {"scale": jnp.asarray(scale, jnp.float32),
                         "bias": jnp.asarray(bias, jnp.float32)}}
    x_in = jnp.asarray(x, dtype)
    y = norm.apply(params, x_in)
    assert y.dtype == jnp.dtype(dtype)
    want = _np_group_norm(np.asarray(x_in, np.float64), 4, scale, bias)
    # float32: E[x^2] - E[x]^2 loses log2(1 + mean^2/var) ~ 1 bit; bf16: one output rounding.
    tol = 1e-5 if dtype == "float32" else 2 * U_BF16
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=tol, atol=tol)
    assert jax.tree.structure(norm.init(KEY, x_in)) == jax.tree.structure(params)


# ---------------------------------------------------------------------------------------
# Kernel gradients as matrix products (conv_backward="gemm").
# ---------------------------------------------------------------------------------------


def _lax_conv(x, w, padding, strides=(1, 1)):
    return jax.lax.conv_general_dilated(x, w, strides, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _gemm_conv(x, w, padding, strides=(1, 1)):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    return layers.gemm_backward_conv(x, w, strides, padding, dimension_numbers=dn)


@pytest.mark.parametrize("kernel,padding,strides", [
    (3, "SAME", (1, 1)), (3, ((1, 0), (2, 1)), (1, 1)), (1, "SAME", (1, 1)), (3, "VALID", (1, 1)),
    (3, "SAME", (2, 2)),  # not a stride-1 conv: lax's own, unchanged
])
def test_gemm_backward_conv_equals_lax(kernel, padding, strides):
    """Value, gradients (x and kernel), JVP in x and in the kernel, and a Hessian-vector
    product equal lax's convolution to float32 rounding of sums of ~100 terms."""
    k = jax.random.split(KEY, 4)
    x = jax.random.normal(k[0], (2, 6, 5, 4))
    w = jax.random.normal(k[1], (kernel, kernel, 4, 3))
    tx, tw = jax.random.normal(k[2], x.shape), jax.random.normal(k[3], w.shape)
    results = []
    for conv in (_lax_conv, _gemm_conv):
        def f(x, w, conv=conv):
            return jnp.sum(jnp.sin(conv(x, w, padding, strides)))

        results.append([
            conv(x, w, padding, strides), *jax.grad(f, argnums=(0, 1))(x, w),
            jax.jvp(lambda x, conv=conv: conv(x, w, padding, strides), (x,), (tx,))[1],
            jax.jvp(lambda w, conv=conv: conv(x, w, padding, strides), (w,), (tw,))[1],
            jax.jvp(jax.grad(f, argnums=1), (x, w), (tx, tw))[1]])
    for got, want in zip(results[1], results[0]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_gemm_backward_computes_kernel_gradient_without_a_convolution():
    """Reverse mode through one stride-1 conv: lax needs 3 convolutions (forward, input and
    kernel gradients); "gemm" needs 2 and one matrix product per tap (9) instead."""
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 5))

    def count(conv):
        jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(conv(x, w, "SAME") ** 2),
                                            argnums=(0, 1)))(x, w))
        return jaxpr.count("conv_general_dilated"), jaxpr.count("dot_general")

    assert count(_lax_conv) == (3, 0)
    assert count(_gemm_conv) == (2, 9)


@pytest.mark.parametrize("family", _params(["ncsnpp", "ncsnv2", "vdm"]))
def test_conv_backward_gemm_equals_xla_in_networks(family):
    """Whole networks (ncsnpp's layers also serve ddpm; ncsnv2 mixes dilated convs, which
    stay lax's; vdm builds its own convs): same loss gradients either way."""
    name, size, fields, shape = FAMILIES[family]
    x, t = _inputs(shape)
    nets = [models.make(name, size=size, conv_backward=cb, **fields) for cb in ("xla", "gemm")]
    params = _perturbed(fast_jit(nets[0].init)(KEY, x, t))
    grads = [_flat(fast_jit(jax.grad(lambda p, net=net: jnp.mean(net.apply(p, x, t) ** 2)))(
        params)) for net in nets]
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-4,
                               atol=1e-5 * float(np.max(np.abs(grads[0]))))
    # "auto": gemm only where XLA:CPU runs YNNPACK's convolutions (not this test process:
    # conftest sets XLA's own, the runner's default).
    assert parallel.cpu_convolutions() == "xla" and layers.conv_fn("auto") is None
    with mock.patch.dict(os.environ, {"XLA_FLAGS": ""}):
        assert layers.conv_fn("auto") is (layers.gemm_backward_conv
                                          if jax.default_backend() == "cpu" else None)


# ---------------------------------------------------------------------------------------
# The runner: config.train.compute_dtype, model.remat / conv_backward
# ---------------------------------------------------------------------------------------


def _conv_dtypes(fn, *args) -> set:
    """Input dtypes of every convolution and matmul in fn's jaxpr (traced, not compiled)."""
    found = set()

    def visit(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                found.update(v.aval.dtype for v in eqn.invars)
            for sub in jax_core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_config_dtype_sets_the_train_step_and_keeps_float32_state():
    """train.compute_dtype=bfloat16: the train loss computes its convs/matmuls in bfloat16 and is
    float32 itself, as are its gradients and the whole train state (params, EMA, Adam
    moments: what checkpoints hold); the eval score (samplers, likelihood) stays float32."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import digits
    from sde_lab import experiment, state

    config = digits.get_config("runlocal")
    config.train.compute_dtype = "bfloat16"
    config.model.remat, config.model.conv_backward = True, "xla"
    exp = experiment.build(config)
    assert (exp.net.dtype, exp.net.remat, exp.net.conv_backward) == ("bfloat16", True, "xla")
    assert exp.eval_net.dtype == "float32"
    abstract = state.abstract_state(exp)
    state_dtypes = {v.dtype for v in jax.tree.leaves(
        (abstract.params, abstract.ema_params, abstract.opt_state))}
    assert state_dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}   # int: Adam's count
    params = abstract.params   # shapes only: nothing below is compiled or run
    x = jax.ShapeDtypeStruct((2,) + exp.shape, jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    loss_fn = exp.loss_fn()
    batch = {"x": x}
    assert _conv_dtypes(loss_fn, params, batch, keys) == {jnp.dtype(jnp.bfloat16)}
    loss, grads = jax.eval_shape(jax.value_and_grad(loss_fn), params, batch, keys)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    t = jax.ShapeDtypeStruct((2,), jnp.float32)

    def score(p, x, t):
        return exp.score_fn(p)(x, t)

    assert _conv_dtypes(score, params, x, t) == {jnp.dtype(jnp.float32)}
    assert jax.eval_shape(score, params, x, t).dtype == jnp.float32
