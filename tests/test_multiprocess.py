"""Two processes on localhost (jax.distributed, 2 CPU devices each) train like one process.

Each process feeds only its own half of every global batch through `parallel.shard_batch`;
gradients cross processes through the CPU collectives (gloo). Both processes then save the
state with orbax and restore it (checked bit for bit in the worker). The result must equal the
single-process 4-device run of the same steps; tolerance as in test_parallel.py (float
summation order only, 1e-6 after 3 Adam steps with lr = 1e-2).
"""

import socket
import subprocess
import sys

import numpy as np
import pytest

from test_parallel import ATOL, HERE, _subprocess_env, params_of, run_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_four_devices(tmp_path):
    single = run_worker(tmp_path / "single.npz", ["jit"], num_devices=4)

    coordinator = f"127.0.0.1:{_free_port()}"
    out = tmp_path / "multi.npz"
    procs = []
    for pid in range(2):
        env = _subprocess_env(2)
        env.update(SDE_LAB_COORDINATOR=coordinator, SDE_LAB_NUM_PROCESSES="2",
                   SDE_LAB_PROCESS_ID=str(pid), SDE_LAB_CKPT_DIR=str(tmp_path / "ckpt"))
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "parallel_worker.py"), str(out), "jit", "pmap",
             "jit_fullkeys", "pmap_fullkeys"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]

    multi = dict(np.load(out))
    for mode in ("jit", "pmap", "jit_fullkeys", "pmap_fullkeys"):
        assert (tmp_path / "ckpt" / mode / "3").is_dir(), mode   # NUM_STEPS = 3
    assert int(multi["process_count"]) == 2 and int(multi["device_count"]) == 4
    want = params_of(single, "jit")
    for mode in ("jit", "pmap", "jit_fullkeys", "pmap_fullkeys"):
        got = params_of(multi, mode)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=ATOL, err_msg=f"{mode} {k}")
        np.testing.assert_allclose(multi[f"{mode}/loss"], single["jit/loss"], rtol=1e-6)
