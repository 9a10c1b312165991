"""Where a `conv_backward="onednn"` training step spends its time, primitive by primitive.

Runs the trainer's step of DDPM++ or NCSN++ cont. (the step `benchmarks/train_step.py`
times) in a child process with `ONEDNN_VERBOSE=1`, which makes oneDNN print every
primitive it executes with its implementation and its time. After `--warmup` steps, for
`--steps` steps it sums per primitive kind (forward, input gradient and kernel gradient
convolutions, reorders of the weights into oneDNN's blocked layouts and back) the time,
the call count and, for convolutions, the rate in GFLOP/s (2 * MACs of the problem oneDNN
reports), beside the step's wall time. The rest of the step is XLA's own work (GroupNorm,
attention products, elementwise fusions, Adam and EMA), which oneDNN does not see. The
calls' times add up to the step's only where they do not overlap: XLA runs independent
calls side by side, and bfloat16 calls run on one thread each (`onednn.threads`), so
there the sum can exceed what the calls added to the wall time. Verbose mode costs a
little per call; compare rows within one run.

With `--reference-dir PATH` (a score_sde_pytorch checkout, torch installed) the same is
done for the reference's float32 step: PyTorch's CPU convolutions are oneDNN's too (its own
build, which prints the same verbose lines), so the two steps' convolutions compare call
by call, and "wall minus calls" is then PyTorch's own non-convolution work.

    python benchmarks/onednn_breakdown.py [--size ddpmpp_cont] [--dtypes float32,bfloat16]
        [--reference-dir PATH] [--torch-threads 2]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
MARK = "SDE_LAB_BREAKDOWN"
_PROBLEM = re.compile(r"mb(\d+)(?:_g\d+)?_ic(\d+)oc(\d+)_ih\d+oh(\d+)kh(\d+).*?_iw\d+ow(\d+)kw(\d+)")


def worker(size: str, dtype: str, warmup: int, steps: int) -> None:
    sys.path.insert(0, HERE)
    from sde_lab import parallel

    parallel.set_cpu_convolutions("xla")
    parallel.set_cpu_scheduler("memory")
    import jax
    from train_step import build_sde_lab_step

    step_fn, state, data, keys = build_sde_lab_step(size, 8, dtype, False, "onednn")
    compiled = step_fn.lower(state, data, keys[0]).compile()

    def one_step(i: int) -> float:
        nonlocal state
        start = time.perf_counter()
        state, metrics = compiled(state, data, keys[i % len(keys)])
        jax.block_until_ready((state, metrics))
        return time.perf_counter() - start

    _run_marked(one_step, warmup, steps)


def reference_worker(size: str, reference_dir: str, threads: int, warmup: int,
                     steps: int) -> None:
    sys.path.insert(0, HERE)
    import reference

    reference.import_reference(reference_dir, threads)
    step, _ = reference.make_train_step(size, 8)
    _run_marked(lambda i: reference.timed(step)[1], warmup, steps)


def _run_marked(one_step, warmup: int, steps: int) -> None:
    """Runs one_step(i) -> seconds warmup + steps times; marks where the timed steps start
    (the verbose lines after the mark are the ones `parse` sums) and prints their times."""
    for i in range(warmup + steps):
        if i == warmup:
            print(f"{MARK} timed", flush=True)
        seconds = one_step(i)
        if i >= warmup:
            print(f"{MARK} step {seconds:.4f}", flush=True)


def parse(lines: list[str], steps: int) -> tuple[list[float], list[tuple]]:
    """(step seconds, rows of (kind, implementation, calls per step, ms per step, GFLOP/s))."""
    timed = False
    step_s: list[float] = []
    ms, calls, flops = collections.Counter(), collections.Counter(), collections.Counter()
    for line in lines:
        if line.startswith(f"{MARK} timed"):
            timed = True
        elif line.startswith(f"{MARK} step"):
            step_s.append(float(line.split()[-1]))
        elif timed and line.startswith("onednn_verbose") and ",exec," in line:
            fields = line.split(",")
            if fields[1] == "v1":   # newer oneDNN's format: jaxlib's own copy, XLA's dots
                fields = fields[:1] + fields[3:]
            key = (f"{fields[3]} {fields[5]}".replace(" undef", ""),
                   fields[4] or "jaxlib's oneDNN (XLA's products)")
            ms[key] += float(fields[-1])
            calls[key] += 1
            m = _PROBLEM.search(line)
            if m:
                mb, ic, oc, oh, kh, ow, kw = map(int, m.groups())
                flops[key] += 2.0 * mb * ic * oc * oh * ow * kh * kw
    rows = [(kind, impl, calls[(kind, impl)] / steps, total / steps,
             flops[(kind, impl)] / (total * 1e6) if flops[(kind, impl)] else None)
            for (kind, impl), total in ms.most_common()]
    return step_s, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="ddpmpp_cont", choices=["ddpmpp_cont", "ncsnpp_cont"])
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--reference-dir", help="score_sde_pytorch checkout to break down too")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a dtype, or "reference"
    args = parser.parse_args()
    if args.worker == "reference":
        reference_worker(args.size, args.reference_dir, args.torch_threads, args.warmup,
                         args.steps)
        return
    if args.worker:
        worker(args.size, args.worker, args.warmup, args.steps)
        return
    dtypes = args.dtypes.split(",")
    bad = sorted(set(dtypes) - {"float32", "bfloat16"})
    if bad:
        parser.error(f"--dtypes: {bad} not valid; choose from float32, bfloat16")
    sys.path.insert(0, HERE)
    import _workers

    from sde_lab import onednn

    if args.reference_dir and not os.path.isdir(args.reference_dir):
        parser.error(f"--reference-dir: {args.reference_dir} is not a directory")
    print(f"uptime: {_workers.uptime()}", flush=True)
    runs = [(dtype, f"{dtype}, batch 8, conv_backward=onednn") for dtype in dtypes]
    if args.reference_dir:
        runs.append(("reference", f"score_sde_pytorch float32, batch 8, "
                                  f"{args.torch_threads} torch threads"))
    for worker_arg, title in runs:
        why = None if worker_arg == "reference" else onednn.unavailable(worker_arg)
        if why:
            print(f"{worker_arg}: skipped: {why}")
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--size", args.size, "--warmup",
               str(args.warmup), "--steps", str(args.steps), "--worker", worker_arg]
        if worker_arg == "reference":
            cmd += ["--reference-dir", args.reference_dir, "--torch-threads",
                    str(args.torch_threads)]
        out = subprocess.run(cmd, env=dict(os.environ, ONEDNN_VERBOSE="1"),
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"error: the {worker_arg} worker failed:\n{out.stderr[-3000:]}")
        step_s, rows = parse(out.stdout.splitlines(), args.steps)
        total = sum(r[3] for r in rows)
        wall = 1e3 * sum(step_s) / len(step_s)
        print(f"\n{args.size} {title}: step {wall:.0f} ms "
              f"(per step: {', '.join(f'{1e3 * s:.0f}' for s in step_s)}); oneDNN's calls "
              f"{total:.0f} ms in all (they may overlap), wall minus calls {wall - total:.0f} "
              "ms\n")
        print("| primitive | implementation | calls per step | ms per step | share of step "
              "| GFLOP/s |")
        print("|---|---|---:|---:|---:|---:|")
        for kind, impl, calls, ms, rate in rows:
            rate_s = f"{rate:.0f}" if rate else ""
            print(f"| {kind} | {impl} | {calls:.0f} | {ms:.0f} | {100 * ms / wall:.0f}% | "
                  f"{rate_s} |")
        print(f"\nuptime: {_workers.uptime()}", flush=True)


if __name__ == "__main__":
    main()
