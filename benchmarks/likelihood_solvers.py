"""PF-ODE likelihood of a trained model: evaluations and bits/dim error per solver and norm.

benchmarks/likelihood.py compares the in-graph likelihood with score_sde's on a randomly
initialised DDPM++, whose drift is almost linear (80-130 evaluations even at rtol 1e-6). A
trained model's drift is not: the digits model of README's first command needs ~1,000
evaluations at rtol = atol = 1e-5. This script loads such a workdir's newest EMA
parameters and, on the first `--batch` test images (dequantized once, one Hutchinson probe
per image, the same for every row), solves the likelihood with each solver (Tsit5,
Dopri5) and error norm (max, rms) at each tolerance, and reports NFE, wall time (second
call; each solver and norm compiles once, the tolerances are traced) and the bits/dim error
against a tight Dopri5 solve (`--tight`, max norm; the Tsit5 solve at `--tight` is printed
beside it to show how far the reference itself is from another method's).

    python main.py --config configs/digits.py --workdir /tmp/digits   # README's first command
    python benchmarks/likelihood_solvers.py --workdir /tmp/digits [--batch 32]

About 6 minutes on 2 CPU cores at batch 32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this sde_lab
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sde_lab import parallel  # noqa: E402

SOLVERS = ("tsit5", "dopri5")
NORMS = ("max", "rms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained run's workdir")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tols", default="1e-3,1e-4,1e-5")
    parser.add_argument("--tight", type=float, default=1e-7)
    args = parser.parse_args()
    config_file = os.path.join(args.workdir, "config.json")
    if not os.path.isfile(config_file):
        parser.error(f"--workdir {args.workdir!r}: no config.json there; give the workdir of a "
                     "trained run (README's first command makes one)")
    try:
        tols = [float(t) for t in args.tols.split(",")]
    except ValueError:
        tols = []
    if not tols or min(tols) <= 0:
        parser.error(f"--tols {args.tols!r}: comma-separated positive numbers")
    if args.batch < 1:
        parser.error(f"--batch {args.batch}: a positive integer")

    parallel.set_cpu_convolutions("xla")  # as the runner
    parallel.set_cpu_scheduler("memory")
    import _workers
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from sde_lab import experiment, likelihood
    from sde_lab import state as state_lib

    print(f"uptime before: {_workers.uptime()}", flush=True)
    with open(config_file) as f:
        exp = experiment.build(ml_collections.ConfigDict(json.load(f)))
    params, step = state_lib.restore_params(exp, args.workdir)
    data = exp.data.make(exp.data.eval_split, train=False, seed=0)
    levels, _ = data.levels(0, args.batch)
    u = np.random.default_rng(0).uniform(size=levels.shape)
    x = jnp.asarray(exp.data.scaler.to_model(levels, u), jnp.float32)
    sde, score = exp.sde_of(params), exp.score_fn(params)
    dim = math.prod(x.shape[1:])
    key = jax.random.PRNGKey(3)

    def solve(solver, norm, tol):
        start = time.perf_counter()
        logp, stats = likelihood.log_likelihood(key, sde, score, x, rtol=tol, atol=tol,
                                                solver=solver, error_norm=norm,
                                                max_steps=16384)
        logp, nfe = jax.block_until_ready((logp, stats["nfe"]))
        bpd = -np.asarray(logp, np.float64) / (dim * math.log(2.0))  # offsets cancel in errors
        return bpd, int(nfe), time.perf_counter() - start

    ref, ref_nfe, _ = solve("dopri5", "max", args.tight)
    other, other_nfe, _ = solve("tsit5", "max", args.tight)
    print(f"\n{args.workdir} (step {step}, {exp.data.dataset}, {x.shape[1:]}), batch {args.batch}; "
          f"errors against Dopri5 max at rtol=atol={args.tight:g} ({ref_nfe} NFE; Tsit5 there: "
          f"{other_nfe} NFE, {np.abs(other - ref).mean():.1e} bits/dim away)\n")
    print("| solver | norm | rtol=atol | NFE | s | mean abs bpd err | max abs bpd err |")
    print("|---|---|---|---:|---:|---:|---:|")
    compiled = set()
    for tol in tols:
        for solver in SOLVERS:
            for norm in NORMS:
                if (solver, norm) not in compiled:
                    solve(solver, norm, tol)
                    compiled.add((solver, norm))
                bpd, nfe, sec = solve(solver, norm, tol)
                err = np.abs(bpd - ref)
                print(f"| {solver} | {norm} | {tol:g} | {nfe} | {sec:.2f} | {err.mean():.1e} | "
                      f"{err.max():.1e} |", flush=True)
    print(f"\nuptime after: {_workers.uptime()}", flush=True)


if __name__ == "__main__":
    main()
