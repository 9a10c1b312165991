"""Forward and forward+backward cost of the published score networks on this machine.

For each network size at batch B (default 8) on 32x32x3 inputs it prints: time per image
for the forward pass (train=False) and for forward+backward (train=True, gradient of a
DSM-style squared error with respect to all parameters), the FLOPs of one forward+backward
from XLA's cost analysis of the compiled program, the achieved FLOP/s, and that as a
fraction of the dense float32 matmul rate measured in the same process right before and
after that network (a 2048^3 matmul; the better of the two is that row's "peak"), so a
row and its peak see the same machine load.

Timings are the median of `--repeats` runs after one warm-up; on a shared machine they are
noisy, which is why the matmul peak is measured in the same run.

Run:
    python benchmarks/networks.py                       # all published sizes, batch 8
    python benchmarks/networks.py --sizes ncsnpp:ddpmpp_cont --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sde_lab import models

PUBLISHED = ["ncsnpp:ncsnpp_cont", "ncsnpp:ncsnpp_cont_deep", "ncsnpp:ddpmpp_cont",
             "ncsnpp:ddpmpp_cont_deep", "ddpm:cifar10", "ncsnv2:cifar10"]


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (and compile, if not done yet)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_flops_per_second(n: int = 2048, products: int = 10, repeats: int = 3) -> float:
    """Dense float32 matmul rate, 2 n^3 FLOPs per product. Each timing spans `products`
    products (about a second here), so a CPU quota (cgroup) throttles it as it throttles
    the networks; a single 40 ms product can burst past the quota."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)

    def run():
        jax.block_until_ready([mm(a, b) for _ in range(products)])

    return 2 * n**3 * products / _median_seconds(run, repeats)


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def bench_network(name: str, size: str, batch: int, side: int, repeats: int) -> dict:
    net = models.make(name, size=size)
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch, side, side, 3))
    t = jax.random.uniform(jax.random.PRNGKey(1), (batch,))
    target = jax.random.normal(jax.random.PRNGKey(2), x.shape)
    params = jax.jit(net.init)(key, x, t)
    num_params = sum(v.size for v in jax.tree.leaves(params))

    def loss(p, x, t, dropout_key):
        out = net.apply(p, x, t, train=True, rngs={"dropout": dropout_key})
        return jnp.mean((out - target) ** 2)

    start = time.perf_counter()
    fwd = jax.jit(net.apply).lower(params, x, t).compile()
    grad = jax.jit(jax.grad(loss)).lower(params, x, t, key).compile()
    compile_s = time.perf_counter() - start
    fwd_s = _median_seconds(lambda: fwd(params, x, t).block_until_ready(), repeats)
    grad_s = _median_seconds(
        lambda: jax.block_until_ready(grad(params, x, t, key)), repeats)
    return dict(model=f"{name}:{size}", params_m=num_params / 1e6, fwd_ms=1e3 * fwd_s / batch,
                grad_ms=1e3 * grad_s / batch, step_s=grad_s, gflop=_flops(grad) / 1e9,
                fwd_gflop=_flops(fwd) / 1e9, compile_s=compile_s)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(PUBLISHED),
                        help="comma-separated model:size list")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rows = []
    peak = matmul_flops_per_second()
    for spec in args.sizes.split(","):
        name, size = spec.split(":")
        row = bench_network(name, size, args.batch, args.side, args.repeats)
        peak_after = matmul_flops_per_second()
        row["peak"] = max(peak, peak_after)
        peak = peak_after
        rows.append(row)
        print(f"# done {spec}: {row['step_s']:.2f} s/step", flush=True)

    print(f"\n{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs visible, jax "
          f"{jax.__version__}; batch {args.batch}, {args.side}x{args.side}x3, float32; "
          f"median of {args.repeats}\n")
    print("| network | params | fwd ms/img | fwd+bwd ms/img | fwd+bwd s/step | "
          "GFLOP fwd+bwd (step) | GFLOP/s | matmul peak GFLOP/s | of peak | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = r["gflop"] / r["step_s"]
        print(f"| {r['model']} | {r['params_m']:.1f}M | {r['fwd_ms']:.1f} | {r['grad_ms']:.1f} | "
              f"{r['step_s']:.2f} | {r['gflop']:.1f} | {rate:.0f} | {r['peak'] / 1e9:.0f} | "
              f"{100 * rate * 1e9 / r['peak']:.0f}% | {r['compile_s']:.0f} |")
    print("\ncommand: python benchmarks/networks.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k != "sizes" or v != ",".join(PUBLISHED)))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
