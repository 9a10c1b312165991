"""Guidance scales on the class-conditional digits model: class accuracy and FID per scale.

    python experiments/digits_guidance.py --workdir /tmp/digits_conditional

runs, each only if not done yet (main.py resumes and skips what it finished), printing
its wall time and `uptime`:

  1. python main.py --config configs/digits_conditional.py --workdir W        # train + eval
  2. for each (guidance, scale) in GRID:
     python main.py --config configs/digits_conditional.py --workdir W --mode eval \\
         --config.eval.checkpoints=<last step> --config.sample.guidance=G \\
         --config.sample.guidance_scale=S --config.eval.enable_bpd=False
     with, before the first classifier-guided one,
     python main.py --config configs/digits_conditional.py --workdir W --mode train_classifier

and writes W/guidance/: results.json, results.md (the table), tradeoff.png (class accuracy
and FID against the scale, and against each other) and grid_<guidance>_<scale>.png (each
eval's grid: one row per digit). Not a sweep file (`python -m sde_lab.sweep` trains one
model per grid point); every eval here shares the one trained model and classifier.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/digits_conditional.py"
# (sample.guidance, sample.guidance_scale): classifier-free scale 0 is the unconditional
# score of the same network, 1 the conditional one.
GRID = [("classifier_free", s) for s in (0.0, 1.0, 1.5, 2.0, 4.0)] + [
    ("classifier", s) for s in (1.0, 2.0, 4.0)]
UNCONDITIONAL_FID = 28.5   # README: configs/digits.py, the same network unconditional, with
                           # this table's sampler (DPM-Solver++ 50)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _main(workdir: str, *args: str) -> float:
    cmd = [sys.executable, "main.py", "--config", CONFIG, "--workdir", workdir, *args]
    print(f"$ {' '.join(cmd[1:])}\n  before: {_uptime()}", flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    seconds = time.time() - t0
    print(f"  {seconds:.0f} s; after: {_uptime()}", flush=True)
    return seconds


def _table(rows: list[dict], classifier: dict | None) -> str:
    lines = ["| guidance | scale | class accuracy | FID | mean per-class FID | wall (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['guidance']} | {r['scale']:g} | {100 * r['class_accuracy']:.1f}% | "
                     f"{r['fid']:.1f} | {r['fid_per_class_mean']:.1f} | {r['seconds']:.0f} |")
    if classifier:
        lines += ["", f"Classifier (EMA of step {classifier['step']}) on the "
                  f"{classifier['num_examples']} test images x {classifier['repeats']} noise "
                  "draws:", "", "| t | log-SNR | sigma/alpha | accuracy |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['t']:g} | {r['log_snr']:.2f} | {r['sigma_over_alpha']:.3g} | "
                  f"{100 * r['accuracy']:.1f}% |" for r in classifier["rows"]]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for method, marker in (("classifier_free", "o"), ("classifier", "s")):
        rs = [r for r in rows if r["guidance"] == method]
        scales = [r["scale"] for r in rs]
        acc = [100 * r["class_accuracy"] for r in rs]
        fid = [r["fid"] for r in rs]
        label = method.replace("_", "-") + " guidance"
        axes[0].plot(scales, acc, marker=marker, label=label)
        axes[1].plot(scales, fid, marker=marker, label=label)
        axes[2].plot(fid, acc, marker=marker, label=label)
        for s, f, a in zip(scales, fid, acc):
            axes[2].annotate(f"{s:g}", (f, a), textcoords="offset points", xytext=(4, -10))
    axes[0].axhline(95, color="grey", ls="--", lw=0.8)
    axes[2].axhline(95, color="grey", ls="--", lw=0.8)
    for ax in axes[1:]:
        line = (ax.axhline if ax is axes[1] else ax.axvline)
        line(UNCONDITIONAL_FID, color="tab:red", ls=":", lw=1,
             label=f"unconditional model, FID {UNCONDITIONAL_FID}")
    axes[0].set(xlabel="guidance scale", ylabel="class accuracy (%)",
                title="accuracy under the digits classifier")
    axes[1].set(xlabel="guidance scale", ylabel="digits FID (1,000 samples)", title="FID")
    axes[2].set(xlabel="digits FID", ylabel="class accuracy (%)",
                title="trade-off (points: scale)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    w = os.path.abspath(args.workdir)
    out = os.path.join(w, "guidance")
    os.makedirs(out, exist_ok=True)
    times = {"train": _main(w)}
    step = json.load(open(os.path.join(w, "DONE")))["num_steps"]
    rows = []
    for method, scale in GRID:
        if method == "classifier" and "train_classifier" not in times:
            times["train_classifier"] = _main(w, "--mode", "train_classifier")
        seconds = _main(w, "--mode", "eval", f"--config.eval.checkpoints={step}",
                        f"--config.sample.guidance={method}",
                        f"--config.sample.guidance_scale={scale}",
                        "--config.eval.enable_bpd=False")
        result = json.load(open(os.path.join(w, "eval", f"{step}.json")))
        rows.append({"guidance": method, "scale": scale, "seconds": seconds,
                     **{k: result[k] for k in ("class_accuracy", "fid", "fid_per_class_mean",
                                               "kid", "class_accuracy_per_class",
                                               "fid_per_class", "nfe_per_sample")}})
        shutil.copy(os.path.join(w, "samples", f"eval_{step}.png"),
                    os.path.join(out, f"grid_{method}_{scale:g}.png"))
    classifier = json.load(open(os.path.join(w, "classifier", "accuracy.json")))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"rows": rows, "classifier": classifier, "times": times}, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(_table(rows, classifier))
    _plot(rows, os.path.join(out, "tradeoff.png"))
    print(_table(rows, classifier) + f"wrote {out}/results.md, results.json, tradeoff.png, "
          "grid_*.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
