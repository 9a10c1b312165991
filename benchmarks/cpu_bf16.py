"""Where bfloat16 compute stands on this CPU: matrix products and DDPM++'s convolutions.

On a CPU with bf16 matrix units (AMX, AVX-512 BF16), mixed precision speeds up a training
step only if its convolutions and products run on those units. This script times, in one
process and interleaved round by round (A, B, C, ... per round; the machine is shared, so
compare rows of the same run), for a 2048^3 product and for DDPM++ cont.'s three 3x3
convolution shapes at batch 8 (32x32x128, 16x16x256, 8x8x256; forward, and forward +
both gradients):

* XLA float32: sde_lab's default CPU setting (XLA's own convolutions,
  `parallel.set_cpu_convolutions("xla")`);
* XLA bfloat16: the same with bfloat16 operands, what `compute_dtype="bfloat16"` runs;
* products bf16 -> f32: bfloat16 operands with float32 accumulation
  (`preferred_element_type`), which XLA:CPU hands to YNNPACK's bf16 kernels; for the
  convolutions, the forward as one such product of the input's 3x3 patches (im2col) with
  the kernel, and the patch copy alone;
* with oneDNN installed (`pip install "sde_lab[onednn]"`), `sde_lab.onednn.conv`, the
  convolutions of `model.conv_backward="onednn"`, in float32 and bfloat16;
* with torch installed, PyTorch float32 and bfloat16 (oneDNN) on the same threads.

GFLOP/s counts 2 * MACs of the forward (x3 for forward + both gradients). Run:

    python benchmarks/cpu_bf16.py [--repeats 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sde_lab import parallel  # noqa: E402

parallel.set_cpu_convolutions("xla")   # before JAX starts, as the runner does

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import _workers  # noqa: E402  (this script's folder is on sys.path)
from networks import _median_seconds  # noqa: E402

SHAPES = ((32, 128), (16, 256), (8, 256))   # (H = W, C) of DDPM++ cont.'s 3x3 convs
BATCH = 8
_NHWC = ("NHWC", "HWIO", "NHWC")


def _jax_call(f, *args):
    f = jax.jit(f)
    jax.block_until_ready(f(*args))
    return lambda: jax.block_until_ready(f(*args))


def _patches(x):
    """[B, H, W, C] -> [B * H * W, 9 C]: the 3x3 'SAME' patches, tap-major."""
    b, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)],
                           axis=-1)
    return cols.reshape(b * h * w, 9 * c)


def jax_rows(h: int, c: int):
    """{row name: (callable, flops)} for one convolution shape."""
    key = jax.random.PRNGKey(0)
    x32 = jax.random.normal(key, (BATCH, h, h, c), jnp.float32)
    w32 = jax.random.normal(jax.random.fold_in(key, 1), (3, 3, c, c), jnp.float32) * 0.03
    x16, w16 = x32.astype(jnp.bfloat16), w32.astype(jnp.bfloat16)
    flops = 2 * BATCH * h * h * c * c * 9

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_NHWC)

    def loss(x, w):
        return jnp.sum(conv(x, w).astype(jnp.float32) ** 2)

    grads = jax.grad(loss, argnums=(0, 1))
    return {
        "XLA float32 forward": (_jax_call(conv, x32, w32), flops),
        "XLA float32 forward+backward": (_jax_call(grads, x32, w32), 3 * flops),
        "XLA bfloat16 forward": (_jax_call(conv, x16, w16), flops),
        "XLA bfloat16 forward+backward": (_jax_call(grads, x16, w16), 3 * flops),
        "patches x kernel, bf16 -> f32 (forward)": (_jax_call(
            lambda x, w: jax.lax.dot(_patches(x), w.reshape(9 * c, c),
                                     preferred_element_type=jnp.float32), x16, w16), flops),
        "  of which the patch copy": (_jax_call(_patches, x16), 0),
        **_onednn_rows(x32, w32, flops),
    }


def _onednn_rows(x32, w32, flops):
    """sde_lab.onednn.conv (model.conv_backward="onednn") in float32 and bfloat16, with its
    default threads per call; none if oneDNN or a compiler is missing."""
    from sde_lab import onednn

    if onednn.unavailable():
        print(f"# no oneDNN rows: {onednn.unavailable()}")
        return {}
    dn = jax.lax.conv_dimension_numbers(x32.shape, w32.shape, _NHWC)

    def conv(x, w):
        return onednn.conv(x, w, (1, 1), "SAME", dimension_numbers=dn)

    grads = jax.grad(lambda x, w: jnp.sum(conv(x, w).astype(jnp.float32) ** 2), argnums=(0, 1))
    rows = {}
    for dtype in ("float32", "bfloat16"):
        x, w = x32.astype(dtype), w32.astype(dtype)
        rows[f"oneDNN {dtype} forward"] = (_jax_call(conv, x, w), flops)
        rows[f"oneDNN {dtype} forward+backward"] = (_jax_call(grads, x, w), 3 * flops)
    return rows


def jax_matmul_rows(n: int = 2048):
    key = jax.random.PRNGKey(0)
    a32 = jax.random.normal(key, (n, n), jnp.float32)
    b32 = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32)
    a16, b16 = a32.astype(jnp.bfloat16), b32.astype(jnp.bfloat16)
    flops = 2 * n ** 3
    return {
        "XLA float32": (_jax_call(jnp.matmul, a32, b32), flops),
        "XLA bfloat16 -> bfloat16": (_jax_call(jnp.matmul, a16, b16), flops),
        "XLA bfloat16 -> float32": (_jax_call(
            lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32), a16, b16), flops),
    }


def torch_rows(h: int | None, c: int | None, threads: int):
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    out = {}
    for dtype, name in ((torch.float32, "float32"), (torch.bfloat16, "bfloat16")):
        if h is None:   # matmul
            a = torch.randn(2048, 2048, dtype=dtype)
            b = torch.randn(2048, 2048, dtype=dtype)
            fn = (lambda a=a, b=b: a @ b)
            fn()
            out[f"PyTorch {name}"] = (fn, 2 * 2048 ** 3)
            continue
        flops = 2 * BATCH * h * h * c * c * 9
        x = torch.randn(BATCH, c, h, h, dtype=dtype)
        w = (torch.randn(c, c, 3, 3, dtype=dtype) * 0.03)
        xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)

        def fwd(x=x, w=w):
            with torch.no_grad():
                return torch.nn.functional.conv2d(x, w, padding=1)

        def fwd_bwd(x=xg, w=wg):
            y = torch.nn.functional.conv2d(x, w, padding=1)
            (y.float() ** 2).sum().backward()

        fwd(), fwd_bwd()
        out[f"PyTorch {name} forward"] = (fwd, flops)
        out[f"PyTorch {name} forward+backward"] = (fwd_bwd, 3 * flops)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="PyTorch threads (XLA uses every CPU)")
    args = parser.parse_args()
    print("uptime before:", _workers.uptime())
    groups = [("matmul 2048^3", {**jax_matmul_rows(), **torch_rows(None, None, args.threads)})]
    for h, c in SHAPES:
        groups.append((f"3x3 conv {BATCH}x{h}x{h}x{c}",
                       {**jax_rows(h, c), **torch_rows(h, c, args.threads)}))
    times = {(g, r): [] for g, rows in groups for r in rows}
    for _ in range(args.rounds):
        for g, rows in groups:
            for r, (fn, _) in rows.items():
                # one untimed call first: caches warm after the previous row
                times[(g, r)].append(_median_seconds(fn, args.repeats))
    print(f"\njax {jax.__version__}, {os.cpu_count()} CPUs, XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '')!r}; median of {args.repeats} calls, best of "
          f"{args.rounds} interleaved rounds\n")
    print("| operation | row | ms | GFLOP/s | / XLA float32 time |")
    print("|---|---|---:|---:|---:|")
    for g, rows in groups:
        for r, (_, flops) in rows.items():
            best = min(times[(g, r)])
            if g.startswith("matmul"):
                base = "XLA float32"
            else:
                base = ("XLA float32 forward+backward" if r.endswith("backward")
                        else "XLA float32 forward")
            rate = f"{flops / best / 1e9:.0f}" if flops else "-"
            print(f"| {g} | {r} | {best * 1e3:.2f} | {rate} | "
                  f"{best / min(times[(g, base)]):.2f}x |")
    print("\nuptime after:", _workers.uptime())


if __name__ == "__main__":
    main()
