"""Sweep expansion, run naming, launch scripts, completion skipping and the report table.

Runs go through a stand-in `main.py` (written into a temporary repo) that records its
argv and writes the files the real runner writes: `DONE` and `eval/<step>.json`.
"""

import csv
import io
import json
import os
import pathlib
import subprocess
import textwrap

import pytest

from sde_lab import sweep, workdir

CONFIG = """\
import ml_collections

def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.train = dict(num_steps=7 if arg == "runlocal" else 1000, lr=1e-3)
    c.sde = dict(name="vp")
    return c
"""

FAKE_MAIN = """\
import json, pathlib, sys
args = sys.argv[1:]
workdir = pathlib.Path(args[args.index("--workdir") + 1])
workdir.mkdir(parents=True, exist_ok=True)
with open(workdir / "calls.txt", "a") as f:
    f.write(json.dumps(args) + "\\n")
if any(a == "--config.train.lr=0.5" for a in args):
    sys.exit(3)  # a run that fails
steps = [a.split("=")[1] for a in args if a.startswith("--config.train.num_steps=")]
(workdir / "DONE").write_text(json.dumps({"num_steps": int(steps[0]) if steps else 7}))
"""

GRID = {"config": "configs/toy.py:runlocal",
        "grid": {"sde.name": ["vp", "subvp"], "train.lr": [1e-3, 2e-4]}}


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A temporary repo root (the cwd) with configs/toy.py, main.py and a sweep file."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "toy.py").write_text(CONFIG)
    (tmp_path / "main.py").write_text(FAKE_MAIN)
    (tmp_path / "experiments").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_sweep(repo: pathlib.Path, spec: dict, name: str = "grid") -> pathlib.Path:
    path = repo / "experiments" / f"{name}.py"
    path.write_text(f"def get_sweep():\n    return {spec!r}\n")
    return path


# -- expansion and names ---------------------------------------------------------------------

def test_grid_expands_to_product_in_key_order():
    s = sweep.expand(GRID, name="g")
    assert [r.overrides for r in s.runs] == [
        {"sde.name": "vp", "train.lr": 1e-3}, {"sde.name": "vp", "train.lr": 2e-4},
        {"sde.name": "subvp", "train.lr": 1e-3}, {"sde.name": "subvp", "train.lr": 2e-4}]
    assert [r.index for r in s.runs] == [0, 1, 2, 3]
    assert s.runs[1].name == "sde.name=vp,train.lr=0.0002"


def test_list_and_fixed_overrides():
    s = sweep.expand({"config": "c.py", "runs": [{"sde.name": "ve"}, {"model.ema": 0.99}],
                      "fixed": {"train.num_steps": 10}})
    assert [r.overrides for r in s.runs] == [{"sde.name": "ve", "train.num_steps": 10},
                                             {"model.ema": 0.99, "train.num_steps": 10}]
    assert [r.name for r in s.runs] == ["sde.name=ve", "model.ema=0.99"]  # fixed not named


def test_names_are_stable_sanitised_and_bounded():
    assert sweep.run_name({"b": 1, "a": "x"}) == sweep.run_name({"a": "x", "b": 1}) == "a=x,b=1"
    assert sweep.run_name({"data.path": "/d/my set", "m.size": (2, 3)}) == \
        "data.path=-d-my-set,m.size=-2--3-"
    assert sweep.run_name({}) == "base"
    long_a = sweep.run_name({"k": "a" * 200})
    long_b = sweep.run_name({"k": "a" * 199 + "b"})
    assert len(long_a) == sweep.MAX_NAME_LEN and long_a != long_b


def test_command_passes_overrides_as_config_flags(tmp_path):
    run = sweep.expand({"config": "configs/toy.py:runlocal",
                        "runs": [{"sde.name": "ve", "train.lr": 2e-4, "train.ema": True,
                                  "model.channels": [1, 2]}]}).runs[0]
    argv = sweep.command(run, "configs/toy.py:runlocal", tmp_path, python="py")
    assert argv == ["py", "main.py", "--config", "configs/toy.py:runlocal",
                    "--workdir", str(tmp_path / run.name), "--config.sde.name=ve",
                    "--config.train.lr=0.0002", "--config.train.ema=True",
                    "--config.model.channels=(1, 2)"]


@pytest.mark.parametrize("spec, match", [
    ({"grid": {"a": [1]}}, "'config' must be a config spec"),
    ({"config": "c.py"}, "exactly one of 'grid'"),
    ({"config": "c.py", "grid": {"a": [1]}, "runs": [{}]}, "exactly one of 'grid'"),
    ({"config": "c.py", "grid": {"a": []}}, "grid values for 'a' must be a non-empty list"),
    ({"config": "c.py", "grid": {"a": 1}}, "grid values for 'a'"),
    ({"config": "c.py", "grid": {"not a key": [1]}}, "not a dotted config path"),
    ({"config": "c.py", "runs": [{"a": {"b": 1}}]}, "must be a str, int"),
    ({"config": "c.py", "runs": []}, "non-empty list"),
    ({"config": "c.py", "runs": [{"a": 1}, {"a": 1}]}, "same workdir name"),
    ({"config": "c.py", "grid": {"a": [1]}, "fixed": {"a": 2}}, "both swept and fixed"),
    ({"config": "c.py", "grid": {"a": [1]}, "seeds": 3}, r"unknown sweep keys \['seeds'\]"),
])
def test_bad_sweeps_are_rejected(spec, match):
    with pytest.raises(ValueError, match=match):
        sweep.expand(spec)


def test_bad_files_and_launcher(repo, capsys):
    with pytest.raises(ValueError, match="does not exist"):
        sweep.load_sweep(repo / "experiments" / "nope.py")
    (repo / "experiments" / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="must define get_sweep"):
        sweep.load_sweep(repo / "experiments" / "empty.py")
    with pytest.raises(ValueError, match=r"unknown launcher 'k8s'; available: \['local', 'slurm'\]"):
        sweep.make_launcher("k8s")
    assert sweep.main(["run", str(write_sweep(repo, GRID)), "--launcher=k8s"]) == 2
    assert "error: unknown launcher 'k8s'" in capsys.readouterr().err
    bad = write_sweep(repo, {**GRID, "config": "configs/missing.py"}, "bad")
    assert sweep.main(["run", str(bad), "--dry_run"]) == 2
    assert "error: --config 'configs/missing.py': no such file" in capsys.readouterr().err


def test_example_sweep_has_four_runs():
    path = pathlib.Path(__file__).parent.parent / "experiments" / "toy_sde_grid.py"
    s = sweep.load_sweep(path)
    assert s.name == "toy_sde_grid" and s.config == "configs/toy.py:runlocal"
    assert len(s.runs) == 4 and len({r.name for r in s.runs}) == 4


def test_variant_and_root_placeholder(repo, tmp_path):
    """`file.py:variant` calls get_sweep(variant); `{root}` in a value becomes the root, so
    an eval sweep can name a training sweep's runs."""
    path = repo / "experiments" / "two.py"
    path.write_text("def get_sweep(variant=None):\n"
                    "    runs = [{'sde.name': variant or 'vp', 'eval.source_workdir': '{root}/a'}]\n"
                    "    return {'config': 'configs/toy.py', 'runs': runs}\n")
    assert sweep.load_sweep(path).runs[0].overrides["sde.name"] == "vp"
    s = sweep.load_sweep(f"{path}:ve")
    assert s.name == "two" and s.runs[0].overrides["sde.name"] == "ve"
    argv = sweep.command(s.runs[0], s.config, tmp_path / "r", python="py")
    assert f"--config.eval.source_workdir={tmp_path / 'r'}/a" in argv


def test_eval_mode_runs_are_done_when_evaluated(tmp_path):
    s = sweep.expand({"config": "c.py", "mode": "eval", "runs": [{"a": 1}]})
    (tmp_path / "a=1" / "eval").mkdir(parents=True)
    assert sweep.run_status(s.runs[0], tmp_path, "eval") == "incomplete"
    (tmp_path / "a=1" / "eval" / "7.json").write_text("{}")
    assert sweep.run_status(s.runs[0], tmp_path, "eval") == "done"


# -- completion and the local launcher -------------------------------------------------------

def test_is_complete(tmp_path):
    assert not sweep.is_complete(tmp_path / "absent", 5)
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)
    (tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp-1").mkdir()
    assert not sweep.is_complete(tmp_path, 5)    # only a partial save of the final step
    (tmp_path / "checkpoints" / "5").mkdir()
    assert sweep.is_complete(tmp_path, 5) and not sweep.is_complete(tmp_path, None)
    workdir.mark_done(str(tmp_path), 5)
    assert sweep.is_complete(tmp_path, None) and (tmp_path / "DONE").exists()


def test_a_stale_or_old_done_marker_is_not_trusted(tmp_path):
    """A DONE of a 300-step run does not complete a sweep asking for 400 steps; an old
    marker without a step count is not trusted either."""
    workdir.mark_done(str(tmp_path), 300)
    assert sweep.is_complete(tmp_path, 300) and sweep.is_complete(tmp_path, 200)
    assert not sweep.is_complete(tmp_path, 400)
    (tmp_path / "DONE").write_text("done\n")
    assert not sweep.is_complete(tmp_path, 300) and not sweep.is_complete(tmp_path, None)


def test_local_launcher_skips_complete_runs_and_resumes(repo, capsys):
    path = write_sweep(repo, GRID)
    root = repo / "runs"
    s = sweep.load_sweep(path)
    (root / s.runs[0].name).mkdir(parents=True)
    workdir.mark_done(str(root / s.runs[0].name), 7)
    (root / s.runs[1].name / "checkpoints" / "7").mkdir(parents=True)   # runlocal: 7 steps
    (root / s.runs[2].name / "checkpoints" / "3").mkdir(parents=True)   # interrupted
    assert sweep.main(["run", str(path), "--root", str(root), "--parallel", "2"]) == 0
    ran = sorted(r.name for r in s.runs if (root / r.name / "calls.txt").exists())
    assert ran == sorted([s.runs[2].name, s.runs[3].name])
    calls = [json.loads(line) for line in (root / s.runs[3].name / "calls.txt").open()]
    assert calls == [["--config", "configs/toy.py:runlocal", "--workdir",
                      str(root / s.runs[3].name), "--config.sde.name=subvp",
                      "--config.train.lr=0.0002"]]
    assert "4 runs, 2 complete, 2 to run" in capsys.readouterr().out
    # Everything is complete now: a second launch runs nothing.
    assert sweep.main(["run", str(path), "--root", str(root)]) == 0
    assert len((root / s.runs[3].name / "calls.txt").read_text().splitlines()) == 1


def test_local_launcher_reports_failures(repo):
    path = write_sweep(repo, {"config": "configs/toy.py", "runs": [{"train.lr": 0.5},
                                                                   {"train.lr": 0.1}]})
    root = repo / "runs"
    assert sweep.main(["run", str(path), "--root", str(root)]) == 1
    columns, rows = sweep.report_rows(sweep.load_sweep(path), root)
    status = {r["run"]: r["status"] for r in rows}
    assert status == {"train.lr=0.5": "failed (rc=3)",
                      "train.lr=0.1": "done, no eval"}


def test_dry_run_launches_nothing(repo, capsys):
    path = write_sweep(repo, GRID)
    assert sweep.main(["run", str(path), "--root", str(repo / "runs"), "--dry_run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len([line for line in out if " main.py --config " in line]) == 4
    assert sweep.main([str(path), "--root", str(repo / "runs"), "--dry-run"]) == 0  # `run` implied
    assert capsys.readouterr().out.splitlines() == out
    assert not (repo / "runs").exists()


# -- Slurm script ----------------------------------------------------------------------------

def slurm_args(**kw):
    argv = ["run", "x.py", "--launcher=slurm", "--partition=gpu", "--time=02:00:00",
            "--gpus-per-task=1", "--cpus-per-task=8", "--mem=32G", "--python=echo"]
    argv += [f"--{k}={v}" for k, v in kw.items()]
    return sweep._parser().parse_args(argv)


def test_slurm_script_content_and_task_mapping(repo):
    s = sweep.expand(GRID, name="toy")
    root = repo / "runs"
    script = sweep.slurm_script(s, [s.runs[1], s.runs[2], s.runs[3]], root, slurm_args(parallel=2))
    for line in ["#SBATCH --array=1-3%2", "#SBATCH --requeue", "#SBATCH --signal=B:TERM@120",
                 f"#SBATCH --output={root}/slurm/%A_%a.out", "#SBATCH --open-mode=append",
                 "#SBATCH --partition=gpu", "#SBATCH --time=02:00:00",
                 "#SBATCH --gpus-per-task=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=32G", "#SBATCH --job-name=toy", f"#SBATCH --chdir={repo}"]:
        assert line in script.splitlines(), line
    assert "#SBATCH --qos" not in script and "0) exec" not in script
    path = repo / "job.sbatch"
    path.write_text(script)
    # The script itself: task 2 must exec run 2's command (python replaced by echo).
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="2")
    out = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == sweep.command(s.runs[2], s.config, root, "echo")[1:]
    env["SLURM_ARRAY_TASK_ID"] = "0"
    assert subprocess.run(["bash", str(path)], env=env, capture_output=True).returncode == 2


def test_slurm_launcher_submits_pending_runs_only(repo, tmp_path, monkeypatch, capsys):
    """A fake `sbatch` on PATH records the script it was given and prints a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        cp "$2" {tmp_path}/submitted.sbatch
        echo "4242;cluster"
        """))
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = write_sweep(repo, GRID)
    root = repo / "runs"
    s = sweep.load_sweep(path)
    (root / s.runs[0].name).mkdir(parents=True)
    workdir.mark_done(str(root / s.runs[0].name), 7)
    assert sweep.main(["run", str(path), "--launcher=slurm", "--root", str(root)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "4242"
    submitted = (tmp_path / "submitted.sbatch").read_text()
    assert "#SBATCH --array=1-3" in submitted.splitlines()  # no %limit unless --parallel
    assert submitted == (root / "slurm" / "grid.sbatch").read_text()


# -- report ----------------------------------------------------------------------------------

def write_eval(run_dir: pathlib.Path, step: int, **metrics):
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    (run_dir / "eval" / f"{step}.json").write_text(json.dumps(metrics))


def test_report_takes_latest_eval_sorts_and_marks_missing(repo):
    s = sweep.expand(GRID, name="toy")
    root = repo / "runs"
    w = [r.workdir(root) for r in s.runs]
    write_eval(w[0], 5, fid=30.0, bpd=3.1)
    write_eval(w[0], 10, fid=12.5, bpd=3.0)      # latest step wins
    write_eval(w[0], 9, fid=99.0)
    workdir.mark_done(str(w[0]), 7)
    write_eval(w[1], 10, fid=8.25, bpd=3.3)
    w[2].mkdir(parents=True)                      # started, no eval yet; run 3 never started
    columns, rows = sweep.report_rows(s, root, metric="fid")
    assert columns == ["run", "sde.name", "train.lr", "status", "step", "fid", "bpd"]
    assert [r["run"] for r in rows[:2]] == [s.runs[1].name, s.runs[0].name]
    assert rows[1]["step"] == 10 and rows[1]["fid"] == 12.5 and rows[1]["status"] == "done"
    assert {rows[2]["status"], rows[3]["status"]} == {"incomplete, no eval", "missing"}
    _, desc = sweep.report_rows(s, root, metric="fid", descending=True)
    assert desc[0]["run"] == s.runs[0].name

    md = sweep.format_table(columns, rows, "md").splitlines()
    assert len(md) == 2 + 4 and md[2].startswith(f"| {s.runs[1].name} | vp | 0.0002 | incomplete")
    assert md[2].endswith("| 10 | 8.25 | 3.3 |")
    csv_rows = list(csv.reader(io.StringIO(sweep.format_table(columns, rows, "csv"))))
    assert csv_rows[0] == columns and len(csv_rows) == 5
    assert csv_rows[1] == [s.runs[1].name, "vp", "0.0002", "incomplete", "10", "8.25", "3.3"]
    with pytest.raises(ValueError, match=r"metric 'is' is in no eval file; available: \['step'"):
        sweep.report_rows(s, root, metric="is")


def test_report_command_line(repo, capsys):
    path = write_sweep(repo, {**GRID, "fixed": {"train.num_steps": 5}})  # not a column
    root = repo / "runs"
    s = sweep.load_sweep(path)
    write_eval(s.runs[3].workdir(root), 2, loss=0.25)
    assert sweep.main(["report", str(path), "--root", str(root), "--metric=loss",
                       "--format=csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["run", "sde.name", "train.lr", "status", "step", "loss"]
    assert rows[1] == [s.runs[3].name, "subvp", "0.0002", "incomplete", "2", "0.25"]
    assert len(rows) == 5 and rows[2][3:] == ["missing", "", ""]


def test_eval_mode_sweeps_run_main_in_eval_mode_and_complete_on_the_result(repo, capsys):
    path = write_sweep(repo, {**GRID, "mode": "eval"}, "evals")
    s = sweep.load_sweep(path)
    root = repo / "runs"
    argv = sweep.command(s.runs[0], s.config, root, mode=s.mode)
    assert argv[argv.index("--mode") + 1] == "eval"
    assert len(sweep.pending(s, root)) == 4
    write_eval(s.runs[0].workdir(root), 7, fid=1.0)        # runlocal trains 7 steps
    assert [r.name for r in sweep.pending(s, root)] == [r.name for r in s.runs[1:]]
    with pytest.raises(ValueError, match="sweep 'mode' 'serve' is not valid"):
        sweep.expand({**GRID, "mode": "serve"})
