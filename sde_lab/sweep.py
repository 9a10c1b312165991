"""Sweeps: expand a grid of config overrides into runs, launch them locally or on Slurm.

A sweep is a Python file, by convention `experiments/<name>.py`, defining `get_sweep()`
that returns a dict:

    def get_sweep():
        return {
            "config": "configs/toy.py:runlocal",          # base config spec for main.py
            "grid": {"sde.name": ["vp", "subvp"],         # Cartesian product, in key order
                     "optim.lr": [1e-3, 2e-4]},           #   (the last key varies fastest)
            "fixed": {"train.num_steps": 2000},           # optional: set in every run
        }

Instead of `"grid"`, `"runs"` may list the override dicts one by one
(`[{"sde.name": "vp"}, {"sde.name": "ve", "optim.lr": 2e-4}]`). Keys are dotted config
paths; values are str, int, float, bool, None, or tuples/lists of those. Each run gets
its own workdir `<root>/<name>`, where the name lists the run's own overrides (not the
fixed ones) sorted by key, `optim.lr=0.0002,sde.name=subvp`, with characters of values
outside `[A-Za-z0-9._-]` replaced by `-` (and a short hash appended when longer than 120
characters): the same overrides always give the same directory, and two runs whose names
would collide are an error. Each run executes

    python main.py --config <config> --workdir <root>/<name> --config.<key>=<value> ...

`"mode": "eval"` runs `--mode eval` instead of training: with
`"fixed": {"eval.source_workdir": "<a trained run>", ...}` each run evaluates that run's
checkpoints with its own overrides (e.g. one sampler per run) and writes its results in
its own workdir; such a run is complete when `eval/<train.num_steps>.json` exists.
`{root}` in a string value is replaced by the sweep's root directory, so an eval sweep
can name the runs of a training sweep under the same `--root`
(`"eval.source_workdir": "{root}/sde.name=ve,seed=0"`).

A sweep file may take a variant, as config files do: `experiments/x.py:runlocal` calls
`get_sweep("runlocal")` (`get_sweep()` without one).

Commands:

    python -m sde_lab.sweep run experiments/toy_sde_grid.py --launcher=local --root DIR [--parallel N] [--dry_run]
    python -m sde_lab.sweep run experiments/toy_sde_grid.py --launcher=slurm --root DIR \\
        --partition=gpu --time=04:00:00 --gpus-per-task=1 --cpus-per-task=8 --mem=32G
    python -m sde_lab.sweep report experiments/toy_sde_grid.py --root DIR --metric=fid --format=md

(`run` may be left out: `python -m sde_lab.sweep experiments/toy_sde_grid.py --launcher=local`.)

A run is complete when its workdir holds `DONE` (the runner writes it after a successful
train) or a finished checkpoint `checkpoints/<train.num_steps>`; both launchers skip
complete runs, so re-running the same command resumes an interrupted sweep. The local
launcher runs the commands N at a time, logging to `<root>/logs/<name>.log`. The Slurm
launcher writes `<root>/slurm/<sweep>.sbatch`, one `--array` task per incomplete run, with
`--requeue`, `--signal=B:TERM@<grace>` and `exec`, so the trainer itself receives SIGTERM
(preemption, `scontrol requeue`, time limit) and saves a checkpoint; a requeued task
restarts the same command, which resumes from that checkpoint. Task output goes to
`<root>/slurm/%A_%a.out`, appended across restarts.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import hashlib
import importlib.util
import io
import itertools
import json
import pathlib
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from sde_lab import workdir as workdir_lib

SPEC_KEYS = ("config", "grid", "runs", "fixed", "mode")
MODES = ("train", "eval")
MAX_NAME_LEN = 120
_KEY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_SCALARS = (str, int, float, bool, type(None))


# -- completion -----------------------------------------------------------------------------

def is_complete(workdir: str | pathlib.Path, num_steps: int | None = None) -> bool:
    """True if training in `workdir` reached `num_steps`: its `DONE` records at least that
    many steps, or the checkpoint `checkpoints/<num_steps>` exists.

    Orbax writes a checkpoint into a temporary directory and renames it to the bare step
    number when complete, so that directory's existence means the final save finished. A
    `DONE` of a shorter run (or an old marker without a step count) is not trusted.
    """
    workdir = pathlib.Path(workdir)
    done = workdir_lib.done_steps(str(workdir))
    if done is not None and (num_steps is None or done >= num_steps):
        return True
    return num_steps is not None and (workdir / "checkpoints" / str(int(num_steps))).is_dir()


def is_evaluated(workdir: str | pathlib.Path, num_steps: int | None) -> bool:
    """True if an eval-mode run wrote `eval/<num_steps>.json` (any step if None)."""
    evals = pathlib.Path(workdir) / "eval"
    if num_steps is not None:
        return (evals / f"{int(num_steps)}.json").exists()
    return any(p.stem.isdigit() for p in evals.glob("*.json"))


# -- sweep definition -----------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One run of a sweep: its index (the Slurm array task id), name and overrides."""

    index: int
    name: str
    overrides: dict[str, Any]   # the run's own overrides, then the fixed ones

    def workdir(self, root: pathlib.Path) -> pathlib.Path:
        return pathlib.Path(root) / self.name


@dataclass(frozen=True)
class Sweep:
    name: str
    config: str
    runs: list[Run] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)   # overrides shared by every run
    mode: str = "train"                                    # main.py --mode of every run


def load_sweep(path: str | pathlib.Path) -> Sweep:
    """Imports `path` (`file.py[:variant]`), calls its `get_sweep([variant])` and expands it
    into runs (see module doc)."""
    path, _, variant = str(path).partition(":")
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file {str(path)!r} does not exist")
    if path.suffix != ".py":
        raise ValueError(f"sweep file {str(path)!r} is not a Python file (*.py)")
    module_spec = importlib.util.spec_from_file_location(f"_sde_lab_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ValueError(f"sweep file {str(path)!r}: syntax error at line {e.lineno}: "
                         f"{e.msg}") from None
    except Exception as e:  # the file's own code failed
        raise ValueError(f"sweep file {str(path)!r}: {type(e).__name__}: {e}") from None
    if not callable(getattr(module, "get_sweep", None)):
        raise ValueError(f"{path} must define get_sweep() returning a dict with keys {SPEC_KEYS}")
    try:
        spec = module.get_sweep(variant) if variant else module.get_sweep()
    except Exception as e:
        raise ValueError(f"{path}: get_sweep() failed: {type(e).__name__}: {e}") from None
    return expand(spec, name=path.stem)


def expand(spec: dict, name: str = "sweep") -> Sweep:
    """A `get_sweep()` dict -> Sweep with one Run per grid point or list entry."""
    if not isinstance(spec, dict):
        raise ValueError(f"get_sweep() must return a dict with keys {list(SPEC_KEYS)}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"unknown sweep keys {unknown}; available: {list(SPEC_KEYS)}")
    if not isinstance(spec.get("config"), str) or not spec["config"]:
        raise ValueError("sweep 'config' must be a config spec string, e.g. 'configs/toy.py:runlocal'")
    if ("grid" in spec) == ("runs" in spec):
        raise ValueError("a sweep needs exactly one of 'grid' (dict of lists) or 'runs' (list of dicts)")
    points = _grid_points(spec["grid"]) if "grid" in spec else _list_points(spec["runs"])
    fixed = _check_overrides(spec.get("fixed", {}), "fixed")
    clash = sorted({k for p in points for k in p} & set(fixed))
    if clash:
        raise ValueError(f"keys {clash} are both swept and fixed")
    runs = [Run(i, run_name(p), {**p, **fixed}) for i, p in enumerate(points)]
    _check_unique(runs)
    mode = spec.get("mode", "train")
    if mode not in MODES:
        raise ValueError(f"sweep 'mode' {mode!r} is not valid; choose from {list(MODES)}")
    return Sweep(name=name, config=spec["config"], runs=runs, fixed=fixed, mode=mode)


def _grid_points(grid) -> list[dict]:
    if not isinstance(grid, dict) or not grid:
        raise ValueError("sweep 'grid' must be a non-empty dict {key: [values, ...]}")
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"grid values for {key!r} must be a non-empty list, got {values!r}")
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    return [_check_overrides(p, "grid") for p in points]


def _list_points(runs) -> list[dict]:
    if not isinstance(runs, (list, tuple)) or not runs:
        raise ValueError("sweep 'runs' must be a non-empty list of override dicts")
    return [_check_overrides(p, f"runs[{i}]") for i, p in enumerate(runs)]


def _check_overrides(overrides, where: str) -> dict:
    if not isinstance(overrides, dict):
        raise ValueError(f"sweep {where} must be a dict of overrides, got {overrides!r}")
    for key, value in overrides.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(f"sweep {where}: {key!r} is not a dotted config path like 'optim.lr'")
        items = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, _SCALARS) for v in items):
            raise ValueError(f"sweep {where}: value {value!r} for {key!r} must be a str, int, "
                             "float, bool, None or a tuple of those")
    return dict(overrides)


def _check_unique(runs: list[Run]) -> None:
    seen: dict[str, Run] = {}
    for run in runs:
        if run.name in seen:
            raise ValueError(f"runs {seen[run.name].overrides} and {run.overrides} get the same "
                             f"workdir name {run.name!r}; make their overrides differ")
        seen[run.name] = run


def format_value(value) -> str:
    """A value as ml_collections' config flags parse it back (strings stay bare)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        value = tuple(value)
    return repr(value)


def run_name(overrides: dict[str, Any]) -> str:
    """Stable, filesystem-safe directory name listing the overrides sorted by key."""
    if not overrides:
        return "base"
    text = ",".join(f"{k}={format_value(overrides[k])}" for k in sorted(overrides))
    # '=' and ',' only as separators, so two different override sets never share a name
    # unless their values differ only in characters outside [A-Za-z0-9._-].
    name = ",".join(f"{k}={re.sub(r'[^A-Za-z0-9._-]', '-', format_value(overrides[k]))}"
                    for k in sorted(overrides))
    if len(name) > MAX_NAME_LEN:
        digest = hashlib.sha1(text.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME_LEN - 11]}-{digest}"
    return name


def command(run: Run, config: str, root: pathlib.Path, python: str = sys.executable,
            main: str = "main.py", mode: str = "train") -> list[str]:
    """argv of the run: python main.py --config C --workdir W [--mode M] --config.k=v ...
    (`{root}` in a string value becomes `root`)."""
    argv = [python, main, "--config", config, "--workdir", str(run.workdir(root))]
    if mode != "train":
        argv += ["--mode", mode]

    def value(v):
        return v.replace("{root}", str(root)) if isinstance(v, str) else format_value(v)

    return argv + [f"--config.{k}={value(v)}" for k, v in run.overrides.items()]


def _config_num_steps(config: str, overrides: dict[str, Any]) -> int | None:
    """train.num_steps of the run: its override, else the base config's value, else None."""
    if "train.num_steps" in overrides:
        return int(overrides["train.num_steps"])
    from sde_lab import experiment

    train = experiment.load_config(config).get("train")
    return None if train is None or train.get("num_steps") is None else int(train["num_steps"])


def pending(sweep: Sweep, root: pathlib.Path) -> list[Run]:
    """Runs of the sweep that are not complete yet."""
    steps = {}
    out = []
    for run in sweep.runs:
        key = run.overrides.get("train.num_steps")
        if key not in steps:
            steps[key] = _config_num_steps(sweep.config, run.overrides)
        done = (is_evaluated(run.workdir(root), steps[key]) if sweep.mode == "eval"
                else is_complete(run.workdir(root), steps[key]))
        if not done:
            out.append(run)
    return out


# -- launchers ------------------------------------------------------------------------------

def launch_local(sweep: Sweep, root: pathlib.Path, args: argparse.Namespace) -> int:
    """Runs the pending commands `args.parallel` at a time; returns the number that failed."""
    todo = pending(sweep, root)
    print(f"{sweep.name}: {len(sweep.runs)} runs, {len(sweep.runs) - len(todo)} complete, "
          f"{len(todo)} to run")
    argvs = [command(run, sweep.config, root, args.python, args.main, sweep.mode)
             for run in todo]
    if args.dry_run:
        for argv in argvs:
            print(shlex.join(argv))
        return 0
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def run_one(run: Run, argv: list[str]) -> int:
        run.workdir(root).mkdir(parents=True, exist_ok=True)
        with open(logs / f"{run.name}.log", "a") as log:
            rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT).returncode
        (logs / f"{run.name}.status").write_text(f"{rc}\n")
        print(f"[{'ok' if rc == 0 else f'failed rc={rc}'}] {run.name}", flush=True)
        return rc

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.parallel or 1)) as pool:
        codes = list(pool.map(run_one, todo, argvs))
    return sum(rc != 0 for rc in codes)


def slurm_script(sweep: Sweep, runs: Sequence[Run], root: pathlib.Path,
                 args: argparse.Namespace) -> str:
    """The sbatch array script: one task per run, task id = the run's index in the sweep."""
    out_dir = root / "slurm"
    array = _index_ranges([run.index for run in runs])
    if args.parallel and args.parallel > 0:
        array += f"%{args.parallel}"
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={args.job_name or sweep.name}",
             f"#SBATCH --array={array}",
             f"#SBATCH --output={out_dir}/%A_%a.out",
             "#SBATCH --open-mode=append",
             "#SBATCH --requeue",
             f"#SBATCH --signal=B:TERM@{args.grace_s}",
             f"#SBATCH --chdir={pathlib.Path.cwd()}"]
    for flag in ("partition", "time", "gpus_per_task", "cpus_per_task", "mem", "account",
                 "qos"):
        value = getattr(args, flag)
        if value not in (None, ""):
            lines.append(f"#SBATCH --{flag.replace('_', '-')}={value}")
    lines += ["", "# exec: the trainer replaces this shell, so Slurm's SIGTERM reaches it.",
              'case "$SLURM_ARRAY_TASK_ID" in']
    for run in runs:
        argv = command(run, sweep.config, root, args.python, args.main, sweep.mode)
        lines.append(f"  {run.index}) exec {shlex.join(argv)} ;;")
    lines += ['  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
              "esac", ""]
    return "\n".join(lines)


def _index_ranges(indices: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (sbatch --array syntax)."""
    parts, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ",".join(parts)


def launch_slurm(sweep: Sweep, root: pathlib.Path, args: argparse.Namespace) -> int:
    """Writes the array script for the pending runs, submits it and prints the job id."""
    todo = pending(sweep, root)
    if not todo:
        print(f"{sweep.name}: all {len(sweep.runs)} runs complete; nothing to submit")
        return 0
    script = slurm_script(sweep, todo, root, args)
    if args.dry_run:
        print(script)
        return 0
    (root / "slurm").mkdir(parents=True, exist_ok=True)
    for run in todo:
        run.workdir(root).mkdir(parents=True, exist_ok=True)
    path = root / "slurm" / f"{sweep.name}.sbatch"
    path.write_text(script)
    proc = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    job_id = proc.stdout.strip().split(";")[0]
    print(f"submitted {sweep.name}: job {job_id}, {len(todo)} tasks, script {path}")
    print(job_id)
    return 0


LAUNCHERS: dict[str, Callable[[Sweep, pathlib.Path, argparse.Namespace], int]] = {
    "local": launch_local,
    "slurm": launch_slurm,
}


def make_launcher(name: str):
    if name not in LAUNCHERS:
        raise ValueError(f"unknown launcher '{name}'; available: {sorted(LAUNCHERS)}")
    return LAUNCHERS[name]


# -- report ---------------------------------------------------------------------------------

def latest_eval(workdir: pathlib.Path) -> dict | None:
    """Contents of the `eval/<step>.json` with the largest step, or None."""
    files = [p for p in (workdir / "eval").glob("*.json") if p.stem.isdigit()]
    if not files:
        return None
    latest = max(files, key=lambda p: int(p.stem))
    try:
        return {"step": int(latest.stem), **json.loads(latest.read_text())}
    except json.JSONDecodeError:
        return None


def run_status(run: Run, root: pathlib.Path, mode: str = "train") -> str:
    workdir = run.workdir(root)
    if not workdir.exists():
        return "missing"
    if (is_evaluated(workdir, None) if mode == "eval"
            else workdir_lib.done_steps(str(workdir)) is not None):
        return "done"
    status = root / "logs" / f"{run.name}.status"
    if status.exists() and status.read_text().strip() not in ("", "0"):
        return f"failed (rc={status.read_text().strip()})"
    return "incomplete"


def report_rows(sweep: Sweep, root: pathlib.Path, metric: str | None = None,
                descending: bool = False) -> tuple[list[str], list[dict]]:
    """(columns, rows): one row per run with its swept overrides, status and latest eval."""
    rows, metric_keys = [], []
    swept = list(dict.fromkeys(k for run in sweep.runs for k in run.overrides
                               if k not in sweep.fixed))
    for run in sweep.runs:
        row = {"run": run.name, **{k: format_value(run.overrides[k]) for k in swept
                                   if k in run.overrides},
               "status": run_status(run, root, sweep.mode)}
        result = latest_eval(run.workdir(root))
        if result is None:
            if row["status"] in ("done", "incomplete"):
                row["status"] += ", no eval"
        else:
            for k, v in result.items():
                if isinstance(v, (int, float, str, bool)) and k not in row:
                    row[k] = v
                    if k not in metric_keys:
                        metric_keys.append(k)
        rows.append(row)
    if metric is not None and metric not in metric_keys and metric_keys:
        raise ValueError(f"metric {metric!r} is in no eval file; available: {metric_keys}")

    def sort_key(row):
        value = row.get(metric) if metric else None
        if not isinstance(value, (int, float)):
            return (1, 0.0, row["run"])
        return (0, -value if descending else value, row["run"])

    rows.sort(key=sort_key)
    return ["run", *swept, "status", *metric_keys], rows


def format_table(columns: list[str], rows: list[dict], fmt: str = "md") -> str:
    def cell(v):
        if v is None:
            return "" if fmt == "csv" else "-"
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[cell(r.get(c)) for c in columns] for r in rows])
        return buf.getvalue()
    if fmt != "md":
        raise ValueError(f"unknown format '{fmt}'; available: ['csv', 'md']")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# -- command line ---------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one `error:` line (exit 2)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m sde_lab.sweep", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="expand a sweep and launch its incomplete runs")
    report = sub.add_parser("report", help="table of each run's latest eval/<step>.json")
    for p in (run, report):
        p.add_argument("sweep_file", help="experiments/<name>.py defining get_sweep()")
        p.add_argument("--root", default=None,
                       help="parent of the run workdirs (default: workdirs/<sweep name>)")
    run.add_argument("--launcher", default="local", help=f"one of {sorted(LAUNCHERS)}")
    run.add_argument("--parallel", type=int, default=None,
                     help="local: runs at a time (default 1); slurm: most array tasks "
                          "running at once (default: no limit)")
    run.add_argument("--dry_run", "--dry-run", action="store_true",
                     help="print the commands (local) or the sbatch script (slurm) and stop")
    run.add_argument("--python", default=sys.executable, help="interpreter for main.py")
    run.add_argument("--main", default="main.py", help="path of main.py, relative to cwd")
    slurm = run.add_argument_group("slurm resources")
    for flag in ("partition", "time", "gpus-per-task", "cpus-per-task", "mem", "account", "qos",
                 "job-name"):
        slurm.add_argument(f"--{flag}", dest=flag.replace("-", "_"), default=None)
    slurm.add_argument("--grace_s", "--grace-s", type=int, default=120,
                       help="seconds between Slurm's SIGTERM warning and the time limit")
    report.add_argument("--metric", default=None, help="eval key to sort by (ascending)")
    report.add_argument("--descending", action="store_true", help="sort larger values first")
    report.add_argument("--format", default="md", choices=["md", "csv"])
    return parser


def check_runs(sweep: Sweep) -> None:
    """Applies every run's overrides to the base config as main.py would, so a mistyped key
    or a value of the wrong type fails here in one line instead of in N launched jobs.
    (Value ranges are checked by each run's main.py before it compiles anything.)"""
    from sde_lab import experiment

    base = experiment.load_config(sweep.config)
    keys = set(experiment.flat_keys(base))
    for run in sweep.runs:
        config = base.copy_and_resolve_references()
        for key, value in run.overrides.items():
            if key not in keys:
                raise ValueError(f"run {run.name}: {experiment.suggest(key, base)}")
            try:
                config.update_from_flattened_dict({key: value})
            except (TypeError, ValueError, KeyError) as e:
                raise ValueError(f"run {run.name}: {key}={value!r}: "
                                 f"{' '.join(str(e).split())}") from None
        try:
            experiment.check_overrides(config, run.overrides)
        except experiment.ConfigError as e:
            raise ValueError(f"run {run.name}: {e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].partition(":")[0].endswith(".py"):  # `sweep FILE ...` means `run`
        argv.insert(0, "run")
    args = _parser().parse_args(argv)
    try:
        sweep = load_sweep(args.sweep_file)
        root = pathlib.Path(args.root or pathlib.Path("workdirs") / sweep.name).absolute()
        if args.command == "report":
            columns, rows = report_rows(sweep, root, args.metric, args.descending)
            print(format_table(columns, rows, args.format), end="")
            return 0
        launcher = make_launcher(args.launcher)
        check_runs(sweep)
        return launcher(sweep, root, args)
    except ValueError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
