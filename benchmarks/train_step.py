"""Full training step of the published score networks: speed, FLOPs, memory; fp32 vs bf16,
remat off/on; optionally against score_sde_pytorch's own step, interleaved.

What is timed is the trainer's step, built from the trainer's own functions:
`train.make_train_step` (loss -> value_and_grad -> optax Adam with warmup and global-norm
clipping -> EMA), `state.make_optimizer` with the CIFAR-10 settings of configs/cifar10.py,
`state.init_state`, compiled by `parallel.compile_step` on a one-device mesh with the state
donated, exactly as `train.train` does. The loss closure is the one
`experiment.Experiment.loss_fn` builds for these configs (DSM, std^2 weighting, mean over dimensions, t_eps = 1e-5,
dropout on, parameterization eps for DDPM++ / score for NCSN++), assembled here from the
library so the script needs no ml_collections (it runs on the GPU image as is).

For each configuration (network size x compute dtype x remat x XLA-flag variant) one
worker process compiles the step for the state's shapes, then builds the state (the
trainer's order: `train._compile_ahead`, `parallel.compile_ahead`) and reports:

* trace s: tracing + lowering to StableHLO (Python, Flax); compile s: XLA compilation;
* step s: median wall time of the timed steps (>= 5 after 2 warm-up steps, per round);
  images/s = batch / step s;
* GFLOP: XLA's cost analysis of the compiled step (forward, backward, optimizer, EMA);
  GFLOP/s achieved, and as a fraction of the dense matmul rate measured in the same
  worker (float32 and bfloat16 peaks, the latter accumulating in float32: 2048^3 products
  on CPU, 8192^3 on GPU, ~1 s each);
* memory: XLA's buffer assignment for the step (arguments + outputs + temporaries -
  aliased), the process's peak RSS after the warm-up steps (by then it has compiled this
  step, built the state and run the step, nothing else: the peak includes XLA's
  compile-time memory; with a warm `--cache-dir` the step is loaded instead, which on
  DDPM++ held ~0.3 GiB more: README "Compiling before the state exists"), its RSS after
  the timed steps (and the matmul-peak measurements), and on GPU the device's
  peak_bytes_in_use.

With `--reference-dir PATH` (a clone of github.com/yang-song/score_sde_pytorch; torch and
ml_collections installed) a reference worker runs score_sde's own training step
(losses.get_step_fn + optimization_manager + ExponentialMovingAverage, as its run_lib.py)
with torch on `--torch-threads` threads, and the ratio sde_lab / reference of the float32,
remat-off step time is printed per round and as the median over rounds.

Interleaving: the workers of one network size and remat setting stay alive together; each
round asks every one of them in turn for `--steps` timed steps (A, B, C, A, B, C, ...), so
ratios compare adjacent runs. `uptime` is printed before and after, the load average per
round. On a shared machine only those ratios mean anything.

Examples:
    # the issue's CPU figures (2 cores, batch 8), with the reference interleaved:
    python benchmarks/train_step.py --reference-dir ../score_sde_pytorch
    # bf16 and remat too, and an XLA-flag variant A/B against the default:
    python benchmarks/train_step.py --dtypes float32,bfloat16 --remat off,on \\
        --variant "" --variant "--xla_cpu_use_onednn=true"
    # GPU (see benchmarks/gpu_check.sh):
    python benchmarks/train_step.py --batch 128 --dtypes float32,bfloat16 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # the repository root: this checkout's sde_lab

import _workers  # noqa: E402

# size -> (sde, sde options, parameterization, data centred in [-1, 1]) as configs/cifar10.py
SIZES = {
    "ddpmpp_cont": ("vp", {}, "eps", True),
    "ncsnpp_cont": ("ve", {"sigma_max": 50.0}, "score", False),
    "ddpmpp_cont_deep": ("vp", {}, "eps", True),  # the published deep model is sub-VP: same cost
    "ncsnpp_cont_deep": ("ve", {"sigma_max": 50.0}, "score", False),
    "tiny": ("ve", {"sigma_max": 50.0}, "score", False),  # 8x8 smoke test of this script
}
# configs/cifar10.py + configs/default.py optimizer settings.
OPTIM = dict(optimizer="adam", lr=2e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
             warmup_steps=5000, grad_clip=1.0, schedule="constant")
EMA_RATE = 0.9999
WARMUP_STEPS = 2
GIB = 2.0**30


# ------------------------------------------------------------------ sde_lab worker

def _matmul_peak(jax, jnp, dtype: str) -> float:
    """Dense matmul FLOP/s in `dtype`: median of 3 timings of a ~1 s block of products.

    bfloat16 operands accumulate into a float32 result (`preferred_element_type`), the
    mixed-precision product: it is what bf16 hardware runs (XLA:CPU hands it to YNNPACK's
    AMX / AVX-512 BF16 kernels), where a bfloat16 -> bfloat16 product is upcast to float32
    on CPU and would report the float32 rate."""
    gpu = jax.devices()[0].platform != "cpu"
    n = 8192 if gpu else 2048
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    mm = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    mm(a, b).block_until_ready()
    start = time.perf_counter()
    mm(a, b).block_until_ready()
    products = max(1, min(200, int(1.0 / max(time.perf_counter() - start, 1e-4))))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready([mm(a, b) for _ in range(products)])
        times.append(time.perf_counter() - start)
    return 2 * n**3 * products / statistics.median(times)


def _device_peak_bytes(jax) -> int | None:
    stats = jax.devices()[0].memory_stats() if jax.devices()[0].platform != "cpu" else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _ffi_convolution_flops(spec: dict, data, keys, make_state) -> float:
    """FLOPs of the convolutions that conv_backward="onednn" hands to oneDNN.

    XLA's cost analysis cannot see into FFI calls. The same step lowered with XLA's
    convolutions counts them, lowered with oneDNN's it counts the rest; the difference is
    theirs. (Counted on the unoptimised HLO. DDPM++ cont.'s float32 batch-8 step, in the
    workers' XLA settings: 494.7 GFLOP this way, 495.3 in XLA's count of the compiled step
    with its own convolutions.)
    """
    from sde_lab import parallel

    counts = []
    for conv_backward in ("auto", "onednn"):
        step_fn, *_ = sde_lab_step_parts(spec["size"], spec["batch"], spec["dtype"],
                                         spec["remat"], conv_backward)
        cost = step_fn.lower(parallel.abstract(make_state(shapes_only=True)), data,
                             keys[0]).cost_analysis()
        counts.append(float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]))
    parallel.drop_jax_caches()
    return counts[0] - counts[1]


def build_sde_lab_step(size: str, batch: int, dtype: str, remat: bool,
                       conv_backward: str = "auto"):
    """(step_fn, state, batch, keys): the trainer's jitted step on one device."""
    step_fn, make_state, data, keys = sde_lab_step_parts(size, batch, dtype, remat,
                                                         conv_backward)
    return step_fn, make_state(), data, keys


def sde_lab_step_parts(size: str, batch: int, dtype: str, remat: bool,
                       conv_backward: str = "auto"):
    """(step_fn, make_state, batch, keys): the trainer's jitted step on one device, and a
    function that builds its replicated train state (`make_state(shapes_only=True)`: the
    state's `jax.eval_shape`, which the trainer compiles the step for before the state
    exists)."""
    import types

    import jax
    import jax.numpy as jnp
    import numpy as np

    from sde_lab import losses, models, parallel, parameterization, sdes, train
    from sde_lab import state as state_lib

    sde_name, sde_options, param_name, centered = SIZES[size]
    net = models.make("ncsnpp", size=size, dtype=dtype, remat=remat,
                      conv_backward=conv_backward)
    sde = sdes.make(sde_name, **sde_options)
    param = parameterization.make(param_name)
    loss = losses.make("dsm", weighting="std2", importance_sampling=False, reduce="mean",
                       eps=1e-5)

    def loss_fn(params, data, keys):  # = experiment.Experiment.loss_fn for these configs
        dropout_key = jax.random.fold_in(keys[0], 1)

        def apply(p, x, cond):
            return net.apply(p, x, cond, train=True, rngs={"dropout": dropout_key})

        return loss(params, param.score_model(apply, sde), sde, data["x"], keys)

    optimizer = state_lib.make_optimizer(types.SimpleNamespace(**OPTIM))
    mesh = parallel.make_mesh(jax.devices()[:1])
    step_fn = parallel.compile_step(train.make_train_step(loss_fn, optimizer, EMA_RATE), mesh,
                                    mode="jit")
    side = _side(size)
    # Initialisation runs once: on CPU compile it without XLA's backend optimisations
    # (minutes saved on 2 cores; it does not touch the timed step).
    cheap = ({"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
             if jax.devices()[0].platform == "cpu" else None)

    def make_state(shapes_only: bool = False):
        args = (jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3)), jnp.zeros((1,)))
        if shapes_only:  # what the trainer compiles for: jax.eval_shape of the state
            return jax.eval_shape(lambda: state_lib.init_state(net.init(*args), optimizer))
        params = jax.jit(net.init, compiler_options=cheap)(*args)
        return parallel.replicate(state_lib.init_state(params, optimizer), mesh)

    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0 if centered else 0.0, 1.0, (batch, 1, side, side, 3)).astype(np.float32)
    data = parallel.shard_batch({"x": x}, mesh)
    # Per-example keys [B, 1, 2] of steps 0, 1, 2, ... as train._gather_steps makes them.
    keys = [parallel.shard_batch(np.asarray(losses.example_keys(
        jax.random.fold_in(jax.random.PRNGKey(1), i), batch))[:, None], mesh) for i in range(8)]
    return step_fn, make_state, data, keys


def sde_lab_worker(spec: dict) -> None:
    import jax
    import jax.numpy as jnp

    from sde_lab import parallel

    # The runner's start-up: XLA:CPU's convolution kernels (a --variant naming the YNNPACK
    # flag wins), then the compilation cache.
    parallel.set_cpu_convolutions(spec.get("cpu_convolutions", "xla"))
    parallel.set_cpu_scheduler(spec.get("cpu_scheduler", "memory"))
    parallel.enable_compilation_cache(spec.get("cache_dir") or "none")
    # The trainer's order (sde_lab.train._compile_ahead): the step is compiled for the
    # state's shapes before the state exists, then JAX's caches are dropped
    # (parallel.compile_ahead, here in its two timed parts), then the state is built and
    # what its initialisation compiled is dropped as well.
    step_fn, make_state, data, keys = sde_lab_step_parts(spec["size"], spec["batch"],
                                                         spec["dtype"], spec["remat"],
                                                         spec.get("conv_backward", "auto"))
    start = time.perf_counter()
    lowered = step_fn.lower(parallel.abstract(make_state(shapes_only=True)), data, keys[0])
    trace_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    del lowered
    parallel.drop_jax_caches()
    rss_peak_compile = _workers.peak_rss_bytes()

    start = time.perf_counter()
    state = make_state()
    jax.block_until_ready(state)
    parallel.drop_jax_caches()  # as sde_lab.train does after the state is built
    build_s, rss_after_init = time.perf_counter() - start, _workers.current_rss_bytes()

    box = {"state": state, "i": 0}

    def run_steps(n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            box["state"], metrics = compiled(box["state"], data, keys[box["i"] % len(keys)])
            jax.block_until_ready((box["state"], metrics))
            times.append(time.perf_counter() - start)
            box["i"] += 1
        loss = float(metrics["loss"][0])
        if loss != loss:
            raise FloatingPointError("non-finite loss")
        return times

    first = run_steps(WARMUP_STEPS)
    # The step's peak: this process has built the state, compiled the step and run it, and
    # nothing else yet. XLA's cost and memory analyses below come after it: the trainer
    # never runs them, and memory_analysis() alone allocated ~0.3 GiB on DDPM++'s step
    # (which had been the peak reported with remat on).
    rss_step_peak = _workers.peak_rss_bytes()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))
    if spec.get("conv_backward", "auto") == "onednn":
        flops += _ffi_convolution_flops(spec, data, keys, make_state)
    mem = compiled.memory_analysis()
    xla_bytes = None
    if mem is not None:
        xla_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                     + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
    parallel.release_host_memory()
    device_peak = _device_peak_bytes(jax)  # before the matmul peaks allocate their operands
    peaks = {d: _matmul_peak(jax, jnp, d) for d in ("float32", "bfloat16")}
    _workers.serve(
        dict(build_s=build_s, trace_s=trace_s, compile_s=compile_s, warmup_s=first,
             flops=flops, xla_bytes=xla_bytes,
             rss_peak_compile=rss_peak_compile, rss_after_init=rss_after_init,
             rss_peak_after_compile=_workers.peak_rss_bytes(),
             rss_step_peak=rss_step_peak,
             device_peak=device_peak,
             matmul_precision=str(jax.config.jax_default_matmul_precision),
             peak_fp32=peaks["float32"], peak_bf16=peaks["bfloat16"],
             device=jax.devices()[0].device_kind, platform=jax.devices()[0].platform,
             jax=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", "")),
        {"time": lambda steps: {"times": run_steps(steps), "load": os.getloadavg()[0]},
         "quit": lambda: dict(rss_peak=_workers.peak_rss_bytes(),
                              rss_now=_workers.current_rss_bytes(),
                              peak_fp32=_matmul_peak(jax, jnp, "float32"))})


# ------------------------------------------------------------------ reference worker

def reference_worker(spec: dict) -> None:
    import reference

    torch = reference.import_reference(spec["reference_dir"], spec["torch_threads"])
    torch.manual_seed(0)
    start = time.perf_counter()
    step, num_params = reference.make_train_step(spec["size"], spec["batch"])
    build_s = time.perf_counter() - start
    first = [reference.timed(step)[1] for _ in range(WARMUP_STEPS)]

    def run_steps(steps: int) -> dict:
        return {"times": [reference.timed(step)[1] for _ in range(steps)],
                "load": os.getloadavg()[0]}

    _workers.serve(dict(build_s=build_s, warmup_s=first, num_params=num_params,
                        torch=torch.__version__, threads=torch.get_num_threads(),
                        rss_peak_after_compile=_workers.peak_rss_bytes()),
                   {"time": run_steps,
                    "quit": lambda: dict(rss_peak=_workers.peak_rss_bytes(),
                                         rss_now=_workers.current_rss_bytes())})


# ------------------------------------------------------------------ parent

def _configs(args) -> list[list[dict]]:
    """Groups of worker specs; the workers of a group are timed interleaved (one group per
    size and remat setting, or a single group with --one-group)."""
    sizes = _size_list(args)
    groups = []
    for size in sizes:
        if size not in SIZES:
            raise SystemExit(f"error: --sizes: unknown size {size!r}; "
                             f"available: {sorted(SIZES)}")
        for remat in args.remat.split(","):
            group = [dict(kind="sde_lab", size=size, batch=args.batch, dtype=dtype,
                          remat=remat == "on", variant=variant, cache_dir=args.cache_dir,
                          conv_backward=cb, cpu_convolutions=kernels, cpu_scheduler=sched)
                     for dtype in args.dtypes.split(",") for variant in args.variant
                     for kernels in args.cpu_convolutions.split(",")
                     for sched in args.cpu_scheduler.split(",")
                     for cb in args.conv_backward.split(",")]
            if args.reference_dir and remat == "off":
                group.append(dict(kind="reference", size=size, batch=args.batch,
                                  reference_dir=args.reference_dir,
                                  torch_threads=args.torch_threads))
            groups.append(group)
    if args.one_group:
        groups = [[spec for group in groups for spec in group]]
    return groups


def _label(spec: dict) -> str:
    if spec["kind"] == "reference":
        return f"{spec['size']} score_sde_pytorch"
    flags = f" [{spec['variant']}]" if spec["variant"] else ""
    cb = spec.get("conv_backward", "auto")
    cb = f" conv_backward={cb}" if cb != "auto" else ""
    if spec.get("cpu_convolutions", "xla") != "xla":
        cb += f" cpu_convolutions={spec['cpu_convolutions']}"
    if spec.get("cpu_scheduler", "memory") != "memory":
        cb += f" cpu_scheduler={spec['cpu_scheduler']}"
    return f"{spec['size']} {spec['dtype']} remat={'on' if spec['remat'] else 'off'}{cb}{flags}"


def _spawn(spec: dict):
    argv = [sys.executable, "-u", os.path.abspath(__file__), "--worker", json.dumps(spec)]
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # several workers share one GPU
    if spec.get("variant"):
        env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + spec["variant"]).strip()
    return _workers.Worker(_label(spec), argv, env)


def _ready(worker, spec: dict, timeout: float):
    try:
        info = worker.ready(timeout)
    except _workers.WorkerError as e:
        print(f"# FAILED {_label(spec)}: {e}", flush=True)
        return None
    print(f"# ready {_label(spec)}: " + ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()
        if k not in ("warmup_s",)), flush=True)
    return info


def run_group(group: list[dict], args) -> list[dict]:
    rows, workers, spawned = [], [], []

    def spawn(spec):
        spawned.append(_spawn(spec))
        return spawned[-1], spec

    try:
        if args.parallel_start:  # all compile at once: faster, compile times contended
            started = [spawn(spec) for spec in group]
        else:  # one at a time: each compile has the machine to itself
            started = (spawn(spec) for spec in group)
        for worker, spec in started:
            info = _ready(worker, spec, args.timeout)
            if info is None:
                continue
            workers.append(worker)
            rows.append(dict(spec=spec, info=info, rounds=[], loads=[]))
        for r in range(args.repeats):
            for worker, row in zip(workers, rows):
                reply = worker.ask("time", args.timeout, steps=args.steps)
                row["rounds"].append(reply["times"])
                row["loads"].append(reply["load"])
                print(f"# round {r + 1} {_label(row['spec'])}: median "
                      f"{statistics.median(reply['times']):.3f} s/step (load {reply['load']:.1f})",
                      flush=True)
    finally:
        for worker, row in zip(workers, rows):
            row["final"] = worker.close()
        for worker in spawned:
            worker.kill()
    return rows


def _summarise(rows: list[dict], batch: int) -> None:
    ref = next((r for r in rows if r["spec"]["kind"] == "reference"), None)
    fp32 = next((r for r in rows if r["spec"]["kind"] == "sde_lab"
                 and r["spec"]["dtype"] == "float32" and not r["spec"]["variant"]), None)
    for row in rows:
        times = [t for block in row["rounds"] for t in block]
        row["step_s"] = statistics.median(times) if times else float("nan")
        row["round_medians"] = [statistics.median(b) for b in row["rounds"]]
    # The reference computes the same network arithmetic: it is rated by the count of
    # the first sde_lab row (conv_backward=onednn rows count oneDNN's convolutions too).
    counted = next((r["info"]["flops"] for r in rows if r["spec"]["kind"] == "sde_lab"
                    and r["info"].get("flops")), None)
    for row in rows:
        row["flops"] = row["info"].get("flops") or counted
        for name, base in (("vs_reference", ref), ("vs_fp32", fp32)):
            if base is not None and base is not row and base["round_medians"]:
                ratios = [a / b for a, b in zip(row["round_medians"], base["round_medians"])]
                row[name] = ratios


def _fmt_bytes(v) -> str:
    return "-" if v is None else f"{v / GIB:.2f}"


def print_table(all_rows: list[dict], batch: int) -> None:
    print("\n| configuration | trace s | compile s | step s | images/s | GFLOP/step | GFLOP/s | "
          "of fp32 peak | of bf16 peak | XLA buffers GiB | peak RSS GiB | RSS after GiB | "
          "GPU peak GiB | / reference (per round) | / fp32 (per round) |")
    print("|---|" + "---|" * 14)
    for row in all_rows:
        info, final = row["info"], row.get("final", {})
        flops = row.get("flops")
        rate = flops / row["step_s"] if flops else None
        ratio = lambda key: ("-" if key not in row else f"{statistics.median(row[key]):.2f}x ("  # noqa: E731
                             + ", ".join(f"{v:.2f}" for v in row[key]) + ")")
        pct = lambda peak: "-" if not rate or not peak else f"{100 * rate / peak:.0f}%"  # noqa: E731
        print(f"| {_label(row['spec'])} | {info.get('trace_s', float('nan')):.1f} | "
              f"{info.get('compile_s', float('nan')):.1f} | {row['step_s']:.3f} | "
              f"{batch / row['step_s']:.1f} | "
              f"{'-' if not flops else f'{flops / 1e9:.1f}'} | "
              f"{'-' if not rate else f'{rate / 1e9:.0f}'} | "
              f"{pct(max(info.get('peak_fp32', 0), final.get('peak_fp32', 0)))} | "
              f"{pct(info.get('peak_bf16'))} | {_fmt_bytes(info.get('xla_bytes'))} | "
              f"{_fmt_bytes(info.get('rss_step_peak', final.get('rss_peak')))} | "
              f"{_fmt_bytes(final.get('rss_now'))} | "
              f"{_fmt_bytes(info.get('device_peak'))} | {ratio('vs_reference')} | "
              f"{ratio('vs_fp32')} |")
    peaks = [(r["info"].get("peak_fp32"), r["info"].get("peak_bf16")) for r in all_rows
             if r["spec"]["kind"] == "sde_lab"]
    if peaks:
        print(f"\nmatmul peaks measured in the sde_lab workers: float32 "
              f"{max(p[0] for p in peaks) / 1e9:.0f} GFLOP/s, bfloat16 "
              f"{max(p[1] for p in peaks) / 1e9:.0f} GFLOP/s (best worker)")
    print("GFLOP = XLA cost analysis of the whole step (conv_backward=onednn: plus its "
          "oneDNN convolutions, which XLA does not see, counted from the step lowered with "
          "XLA's; the reference's GFLOP/s uses the first sde_lab row's count: same network "
          "arithmetic). Ratios: per round, adjacent runs; the first figure is their median.")


def _cpu_summary() -> str:
    """Model name and the vector/matrix extensions that decide bf16 speed on CPU."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), "unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines()
                      if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    have = [f for f in wanted if f in flags]
    note = (" (bf16 products with float32 accumulation run on these units; XLA:CPU upcasts "
            "bfloat16 convolutions to float32: benchmarks/cpu_bf16.py)"
            if {"avx512_bf16", "amx_bf16"} & flags else
            " (no bf16 arithmetic: XLA converts bfloat16 to float32, expect bf16 slower)")
    return f"{name}; {' '.join(have) or 'none of ' + ' '.join(wanted)}{note}"


def _side(size: str) -> int:
    """Image side of a size: 32 for the published networks, 8 for the smoke-test "tiny"."""
    return 8 if size == "tiny" else 32


def _size_list(args) -> list[str]:
    """--sizes, and the two deep sizes with --deep."""
    return args.sizes.split(",") + (["ddpmpp_cont_deep", "ncsnpp_cont_deep"] if args.deep else [])


def _image_sizes(args) -> str:
    """The footer's image shapes, e.g. "32x32x3" (or "8x8x3 (tiny), 32x32x3")."""
    sides = dict.fromkeys(_side(s) for s in _size_list(args))
    return ", ".join(f"{n}x{n}x3" + (" (tiny)" if n == 8 else "") for n in sides)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="ddpmpp_cont,ncsnpp_cont",
                        help=f"comma-separated network sizes of {sorted(SIZES)}")
    parser.add_argument("--deep", action="store_true", help="add the two deep sizes")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtypes", default="float32",
                        help="compute dtypes to run, e.g. float32,bfloat16")
    parser.add_argument("--remat", default="off", help="off, on, or off,on")
    parser.add_argument("--cpu-convolutions", default="xla",
                        help="config.parallel.cpu_convolutions values to time, comma-separated "
                             "(xla: the runner's default, ynnpack: jaxlib's)")
    parser.add_argument("--cpu-scheduler", default="memory",
                        help="config.parallel.cpu_scheduler values to time, comma-separated "
                             "(memory: the runner's default, default: XLA's policy)")
    parser.add_argument("--conv-backward", default="auto",
                        help="model.conv_backward values to time, comma-separated "
                             "(auto, xla, gemm)")
    parser.add_argument("--variant", action="append",
                        help="extra XLA_FLAGS for an sde_lab worker; repeat to A/B several "
                             "(\"\" = none). Default: one variant, no extra flags")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round (>= 5)")
    parser.add_argument("--repeats", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--reference-dir", help="score_sde_pytorch checkout to time as well")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--cache-dir", default="",
                        help="JAX compilation cache for the workers (default: off, so "
                             "compile times are real compiles)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds a worker may take to get ready or to answer")
    parser.add_argument("--out", help="also write every measurement as JSON here")
    parser.add_argument("--one-group", action="store_true",
                        help="interleave every configuration with every other")
    parser.add_argument("--parallel-start", action="store_true",
                        help="start (compile) a group's workers concurrently; compile "
                             "times then compete for the CPUs")
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        (reference_worker if spec["kind"] == "reference" else sde_lab_worker)(spec)
        return
    args.variant = args.variant or [""]
    if args.steps < 5:
        parser.error("--steps must be >= 5")

    print(f"uptime before: {_workers.uptime()}", flush=True)
    print(f"command: {' '.join(sys.argv)}", flush=True)
    print(f"CPU: {_cpu_summary()}", flush=True)
    all_rows = []
    for group in _configs(args):
        rows = run_group(group, args)
        _summarise(rows, args.batch)
        all_rows += rows
    print_table(all_rows, args.batch)
    info = next((r["info"] for r in all_rows if r["spec"]["kind"] == "sde_lab"), {})
    print(f"\ndevice: {info.get('device')} ({info.get('platform')}), {os.cpu_count()} CPUs "
          f"visible, jax {info.get('jax')}; batch {args.batch}, {_image_sizes(args)}; "
          f"{args.steps} timed steps x {args.repeats} rounds after {WARMUP_STEPS} warm-up "
          "steps")
    print(f"uptime after: {_workers.uptime()}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(all_rows, f, indent=1, default=str)


if __name__ == "__main__":
    main()
