"""Data parallelism over every device of every process: the only module that names devices.

One mesh axis, `'data'`, spans all devices of all processes (`jax.devices()` order, so each
process owns a contiguous block of the global batch). Parameters and optimizer state are
replicated; the batch and its per-example PRNG keys are split along the batch dimension.

Two ways to run a training step, chosen by `config.parallel.mode`:

- `"jit"` (default): `jax.jit` with `NamedSharding` on an `AxisType.Auto` mesh. The step is
  written as if for one device; XLA inserts the gradient all-reduce (big_vision's style: no
  collective in user code). JAX's recommended path since 0.8.
- `"pmap"`: `jax.pmap` over the devices (JAX now implements it on `shard_map`); the step
  sees its per-device slice and calls `reduce_fn` (a `pmean` over `'data'`) on its
  gradients and metrics.

A step function has the signature

    step_fn(state, batch, example_keys, reduce_fn) -> (state, metrics)

where `example_keys` holds one PRNG key per example (`losses.example_keys(key, B)`). Since
losses draw every random number from the example's own key, and the keys are split exactly
like the batch, both modes draw the same noise as one device: a step on N devices equals
the one-device step on the same global batch up to float summation order.

Batch maps without a training state (sampling, likelihoods, feature extraction) run
through `data_parallel(fn, mesh, batch_argnums)`: jit with the batch split over 'data'.

Compilation cache: `enable_compilation_cache()` at start-up keeps compiled programs on disk
(JAX's persistent cache), so a second start of the same configuration does not recompile.
CPU kernels: `set_cpu_convolutions("xla")` at start-up gives XLA:CPU's convolutions to XLA's
own kernels instead of YNNPACK's (the runner's default: DDPM++/NCSN++ train steps ~1.25x and
the digits run ~1.3x faster on a 2-core AVX2 CPU).

Multi-host: call `initialize()` first (it calls `jax.distributed.initialize()` under a
multi-task Slurm step, Open MPI or a multi-host TPU slice, or when given a coordinator),
feed each process its own `local_batch_size(B)` examples through `shard_batch`, and let
`is_main_process()` alone write logs and files; every process must take part in orbax saves.
"""

from __future__ import annotations

import gc
import math
import os
from typing import Any, Callable

import jax
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"
MODES = ("jit", "pmap")

StepFn = Callable[[Any, Any, jax.Array, Callable[[Any], Any]], tuple[Any, Any]]


# -- start-up -------------------------------------------------------------------------------

def _detected_cluster() -> str | None:
    """Name of a multi-process launch environment that jax.distributed can read, or None."""
    env = os.environ
    # Inside an `srun` step with several tasks (a plain sbatch script is one process even
    # when SLURM_NTASKS > 1, and initializing there would wait for peers that never come).
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in env:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "ompi"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "tpu"
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Starts multi-process JAX if this is a multi-process launch; a no-op otherwise.

    Calls `jax.distributed.initialize` with the given arguments when any is given, or with
    none (JAX reads the cluster's environment) when a multi-task Slurm step, an Open MPI
    launch or a multi-host TPU slice is detected. Must run before any other JAX call that
    touches devices. Calling it again is harmless.
    """
    if jax.distributed.is_initialized():
        return
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    elif _detected_cluster() is not None:
        jax.distributed.initialize()


def is_main_process() -> bool:
    """True on process 0, the one that writes logs, samples and eval files."""
    return jax.process_index() == 0


# XLA:CPU hands convolutions, dots and elementwise/reduction fusions to YNNPACK (jaxlib
# 0.10's default). Its convolutions are the U-Nets' bottleneck on CPU: the kernel gradient
# of DDPM++'s 3x3 convs runs at 66-103 GFLOP/s against 137-153 for XLA's own (Eigen)
# convolution on a 2-core AVX2 CPU, and the DDPM++ train step takes 5.3 s with YNNPACK's
# convolutions, 4.3 s with XLA's (README "Training speed on CPU"). Turning all of YNNPACK
# off is slower (6.5 s: its reductions and dots are the fast ones), so only the
# convolutions move.
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_CONVOLUTION = "individual_convolution"
CPU_CONVOLUTIONS = ("xla", "ynnpack")


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without the query: assume not started
        return False


def _ynn_values(flags: str) -> list[str]:
    """The values given to YNN_FLAG in an XLA_FLAGS string, in order."""
    return [f.partition("=")[2] for f in flags.split() if f.partition("=")[0] == YNN_FLAG]


def cpu_convolutions(xla_flags: str | None = None) -> str:
    """Which kernels XLA:CPU runs convolutions with under `xla_flags` (default: the
    XLA_FLAGS environment variable): "ynnpack" (jaxlib's default) or "xla"."""
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    values = _ynn_values(flags)
    if not values:
        return "ynnpack"
    items = [i.strip().lower() for i in values[-1].split(",") if i.strip()]
    if items and all(i[0] in "+-" for i in items):  # edits of the default list
        on = True
        for i in items:
            if i[1:] == YNN_CONVOLUTION:
                on = i[0] == "+"
    else:  # the whole list
        on = YNN_CONVOLUTION in items
    return "ynnpack" if on else "xla"


def set_cpu_convolutions(kind: str) -> bool:
    """Chooses XLA:CPU's convolution kernels for this process: "xla" (XLA's own, faster for
    the U-Nets' training step on CPU, see above) or "ynnpack" (jaxlib's default). Dots and
    other fusions keep YNNPACK either way. Only the CPU backend reads the setting.

    Appends `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` to the XLA_FLAGS
    environment variable, which XLA reads when JAX creates its backends (the first call that
    touches a device), so call it at start-up. An XLA_FLAGS that already names that flag is
    left as it is: the user's environment wins. Returns True if the process runs with the
    requested kernels, False if it does not (backends already created, or the environment
    says otherwise); nothing is raised.
    """
    if kind not in CPU_CONVOLUTIONS:
        raise ValueError(f"cpu convolutions {kind!r}; choose from {list(CPU_CONVOLUTIONS)}")
    flags = os.environ.get("XLA_FLAGS", "")
    current = cpu_convolutions(flags)
    if current == kind or _ynn_values(flags):
        return current == kind
    if _backends_started():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=-{YNN_CONVOLUTION}".strip()
    return True


# XLA:CPU's instruction scheduler fixes which buffers are live at once, hence the size of
# a program's temporary allocation. jaxlib 0.10's default policy takes the
# concurrency-optimized schedule (independent ops side by side for its thunk executor)
# whenever its extra memory seems affordable: for DDPM++'s batch-8 train step that is 1.24
# GiB of temporaries where the memory-optimized schedule needs 0.84, and on 2 cores the
# memory-optimized steps of DDPM++ and NCSN++ take 0.97x and 0.95x the time (README
# "Training speed on CPU"). The scheduler orders whole ops and does not change their
# arithmetic: results are bitwise the same.
SCHEDULER_FLAG = "--xla_cpu_scheduler_type"
CPU_SCHEDULERS = {"memory": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
                  "concurrency": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
                  "default": "CPU_SCHEDULER_TYPE_DEFAULT"}


def cpu_scheduler(xla_flags: str | None = None) -> str:
    """XLA:CPU's scheduler under `xla_flags` (default: the XLA_FLAGS environment variable):
    "memory", "concurrency" or "default" (XLA's policy, no flag given)."""
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    values = [f.partition("=")[2].strip() for f in flags.split()
              if f.partition("=")[0] == SCHEDULER_FLAG]
    if not values:
        return "default"
    by_value = {v: k for k, v in CPU_SCHEDULERS.items()}
    return by_value.get(values[-1].upper(), values[-1])


def set_cpu_scheduler(kind: str) -> bool:
    """Chooses XLA:CPU's instruction scheduler for this process: "memory" (fewest live
    buffers: the runner's default, see above), "concurrency" or "default" (XLA's policy).
    Only the CPU backend reads the setting.

    Appends `--xla_cpu_scheduler_type=...` to XLA_FLAGS, which XLA reads when JAX creates
    its backends, so call it at start-up. An XLA_FLAGS that already names the flag is left
    as it is (the user's environment wins). Returns True if the process runs with the
    requested scheduler, False if it does not (backends already created, or the
    environment says otherwise); nothing is raised.
    """
    if kind not in CPU_SCHEDULERS:
        raise ValueError(f"cpu scheduler {kind!r}; choose from {list(CPU_SCHEDULERS)}")
    flags = os.environ.get("XLA_FLAGS", "")
    current = cpu_scheduler(flags)
    if current == kind or SCHEDULER_FLAG + "=" in flags:
        return current == kind
    if _backends_started():
        return False
    if kind != "default":
        os.environ["XLA_FLAGS"] = f"{flags} {SCHEDULER_FLAG}={CPU_SCHEDULERS[kind]}".strip()
    return True


def release_host_memory() -> bool:
    """Hands memory that the host allocator holds but nothing uses back to the OS (glibc's
    malloc_trim): what XLA's compiler and a network's initialisation freed. Without it the
    process keeps that memory resident beside the train step's buffers (about 0.6 GiB after
    compiling DDPM++'s step). Returns whether glibc released anything (False also where
    there is no glibc)."""
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def abstract(tree):
    """`tree` as jax.ShapeDtypeStruct leaves (shape and dtype only, no weak types): what
    `compile_ahead` takes for arrays that do not exist yet, e.g. a train state from
    `jax.eval_shape`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def compile_ahead(step, *args):
    """`step` (from `compile_step`, jit mode) compiled for `args`, which may be
    `abstract` shapes; returns the compiled callable (same shardings and donation), to be
    called with arrays of exactly those shapes and dtypes.

    Then it empties JAX's in-memory caches (`jax.clear_caches()`: staged and lowered
    programs, and the executables of earlier jitted or eager calls, which recompile on
    their next use) and hands the freed heap back to the OS (`release_host_memory`). The
    returned executable stays. What that frees, measured on DDPM++'s train step: the
    lowered StableHLO module and its MLIR context, about 0.2 GiB that JAX's lowering
    cache otherwise keeps for the whole run (README "Training speed on CPU"). Compiling
    before the train state exists also keeps the compiler's own peak off the state's
    memory.
    """
    compiled = step.lower(*args).compile()
    drop_jax_caches()
    return compiled


def drop_jax_caches() -> None:
    """`jax.clear_caches()`, a garbage collection (lowered modules sit in reference
    cycles) and `release_host_memory()`: frees what JAX keeps of programs already run
    or compiled, e.g. a network's initialisation, except executables the caller holds."""
    jax.clear_caches()
    gc.collect()
    release_host_memory()


DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "sde_lab", "jax_compilation_cache")
CACHE_DIR_ENV = "SDE_LAB_COMPILATION_CACHE"


def default_cache_dir() -> str:
    """$SDE_LAB_COMPILATION_CACHE, else $JAX_COMPILATION_CACHE_DIR, else
    ~/.cache/sde_lab/jax_compilation_cache (not expanded; "none" if a variable says so)."""
    env = os.environ
    return env.get(CACHE_DIR_ENV) or env.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_CACHE_DIR


def enable_compilation_cache(path: str | None = None, min_compile_time_s: float = 1.0) -> str | None:
    """Turns on JAX's persistent compilation cache; returns the directory, or None if off.

    Every program that took at least `min_compile_time_s` to compile is written to `path`
    (keyed by its HLO, the XLA flags, the jax/jaxlib version and the device kind), and a
    later process that builds the same program loads it instead of compiling: a restarted
    or resumed run, an eval after training, a sweep's runs that share a shape. Call it once
    at start-up, before anything is compiled (JAX fixes the cache when it first compiles).

    Args:
      path: cache directory (created if missing; `~` expanded). None: the environment
        variable SDE_LAB_COMPILATION_CACHE if set, else JAX's JAX_COMPILATION_CACHE_DIR if
        set, else ~/.cache/sde_lab/jax_compilation_cache. "" or "none" (either way) turns
        the cache off.
      min_compile_time_s: programs that compile faster are not cached (their files would
        cost more to read than to recompile).
    """
    if path is None:
        path = default_cache_dir()
    if path.strip().lower() in ("", "none"):
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


# -- mesh and batch sizes -------------------------------------------------------------------

def make_mesh(devices=None) -> Mesh:
    """A one-axis `('data',)` mesh over `devices` (default: all devices of all processes).

    The axis type is `Auto`: jit propagates shardings from the inputs, so code written for
    one device runs unchanged (`jax.make_mesh` would default to `Explicit` axes).
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,), axis_types=(AxisType.Auto,))


def _num_processes(mesh: Mesh) -> int:
    return len({d.process_index for d in mesh.devices.flat})


def check_batch_size(global_batch_size: int, mesh: Mesh,
                     name: str = "train.batch_size") -> None:
    """ValueError unless the global batch splits evenly over devices and processes."""
    num_devices = mesh.devices.size
    step = math.lcm(num_devices, _num_processes(mesh))
    if global_batch_size > 0 and global_batch_size % step == 0:
        return
    lower = (global_batch_size // step) * step
    nearest = sorted({v for v in (lower, lower + step) if v > 0})
    raise ValueError(
        f"{name}={global_batch_size} must be a positive multiple of the device count "
        f"{num_devices} ({_num_processes(mesh)} process(es)); nearest valid: {nearest}")


def local_batch_size(global_batch_size: int) -> int:
    """Examples each process loads per step: the global batch over the process count."""
    n = jax.process_count()
    if global_batch_size % n:
        raise ValueError(f"batch size {global_batch_size} does not split over {n} processes")
    return global_batch_size // n


# -- placing data ---------------------------------------------------------------------------

def _from_host(x, sharding: NamedSharding) -> jax.Array:
    """A global array from a value every process holds in full (numpy or local jax)."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        data = _from_host(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=impl)
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)  # device to device, no host copy
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree, mesh: Mesh):
    """Every leaf as a global array replicated on all mesh devices (NamedSharding P())."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: _from_host(x, sharding), tree)


def shard_batch(local_tree, mesh: Mesh):
    """Per-process arrays [B_local, ...] -> global arrays [B, ...] sharded over 'data'.

    Process p's examples become rows p * B_local ... (p + 1) * B_local - 1 of the global
    batch (the mesh lists devices process by process).
    """
    sharding = NamedSharding(mesh, P(AXIS))
    n = jax.process_count()

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        return jax.make_array_from_process_local_data(sharding, x, (n * x.shape[0],) + x.shape[1:])

    return jax.tree.map(put, local_tree)


def shard_global(tree, mesh: Mesh):
    """Arrays every process holds in full [B, ...] -> global arrays sharded over 'data'.

    For the per-example keys, which every process derives identically from the step key.
    """
    sharding = NamedSharding(mesh, P(AXIS))
    return jax.tree.map(lambda x: _from_host(x, sharding), tree)


def to_host(tree):
    """NumPy copies of the leaves, on every process (replicated arrays are not gathered)."""
    def get(x):
        if not isinstance(x, jax.Array):
            return np.asarray(x)
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils  # only multi-process runs need it
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, tree)


# -- compiled steps -------------------------------------------------------------------------

def _identity(tree):
    return tree


def _pmean(tree):
    return lax.pmean(tree, AXIS)


def compile_step(step_fn: StepFn, mesh: Mesh, mode: str = "jit", donate_state: bool = True):
    """Returns f(state, batch, example_keys) -> (state, metrics) running `step_fn` on `mesh`.

    Args:
      step_fn: step_fn(state, batch, example_keys, reduce_fn) -> (state, metrics). It must
        apply `reduce_fn` to its gradients and metrics (identity under jit).
      mesh: from `make_mesh`.
      mode: "jit" (NamedSharding, XLA-inserted collectives) or "pmap".
      donate_state: let the step reuse the input state's buffers (jit mode).

    In "jit" mode f has `f.lower(state, batch, example_keys)`, jax.jit's ahead-of-time
    lowering of exactly the program f runs (its `.compile()` gives XLA's cost and memory
    analyses and a callable with the same shardings and donation).

    The returned f takes `state` replicated (`replicate`), and `batch` [B, ...] and
    `example_keys` [B] (typed) or [B, 2] (raw, any trailing dims) each either as global
    arrays from `shard_batch` (every process passes its own rows) or as full arrays that
    every process holds identically (e.g. `losses.example_keys(key, B)`). It returns `state`
    and `metrics` in the same form in both modes: the one-device pytree shapes, as arrays
    replicated over every device of the mesh (ready for an orbax save).
    """
    if mode not in MODES:
        raise ValueError(f"unknown parallel mode '{mode}'; available: {list(MODES)}")
    if mode == "jit":
        return _compile_jit(step_fn, mesh, donate_state)
    return _compile_pmap(step_fn, mesh)


def _compile_jit(step_fn: StepFn, mesh: Mesh, donate_state: bool):
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))

    def program(state, batch, keys):
        return step_fn(state, batch, keys, _identity)

    # JAX names the compiled program (and its log lines) after the function.
    program.__name__ = program.__qualname__ = getattr(step_fn, "__name__", "step")
    step = jax.jit(program, in_shardings=(replicated, split, split),
                   out_shardings=(replicated, replicated),
                   donate_argnums=(0,) if donate_state else ())

    def run(state, batch, example_keys):
        if jax.process_count() > 1:  # full host arrays -> global; global arrays pass through
            batch, example_keys = shard_global((batch, example_keys), mesh)
        return step(state, batch, example_keys)

    run.lower = step.lower
    return run


def _compile_pmap(step_fn: StepFn, mesh: Mesh):
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    if jax.process_count() == 1 and len(local) != mesh.devices.size:
        raise ValueError("pmap mode needs the mesh to hold every local device")
    n_local = len(local)
    # in_axes=None broadcasts the state to every device; out_axes=None returns one copy,
    # which is exact because step_fn pmeans everything it returns.
    # Several processes: pmap spans every process's local devices (devices=None).
    devices = local if jax.process_count() == 1 else None
    step = jax.pmap(lambda state, batch, keys: step_fn(state, batch, keys, _pmean),
                    axis_name=AXIS, in_axes=(None, 0, 0), out_axes=None, devices=devices)

    def per_device(x):
        """This process's rows [B_local, ...] -> [n_local, B_local / n_local, ...]."""
        x = _local_part(x)  # pmap takes process-local input
        if x.shape[0] % n_local:
            raise ValueError(f"batch of {x.shape[0]} does not split over {n_local} devices")
        return x.reshape((n_local, x.shape[0] // n_local) + x.shape[1:])

    def local_copy(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x.addressable_data(0)
        return x

    def run(state, batch, example_keys):
        batch, keys = jax.tree.map(per_device, (batch, example_keys))
        out = step(jax.tree.map(local_copy, state), batch, keys)
        return jax.tree.map(lambda x: _replicated_on(x, mesh), out)

    return run


def data_parallel(fn: Callable, mesh: Mesh, batch_argnums: tuple[int, ...] = ()):
    """jit(fn) spread over the mesh: for sampling, likelihoods and other batch maps.

    Arguments in `batch_argnums` are split along 'data' (leading dim), the others
    replicated; every output whose leading dim splits evenly over the devices is split
    along 'data', the rest (scalars such as NFE counts) replicated. XLA propagates the
    output sharding back through the computation, so a sampler whose batch is drawn
    inside `fn` from one key runs data-parallel too. Results equal the one-device call
    (JAX's threefry is partitionable: random bits do not depend on the sharding) up to
    float summation order; gather them with `to_host`.
    """
    split, replicated = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
    n = mesh.devices.size

    def constrained(*args):
        def place(y):
            even = getattr(y, "ndim", 0) >= 1 and y.shape[0] % n == 0
            return lax.with_sharding_constraint(y, split if even else replicated)

        return jax.tree.map(place, fn(*args))

    compiled: dict[int, Callable] = {}  # one jit per argument count

    def run(*args):
        if len(args) not in compiled:
            shardings = tuple(split if i in batch_argnums else replicated
                              for i in range(len(args)))
            compiled[len(args)] = jax.jit(constrained, in_shardings=shardings)
        return compiled[len(args)](*args)

    return run


def _replicated_on(x: jax.Array, mesh: Mesh) -> jax.Array:
    """`x` (the same value on this process's devices) as an array replicated over `mesh`.

    pmap's replicated outputs span only the local devices when there are several
    processes; this reuses their per-device buffers (copying only onto missing devices).
    """
    if x.is_fully_replicated and x.sharding.device_set == set(mesh.devices.flat):
        return x
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    on_device = {s.device: s.data for s in x.addressable_shards} if x.is_fully_replicated else {}
    arrays = [on_device.get(d) if d in on_device else jax.device_put(x.addressable_data(0), d)
              for d in local]
    return jax.make_array_from_single_device_arrays(x.shape, NamedSharding(mesh, P()), arrays)


def _local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global array sharded over 'data', on the host."""
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def _local_part(x):
    """This process's rows: the local shards of a global array (from `shard_batch`), or the
    process's slice of a full array that every process holds (e.g. all example keys)."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_local_part(jax.random.key_data(x)),
                                        impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return _local_rows(x)
    n, p = jax.process_count(), jax.process_index()
    if x.shape[0] % n:
        raise ValueError(f"batch of {x.shape[0]} does not split over {n} processes")
    rows = x.shape[0] // n
    return x[p * rows:(p + 1) * rows]
