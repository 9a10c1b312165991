"""experiments/paper_digits.py: the full sweep expands to valid runs with equal compute per
arm; its :runlocal variants run end to end (both stages) and every report row has results."""

import pathlib
import sys

import pytest

from sde_lab import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "paper_digits.py"
sys.path.insert(0, str(ROOT / "experiments"))
import paper_digits  # noqa: E402


def test_full_sweep_expands_with_equal_compute_per_arm(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    train, evals = sweep.load_sweep(SWEEP), sweep.load_sweep(f"{SWEEP}:samplers")
    assert len(train.runs) == len(paper_digits.ARMS) * len(paper_digits.SEEDS)
    for key in ("train.num_steps", "train.batch_size"):
        assert key in train.fixed and train.fixed[key] == evals.fixed[key]
    sweep.check_runs(train)   # every key and value is valid for configs/digits.py
    sweep.check_runs(evals)
    names = {run.name for run in train.runs}
    sources = {run.overrides["eval.source_workdir"] for run in evals.runs}
    assert sources == {"{root}/" + n for n in names if "seed=0" in n and "sde.name" in n}
    assert evals.mode == "eval"
    samplers = {run.overrides["sample.sampler"] for run in evals.runs}
    assert samplers == {"reverse_diffusion", "euler_maruyama", "pc", "ode", "dpm_solver++",
                        "unipc", "ddim", "heun"}
    assert sweep.main(["run", str(SWEEP), "--root", "/tmp/unused", "--dry_run"]) == 0
    assert sweep.main(["run", f"{SWEEP}:samplers", "--root", "/tmp/unused", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert f"{len(train.runs)} runs" in out and f"{len(evals.runs)} runs" in out


@pytest.mark.slow
def test_runlocal_sweep_runs_end_to_end(tmp_path, monkeypatch, capsys):
    """Both stages of the :runlocal sweep through the documented commands; every row of
    both reports is done with a FID, the bits/dim arms have bits/dim, and the summary
    (tables, FID noise, plot) is produced."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_cache"))
    monkeypatch.setenv("SDE_LAB_COMPILATION_CACHE", str(tmp_path / "jax_cache"))
    root = tmp_path / "root"
    for variant in ("runlocal", "runlocal_samplers"):
        assert sweep.main(["run", f"{SWEEP}:{variant}", "--root", str(root),
                           "--launcher=local", "--parallel", "2"]) == 0, variant
        s = sweep.load_sweep(f"{SWEEP}:{variant}")
        _, rows = sweep.report_rows(s, root, metric="fid")
        assert len(rows) == len(s.runs)
        for row in rows:
            assert row["status"] == "done" and isinstance(row.get("fid"), float), row
            wants_bpd = variant == "runlocal" and "model.parameterization" not in row["run"]
            assert isinstance(row.get("bpd"), float) == wants_bpd, row
    capsys.readouterr()
    plot = tmp_path / "fid_vs_nfe.png"
    assert paper_digits.main(["summarize", "--root", str(root), "--runlocal",
                              "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    for label in paper_digits.ARM_LABELS.values():
        assert f"| {label} |" in out
    assert "FID noise" in out and "| PC (reverse diffusion + Langevin) | 25 |" in out
    assert plot.stat().st_size > 0


def test_mean_spread_keeps_the_decimals_bits_per_dim_needs():
    # 3 significant digits printed 2.395 and 2.400 both as "2.4"; the tables need 3 places.
    assert paper_digits._mean_spread([2.39, 2.41], 3) == "2.400 +- 0.010"
    assert paper_digits._mean_spread([51.46, 52.6], 1) == "52.0 +- 0.6"
    assert paper_digits._mean_spread([2.3953], 3) == "2.395"
    assert paper_digits._mean_spread([], 3) == "-"
