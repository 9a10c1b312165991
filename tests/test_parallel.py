"""Data parallelism: a step on 4 forced CPU devices equals the one-device step, and batch
maps (samplers, likelihoods) give the same results split over 4 devices as on one.

The 4-device runs happen in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4
(the flag must be set before JAX starts, and the rest of the suite runs on one device).
The reference is a plain `jax.jit` step on one device that never touches sde_lab.parallel.

Tolerance: the sharded step sums the per-example gradients in a different order, a
relative difference of order B * 2^-24 ~ 1e-6 in each gradient entry (B = 16). Adam's
update lr * m / (sqrt(v) + eps) is scale-free in the gradient, so after 3 steps with
lr = 1e-2 each parameter differs by about 3 * lr * 1e-6 = 3e-8; we allow 1e-6, while the
parameters move by ~1e-2 from their initial values (checked, so equality is not vacuous).
"""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_lab import parallel

HERE = pathlib.Path(__file__).parent
ATOL = 1e-6


def _subprocess_env(num_devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(HERE), env.get("PYTHONPATH", "")])
    return env


def run_worker(out: pathlib.Path, modes: list[str], num_devices: int = 4) -> dict:
    proc = subprocess.run([sys.executable, str(HERE / "parallel_worker.py"), str(out), *modes],
                          env=_subprocess_env(num_devices), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


def params_of(results: dict, mode: str) -> dict:
    return {k.split("/", 1)[1]: v for k, v in results.items()
            if k.startswith(mode + "/") and not k.endswith("/loss")}


@pytest.mark.slow
def test_sharded_steps_equal_one_device_step(tmp_path):
    results = run_worker(tmp_path / "out.npz", ["reference", "jit1", "jit", "pmap"])
    assert int(results["device_count"]) == 4
    ref = params_of(results, "reference")
    assert len(ref) == 6  # 3 Dense layers x (kernel, bias)

    import parallel_worker  # the same MLP, initialised like the worker does
    init = parallel_worker._flatten(parallel_worker.init_state()["params"])
    moved = max(np.max(np.abs(ref[k] - init[k])) for k in ref)
    assert moved > 100 * ATOL, moved

    for mode in ("jit1", "jit", "pmap"):
        got = params_of(results, mode)
        assert got.keys() == ref.keys()
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=ATOL, err_msg=f"{mode} {k}")
        np.testing.assert_allclose(results[f"{mode}/loss"], results["reference/loss"], rtol=1e-6)


def test_bad_batch_size_names_option_devices_and_nearest_sizes():
    code = ("from sde_lab import parallel\n"
            "parallel.check_batch_size(12, parallel.make_mesh())\n"
            "try:\n"
            "    parallel.check_batch_size(10, parallel.make_mesh())\n"
            "except ValueError as e:\n"
            "    print(e)\n"
            "try:\n"
            "    parallel.check_batch_size(3, parallel.make_mesh(), name='eval.batch_size')\n"
            "except ValueError as e:\n"
            "    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_subprocess_env(4),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = proc.stdout.strip().splitlines()
    assert "train.batch_size=10" in first and "device count 4" in first
    assert "[8, 12]" in first
    assert "eval.batch_size=3" in second and "[4]" in second


# -- one device, in process ------------------------------------------------------------------

def test_unknown_mode_lists_choices():
    mesh = parallel.make_mesh()
    with pytest.raises(ValueError, match=r"unknown parallel mode 'shard'.*\['jit', 'pmap'\]"):
        parallel.compile_step(lambda *a: a, mesh, mode="shard")


def test_non_positive_batch_size_is_rejected():
    with pytest.raises(ValueError, match="train.batch_size=0"):
        parallel.check_batch_size(0, parallel.make_mesh())


def test_mesh_is_one_auto_axis_over_all_devices():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.devices.size == jax.device_count()
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,)


def test_placement_round_trips_through_host():
    mesh = parallel.make_mesh()
    tree = {"w": np.arange(6.0, dtype=np.float32).reshape(2, 3), "b": np.float32(2.0)}
    rep = parallel.replicate(tree, mesh)
    assert rep["w"].sharding.is_fully_replicated
    batch = parallel.shard_batch({"x": np.ones((4, 2), np.float32)}, mesh)
    assert batch["x"].shape == (4, 2)
    back = parallel.to_host(rep)
    np.testing.assert_array_equal(back["w"], tree["w"])
    assert isinstance(back["b"], np.ndarray) and back["b"] == 2.0
    keys = parallel.shard_global(jax.random.split(jax.random.key(0), 4), mesh)
    assert jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key) and keys.shape == (4,)
    assert parallel.local_batch_size(8) == 8 and parallel.is_main_process()


def test_initialize_is_a_no_op_for_one_process(monkeypatch):
    for var in ("SLURM_NTASKS", "SLURM_STEP_NODELIST", "OMPI_COMM_WORLD_SIZE",
                "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    # A plain sbatch script is one process even when the allocation has several tasks.
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert parallel._detected_cluster() is None
    parallel.initialize()
    assert not jax.distributed.is_initialized() and jax.process_count() == 1
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[001-004]")
    assert parallel._detected_cluster() == "slurm"


def test_jit_step_sees_whole_batch_with_identity_reduce():
    """One device: the compiled step is the plain step, and reduce_fn is the identity."""
    mesh = parallel.make_mesh()

    def step_fn(state, batch, keys, reduce_fn):
        total = reduce_fn(jnp.sum(batch))
        return state + total, {"n": batch.shape[0] + 0 * keys.shape[0]}

    step = parallel.compile_step(step_fn, mesh, donate_state=False)
    state, metrics = step(jnp.float32(1.0), jnp.arange(4.0), jax.random.split(jax.random.key(0), 4))
    assert float(state) == 7.0 and int(metrics["n"]) == 4


# -- sampling and likelihoods sharded over the batch -----------------------------------------

@pytest.fixture(scope="module")
def sharded_eval(tmp_path_factory):
    """One 4-device subprocess evaluating every case of sharded_eval_worker.py both ways."""
    out = tmp_path_factory.mktemp("sharded_eval") / "out.npz"
    proc = subprocess.run([sys.executable, str(HERE / "sharded_eval_worker.py"), str(out)],
                          env=_subprocess_env(4), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


def _assert_case(results: dict, name: str, atol: float) -> None:
    assert int(results[f"{name}/num_shards"]) == 4, "the output was not split over 4 devices"
    i = 0
    while f"{name}/one/{i}" in results:
        one, sharded = results[f"{name}/one/{i}"], results[f"{name}/sharded/{i}"]
        assert one.shape == sharded.shape and np.all(np.isfinite(one))
        if one.ndim == 0:   # NFE counts: the same solver steps
            assert int(one) == int(sharded), name
        else:
            np.testing.assert_allclose(sharded, one, rtol=0, atol=atol, err_msg=name)
        i += 1
    assert i > 0, name


@pytest.mark.slow
def test_batch_maps_sharded_equal_one_device(sharded_eval):
    """A sampler loop drawing its noise inside jit, and an exact log-density, give the same
    numbers split over 4 devices: threefry is partitionable, so random bits do not depend
    on the sharding, and the float32 arithmetic is per example (no cross-example sums), so
    only a few ulps (|x| ~ 2, 50 steps: 1e-5) separate the two."""
    assert int(sharded_eval["device_count"]) == 4
    _assert_case(sharded_eval, "toy_em", atol=1e-5)
    _assert_case(sharded_eval, "exact_logp", atol=1e-5)


@pytest.mark.slow
def test_samplers_and_likelihood_sharded_equal_one_device(sharded_eval):
    """sde_lab.samplers (fixed-step: as above, 1e-5) and sde_lab.likelihood (adaptive
    PF-ODE with rtol = atol = 1e-5: the step sequence is shared by the batch and must be the
    same, same NFE; values may differ by rounding amplified through the solve, bounded by
    10 (atol + rtol |logp|) ~ 3e-4 for |logp| ~ 3)."""
    pytest.importorskip("sde_lab.samplers", reason="sde_lab/samplers.py not merged here")
    pytest.importorskip("sde_lab.likelihood", reason="sde_lab/likelihood.py not merged here")
    for name in ("euler_maruyama", "dpm_solver++"):
        _assert_case(sharded_eval, f"sampler_{name}", atol=1e-5)
    for estimator in ("exact", "hutchinson"):
        _assert_case(sharded_eval, f"likelihood_{estimator}", atol=3e-4)


# -- persistent compilation cache ---------------------------------------------------------

_CACHE_CHILD = """
import sys
import jax
import jax.numpy as jnp
from sde_lab import parallel

hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event.endswith("/cache_hits") else None)
print(parallel.enable_compilation_cache(sys.argv[1], min_compile_time_s=0.0))
f = jax.jit(lambda x: jnp.tanh(x @ x.T) + jnp.sin(x).sum())
f(jnp.ones((16, 16))).block_until_ready()
print(len(hits))
"""


def test_second_process_start_hits_the_compilation_cache(tmp_path):
    """A fresh process compiling the same program loads it from the cache directory: it
    records a cache hit and writes no new entry; the first process wrote at least one."""
    cache = tmp_path / "cache"
    env = _subprocess_env(1)

    def start():
        proc = subprocess.run([sys.executable, "-c", _CACHE_CHILD, str(cache)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        where, hits = proc.stdout.split()
        assert where == str(cache)
        return int(hits), sorted(p.name for p in cache.iterdir())

    hits1, files1 = start()
    hits2, files2 = start()
    assert hits1 == 0 and len(files1) >= 1
    assert hits2 >= 1 and files2 == files1


def test_compilation_cache_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(parallel.CACHE_DIR_ENV, "none")
    before = jax.config.jax_enable_compilation_cache
    try:
        assert parallel.enable_compilation_cache() is None
        assert not jax.config.jax_enable_compilation_cache
    finally:
        jax.config.update("jax_enable_compilation_cache", before)


# -- XLA:CPU convolution kernels: XLA's own or YNNPACK's ------------------------------------

_CONV_CHILD = """
import hashlib, sys
import jax
import jax.numpy as jnp
import numpy as np
from sde_lab import parallel

honoured = parallel.set_cpu_convolutions(sys.argv[1])
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
k1, k2 = jax.random.split(jax.random.PRNGKey(0))
x, dy = jax.random.normal(k1, (2, 16, 16, 32)), jax.random.normal(k2, (2, 16, 16, 32))
dw = jax.jit(lambda x, dy: jax.vjp(lambda w: conv(x, w), jnp.zeros((3, 3, 32, 32)))[1](dy)[0])
dw = np.asarray(dw(x, dy), np.float64)
x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
exact = np.stack([np.stack([np.einsum("bhwi,bhwo->io", xp[:, i:i + 16, j:j + 16], dy)
                            for j in range(3)]) for i in range(3)])
late = parallel.set_cpu_convolutions("ynnpack" if sys.argv[1] == "xla" else "xla")
print(honoured, parallel.cpu_convolutions(), hashlib.md5(dw.tobytes()).hexdigest(),
      np.abs(dw - exact).max() / np.abs(exact).max(), late)
"""


def _flags_child(code: str, kind: str, xla_flags: str) -> list[str]:
    """Runs `code` with argument `kind` in a fresh one-device process whose XLA_FLAGS get
    `xla_flags` appended; returns its printed words."""
    env = _subprocess_env(1)
    env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} {xla_flags}".strip()
    proc = subprocess.run([sys.executable, "-c", code, kind], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()


def _conv_child(kind: str, xla_flags: str = "") -> tuple:
    honoured, kernels, digest, err, late = _flags_child(_CONV_CHILD, kind, xla_flags)
    assert float(err) < 1e-5  # both kernels compute the gradient; float32 rounding only
    return honoured == "True", kernels, digest, late == "True"


def test_set_cpu_convolutions_reaches_xla_and_the_environment_wins():
    """The setting reaches XLA: the two kernels round the same conv kernel gradient
    differently (bit patterns differ, both within float32 rounding of float64). An XLA_FLAGS
    that names the flag wins (the call says False and the kernels stay the environment's),
    and once the backend exists a change is refused (False), not silently claimed."""
    ours, ynn = _conv_child("xla"), _conv_child("ynnpack")
    assert ours[:2] == (True, "xla") and ynn[:2] == (True, "ynnpack")
    assert ours[2] != ynn[2]
    assert not ours[3] and not ynn[3]
    env_ynn = _conv_child("xla", f"{parallel.YNN_FLAG}=individual_dot,individual_convolution")
    assert env_ynn[:3] == (False, "ynnpack", ynn[2])
    env_xla = _conv_child("ynnpack", f"{parallel.YNN_FLAG}=")
    assert env_xla[:3] == (False, "xla", ours[2])


@pytest.mark.parametrize("flags,kernels", [
    ("", "ynnpack"), ("--xla_force_host_platform_device_count=4", "ynnpack"),
    (f"{parallel.YNN_FLAG}=", "xla"), (f"{parallel.YNN_FLAG}=-individual_convolution", "xla"),
    (f"{parallel.YNN_FLAG}=-individual_dot", "ynnpack"),
    (f"{parallel.YNN_FLAG}=individual_dot,eltwise", "xla"),
    (f"{parallel.YNN_FLAG}=dot,individual_convolution", "ynnpack"),
    (f"{parallel.YNN_FLAG}= {parallel.YNN_FLAG}=individual_convolution", "ynnpack")])
def test_cpu_convolutions_reads_xla_flags(flags, kernels):
    assert parallel.cpu_convolutions(flags) == kernels


# -- XLA:CPU instruction scheduler ---------------------------------------------------------

_SCHED_CHILD = """
import hashlib, sys
import jax
import jax.numpy as jnp
import numpy as np
from sde_lab import parallel

honoured = parallel.set_cpu_scheduler(sys.argv[1])

def f(x, ws):  # independent chains, each with a large intermediate between two dots
    return sum(jnp.tanh(x @ w) @ w.T for w in ws)

x = jax.random.normal(jax.random.PRNGKey(0), (256, 64))
ws = [jax.random.normal(jax.random.PRNGKey(i), (64, 4096)) / 8 for i in range(1, 9)]
compiled = jax.jit(f).lower(x, ws).compile()
out = np.asarray(compiled(x, ws))
late = parallel.set_cpu_scheduler("default" if sys.argv[1] != "default" else "memory")
print(honoured, parallel.cpu_scheduler(), compiled.memory_analysis().temp_size_in_bytes,
      hashlib.md5(out.tobytes()).hexdigest(), late)
"""


def _sched_child(kind: str, xla_flags: str = "") -> tuple:
    honoured, scheduler, temp, digest, late = _flags_child(_SCHED_CHILD, kind, xla_flags)
    return honoured == "True", scheduler, int(temp), digest, late == "True"


def test_set_cpu_scheduler_reaches_xla_and_the_environment_wins():
    """Eight independent chains with a 4 MiB intermediate each: the memory-optimized
    schedule keeps fewer of them live than the concurrency-optimized one, with the same
    result bitwise. An XLA_FLAGS naming the flag wins; after the backend exists a change is
    refused (False)."""
    memory, concurrency = _sched_child("memory"), _sched_child("concurrency")
    assert memory[:2] == (True, "memory") and concurrency[:2] == (True, "concurrency")
    chain = 256 * 4096 * 4
    assert memory[2] + 2 * chain <= concurrency[2]
    assert memory[3] == concurrency[3]
    assert not memory[4] and not concurrency[4]
    env = _sched_child("memory", f"{parallel.SCHEDULER_FLAG}=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED")
    assert env[:3] == (False, "concurrency", concurrency[2])


@pytest.mark.parametrize("flags,scheduler", [
    ("", "default"), ("--xla_force_host_platform_device_count=4", "default"),
    (f"{parallel.SCHEDULER_FLAG}=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED", "memory"),
    (f"{parallel.SCHEDULER_FLAG}=CPU_SCHEDULER_TYPE_DEFAULT", "default"),
    (f"{parallel.SCHEDULER_FLAG}=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED "
     f"{parallel.SCHEDULER_FLAG}=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED", "concurrency")])
def test_cpu_scheduler_reads_xla_flags(flags, scheduler):
    assert parallel.cpu_scheduler(flags) == scheduler


def test_release_host_memory_returns_freed_heap_to_the_os():
    """glibc keeps freed small blocks resident; malloc_trim hands them back (RSS falls)."""
    import ctypes

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4096) for _ in range(64 * 1024)]   # 256 MiB in 4 KiB blocks
    for b in blocks:
        ctypes.memset(b, 1, 4096)
    for b in blocks[:-1]:   # the last stays allocated: free() cannot shrink the heap's top
        libc.free(b)
    before = rss()
    assert parallel.release_host_memory()
    assert rss() < before - 128 * 2**20
    libc.free(blocks[-1])


def test_runner_sets_the_kernels_before_jax_starts(monkeypatch):
    """run.main applies config.parallel.cpu_convolutions before anything else touches JAX,
    and a bad value is one config error."""
    from configs import digits
    from sde_lab import experiment, run

    seen = []

    class Stop(Exception):
        pass

    def record(kind):
        seen.append(kind)
        raise Stop

    for field, values in (("cpu_convolutions", ("xla", "ynnpack")),
                          ("cpu_scheduler", ("memory", "default"))):
        monkeypatch.setattr(parallel, "set_cpu_convolutions", lambda kind: True)
        monkeypatch.setattr(parallel, f"set_{field}", record)
        for value in values:
            config = digits.get_config()
            config.parallel[field] = value
            with pytest.raises(Stop):
                run.main(config, "/nonexistent", "train")
    assert seen == ["xla", "ynnpack", "memory", "default"]
    config.parallel.cpu_convolutions = "eigen"
    with pytest.raises(experiment.ConfigError, match="parallel.cpu_convolutions"):
        run.main(config, "/nonexistent", "train")


def test_compilation_cache_config_values(monkeypatch, tmp_path):
    """config.parallel.compilation_cache: "auto" (the default) is $SDE_LAB_COMPILATION_CACHE,
    else $JAX_COMPILATION_CACHE_DIR, else ~/.cache/sde_lab/jax_compilation_cache; "none" is
    off; "" leaves JAX's own setting; a path is made absolute."""
    from configs import default
    from sde_lab import experiment

    config = default.get_config()
    assert config.parallel.compilation_cache == "auto"
    spec = lambda: experiment.parallel_spec(config).compilation_cache  # noqa: E731
    monkeypatch.delenv(parallel.CACHE_DIR_ENV, raising=False)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert spec() == os.path.expanduser(parallel.DEFAULT_CACHE_DIR)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert spec() == str(tmp_path / "jax")
    monkeypatch.setenv(parallel.CACHE_DIR_ENV, str(tmp_path / "ours"))
    assert spec() == str(tmp_path / "ours")
    monkeypatch.setenv(parallel.CACHE_DIR_ENV, "none")
    assert spec() == "none"
    for value, expected in [("none", "none"), ("", None), ("rel/dir", os.path.abspath("rel/dir"))]:
        config.parallel.compilation_cache = value
        assert spec() == expected


def test_default_cache_directory_that_cannot_be_made_is_not_an_error(monkeypatch, tmp_path,
                                                                     capsys):
    """The default ("auto") cache directory is a convenience: if it cannot be created the
    run goes on without a cache (one note line); a directory the user named is an error."""
    from configs import digits
    from sde_lab import experiment, run

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(parallel.CACHE_DIR_ENV, str(blocker / "cache"))

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(parallel, "initialize", stop)  # the step after the cache
    before = jax.config.jax_enable_compilation_cache
    try:
        config = digits.get_config()
        with pytest.raises(Stop):
            run.main(config, str(tmp_path / "w"), "train")
        assert "note: no compilation cache" in capsys.readouterr().out
        assert not jax.config.jax_enable_compilation_cache
        config.parallel.compilation_cache = str(blocker / "cache")
        with pytest.raises(experiment.ConfigError, match="cannot create the directory"):
            run.main(config, str(tmp_path / "w"), "train")
    finally:
        jax.config.update("jax_enable_compilation_cache", before)
