"""Benchmark worker processes driven over stdin/stdout, so that timings can be interleaved.

Why processes: each configuration's peak memory is then the peak of a process that built
and compiled only that configuration, and an XLA worker and a PyTorch worker never share
a thread pool. Why interleaved: on a shared machine only the ratio of adjacent runs
(A, B, A, B) means something, so the parent keeps every worker of a comparison alive and
asks each in turn for a block of timed calls.

Protocol: the worker prints `@@ready <json>` once built (and compiled), then answers each
stdin line `<command> <json>` with `@@reply <json>`, and `quit` with `@@bye <json>`. Any
other output is the worker's own log and is passed through to the parent's stderr.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time

PREFIX = "@@"


class WorkerError(RuntimeError):
    pass


class Worker:
    """A child process running `argv`; `ready()`, `ask(command, **args)`, `close()`."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None, log=sys.stderr):
        self.name, self.log = name, log
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        print(f"# [{name}] start: {shlex.join(argv)}"
              + (f"  (env {env})" if env else ""), file=log, flush=True)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=full_env,
                                     bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                self.lines.put(line[len(PREFIX):].rstrip("\n"))
            else:
                print(f"  [{self.name}] {line.rstrip()}", file=self.log, flush=True)
        self.lines.put(None)

    def _expect(self, tag: str, timeout: float) -> dict:
        deadline = time.time() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(1.0, deadline - time.time()))
            except queue.Empty:
                self.kill()
                raise WorkerError(f"[{self.name}] no '{tag}' within {timeout:.0f} s; killed")
            if line is None:
                raise WorkerError(f"[{self.name}] exited (code {self.proc.wait()}) before '{tag}'")
            got, _, payload = line.partition(" ")
            if got == tag:
                return json.loads(payload)
            if got == "error":
                raise WorkerError(f"[{self.name}] {json.loads(payload)}")

    def ready(self, timeout: float) -> dict:
        return self._expect("ready", timeout)

    def ask(self, command: str, timeout: float, **args) -> dict:
        self.proc.stdin.write(f"{command} {json.dumps(args)}\n")
        self.proc.stdin.flush()
        return self._expect("reply", timeout)

    def close(self, timeout: float = 120.0) -> dict:
        try:
            self.proc.stdin.write("quit {}\n")
            self.proc.stdin.flush()
            return self._expect("bye", timeout)
        except (BrokenPipeError, WorkerError):
            return {}
        finally:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()


def serve(ready_info: dict, handlers: dict) -> None:
    """Worker side: announce `ready_info`, then answer commands until `quit`.

    handlers: command -> fn(**args) -> dict; "quit" may be given to return final info.
    """
    _send("ready", ready_info)
    for line in sys.stdin:
        command, _, payload = line.strip().partition(" ")
        args = json.loads(payload or "{}")
        if command == "quit":
            _send("bye", handlers.get("quit", dict)())
            return
        try:
            _send("reply", handlers[command](**args))
        except Exception as e:  # report, keep serving: the parent decides
            _send("error", f"{type(e).__name__}: {e}")


def _send(tag: str, payload) -> None:
    sys.stdout.write(f"{PREFIX}{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux: ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: %.2f, %.2f, %.2f" % os.getloadavg()
