"""Sampler accuracy vs. NFE, wall time and solver overhead, with exact Gaussian-mixture scores.

For a 2-D and a 64-D Gaussian mixture (exact score from `sde_lab.analytic`), every sampler
runs at several NFE budgets on `--seeds` batches (the same prior keys for every sampler);
each row reports the sample error against the true mixture, averaged over the batches:

  sw     sliced 2-Wasserstein distance to the true mixture (128 random directions, exact
         projected quantiles); the first row, `exact`, is an exact sample of the same
         size: the Monte-Carlo floor;
  mean   ||mean - mu||_2;   cov   ||Cov - Sigma||_F / ||Sigma||_F;
  ms     median wall time of one jitted sample batch (after a warm-up call, blocking);
  ovh    solver overhead = (ms / NFE) / (time of one score evaluation on the same batch,
         timed just before): "vs call" divides by one bare jitted score call (the issue's
         definition; it includes the call's dispatch), "vs scan" by the per-iteration time of
         a jitted scan of score calls (the score alone inside a loop, the stricter baseline).
         1.0 means the sampler costs exactly its score evaluations.

The sliced W2 to the true mixture cannot resolve errors below its Monte-Carlo floor (the
`exact` row, ~0.015 at these batch sizes), and 1000-step Euler-Maruyama's error is ~20x
below it. `--bias` therefore measures each method's distance to the converged solution of
its own equation under common randomness (see `bias_table`), which is what the "fast
solver at <= 20 NFE vs EM-1000" comparison needs.

Usage:
  python benchmarks/samplers.py                 # default set, about 3 minutes on 2 cores
  python benchmarks/samplers.py --bias          # common-randomness bias, about 8 minutes
  python benchmarks/samplers.py --overhead      # paired solver-overhead table only
  python benchmarks/samplers.py --full          # every sampler at 10, 20, 50, 100, 1000
  python benchmarks/samplers.py --problems 64d --sde ve --batch 2048
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from sde_lab import samplers, sdes
from sde_lab.samplers import common as samplers_common
from sde_lab.analytic import GaussianMixture


def problems() -> dict[str, GaussianMixture]:
    """2-D: 8 components on a circle of radius 1.5, std 0.2. 64-D: 8 components with
    means N(0, 0.5^2) per coordinate and per-dimension stds in [0.2, 0.5]."""
    angles = 2 * np.pi * np.arange(8) / 8
    two_d = GaussianMixture.create(1.5 * np.stack([np.cos(angles), np.sin(angles)], 1), 0.2,
                                   np.array([3, 1, 2, 1, 3, 1, 2, 3]) / 16)
    rng = np.random.default_rng(0)
    w = rng.uniform(0.5, 1.5, 8)
    high_d = GaussianMixture.create(0.5 * rng.standard_normal((8, 64)),
                                    rng.uniform(0.2, 0.5, (8, 64)), w / w.sum())
    return {"2d": two_d, "64d": high_d}


def step_options(name: str, nfe: int) -> dict | None:
    """Options that spend `nfe` score evaluations (denoise on: +1), or None."""
    if name in ("euler_maruyama", "reverse_diffusion", "ancestral", "ddim", "dpm_solver++",
                "unipc"):
        return {"num_steps": nfe - 1}
    if name in ("heun", "sra"):
        return {"num_steps": (nfe - 1) // 2} if nfe >= 5 else None
    if name == "pc":   # reverse diffusion + one Langevin step: 2 NFE per step
        return {"num_steps": (nfe - 1) // 2, "snr": 0.16} if nfe >= 5 else None
    raise ValueError(name)


DEFAULT_PLAN = {
    "euler_maruyama": [10, 20, 50, 100, 1000],
    "reverse_diffusion": [20, 100],
    "ancestral": [20, 100],
    "pc": [20, 100],
    "ddim": [10, 20, 50],
    "heun": [10, 20, 50],
    "dpm_solver++": [10, 20, 50],
    "unipc": [10, 20, 50],
    "sra": [20],
    "ode": [1e-2, 1e-3],   # rtol = atol; NFE is whatever the solver needed
}
FULL_BUDGETS = [10, 20, 50, 100, 1000]
DEFAULT_BATCH = {"2d": 16384, "64d": 4096}


class SlicedW2:
    """Sliced 2-Wasserstein distance from a sample to the TRUE mixture: for each of
    `num_dirs` random unit directions theta, the projected mixture is a 1-D mixture with
    means theta.mu_k and variances sum_d theta_d^2 s_kd^2; its quantile function is
    tabulated once (CDF on a fine grid, inverted by interpolation), and
    W2^2 = mean_i (x_(i) - F^-1((i + 1/2) / n))^2 over the sorted projections."""

    def __init__(self, gm: GaussianMixture, key, num_dirs: int = 128, grid: int = 20001):
        from scipy.special import ndtr
        dirs = np.asarray(jax.random.normal(key, (gm.dim, num_dirs)), np.float64)
        self.dirs = dirs / np.linalg.norm(dirs, axis=0, keepdims=True)
        means = gm.means @ self.dirs                              # [K, P]
        stds = np.sqrt(gm.stds**2 @ self.dirs**2)                 # [K, P]
        lo, hi = (means - 8 * stds).min(0), (means + 8 * stds).max(0)
        self.z = lo + np.linspace(0, 1, grid)[:, None] * (hi - lo)  # [G, P]
        self.cdf = np.einsum("k,gkp->gp", gm.weights,
                             ndtr((self.z[:, None] - means[None]) / stds[None]))

    def __call__(self, x: np.ndarray) -> float:
        proj = np.sort(x @ self.dirs, axis=0)                    # [n, P]
        u = (np.arange(x.shape[0]) + 0.5) / x.shape[0]
        q = np.stack([np.interp(u, self.cdf[:, p], self.z[:, p])
                      for p in range(self.dirs.shape[1])], axis=1)
        return float(np.sqrt(np.mean((proj - q) ** 2)))


def errors(x, sliced_w2: SlicedW2, gm: GaussianMixture) -> dict[str, float]:
    x = np.asarray(x, np.float64)
    cov = np.cov(x.T)
    return {"sw": sliced_w2(x), "mean": float(np.linalg.norm(x.mean(0) - gm.mean())),
            "cov": float(np.linalg.norm(cov - gm.cov()) / np.linalg.norm(gm.cov()))}


def timed_runs(fn, keys) -> tuple[list, float]:
    """Calls fn(key) once to compile and warm up, then once per key (blocking on each);
    returns the outputs and the median wall time in seconds."""
    jax.block_until_ready(fn(keys[0]))
    outputs, times = [], []
    for key in keys:
        start = time.perf_counter()
        outputs.append(jax.block_until_ready(fn(key)))
        times.append(time.perf_counter() - start)
    return outputs, statistics.median(times)


def score_baselines_ms(sde, gm, shape, repeats: int = 20, loop: int = 20):
    """Two baselines for one score evaluation on a [B, D] batch (ms, medians):
    `call`: one bare jitted score call (includes the ~10 us dispatch);
    `loop`: per-iteration time of a jitted lax.scan of `loop` dependent score calls
    (x <- x + 1e-6 score), i.e. the score with nothing else around it inside a loop."""
    score_fn = gm.score_fn(sde)
    x = jax.random.normal(jax.random.PRNGKey(7), shape)
    t = jnp.full(shape[:1], 0.5)
    call = jax.jit(score_fn)

    @jax.jit
    def chained(x):
        body = lambda x, _: (x + 1e-6 * score_fn(x, t), None)  # noqa: E731
        return jax.lax.scan(body, x, None, length=loop)[0]

    _, call_s = timed_runs(lambda _: call(x, t), [None] * repeats)
    _, loop_s = timed_runs(lambda _: chained(x), [None] * max(3, repeats // 4))
    return 1e3 * call_s, 1e3 * loop_s / loop


def mean_errors(samples, sliced_w2, gm) -> dict[str, float]:
    """Errors averaged over independent batches (the metrics are noisy: a single batch's
    sliced W2 varies by +-30% from seed to seed, mostly through the component counts)."""
    errs = [errors(x, sliced_w2, gm) for x in samples]
    return {k: float(np.mean([e[k] for e in errs])) for k in errs[0]}


def run_problem(label, gm, sde, plan, batch, seeds):
    """Rows of (sampler, options, NFE, errors, ms per batch, overhead). Every sampler sees
    the same `seeds` keys (so the same prior draws); errors are averaged over them. The bare
    score call is timed right before each sampler, so both see the same machine load."""
    shape = (batch, gm.dim)
    keys = [jax.random.PRNGKey(s) for s in range(seeds)]
    sliced_w2 = SlicedW2(gm, jax.random.PRNGKey(123))
    exact = [gm.sample(jax.random.PRNGKey(1000 + s), batch) for s in range(seeds)]
    nan = float("nan")
    rows = [("exact", "-", 0, mean_errors(exact, sliced_w2, gm), nan, (nan, nan))]
    score_times = []
    for name, budgets in plan.items():
        for budget in budgets:
            options = ({"rtol": budget, "atol": budget} if name == "ode"
                       else step_options(name, budget))
            if options is None:
                continue
            sampler = samplers.make(name, **options)
            fn = jax.jit(lambda key, s=sampler: s(key, sde, gm.score_fn(sde), shape))
            opts = ",".join(f"{k}={v}" for k, v in options.items())
            call_ms, loop_ms = score_baselines_ms(sde, gm, shape)
            try:
                outputs, seconds = timed_runs(fn, keys)
            except ValueError as e:   # a step undefined on this grid (e.g. DDPM beta dt >= 1)
                print(f"  [{label}] {name} {opts}: {e}", file=sys.stderr, flush=True)
                nan = float("nan")
                rows.append((name, opts + " (undefined)", 0,
                             {"sw": nan, "mean": nan, "cov": nan}, nan, (nan, nan)))
                continue
            score_times.append((call_ms, loop_ms))
            nfe = int(np.mean([int(stats["nfe"]) for _, stats in outputs]))
            ms = 1e3 * seconds
            err = mean_errors([x for x, _ in outputs], sliced_w2, gm)
            rows.append((name, opts, nfe, err, ms, (ms / nfe / call_ms, ms / nfe / loop_ms)))
            print(f"  [{label}] {name} {opts}: nfe={nfe} sw={err['sw']:.4f} {ms:.1f} ms, "
                  f"overhead {rows[-1][5][0]:.2f} / {rows[-1][5][1]:.2f}", file=sys.stderr,
                  flush=True)
    call_ms, loop_ms = (statistics.median(v) for v in zip(*score_times))
    return rows, (call_ms, loop_ms)


def print_table(label, gm, rows, score_ms, batch):
    call_ms, loop_ms = score_ms
    print(f"\n### {label}: {gm.dim}-D mixture of {len(gm.weights)}, batch {batch}; one score "
          f"evaluation: {call_ms:.3f} ms as a bare jitted call, {loop_ms:.3f} ms inside a "
          f"scan (medians over rows)\n")
    print("| sampler | options | NFE | sliced W2 | mean err | rel. cov err | ms / batch | "
          "overhead vs call | vs scan |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, opts, nfe, err, ms, (ovh_call, ovh_loop) in rows:
        fmt = lambda v, f: "-" if np.isnan(v) else format(v, f)  # noqa: E731
        print(f"| {name} | {opts} | {nfe} | {fmt(err['sw'], '.4f')} | {fmt(err['mean'], '.4f')} "
              f"| {fmt(err['cov'], '.4f')} | {fmt(ms, '.1f')} | {fmt(ovh_call, '.2f')} | "
              f"{fmt(ovh_loop, '.2f')} |")


def floor_check(label, rows):
    """Does a sampler with NFE <= 20 reach the sliced-W2 error of 1000-step EM?"""
    em = [r for r in rows if r[0] == "euler_maruyama" and r[2] >= 1000]
    fast = [r for r in rows if 0 < r[2] <= 20]
    if not em or not fast:
        return
    best = min(fast, key=lambda r: r[3]["sw"])
    verdict = "yes" if best[3]["sw"] <= em[0][3]["sw"] else "no"
    print(f"\n{label}: EM-{em[0][2]} sliced W2 {em[0][3]['sw']:.4f}; best with NFE <= 20: "
          f"{best[0]} ({best[1]}, NFE {best[2]}) {best[3]['sw']:.4f} -> reaches it: {verdict}")


# ----------------------------------------------------------------------------------------
# Bias with common randomness. The sliced W2 above has a Monte-Carlo floor (the `exact` row)
# that hides discretization errors below it. Here each sampler is compared with the
# converged solution of its own equation driven by the SAME randomness, so the floor
# cancels: deterministic solvers start from the same x_T as a converged probability-flow
# ODE (rtol = atol = 1e-7), Euler-Maruyama uses the same Brownian path as Euler-Maruyama
# with BIAS_REFINE times more steps. Both end at the same distribution (p_{t_min} of the
# exact-score diffusion, denoised), so the coupled sliced W2 (sorted projections of the two
# samples, 128 directions) measures each method's distance to it.

BIAS_REFINE = 16   # EM-1000 vs EM-16000; --em_refine changes it
BIAS_PLAN = [
    ("ddim", {"num_steps": 19}),
    ("heun", {"num_steps": 9}),
    ("dpm_solver++", {"num_steps": 9}),
    ("dpm_solver++", {"num_steps": 19}),
    ("dpm_solver++", {"num_steps": 19, "order": 3}),
    ("unipc", {"num_steps": 9}),
    ("unipc", {"num_steps": 19}),
    ("unipc", {"num_steps": 19, "order": 4}),
    # sigma_max: EDM's sigma_max (grid start). Swept on both problems over 4, 5, 7, 8, 10,
    # 12, 15 with unipc order 4: 7-10 are best (2-D 0.00076-0.00080, 64-D ~0.0008).
    ("dpm_solver++", {"num_steps": 19, "order": 3, "sigma_max": 10.0}),
    ("unipc", {"num_steps": 19, "sigma_max": 10.0}),
    ("unipc", {"num_steps": 9, "order": 4, "sigma_max": 10.0}),
    ("unipc", {"num_steps": 19, "order": 4, "sigma_max": 10.0}),
    ("unipc", {"num_steps": 49}),
    ("ode", {"rtol": 1e-3, "atol": 1e-3}),
]


class _FixedPrior:
    """`sde` with its prior draw replaced by the fixed start points x_T."""

    def __init__(self, sde, x_T):
        self._sde, self._x_T = sde, x_T

    def __getattr__(self, name):
        return getattr(self._sde, name)

    def prior_sample(self, key, shape):
        return self._x_T


def _coupled_sw(a, b, dirs) -> float:
    a, b = (np.asarray(v, np.float64) for v in (a, b))
    return float(np.sqrt(np.mean((np.sort(a @ dirs, 0) - np.sort(b @ dirs, 0)) ** 2)))


def em_refinement_pair(sde, score_fn, x_T, num_steps: int, refine: int, key):
    """(coarse, fine): Euler-Maruyama with num_steps and refine * num_steps uniform steps
    from T to t_min, the coarse increments being sums of the fine ones, both denoised."""
    ctx = samplers_common.Ctx(sde, score_fn)
    rev = sdes.reverse(sde, score_fn)
    ts = jnp.linspace(sde.T, sde.t_min, num_steps + 1, dtype=x_T.dtype)

    def em(x, t, dt, dw):
        drift, g = rev.drift_diffusion(x, jnp.full(x.shape[:1], t, x.dtype))
        return x - drift * dt + g[:, None] * dw

    def body(carry, inputs):
        fine, coarse = carry
        t, s, k = inputs
        dt = (t - s) / refine
        dws = jax.random.normal(k, (refine,) + x_T.shape, x_T.dtype) * jnp.sqrt(dt)
        fine = jax.lax.fori_loop(0, refine, lambda j, x: em(x, t - j * dt, dt, dws[j]), fine)
        return (fine, em(coarse, t, t - s, dws.sum(0))), None

    keys = jax.random.split(key, num_steps)
    (fine, coarse), _ = jax.lax.scan(body, (x_T, x_T), (ts[:-1], ts[1:], keys))
    return ctx.x0(coarse, ts[-1]), ctx.x0(fine, ts[-1])


def bias_table(label, gm, sde, batch, em_steps: int = 999, refine: int = BIAS_REFINE):
    x_T = sde.prior_sample(jax.random.PRNGKey(42), (batch, gm.dim))
    fixed = _FixedPrior(sde, x_T)
    score_fn = gm.score_fn(sde)
    dirs = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (gm.dim, 128)), np.float64)
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    start = time.perf_counter()
    coarse, fine = jax.jit(lambda x, key: em_refinement_pair(
        sde, score_fn, x, em_steps, refine, key))(x_T, jax.random.PRNGKey(0))
    rows = [("euler_maruyama", f"num_steps={em_steps}", em_steps + 1,
             _coupled_sw(coarse, fine, dirs),
             f"EM, {refine * em_steps} steps, same Brownian path")]
    print(f"  [{label}] bias: EM pair {time.perf_counter() - start:.0f} s", file=sys.stderr,
          flush=True)

    def run(name, options):
        sampler = samplers.make(name, **options)
        x, stats = jax.jit(lambda key: sampler(key, fixed, score_fn, x_T.shape))(
            jax.random.PRNGKey(0))
        return x, int(stats["nfe"])

    reference, ref_nfe = run("ode", {"rtol": 1e-7, "atol": 1e-7})
    for name, options in BIAS_PLAN:
        x, nfe = run(name, options)
        opts = ",".join(f"{k}={v}" for k, v in options.items())
        rows.append((name, opts, nfe, _coupled_sw(x, reference, dirs),
                     f"PF ODE rtol 1e-7 ({ref_nfe} NFE), same x_T"))
    print(f"\n### {label}: distance to the converged solution with common randomness "
          f"(coupled sliced W2, batch {batch})\n")
    print("| sampler | options | NFE | coupled sliced W2 | compared with |")
    print("|---|---|---:|---:|---|")
    for name, opts, nfe, err, ref in rows:
        print(f"| {name} | {opts} | {nfe} | {err:.5f} | {ref} |")
    em_err = rows[0][3]
    # EM is weak order 1: bias(N) ~ C / N, so its distance to the r-times refined run is
    # (1 - 1/r) of its distance to the limit (Richardson); the raw value is a lower bound.
    em_limit = em_err / (1 - 1 / refine)
    best = min((r for r in rows[1:] if r[2] <= 20), key=lambda r: r[3])
    print(f"\n{label}: EM-{em_steps + 1} {em_err:.5f} to EM-{refine * em_steps + 1} "
          f"(~{em_limit:.5f} to its limit); best with NFE <= 20: {best[0]} ({best[1]}, NFE "
          f"{best[2]}) {best[3]:.5f} = {best[3] / em_err:.2f}x the raw, "
          f"{best[3] / em_limit:.2f}x the extrapolated EM value")


OVERHEAD_PLAN = [("euler_maruyama", {"num_steps": 100}), ("ancestral", {"num_steps": 100}),
                 ("ddim", {"num_steps": 100}), ("heun", {"num_steps": 50}),
                 ("dpm_solver++", {"num_steps": 100}),
                 ("unipc", {"num_steps": 100, "order": 4, "sigma_max": 10.0}),
                 ("pc", {"num_steps": 50}),
                 ("sra", {"num_steps": 20}), ("ode", {"rtol": 1e-3, "atol": 1e-3})]


def paired_overhead(gm, sde, batch, pairs: int = 5, loop: int = 50):
    """Solver overhead measured in interleaved pairs, robust to a machine whose load
    changes: each pair times the sampler once and a jitted scan of `loop` bare score calls
    once, back to back; the reported ratio is the median over pairs of
    (sampler time / NFE) / (scan time / loop)."""
    shape = (batch, gm.dim)
    score_fn = gm.score_fn(sde)
    x0 = jax.random.normal(jax.random.PRNGKey(7), shape)
    t = jnp.full(shape[:1], 0.5)

    @jax.jit
    def chained(x):
        body = lambda x, _: (x + 1e-6 * score_fn(x, t), None)  # noqa: E731
        return jax.lax.scan(body, x, None, length=loop)[0]

    jax.block_until_ready(chained(x0))
    print(f"\n### solver overhead, {gm.dim}-D, batch {batch}: median over {pairs} interleaved "
          f"pairs of (sampler ms / NFE) / (ms per score call in a {loop}-call scan)\n")
    print("| sampler | options | NFE | overhead |")
    print("|---|---|---:|---:|")
    for name, options in OVERHEAD_PLAN:
        sampler = samplers.make(name, **options)
        fn = jax.jit(lambda key, s=sampler: s(key, sde, score_fn, shape))
        nfe = int(jax.block_until_ready(fn(jax.random.PRNGKey(0)))[1]["nfe"])
        ratios = []
        for p in range(pairs):
            start = time.perf_counter()
            jax.block_until_ready(chained(x0))
            score_s = (time.perf_counter() - start) / loop
            start = time.perf_counter()
            jax.block_until_ready(fn(jax.random.PRNGKey(p)))
            ratios.append((time.perf_counter() - start) / nfe / score_s)
        opts = ",".join(f"{k}={v}" for k, v in options.items())
        print(f"| {name} | {opts} | {nfe} | {statistics.median(ratios):.2f} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="2d,64d", help="comma list of 2d, 64d")
    parser.add_argument("--sde", default="vp", choices=sdes.available())
    parser.add_argument("--batch", type=int, default=None,
                        help="samples per batch (default: 2d 16384, 64d 4096)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="batches per row: errors are averaged, time is the median")
    parser.add_argument("--samplers", default=None, help="comma list (default: all)")
    parser.add_argument("--full", action="store_true",
                        help="every sampler at NFE 10, 20, 50, 100, 1000")
    parser.add_argument("--bias", action="store_true",
                        help="only the common-randomness bias tables (2-D batch 131072, "
                             "64-D batch 16384; about 8 minutes)")
    parser.add_argument("--em_refine", type=int, default=BIAS_REFINE,
                        help="--bias: EM-1000 is compared with EM on this many times more "
                             "steps on the same Brownian path (16: 2-D takes ~4 minutes)")
    parser.add_argument("--overhead", action="store_true",
                        help="only the paired solver-overhead table (64-D)")
    parser.add_argument("--no_overhead", action="store_true",
                        help="skip the paired solver-overhead table (64-D)")
    args = parser.parse_args(argv)
    print("command: python " + " ".join(sys.argv))
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, sde {args.sde}")
    plan = dict(DEFAULT_PLAN)
    if args.full:
        plan = {k: ([1e-2, 1e-3, 1e-4, 1e-5, 1e-6] if k == "ode" else FULL_BUDGETS)
                for k in plan}
    if args.samplers:
        plan = {k: plan[k] for k in args.samplers.split(",")}
    sde = sdes.make(args.sde)
    all_problems = problems()
    start = time.perf_counter()
    if args.overhead:
        paired_overhead(all_problems["64d"], sde, args.batch or DEFAULT_BATCH["64d"])
        return
    if args.bias:
        for label in args.problems.split(","):
            bias_table(label, all_problems[label], sde,
                       args.batch or {"2d": 131072, "64d": 16384}[label],
                       refine=args.em_refine)
        print(f"\ntotal {time.perf_counter() - start:.0f} s")
        return
    for label in args.problems.split(","):
        gm = all_problems[label]
        batch = args.batch or DEFAULT_BATCH[label]
        rows, score_ms = run_problem(label, gm, sde, plan, batch, args.seeds)
        print_table(label, gm, rows, score_ms, batch)
        floor_check(label, rows)
    if "64d" in args.problems.split(",") and not args.no_overhead:
        paired_overhead(all_problems["64d"], sde, args.batch or DEFAULT_BATCH["64d"])
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
