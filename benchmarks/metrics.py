"""Feature-extraction throughput of the metrics' networks on this machine.

    PYTHONPATH=. python benchmarks/metrics.py [--batch_size 50] [--repeats 3] [--no_torch]

Prints a markdown table: images/s of the FID InceptionV3 (random weights: the timing does not
depend on the values) on 32x32x3 inputs resized to 299, and of the digits extractor, with
achieved GFLOP/s (XLA's cost analysis) next to two baselines measured in the same process, so
the ratios survive a noisy shared machine: a float32 2048^3 matmul (the CPU's practical peak)
and, when PyTorch and pytorch-fid are installed, pytorch-fid's network on the same batch.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from sde_lab import metrics
from sde_lab.metrics import digits_classifier, inception


def _time(fn, repeats: int) -> float:
    fn()  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _matmul_gflops(repeats: int) -> float:
    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * 2048**3 / _time(lambda: f(a).block_until_ready(), repeats) / 1e9


def _flops(ext, images) -> float:
    compiled = jax.jit(ext.apply_fn).lower(ext.variables, images).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def _bench_extractor(ext, images, repeats):
    f = jax.jit(ext.apply_fn)
    seconds = _time(lambda: f(ext.variables, images)[0].block_until_ready(), repeats)
    return images.shape[0] / seconds, _flops(ext, images) / seconds / 1e9


_KEEP = []


def _bench_pytorch_fid(batch_size, repeats):
    try:
        import torch
        import pytorch_fid  # noqa: F401
    except ImportError:
        return None
    try:
        import torchvision
    except RuntimeError:
        # PyPI's CUDA-built torchvision beside CPU torch: its C ops do not load. Declare the two
        # op schemas its import registers fakes for (never called), as tests/test_inception_port.py.
        import sys
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP.append(lib)
        import torchvision
    except ImportError:
        return None
    from pytorch_fid import inception as pfi

    orig_load, orig_fetch = torchvision.models.Inception3.load_state_dict, pfi.load_state_dict_from_url
    torchvision.models.Inception3.load_state_dict = lambda self, *a, **k: None
    pfi.load_state_dict_from_url = lambda *a, **k: {}  # never download: random weights
    try:
        model = pfi.InceptionV3([3]).eval()
    finally:
        torchvision.models.Inception3.load_state_dict, pfi.load_state_dict_from_url = orig_load, orig_fetch
    x = torch.rand(batch_size, 3, 32, 32)
    with torch.no_grad():
        seconds = _time(lambda: model(x), repeats)
    return batch_size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no_torch", action="store_true")
    args = parser.parse_args()
    b = args.batch_size
    peak = _matmul_gflops(args.repeats)
    rng = np.random.default_rng(0)

    inc = metrics.make_extractor("inception", variables=inception.init_variables(jax.random.key(0)))
    inc_ips, inc_gflops = _bench_extractor(inc, jnp.asarray(rng.random((b, 32, 32, 3), np.float32)), args.repeats)
    dig = metrics.make_extractor("digits")
    dig_ips, dig_gflops = _bench_extractor(dig, jnp.asarray(rng.random((b, 8, 8, 1), np.float32)), args.repeats)
    torch_ips = None if args.no_torch else _bench_pytorch_fid(b, args.repeats)

    print(f"{jax.device_count()} x {jax.devices()[0].platform}, jax {jax.__version__}; "
          f"batch {b}; best of {args.repeats}; float32 2048^3 matmul baseline {peak:.0f} GFLOP/s\n")
    print("| extractor | input | images/s | GFLOP/s | of matmul peak | vs pytorch-fid |")
    print("|---|---|---|---|---|---|")
    vs = f"{inc_ips / torch_ips:.2f}x" if torch_ips else "n/a"
    print(f"| inception (random weights) | 32x32x3 -> 299 | {inc_ips:.1f} | {inc_gflops:.0f} | "
          f"{inc_gflops / peak:.2f} | {vs} |")
    if torch_ips:
        print(f"| pytorch-fid InceptionV3 (torch {__import__('torch').__version__}, random weights) | "
              f"32x32x3 -> 299 | {torch_ips:.1f} | | | 1.00x |")
    print(f"| digits ({digits_classifier.FEATURE_DIM}-d) | 8x8x1 | {dig_ips:,.0f} | {dig_gflops:.1f} | "
          f"{dig_gflops / peak:.3f} | |")


if __name__ == "__main__":
    main()
