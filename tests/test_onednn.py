"""oneDNN convolutions (sde_lab.onednn; model.conv_backward="onednn") against lax's.

Needs oneDNN and a C++ compiler (the test extra installs oneDNN on Linux x86-64); without
them every test here is skipped with the reason, except the one-line error of the runner.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_lab import experiment, models, onednn
from sde_lab.models.conv_args import NHWC
from test_precision import KEY, U_BF16, _lax_conv, _perturbed, _rel_rms  # shared helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_onednn = pytest.mark.skipif(onednn.unavailable() is not None,
                                  reason=str(onednn.unavailable()))
needs_bf16 = pytest.mark.skipif(onednn.unavailable("bfloat16") is not None,
                                reason=str(onednn.unavailable("bfloat16")))


def _onednn_conv(x, w, padding, strides=(1, 1)):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    return onednn.conv(x, w, strides, padding, dimension_numbers=dn)


def _value_and_grads(conv, x, w, padding, strides):
    def f(x, w):
        return jnp.sum(jnp.sin(conv(x, w, padding, strides).astype(jnp.float32)))

    return [conv(x, w, padding, strides), *jax.jit(jax.grad(f, argnums=(0, 1)))(x, w)]


CASES = [(3, "SAME", (1, 1)), (3, ((1, 0), (2, 1)), (1, 1)), (1, "SAME", (1, 1)),
         (3, "VALID", (1, 1)), (3, "SAME", (2, 2))]  # the last: strided, lax's own


@needs_onednn
@pytest.mark.parametrize("threads", ["1", "2"])  # separate gradient calls; one joint call
@pytest.mark.parametrize("kernel,padding,strides", CASES)
def test_float32_value_and_gradients_equal_lax(kernel, padding, strides, threads):
    """Output and both gradients equal lax's to float32 rounding of sums of ~100 terms."""
    k = jax.random.split(KEY, 2)
    x = jax.random.normal(k[0], (2, 7, 6, 5))
    w = jax.random.normal(k[1], (kernel, kernel, 5, 4))
    want = _value_and_grads(_lax_conv, x, w, padding, strides)
    with mock.patch.dict(os.environ, {"SDE_LAB_ONEDNN_THREADS": threads}):
        got = _value_and_grads(_onednn_conv, x, w, padding, strides)
    for g, r in zip(got, want):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(r))))


@needs_bf16
@pytest.mark.parametrize("kernel,padding", [(3, "SAME"), (1, "SAME")])
def test_bfloat16_is_float32_accumulation_of_bfloat16_operands(kernel, padding):
    """bf16 in, bf16 out: against lax in float32 on the same (bf16-rounded) operands the
    output and gradients differ by bf16 rounding of the results (plus the cotangent's
    rounding to bf16)."""
    k = jax.random.split(KEY, 2)
    x = jax.random.normal(k[0], (4, 8, 8, 64)).astype(jnp.bfloat16)
    w = (jax.random.normal(k[1], (kernel, kernel, 64, 32)) / 24).astype(jnp.bfloat16)
    want = _value_and_grads(_lax_conv, x.astype(jnp.float32), w.astype(jnp.float32),
                            padding, (1, 1))
    got = _value_and_grads(_onednn_conv, x, w, padding, (1, 1))
    for g, r in zip(got, want):
        assert g.dtype == jnp.bfloat16
        assert _rel_rms(g, r) < 2 * U_BF16


@needs_onednn
def test_vmap_over_an_extra_axis_equals_lax():
    """Per-example gradients (vmap of grad) map the calls one element at a time."""
    k = jax.random.split(KEY, 2)
    x = jax.random.normal(k[0], (3, 2, 6, 6, 4))
    w = jax.random.normal(k[1], (3, 3, 4, 5))

    def per_example(conv):
        loss = lambda w, x: jnp.sum(jnp.sin(conv(x, w, "SAME")))  # noqa: E731
        return jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0)))(w, x)

    for got, want in zip(per_example(_onednn_conv), per_example(_lax_conv)):
        np.testing.assert_allclose(got, want, rtol=1e-5,
                                   atol=1e-5 * float(jnp.max(jnp.abs(want))))


@needs_onednn
def test_stride_one_convolutions_are_ffi_calls_and_others_stay_lax():
    """Reverse mode through a stride-1 conv: oneDNN calls and no XLA convolution (forward,
    input gradient, kernel gradient; with a team of threads per call the two gradients
    are one call, run in turn); a strided conv is lax's."""
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 5))

    def count(strides, threads):
        with mock.patch.dict(os.environ, {"SDE_LAB_ONEDNN_THREADS": threads}):
            jaxpr = str(jax.make_jaxpr(jax.grad(
                lambda x, w: jnp.sum(_onednn_conv(x, w, "SAME", strides) ** 2),
                argnums=(0, 1)))(x, w))
        called = re.findall(r"target_name=(\w+)", jaxpr)
        return jaxpr.count("conv_general_dilated"), {
            key: called.count(name) for key, name in onednn.TARGETS.items()}

    one = dict(fwd=1, bwd_data=0, bwd_weights=0, bwd=0)
    assert count((1, 1), "1") == (0, dict(one, bwd_data=1, bwd_weights=1))
    assert count((1, 1), "2") == (0, dict(one, bwd=1))
    assert count((2, 2), "2") == (3, dict.fromkeys(one, 0))


@needs_onednn
@pytest.mark.parametrize("family", ["ncsnpp", "ddpm", "vdm"])
def test_networks_train_the_same_with_onednn(family):
    """Whole networks: the float32 loss gradient equals XLA's convolutions' to float32
    rounding; in bfloat16 (on CPUs where oneDNN has it) both sides round differently,
    within a few bf16 units."""
    name, size, shape = {"ncsnpp": ("ncsnpp", "tiny", (2, 8, 8, 3)),
                         "ddpm": ("ddpm", "tiny", (2, 8, 8, 3)),
                         "vdm": ("vdm", "tiny", (2, 8, 8, 3))}[family]
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    t = jnp.linspace(0.2, 0.9, shape[0])
    grads = {}
    bf16 = onednn.unavailable("bfloat16") is None
    for dtype in ("float32", "bfloat16") if bf16 else ("float32",):
        for cb in ("xla", "onednn"):
            net = models.make(name, size=size, conv_backward=cb, dtype=dtype)
            if (dtype, cb) == ("float32", "xla"):
                params = _perturbed(net.init(KEY, x, t))  # a signal through the zero heads
            grad = jax.jit(jax.grad(lambda p, net=net: jnp.mean(net.apply(p, x, t) ** 2)))
            grads[(dtype, cb)] = np.concatenate(
                [np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(grad(params))])
    f32, ref = grads[("float32", "onednn")], grads[("float32", "xla")]
    np.testing.assert_allclose(f32, ref, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(ref))))
    if bf16:
        assert _rel_rms(grads[("bfloat16", "onednn")], ref) < 8 * U_BF16
        assert _rel_rms(grads[("bfloat16", "xla")], ref) < 8 * U_BF16


@needs_onednn
def test_the_runner_trains_with_onednn_and_evaluates_with_xla_convolutions():
    """model.conv_backward=onednn: the train loss's gradient is oneDNN's and equals XLA's;
    sampling and likelihoods (forward-mode JVPs, which the custom VJP does not have) use
    `eval_net`, the same network with XLA's convolutions."""
    sys.path.insert(0, ROOT)
    from configs import digits
    from sde_lab import likelihood

    exps = {}
    for cb in ("xla", "onednn"):
        config = digits.get_config("runlocal")
        config.model.conv_backward = cb
        exps[cb] = experiment.build(config)
    exp = exps["onednn"]
    assert exp.net.conv_backward == "onednn" and exp.eval_net.conv_backward == "auto"
    params = exp.init_params(KEY)
    x = jax.random.uniform(jax.random.PRNGKey(2), (4,) + exp.shape)
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    grads = [jax.jit(jax.grad(e.loss_fn()))(params, {"x": x}, keys) for e in exps.values()]
    for a, b in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(grads[0])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda z: exp.net.apply(params["net"], z, jnp.full((4,), 0.5)), (x,), (x,))
    sde = exp.sde_of(params)
    logp, _ = likelihood.log_likelihood(jax.random.PRNGKey(4), sde, exp.score_fn(params), x,
                                        "hutchinson", rtol=1e-3, atol=1e-3)
    assert np.all(np.isfinite(np.asarray(logp)))


def test_missing_onednn_is_a_config_error_naming_the_option(tmp_path):
    """Without oneDNN the runner says what to install, before building anything."""
    sys.path.insert(0, ROOT)
    from configs import digits

    config = digits.get_config("runlocal")
    config.model.conv_backward = "onednn"
    with mock.patch.dict(os.environ, {"SDE_LAB_ONEDNN_ROOT": str(tmp_path)}):
        with pytest.raises(experiment.ConfigError) as err:
            experiment.build(config)
    message = str(err.value)
    assert message.startswith("model.conv_backward='onednn' is not valid: oneDNN was not found")
    assert "pip install" in message and "\n" not in message


def test_threads_per_call_default_and_override():
    """One OpenMP thread per bfloat16 call, every CPU for float32, unless the variable says."""
    cpus = len(os.sched_getaffinity(0))
    with mock.patch.dict(os.environ, {"SDE_LAB_ONEDNN_THREADS": ""}):
        assert onednn.threads(jnp.bfloat16) == 1
        assert onednn.threads(jnp.float32) == cpus
    with mock.patch.dict(os.environ, {"SDE_LAB_ONEDNN_THREADS": "3"}):
        assert onednn.threads(jnp.bfloat16) == onednn.threads(jnp.float32) == 3
    for bad in ("0", "two", "-1"):
        with mock.patch.dict(os.environ, {"SDE_LAB_ONEDNN_THREADS": bad}):
            with pytest.raises(ValueError, match="SDE_LAB_ONEDNN_THREADS"):
                onednn.threads(jnp.float32)


def _main_on_four_devices(args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args],
                          capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)


@needs_onednn
@pytest.mark.slow
def test_several_devices_train_with_pmap_and_jit_is_refused(tmp_path):
    """On 4 devices: pmap runs each device's oneDNN calls on its own quarter of the batch
    and logs the losses of XLA's convolutions under jit; jit mode with oneDNN is refused in
    one line before anything is compiled or written (XLA would gather the batch)."""
    common = ["--config", "configs/digits.py:runlocal", "--config.train.num_steps=4",
              "--config.train.log_every_steps=1", "--config.train.eval_at_end=False"]
    runs = {}
    for name, extra in (("xla_jit", []), ("onednn_pmap", [
            "--config.model.conv_backward=onednn", "--config.parallel.mode=pmap"])):
        workdir = tmp_path / name
        out = _main_on_four_devices([*common, "--workdir", str(workdir), *extra])
        assert out.returncode == 0, out.stderr[-3000:]
        runs[name] = [json.loads(line)["loss"] for line in open(workdir / "metrics.jsonl")]
    assert len(runs["xla_jit"]) == 4
    # Step 1 (same parameters and batch) to float32 rounding; later steps within 1e-3:
    # Adam's first updates are +-lr wherever a gradient is ~0 (the zero-initialised heads),
    # so the two kernels' rounding there moves parameters by the learning rate.
    np.testing.assert_allclose(runs["onednn_pmap"][0], runs["xla_jit"][0], rtol=1e-5)
    np.testing.assert_allclose(runs["onednn_pmap"], runs["xla_jit"], rtol=1e-3)

    workdir = tmp_path / "refused"
    out = _main_on_four_devices([*common, "--workdir", str(workdir),
                                 "--config.model.conv_backward=onednn"])
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: model.conv_backward='onednn' needs parallel.mode='pmap' on 4 "
                      "devices (with 'jit' XLA would run each oneDNN convolution on the whole "
                      "batch on every device)"], out.stderr[-2000:]
    assert not os.path.exists(workdir / "checkpoints")


@needs_onednn
def test_a_call_leaves_the_calling_threads_openmp_setting_alone():
    """The per-call thread count is restored on return: XLA may run a handler on the
    caller's own thread, whose other OpenMP users (PyTorch, say) keep their setting."""
    import ctypes

    gomp = ctypes.CDLL("libgomp.so.1")   # the OpenMP runtime oneDNN's build links
    before = gomp.omp_get_max_threads()
    x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
    with mock.patch.dict(os.environ, {"SDE_LAB_ONEDNN_THREADS": str(before + 1)}):
        f = jax.jit(jax.grad(lambda x: jnp.sum(_onednn_conv(x, w, "SAME").astype(jnp.float32))))
        for _ in range(3):
            jax.block_until_ready(f(x))
    assert gomp.omp_get_max_threads() == before


@needs_onednn
def test_a_cpu_without_bfloat16_convolutions_is_a_config_error_for_bfloat16_only():
    """oneDNN computes bf16 only on AVX-512 / AVX2-VNNI-2 CPUs: elsewhere the runner says so
    in one line for compute_dtype=bfloat16 and float32 works (oneDNN limited to AVX2 here,
    in a subprocess: oneDNN reads ONEDNN_MAX_CPU_ISA once)."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from configs import digits\n"
        "from sde_lab import experiment\n"
        "config = digits.get_config('runlocal')\n"
        "config.model.conv_backward = 'onednn'\n"
        "experiment.build(config)\n"
        "config.train.compute_dtype = 'bfloat16'\n"
        "try:\n"
        "    experiment.build(config)\n"
        "except experiment.ConfigError as e:\n"
        "    print('ConfigError:', e)\n") % ROOT
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == (
        "ConfigError: model.conv_backward='onednn' is not valid: oneDNN has no bfloat16 "
        "convolution for this CPU (bfloat16 needs AVX-512 or AVX2-VNNI-2): train in float32 "
        "with it, or leave conv_backward at 'auto'")
