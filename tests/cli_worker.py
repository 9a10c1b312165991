"""Runs many command lines of main.py / `python -m sde_lab.sweep`, each in a forked child.

Importing jax, flax and the runner takes seconds; a fork after the imports (and before any
JAX backend exists, so no XLA threads are forked) gives each command line a fresh process
that parses its own flags and runs exactly the code of `python main.py ARGS`, in well
under a second. Used by tests/test_cli_errors.py.

    python tests/cli_worker.py CASES.json RESULTS.json

CASES.json: a list of {"program": "main" | "sweep", "argv": [...], "env": {...}} (env:
variables set in the child, e.g. XLA_FLAGS, before JAX creates its backend). RESULTS.json: for
each, {"code": exit code, "stdout": ..., "stderr": ...}. JAX logs every compilation in the
children (jax_log_compiles), so stderr shows whether anything was compiled.
"""

import json
import os
import sys
import tempfile
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)

import main as main_module  # noqa: E402
from absl import app  # noqa: E402

from sde_lab import sweep  # noqa: E402


def _child(case: dict) -> None:
    os.environ.update(case.get("env", {}))
    import jax

    jax.config.update("jax_log_compiles", True)
    if case["program"] == "main":
        sys.argv = ["main.py", *case["argv"]]
        app.run(main_module.main, flags_parser=main_module._parse_flags_or_exit)
        sys.exit(0)
    sys.exit(sweep.main(case["argv"]))


def run_case(case: dict) -> dict:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            code = 1
            try:
                _child(case)
            except SystemExit as e:
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                    code = 1
                else:
                    code = e.code or 0
            except BaseException:  # noqa: BLE001 (report anything as a traceback)
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return {"code": os.waitstatus_to_exitcode(status), "stdout": out.read(),
                "stderr": err.read()}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    results = [run_case(case) for case in cases]
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)
