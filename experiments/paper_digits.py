"""The score-SDE papers' comparisons in miniature, on the embedded 8x8 digits, equal compute
per arm (same steps, batch, network and eval), 2 seeds per trained arm.

Two stages under one root: the trained arms, then the samplers evaluated on the seed-0
checkpoint of each SDE (eval only, `eval.source_workdir` = that run):

    python -m sde_lab.sweep run experiments/paper_digits.py --root workdirs/paper_digits --launcher=local
    python -m sde_lab.sweep run experiments/paper_digits.py:samplers --root workdirs/paper_digits --launcher=local
    python -m sde_lab.sweep report experiments/paper_digits.py --root workdirs/paper_digits --metric=fid
    python -m sde_lab.sweep report experiments/paper_digits.py:samplers --root workdirs/paper_digits --metric=fid
    python experiments/paper_digits.py summarize --root workdirs/paper_digits --plot fid_vs_nfe.png

`summarize` prints the README's tables (mean +- spread over seeds; the spread is half the
difference of the two seeds) and draws FID vs NFE per sampler. The `:runlocal` and
`:runlocal_samplers` variants are the same sweep shrunk to seconds per run, one seed and
the sampler stage on VP only (the test suite runs them: 18 runs).

Comparisons (the trained arms share the VP / std^2 / eps arm):
  1. SDE: VP vs sub-VP vs VE (Song et al. 2021, Table 2). All arms see the same [-1, 1]
     data (score_sde's VE configs use [0, 1] data; here only the SDE changes). VE's
     sigma_max follows Song & Ermon 2020's rule, the largest pairwise distance of the
     training images: 9.63 on [-1, 1] digits, so sigma_max = 10 (not CIFAR-10's 50).
  2. Loss weighting for bits/dim on VP: std^2 vs likelihood (g^2) vs likelihood with
     importance sampling of t (Song, Durkan et al. 2021).
  3. Samplers on the seed-0 checkpoint of each SDE: predictor-only (reverse diffusion and
     Euler-Maruyama, N and 2N steps), predictor-corrector (reverse diffusion + Langevin,
     N steps: 2N NFE; snr 0.16, 0.075 for VE), the adaptive PF-ODE (RK45-like Tsit5,
     rtol = atol = 1e-5) and DPM-Solver++(2M) / UniPC-3 at 10 / 20 / 50 NFE (DDIM and EDM's
     Heun too on VP); one more VP run draws 3,000 samples, three disjoint 1,000-sample FIDs,
     the FID's own sampling noise.
  4. Parameterization on VP: eps vs x0 vs EDM preconditioning (same loss, same network).

The learning rate stays constant after the warm-up (score_sde's schedule, and the default
run; issue #15 measured a cosine decay against it, see README).

Cost: STEPS = 600 training steps per arm (the default run: 1,500), bits/dim on the first
BPD_EXAMPLES test images for comparisons 1 and 2 only, N = 100 predictor steps (score_sde:
1,000). Chosen to fit ~90 minutes on 2 cores, which it does not on the machine of the
README's run: alone, a trained arm with bits/dim took 8.3-8.9 min and one without 4-5 min
(~105 min for the 14), and the 43 eval-only sampler runs about 45 min more.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

STEPS = 600
BATCH = 128
BPD_EXAMPLES = 150
SEEDS = (0, 1)
N_PREDICTOR = 100
NFES = (10, 20, 50)

SDE_ARMS = {"vp": {"sde.name": "vp"},
            "subvp": {"sde.name": "subvp"},
            "ve": {"sde.name": "ve", "sde.ve.sigma_max": 10.0}}
LOSS_ARMS = {"likelihood": {"loss.dsm.weighting": "likelihood"},
             "likelihood_is": {"loss.dsm.weighting": "likelihood",
                               "loss.dsm.importance_sampling": True}}
PARAM_ARMS = {"x0": {"model.parameterization": "x0"},
              "edm": {"model.parameterization": "edm"}}
ARMS = {**SDE_ARMS, **LOSS_ARMS, **PARAM_ARMS}
NO_BPD = set(PARAM_ARMS)
# Which arms each comparison's table shows; "vp" is std^2 weighting with eps.
TABLES = {"SDE": ["vp", "subvp", "ve"],
          "loss weighting (VP)": ["vp", "likelihood", "likelihood_is"],
          "parameterization (VP)": ["vp", "x0", "edm"]}
ARM_LABELS = {"vp": "VP", "subvp": "sub-VP", "ve": "VE (sigma_max 10)",
              "likelihood": "likelihood weighting", "likelihood_is": "likelihood + IS",
              "x0": "x0", "edm": "EDM preconditioning"}


def _sizes(runlocal: bool) -> dict:
    if runlocal:
        # n_predictor 25: VP's DDPM chain (reverse diffusion) needs beta(t) dt < 1.
        # One seed, and the sampler stage on VP only: the suite runs it (18 main.py runs).
        return dict(steps=4, batch=8, bpd_examples=4, n_predictor=25, nfes=(4,),
                    seeds=SEEDS[:1], sampler_sdes=("vp",),
                    config="configs/digits.py:runlocal", samples=16, noise_samples=32,
                    eval_batch=8, ode_tol=1e-2)
    return dict(steps=STEPS, batch=BATCH, bpd_examples=BPD_EXAMPLES,
                seeds=SEEDS, sampler_sdes=tuple(SDE_ARMS),
                n_predictor=N_PREDICTOR, nfes=NFES, config="configs/digits.py",
                samples=1000, noise_samples=3000, eval_batch=250, ode_tol=1e-5)


def _fixed(s: dict) -> dict:
    """Overrides shared by every run of both stages (the run-defining ones must match)."""
    return {"train.num_steps": s["steps"], "train.batch_size": s["batch"],
            "optim.schedule": "constant", "train.checkpoint_every_steps": 0,
            "eval.bpd_num_examples": s["bpd_examples"]}


def train_runs(s: dict) -> list[dict]:
    runs = []
    for arm, overrides in ARMS.items():
        for seed in s["seeds"]:
            run = {**overrides, "seed": seed}
            if arm in NO_BPD:
                run["eval.enable_bpd"] = False
            runs.append(run)
    return runs


def samplers(sde: str, s: dict) -> list[tuple[str, dict]]:
    """(sampler, options) of the sampler stage for one SDE."""
    n = s["n_predictor"]
    out = [("reverse_diffusion", {"num_steps": n}), ("euler_maruyama", {"num_steps": n}),
           ("reverse_diffusion", {"num_steps": 2 * n}), ("euler_maruyama", {"num_steps": 2 * n}),
           ("pc", {"num_steps": n, "snr": 0.075 if sde == "ve" else 0.16}),
           ("ode", {"rtol": s["ode_tol"], "atol": s["ode_tol"]})]
    for nfe in s["nfes"]:
        out += [("dpm_solver++", {"num_steps": nfe}), ("unipc", {"num_steps": nfe})]
        if sde == "vp":
            out += [("ddim", {"num_steps": nfe}), ("heun", {"num_steps": (nfe + 2) // 2})]
    return out


def eval_runs(s: dict) -> list[dict]:
    from sde_lab.sweep import run_name

    runs, bases = [], {}
    for sde in s["sampler_sdes"]:
        source = {**SDE_ARMS[sde], "seed": SEEDS[0]}
        bases[sde] = base = {**source, "eval.source_workdir": "{root}/" + run_name(source)}
        for name, options in samplers(sde, s):
            section = name.replace("++", "_pp")
            runs.append({**base, "sample.sampler": name,
                         **{f"sample.{section}.{k}": v for k, v in options.items()}})
    runs.append({**bases["vp"], "sample.sampler": "dpm_solver++",
                 "sample.dpm_solver_pp.num_steps": s["nfes"][-1],
                 "eval.num_samples": s["noise_samples"]})
    return sorted(runs, key=_cost)  # cheapest first: a sweep cut short has every SDE's


def _cost(run: dict) -> float:
    """Rough score evaluations per sample (the ODE's adaptive count taken as 150)."""
    sampler = run["sample.sampler"]
    if sampler == "ode":
        return 150.0
    steps = next(v for k, v in run.items()
                 if k.startswith("sample.") and k.endswith(".num_steps"))
    nfe = {"pc": 2, "heun": 2}.get(sampler, 1) * steps
    return nfe * run.get("eval.num_samples", 1000) / 1000


def get_sweep(variant: str | None = None) -> dict:
    variants = ("samplers", "runlocal", "runlocal_samplers")
    if variant not in (None, "", *variants):
        raise ValueError(f"unknown variant {variant!r}; available: {list(variants)}")
    s = _sizes(runlocal=bool(variant) and variant.startswith("runlocal"))
    fixed = _fixed(s)
    if variant and variant.endswith("samplers"):
        fixed.update({"eval.checkpoints": str(s["steps"]), "eval.enable_bpd": False})
        return {"config": s["config"], "mode": "eval", "runs": eval_runs(s), "fixed": fixed}
    # The trained arms' FID: DPM-Solver++ at NFES[-1] steps, pinned here so the comparison
    # does not move with configs/digits.py's default sampler.
    fixed.update({"sample.sampler": "dpm_solver++",
                  "sample.dpm_solver_pp.num_steps": s["nfes"][-1]})
    return {"config": s["config"], "runs": train_runs(s), "fixed": fixed}


# -- summary: the README's tables and the FID-vs-NFE plot ------------------------------------

def _load(root: pathlib.Path, variant: str | None):
    from sde_lab import sweep

    path = pathlib.Path(__file__)
    s = sweep.load_sweep(f"{path}:{variant}" if variant else path)
    return s, [(run, sweep.latest_eval(run.workdir(root))) for run in s.runs]


def _mean_spread(values: list[float], decimals: int) -> str:
    """'mean +- spread' with `decimals` places (bits/dim needs 3: 2.395 and 2.400 differ)."""
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{decimals}f}"
    spread = (max(values) - min(values)) / 2
    return f"{mean:.{decimals}f} +- {spread:.{decimals}f}"


def _arm_of(overrides: dict) -> str | None:
    for arm, arm_overrides in ARMS.items():
        if all(overrides.get(k) == v for k, v in arm_overrides.items()) and all(
                k not in overrides for a in ARMS.values() for k in a
                if k not in arm_overrides and k != "sde.name"):
            return arm
    return None


def train_tables(root: pathlib.Path, variant: str | None) -> str:
    _, results = _load(root, variant)
    by_arm: dict[str, list[dict]] = {}
    for run, result in results:
        by_arm.setdefault(_arm_of(run.overrides), []).append(result or {})
    out = []
    for title, arms in TABLES.items():
        out += [f"**{title}**", "",
                "| arm | FID (seeds) | FID mean +- spread | bits/dim mean +- spread | "
                "bits/dim SE (one run) |", "|---|---|---|---|---|"]
        for arm in arms:
            rs = [r for r in by_arm.get(arm, []) if r]
            fids = [r["fid"] for r in rs if "fid" in r]
            bpds = [r["bpd"] for r in rs if "bpd" in r]
            ses = [r["bpd_se"] for r in rs if "bpd_se" in r]
            se = f"{sum(ses) / len(ses):.3f}" if ses else "-"
            out.append(f"| {ARM_LABELS[arm]} | {', '.join(f'{f:.1f}' for f in fids) or '-'} | "
                       f"{_mean_spread(fids, 1)} | {_mean_spread(bpds, 3)} | {se} |")
        out.append("")
    return "\n".join(out)


def _sampler_label(overrides: dict) -> str:
    name = overrides["sample.sampler"]
    return {"reverse_diffusion": "reverse diffusion (P)", "euler_maruyama": "Euler-Maruyama (P)",
            "pc": "PC (reverse diffusion + Langevin)", "ode": "PF-ODE (Tsit5)",
            "dpm_solver++": "DPM-Solver++(2M)", "unipc": "UniPC-3", "ddim": "DDIM",
            "heun": "EDM Heun"}[name]


def sampler_rows(root: pathlib.Path, variant: str | None) -> list[dict]:
    _, results = _load(root, variant)
    rows = []
    for run, result in results:
        o = run.overrides
        steps = next((v for k, v in o.items() if k.startswith("sample.")
                      and k.endswith(".num_steps")), None)
        rows.append({"sde": o["sde.name"], "sampler": _sampler_label(o), "steps": steps,
                     "num_samples": o.get("eval.num_samples"),
                     "nfe": result and result.get("nfe_per_sample"),
                     "fid": result and result.get("fid"), "run": run,
                     "seconds": result and result.get("sampling_seconds")})
    return rows


def fid_noise(root: pathlib.Path, row: dict, config: str, chunk: int) -> list[float]:
    """FIDs of disjoint `chunk`-sample subsets of one eval run's saved samples, against the
    reference statistics that run computed (the FID's own sampling noise)."""
    import numpy as np

    from sde_lab import experiment, metrics

    evals = row["run"].workdir(root) / "eval"
    files = sorted(evals.glob("*/samples-*/samples_*.npz"),
                   key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        return []
    x = np.concatenate([np.load(f)["x"] for f in files])
    exp = experiment.build(experiment.load_config(config))
    ref = metrics.load_stats(str(next(evals.glob("reference_*.npz"))))
    extractor = metrics.make_extractor("digits")
    images = exp.data.scaler.to_uint8(x)
    out = []
    for i in range(len(images) // chunk):
        feats, _ = extractor.features_and_logits(images[i * chunk:(i + 1) * chunk], 250)
        gen = metrics.compute_stats(feats)
        out.append(float(metrics.frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma)))
    return out


def sampler_table(rows: list[dict]) -> str:
    """One row per sampler and step count, one column per SDE: 'FID (NFE)'."""
    sdes = list(dict.fromkeys(r["sde"] for r in rows))
    cells: dict[tuple, dict] = {}
    for r in rows:
        if r["num_samples"] is not None:  # the FID-noise run
            continue
        fid = f"{r['fid']:.1f} ({r['nfe']})" if isinstance(r["fid"], float) else "-"
        cells.setdefault((r["sampler"], r["steps"]), {})[r["sde"]] = fid
    out = ["| sampler | steps | " + " | ".join(f"{s}: FID (NFE)" for s in sdes) + " |",
           "|---|---|" + "---|" * len(sdes)]
    for (sampler, steps), by_sde in sorted(cells.items(), key=lambda kv: (
            kv[0][0], kv[0][1] or 0)):
        out.append(f"| {sampler} | {steps or 'adaptive'} | "
                   + " | ".join(by_sde.get(s, "") for s in sdes) + " |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    sdes = list(dict.fromkeys(r["sde"] for r in rows))
    curves = [r for r in rows if isinstance(r["fid"], float) and r["num_samples"] is None]
    # One colour and marker per sampler in every panel, and one legend for the figure.
    names = sorted({r["sampler"] for r in curves})
    colors = plt.get_cmap("tab10").colors
    style = {n: dict(color=colors[i % len(colors)], marker="osD^v<>ph*"[i % 10])
             for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, len(sdes), figsize=(5 * len(sdes), 4.6), sharey=True,
                             squeeze=False)
    for ax, sde in zip(axes[0], sdes):
        series: dict[str, list] = {}
        for r in curves:
            if r["sde"] == sde:
                series.setdefault(r["sampler"], []).append((r["nfe"], r["fid"]))
        for label, points in sorted(series.items()):
            points.sort()
            ax.plot(*zip(*points), label=label, **style[label])
        ax.set_xscale("log")
        ticks = [t for t in (10, 20, 50, 100, 200, 500, 1000, 2000)
                 if any(t / 1.5 <= r["nfe"] <= t * 1.5 for r in curves)]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("NFE per sample")
        ax.set_title(sde)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("digits FID (1,000 samples)")
    if names:
        fig.legend([plt.Line2D([], [], **style[n]) for n in names], names,
                   loc="lower center", ncol=min(len(names), 5), fontsize=8)
        fig.tight_layout(rect=(0, 0.1 if len(names) > 5 else 0.06, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="tables and plot of the paper_digits sweep")
    parser.add_argument("command", choices=["summarize"])
    parser.add_argument("--root", required=True)
    parser.add_argument("--runlocal", action="store_true", help="the :runlocal variants")
    parser.add_argument("--plot", default=None, help="PNG path for FID vs NFE")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.root).absolute()
    prefix = "runlocal_" if args.runlocal else ""
    print(train_tables(root, prefix.rstrip("_") or None))
    rows = sampler_rows(root, prefix + "samplers")
    print(sampler_table(rows))
    noise_rows = [r for r in rows if r["num_samples"] is not None]
    sizes = _sizes(args.runlocal)
    for r in noise_rows:
        fids = fid_noise(root, r, sizes["config"], chunk=sizes["samples"])
        if fids:
            mean = sum(fids) / len(fids)
            std = (sum((f - mean) ** 2 for f in fids) / max(1, len(fids) - 1)) ** 0.5
            print(f"FID noise ({r['sde']}, {r['sampler']} {r['nfe']} NFE): disjoint sample "
                  f"sets give {', '.join(f'{f:.2f}' for f in fids)}; std {std:.2f}")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    sys.exit(main())
