"""PF-ODE likelihood: in-graph diffrax solve vs score_sde's host-loop SciPy RK45.

For a zero-mean 16-D Gaussian mixture with its exact score under an SDE (default VP), prints
per tolerance and divergence estimator: NFE, wall time (best of 3 rounds of --repeats warm
calls: the machine is shared, and the minimum is the least noisy estimate of the cost), and
the error of log p against the analytic value log p_{t_min}(x) - [log p_T(z) - prior_logp(z)]
(float64), for

* `in-graph`: `likelihood.log_likelihood` (Dopri5 + PID, default max error norm);
* `in-graph rms`: the same with `error_norm="rms"`, scipy's norm: the equal-tolerance row;
* `score_sde`: scipy.integrate.solve_ivp(method="RK45") on the host, as score_sde's
  likelihood.py does it, with one jitted device call per drift evaluation (numpy -> JAX ->
  numpy) returning the drift and the divergence (Hutchinson: jax.grad of sum(drift * eps),
  score_sde's div_fn; exact: the library's trace, which score_sde does not have). score_sde
  makes two calls per evaluation (drift, then divergence); one call here favours the baseline.

The speed-up is baseline time / in-graph time, measured in the same process. The floor (3x
at equal tolerance) is checked on score_sde's protocol, the Hutchinson rows; with the exact
trace both sides spend most of each evaluation on the same D JVPs, so the host loop's share,
and the speed-up, are small. The Hutchinson error is mostly probe noise (one Rademacher
probe per example), not solver error.

    PYTHONPATH=. python benchmarks/likelihood.py [--sde vp] [--batch 64] [--repeats 5]

With `--network ddpmpp_cont` it instead compares, on the published DDPM++ cont. network
(VP, eps parameterization, randomly initialised with output scale `--init-scale` 1 so the
drift is as large as a trained eps-model's rather than the zero-initialised head's ~0; the
reference loads the same weights through `sde_lab.convert.to_reference`),
the in-graph likelihood (each of `--solvers` tsit5/dopri5 with each of `--norms` max/rms)
with score_sde_pytorch's own
`likelihood.get_likelihood_fn` (`--reference-dir`, a clone of yang-song/score_sde_pytorch;
SciPy RK45 on the host, RMS norm) at equal *accuracy*: each side's bits/dim error is
measured against its own tight solve (rtol = atol = `--tight`, same Hutchinson probe, so
the difference is solver error alone; in-graph, the first solver and norm's solve, and
`--floor` also solves the others there to show how far apart they are), and per in-graph
method the setting that reaches the
reference's rtol = 1e-5 error at least cost is reported with its time ratio. Per row: NFE
(drift evaluations), steps, network passes per evaluation (in-graph: one forward + one JVP
through `jax.linearize`; reference: two forwards + one backward, its drift_fn and div_fn),
time per example. The first in-graph call per solver and norm compiles (tolerances are
traced, so one compilation serves them all) and is not timed; methods alternate per tolerance
(A, B, C, A, B, C), with `uptime` before and after. About half an hour on 2 CPU cores at batch
4 with two solvers, two norms and five tolerances.

    python benchmarks/likelihood.py --network ddpmpp_cont --reference-dir ../score_sde_pytorch
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this sde_lab

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate

from sde_lab import likelihood, sdes
from sde_lab.analytic import GaussianMixture

T_MIN = 1e-5
TOLS = (1e-3, 1e-4, 1e-5)
BASELINE = "score_sde (host RK45)"


def mixture(dim: int = 16) -> GaussianMixture:
    rng = np.random.default_rng(0)
    half = rng.choice([-0.4, 0.4], size=(2, dim))
    return GaussianMixture.create(np.concatenate([half, -half]), rng.uniform(0.2, 0.4, (4, dim)))


def score_sde_likelihood(sde, score_fn, estimator):
    """score_sde's likelihood_fn: SciPy solve_ivp on the host, one device call per evaluation."""
    flow = sdes.reverse(sde, score_fn, probability_flow=True)

    def drift_fn(x, t):
        return flow.drift_diffusion(x, t)[0]

    @jax.jit
    def drift_and_div(x, t, eps):
        if estimator == "hutchinson":
            grad = jax.grad(lambda data: jnp.sum(drift_fn(data, t) * eps))(x)
            div = jnp.sum(grad * eps, axis=tuple(range(1, x.ndim)))
            return drift_fn(x, t), div
        drift, jvp_fn = jax.linearize(lambda x_: drift_fn(x_, t), x)
        return drift, likelihood._exact_div(jvp_fn, x)

    prior_logp = jax.jit(sde.prior_logp)

    def run(key, data, rtol, atol):
        shape, n = data.shape, data.shape[0]
        eps = jax.random.rademacher(key, shape, jnp.float32)

        def ode_func(t, y):
            sample = jnp.asarray(y[:-n].reshape(shape), jnp.float32)
            vec_t = jnp.full((n,), t, jnp.float32)
            drift, div = drift_and_div(sample, vec_t, eps)
            return np.concatenate([np.asarray(drift).reshape(-1), np.asarray(div)])

        init = np.concatenate([np.asarray(data).reshape(-1), np.zeros(n)])
        sol = integrate.solve_ivp(ode_func, (T_MIN, sde.T), init, rtol=rtol, atol=atol,
                                  method="RK45")
        z = sol.y[:-n, -1].reshape(shape)
        logp = np.asarray(prior_logp(jnp.asarray(z, jnp.float32))) + sol.y[-n:, -1]
        return logp, z, sol.nfev

    return run


def analytic_target(gm, sde, x, z):
    with jax.enable_x64(True):
        x64, z64 = (jnp.asarray(np.asarray(v), jnp.float64) for v in (x, z))
        gap = gm.logp(sde, z64, sde.T) - sde.prior_logp(z64)
        return np.asarray(gm.logp(sde, x64, T_MIN) - gap)


def timed(fns: dict, repeats: int, rounds: int = 3) -> dict:
    """Best wall time per callable over `rounds` rounds of `repeats` back-to-back calls each.

    Calls of one method run back to back (so XLA's worker threads, still spinning after one
    method's call, do not slow the next method's), and the rounds alternate the methods so a
    burst of load on this shared machine cannot hit only one of them.
    """
    outs = {label: fn() for label, fn in fns.items()}     # warm-up: compilation, caches
    best = dict.fromkeys(fns, math.inf)
    for _ in range(rounds):
        for label, fn in fns.items():
            for _ in range(repeats):
                start = time.perf_counter()
                outs[label] = fn()
                best[label] = min(best[label], time.perf_counter() - start)
    return {label: (*outs[label], best[label]) for label in fns}


def in_graph(key, sde, score, x, estimator, tol, norm):
    def call():
        logp, stats = likelihood.log_likelihood(key, sde, score, x, estimator, rtol=tol,
                                                atol=tol, t_min=T_MIN, error_norm=norm)
        logp, z, nfe = jax.block_until_ready((logp, stats["z"], stats["nfe"]))
        return np.asarray(logp), z, int(nfe)
    return call


# ------------------------------------------------------------------ network mode

HERE = os.path.dirname(os.path.abspath(__file__))
NETWORK_SIZES = ("ddpmpp_cont", "ddpmpp_cont_deep")  # VP eps-models, as configs/cifar10.py


def network_data(batch: int, seed: int = 0) -> np.ndarray:
    """Dequantized 8-bit images scaled to [-1, 1], NHWC [B, 32, 32, 3] float32."""
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, 256, (batch, 32, 32, 3))
    return (2.0 * (levels + rng.uniform(size=levels.shape)) / 256.0 - 1.0).astype(np.float32)


def sde_lab_network_worker(spec: dict) -> None:
    sys.path.insert(0, HERE)
    import _workers

    from sde_lab import convert, models, parallel, parameterization

    parallel.set_cpu_convolutions(spec.get("cpu_convolutions", "xla"))  # as the runner
    parallel.set_cpu_scheduler(spec.get("cpu_scheduler", "memory"))
    parallel.enable_compilation_cache(spec.get("cache_dir") or "none")
    sde = sdes.make("vp")
    net = models.make("ncsnpp", size=spec["size"], init_scale=spec["init_scale"],
                      dtype=spec["dtype"])
    x = jnp.asarray(network_data(spec["batch"]))
    params = jax.jit(net.init)(jax.random.PRNGKey(0), x[:1], jnp.zeros((1,)))
    # The reference loads these weights: both sides integrate the same network.
    np.savez(spec["weights"], **convert.to_reference(
        jax.device_get(params), net, x.shape[1:], "score_sde_pytorch"))
    score = jax.tree_util.Partial(parameterization.make("eps").score_model(net.apply, sde),
                                  params)
    key = jax.random.PRNGKey(1)

    def call(tol, norm, solver):
        start = time.perf_counter()
        logp, stats = likelihood.log_likelihood(key, sde, score, x, "hutchinson", rtol=tol,
                                                atol=tol, t_min=T_MIN, error_norm=norm,
                                                solver=solver)
        logp, nfe, steps = jax.block_until_ready(
            (logp, stats["nfe"], stats["num_steps"]))
        bpd = likelihood.bits_per_dim(logp, x.shape[1:], 256, scaler=lambda y: 2 * y - 1)
        return dict(bpd=np.asarray(bpd).tolist(), nfe=int(nfe), steps=int(steps),
                    seconds=time.perf_counter() - start)

    compiled = set()

    def solve(tol, norm, solver="dopri5", timed=True):
        # The first call per (solver, norm) compiles (the tolerances are traced: one
        # compilation for each); a timed row is always a call that did not compile.
        first = None
        if (solver, norm) not in compiled:
            first = call(tol, norm, solver)
            compiled.add((solver, norm))
        second = call(tol, norm, solver) if (timed or first is None) else first
        return dict(second, first_call_s=first["seconds"] if first else None,
                    load=os.getloadavg()[0])

    _workers.serve(dict(num_params=sum(v.size for v in jax.tree.leaves(params)),
                        device=jax.devices()[0].device_kind),
                   {"solve": solve,
                    "quit": lambda: dict(rss_peak=_workers.peak_rss_bytes())})


def reference_network_worker(spec: dict) -> None:
    sys.path.insert(0, HERE)
    import _workers
    import reference

    torch = reference.import_reference(spec["reference_dir"], spec["torch_threads"])
    solve_fn, num_params = reference.make_likelihood(spec["size"], spec["batch"],
                                                     init_scale=spec["init_scale"], eps=T_MIN,
                                                     weights=spec["weights"])
    data = torch.from_numpy(np.ascontiguousarray(network_data(spec["batch"]).transpose(0, 3, 1, 2)))

    def solve(tol, norm, solver=None, timed=True):
        del norm, solver, timed  # SciPy's RK45 with the RMS norm; nothing to compile
        start = time.perf_counter()
        bpd, nfe = solve_fn(data, tol, tol)
        return dict(bpd=bpd.tolist(), nfe=int(nfe), steps=None,
                    seconds=time.perf_counter() - start, load=os.getloadavg()[0])

    _workers.serve(dict(num_params=num_params, torch=torch.__version__,
                        threads=torch.get_num_threads()),
                   {"solve": solve, "quit": lambda: dict(rss_peak=_workers.peak_rss_bytes())})


def network_main(args) -> None:
    sys.path.insert(0, HERE)
    import _workers

    print(f"uptime before: {_workers.uptime()}", flush=True)
    weights = os.path.join(tempfile.mkdtemp(prefix="sde_lab_likelihood_"), "weights.npz")
    common = dict(size=args.network, batch=args.batch, init_scale=args.init_scale,
                  weights=weights)
    argv = lambda spec: [sys.executable, "-u", os.path.abspath(__file__), "--worker",  # noqa: E731
                         json.dumps(spec)]
    workers = {"sde_lab": _workers.Worker("sde_lab", argv(dict(
        common, kind="sde_lab", dtype=args.dtype, cache_dir=args.cache_dir)))}
    workers["sde_lab"].ready(args.timeout)
    if args.reference_dir:
        workers["reference"] = _workers.Worker("reference", argv(dict(
            common, kind="reference", reference_dir=args.reference_dir,
            torch_threads=args.torch_threads)))
        workers["reference"].ready(args.timeout)
    # (label, worker, norm, solver); the first in-graph method's solve at --tight is the
    # in-graph accuracy reference of every in-graph row.
    methods = [(f"in-graph {solver} {norm}", "sde_lab", norm, solver)
               for solver in args.solvers for norm in args.norms]
    if args.reference_dir:
        methods.append(("score_sde RK45 (rms)", "reference", "rms", None))
    results = {}
    try:
        for tol in [args.tight] + [float(t) for t in args.tols.split(",")]:
            for i, (label, who, norm, solver) in enumerate(methods):
                if tol == args.tight and who == "sde_lab" and i > 0 and not args.floor:
                    continue
                out = workers[who].ask("solve", args.timeout, tol=tol, norm=norm,
                                       solver=solver, timed=tol != args.tight)
                results[(label, tol)] = out
                print(f"# {label} rtol=atol={tol:g}: nfe {out['nfe']}, {out['seconds']:.1f} s "
                      f"(load {out['load']:.1f})", flush=True)
    finally:
        for w in workers.values():
            w.close()
    _network_table(results, methods, args)
    print(f"uptime after: {_workers.uptime()}", flush=True)


def _network_table(results, methods, args) -> None:
    passes = {"sde_lab": "1 fwd + 1 JVP", "reference": "2 fwd + 1 bwd"}
    tight = {}
    for label, who, _, _ in methods:   # the first method of each worker
        if (label, args.tight) in results and who not in tight:
            tight[who] = np.asarray(results[(label, args.tight)]["bpd"])
    print(f"\nDDPM++ ({args.network}), random init (init_scale {args.init_scale}), VP, "
          f"batch {args.batch}, Hutchinson (Rademacher, one probe), t_min {T_MIN}; errors of "
          f"bits/dim against each method's own solve at rtol=atol={args.tight:g}\n")
    for label, who, _, _ in methods[1:]:
        if who == "sde_lab" and (label, args.tight) in results:
            floor = np.abs(np.asarray(results[(label, args.tight)]["bpd"]) - tight[who])
            print(f"{label} vs {methods[0][0]} at {args.tight:g}: {floor.mean():.1e} bits/dim "
                  "(floor of the error column)")
    print()
    print("| method | rtol=atol | NFE | steps | network passes per evaluation | s per example "
          "| mean abs bpd err | max abs bpd err |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for (label, tol), out in results.items():
        if tol == args.tight:
            continue
        who = next(w for lab, w, _, _ in methods if lab == label)
        err = np.abs(np.asarray(out["bpd"]) - tight[who])
        per_example = out["seconds"] / args.batch
        rows[(label, tol)] = (err.mean(), per_example)
        steps = out["steps"] if out["steps"] is not None else f"~{(out['nfe'] - 2) / 6:.0f}"
        print(f"| {label} | {tol:g} | {out['nfe']} | {steps} | {passes[who]} | "
              f"{per_example:.2f} | {err.mean():.1e} | {err.max():.1e} |")
    ref = rows.get(("score_sde RK45 (rms)", 1e-5))
    if ref is None:
        return
    print(f"\nreference at 1e-5: mean error {ref[0]:.1e} bits/dim, {ref[1]:.2f} s per example")
    for label in [m[0] for m in methods if m[1] == "sde_lab"]:
        ok = [(cost, tol) for (lab, tol), (err, cost) in rows.items()
              if lab == label and err <= ref[0]]
        if ok:
            cost, tol = min(ok)
            print(f"{label}: cheapest setting at least as accurate: rtol=atol={tol:g}, "
                  f"{cost:.2f} s per example = {cost / ref[1]:.2f}x the reference (floor 0.7x)")
        else:
            print(f"{label}: no tolerance in --tols reached the reference's accuracy")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sde", default="vp", choices=["vp", "subvp", "ve"])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="calls per method per round")
    parser.add_argument("--network", choices=NETWORK_SIZES,
                        help="compare on this published network instead (see the docstring)")
    parser.add_argument("--reference-dir", help="score_sde_pytorch checkout (network mode)")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--tols", default="1e-3,1e-4,1e-5", help="network mode tolerances")
    parser.add_argument("--solvers", default="dopri5",
                        help="network mode: in-graph solvers, comma-separated (tsit5, dopri5)")
    parser.add_argument("--norms", default="max,rms",
                        help="network mode: in-graph error norms, comma-separated (max, rms)")
    parser.add_argument("--tight", type=float, default=1e-6,
                        help="network mode: tolerance of the accuracy reference solves (a "
                             "decade below the tightest compared; float32 networks make "
                             "tighter ones noise-limited, see --floor)")
    parser.add_argument("--floor", action="store_true",
                        help="network mode: also solve rms at --tight (error floor estimate)")
    parser.add_argument("--init-scale", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32", help="network mode: compute dtype")
    parser.add_argument("--cache-dir", default="", help="JAX compilation cache (default off)")
    parser.add_argument("--timeout", type=float, default=7200.0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        (sde_lab_network_worker if spec["kind"] == "sde_lab" else reference_network_worker)(spec)
        return
    if args.network:
        for opt, valid in (("solvers", ("tsit5", "dopri5")), ("norms", ("max", "rms"))):
            chosen = [v.strip() for v in getattr(args, opt).split(",") if v.strip()]
            if not chosen or any(v not in valid for v in chosen):
                parser.error(f"--{opt} {getattr(args, opt)!r}: choose from {', '.join(valid)}, "
                             "comma-separated")
            setattr(args, opt, list(dict.fromkeys(chosen)))
        if args.batch == 64:  # the mixture's default; a 61.8M network wants fewer
            args.batch = 4
        network_main(args)
        return

    sde, gm = sdes.make(args.sde), mixture(args.dim)
    score = gm.score_fn(sde)
    x = gm.sample(jax.random.PRNGKey(0), args.batch)
    key = jax.random.PRNGKey(1)
    rows, ratios = [], []
    for estimator in ("exact", "hutchinson"):
        baseline = score_sde_likelihood(sde, score, estimator)
        for tol in TOLS:
            results = timed({
                "in-graph": in_graph(key, sde, score, x, estimator, tol, "max"),
                "in-graph rms": in_graph(key, sde, score, x, estimator, tol, "rms"),
                BASELINE: lambda: baseline(key, x, tol, tol),  # noqa: B023 (called here)
            }, args.repeats)
            base_sec = results[BASELINE][3]
            for label, (logp, z, nfe, sec) in results.items():
                err = np.abs(logp - analytic_target(gm, sde, x, z)) / args.dim
                ratio = base_sec / sec
                if label != BASELINE and estimator == "hutchinson":
                    ratios.append(ratio)
                rows.append(f"| {estimator} | {tol:.0e} | {label} | {nfe} | {1e3 * sec:.1f} | "
                            f"{ratio:.1f}x | {err.mean():.1e} | {err.max():.1e} |")

    print(f"\nGaussian mixture, dim={args.dim}, sde={args.sde}, batch={args.batch}, "
          f"t_min={T_MIN}, device={jax.devices()[0].device_kind}, best of 3 x {args.repeats}\n")
    print("| estimator | rtol=atol | method | NFE | wall ms | speed-up vs score_sde | "
          "mean abs err (nats/dim) | max abs err (nats/dim) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    worst = min(ratios)
    print(f"\nslowest in-graph speed-up over score_sde's host loop (Hutchinson, equal "
          f"tolerance): {worst:.1f}x "
          f"(floor 3x: {'PASS' if worst >= 3 else 'FAIL'})")
    print("command: PYTHONPATH=. python benchmarks/likelihood.py " +
          f"--sde {args.sde} --dim {args.dim} --batch {args.batch} --repeats {args.repeats}")


if __name__ == "__main__":
    main()
