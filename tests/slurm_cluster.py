"""A throwaway single-node Slurm cluster on localhost, for tests (needs root).

Recipe (Debian 12, slurm-wlm 22.05, munge 0.5), everything under one temporary directory so
nothing in /etc or /var is touched after the packages are installed:

1. munge: a fresh 1024-byte key (mode 0600, owned by the user running munged), and
   `munged --force --socket DIR/munge/munge.socket.2 --key-file ... --pid-file ...
   --log-file ... --seed-file ...`; Slurm finds that socket through `AuthInfo=socket=...`.
2. slurm.conf with `SlurmctldHost=<hostname>`, root as SlurmUser/SlurmdUser, free ports,
   `StateSaveLocation` and `SlurmdSpoolDir` under DIR, no accounting,
   `ProctrackType=proctrack/linuxproc` and `TaskPlugin=task/none` (no cgroups: a container
   has none to hand out), `ReturnToService=2` so the node comes up IDLE, and a node with
   `CPUs=` as many as the test asks for; `SlurmdParameters=config_overrides` lets slurmd
   accept more CPUs than the machine has (tasks here mostly wait on each other).
3. `slurmctld -i` (ignore old state) and `slurmd`, both with `SLURM_CONF` pointing at the
   file; wait until `sinfo` reports the node idle.
4. Teardown: `scancel` everything, SIGTERM the daemons by pid, then munged.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo")


def missing_binaries() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None]


def try_install() -> str | None:
    """apt-get installs slurm-wlm and munge if missing; returns why not, or None."""
    if not missing_binaries():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "Slurm is not installed and apt-get as root is not available"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            return f"{' '.join(cmd)} failed: {proc.stderr[-500:]}"
    missing = missing_binaries()
    return f"still missing after apt-get: {missing}" if missing else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """Context manager: munged + slurmctld + slurmd under `root`; `env` has SLURM_CONF."""

    def __init__(self, root: pathlib.Path, cpus: int = 4, partition: str = "debug"):
        self.root = pathlib.Path(root)
        self.cpus = cpus
        self.partition = partition
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self._pidfiles: list[pathlib.Path] = []

    # -- bring-up -----------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        try:
            self._start_munge()
            self._write_conf()
            self._run_daemon(["slurmctld", "-i"], self.root / "slurmctld.pid")
            self._run_daemon(["slurmd"], self.root / "slurmd.pid")
            self._wait_idle(timeout_s=60)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start_munge(self) -> None:
        mdir = self.root / "munge"
        mdir.mkdir(parents=True, mode=0o700)
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.munge_socket = mdir / "munge.socket.2"
        pid = mdir / "munged.pid"
        subprocess.run(
            ["munged", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--pid-file={pid}", f"--log-file={mdir / 'munged.log'}",
             f"--seed-file={mdir / 'munged.seed'}"],
            check=True, capture_output=True, timeout=30)
        self._pidfiles.append(pid)

    def _write_conf(self) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir()
        r = self.root
        self.conf.write_text(f"""\
ClusterName=sdelabtest
SlurmctldHost={self.host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'slurmctld.log'}
SlurmdLogFile={r / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=30
MinJobAge=600
NodeName={self.host} CPUs={self.cpus} State=UNKNOWN
PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")

    def _run_daemon(self, cmd: list[str], pidfile: pathlib.Path) -> None:
        subprocess.run(cmd, env=self.env, check=True, capture_output=True, timeout=60)
        self._pidfiles.append(pidfile)

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            state = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.strip()
            if state.startswith("idle"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"node not idle after {timeout_s}s (state {state!r}); "
                           f"see {self.root}/slurmctld.log and slurmd.log")

    # -- use ----------------------------------------------------------------------------
    def run(self, cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, check=check, capture_output=True, text=True,
                              timeout=60, **kw)

    def task_states(self, job_id: str) -> dict[int, str]:
        """{array index: state} from squeue (running/pending) or scontrol (finished)."""
        out = self.run(["scontrol", "-o", "show", "job", job_id], check=False).stdout
        states = {}
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "ArrayTaskId" in fields and fields["ArrayTaskId"].isdigit():
                states[int(fields["ArrayTaskId"])] = fields["JobState"]
        return states

    # -- teardown -----------------------------------------------------------------------
    def __exit__(self, *exc) -> None:
        if shutil.which("scancel") and self.conf.exists():
            subprocess.run(["scancel", "--user=root"], env=self.env, capture_output=True,
                           timeout=30)
        for pidfile in reversed(self._pidfiles):
            _kill_pidfile(pidfile)


def _kill_pidfile(pidfile: pathlib.Path, timeout_s: float = 20) -> None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
