"""A workdir belongs to one run: its config record, its lock, and its DONE marker.

* `config.json` records the config that created the run. A later start in the same
  workdir (resume, eval, sample) compares the fields that define the run (`RUN_FIELDS`:
  everything except how long, how often and how it is evaluated or sampled) and refuses a
  difference in one line naming the fields, unless `allow_changes` (main.py's
  `--allow_config_change`) says the change is intended; accepted changes are appended to
  `config_changes.jsonl`. Fine-tuning into a new workdir is the clean way.
* A lock file (`fcntl.flock`, released by the kernel when the process dies) keeps two
  trainers, or two evals, out of one workdir.
* `DONE` records the step count a finished training reached, so a sweep asking for more
  steps does not trust it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from typing import Any, Iterator

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
DONE_FILE = "DONE"

# Fields that may change between starts of one run: length, logging, checkpoint cadence,
# memory settings that give the same step, evaluation, sampling, device layout, where the
# dataset files are, and the noise-conditional classifier (a run of its own, in
# <workdir>/classifier with its own record).
MUTABLE = ("train.num_steps", "train.log_every_steps", "train.checkpoint_every_steps",
           "train.sample_every_steps", "train.max_to_keep", "train.eval_at_end",
           "train.steps_per_dispatch", "train.grad_accum_steps", "model.remat",
           "model.conv_backward", "sample.", "eval.", "log.", "parallel.", "data.data_dir",
           "classifier.", "inverse.")


class WorkdirError(RuntimeError):
    """The workdir cannot be used as asked (another run's, busy, not writable)."""


def write_json(path: str, obj: Any) -> None:
    """Atomic JSON write (tmp file, then rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: str) -> Any | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_fields(config_dict: dict, mutable: tuple[str, ...] = MUTABLE) -> dict[str, Any]:
    """The flattened fields of a config (as a plain dict) that define the run: all but
    those named in `mutable` (a trailing '.' names a section). With a decaying learning
    rate, train.num_steps sets the schedule and defines the run too."""
    flat = flatten(config_dict)
    decays = flat.get("optim.schedule", "constant") != "constant"
    return {k: v for k, v in flat.items()
            if (decays and k == "train.num_steps")
            or not any(k == m or (m.endswith(".") and k.startswith(m)) for m in mutable)}


def diff(old: dict, new: dict, mutable: tuple[str, ...] = MUTABLE) -> list[str]:
    """'field: old -> new' for each run-defining field that differs. Fields present on one
    side only (a newer sde_lab added or removed an option) are not compared."""
    a, b = run_fields(old, mutable), run_fields(new, mutable)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(set(a) & set(b)) if a[k] != b[k]]


def check_writable(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"--workdir {workdir!r} is not writable ({e.strerror})") from None


def has_checkpoints(workdir: str) -> bool:
    d = os.path.join(workdir, "checkpoints")
    return os.path.isdir(d) and any(s.isdigit() for s in os.listdir(d))


def check_config(workdir: str, config_dict: dict, allow_changes: bool = False,
                 record: bool = True, mutable: tuple[str, ...] = MUTABLE) -> list[str]:
    """Compares `config_dict` with the workdir's `config.json`; records it when `record`.

    `mutable`: the fields that may differ (default: those of a score model's run).

    Returns the accepted differences (empty when none).

    Raises:
      WorkdirError: the run-defining fields differ and `allow_changes` is False, or the
        workdir holds checkpoints without a config record.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    old = read_json(path)
    changes = []
    if old is None and has_checkpoints(workdir) and not allow_changes:
        raise WorkdirError(f"{workdir} holds checkpoints but no readable {CONFIG_FILE}: it "
                           "was not written by this version; use a new --workdir, or "
                           "--allow_config_change to adopt it")
    if old is not None:
        changes = diff(old, config_dict, mutable)
        if changes and not allow_changes:
            shown = "; ".join(changes[:4]) + ("; ..." if len(changes) > 4 else "")
            raise WorkdirError(
                f"{workdir} belongs to a run with another config ({len(changes)} field(s) "
                f"differ: {shown}); use a new --workdir, or --allow_config_change to go on "
                "with the new values")
    if record:
        if changes:
            with open(os.path.join(workdir, CHANGES_FILE), "a") as f:
                f.write(json.dumps({"time": time.time(), "changes": changes}) + "\n")
        write_json(path, config_dict)
    return changes


@contextlib.contextmanager
def lock(workdir: str, role: str) -> Iterator[None]:
    """Holds `<workdir>/.<role>.lock` exclusively; a second holder fails at once."""
    path = os.path.join(workdir, f".{role}.lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise WorkdirError(f"{workdir} is in use: a {role} run ({holder}) holds "
                           f"{path}; wait for it or use another --workdir") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def mark_done(workdir: str, num_steps: int) -> None:
    """Writes `DONE` (atomically) recording that training reached `num_steps`."""
    write_json(os.path.join(workdir, DONE_FILE), {"num_steps": int(num_steps)})


def done_steps(workdir: str) -> int | None:
    """Steps recorded in `DONE`, or None (no DONE, or an unreadable old-style marker)."""
    record = read_json(os.path.join(workdir, DONE_FILE))
    if isinstance(record, dict) and isinstance(record.get("num_steps"), int):
        return record["num_steps"]
    return None


def clear_done(workdir: str) -> None:
    """Removes `DONE` (a resumed run that trains further is not done until it ends)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(workdir, DONE_FILE))
