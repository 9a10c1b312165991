"""benchmarks/train_step.py run end to end with the options of benchmarks/gpu_check.sh.

The GPU check is meant for one short run on a device this project rarely gets, so its exact
option set (two dtypes in one interleaved group, workers compiled concurrently, JSON out)
is run here on the CPU with the 8x8 "tiny" network instead of the published sizes, and the
numbers it reports are checked against the raw step times it recorded.
"""

import json
import os
import re
import shlex
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 4


def gpu_check_arguments() -> list[str]:
    """The train_step.py arguments of benchmarks/gpu_check.sh (continuation lines joined)."""
    with open(os.path.join(ROOT, "benchmarks", "gpu_check.sh")) as f:
        script = f.read().replace("\\\n", " ")
    line = next(ln for ln in script.splitlines() if "benchmarks/train_step.py" in ln)
    words = shlex.split(line.split("benchmarks/train_step.py", 1)[1].split("2>&1")[0])
    return words


def replace_option(words: list[str], name: str, value: str) -> list[str]:
    i = words.index(name)
    return words[:i + 1] + [value] + words[i + 2:]


@pytest.mark.slow
def test_gpu_check_options_run_on_cpu_and_report_what_they_measured(tmp_path):
    words = gpu_check_arguments()
    for flag in ("--one-group", "--parallel-start"):
        assert flag in words
    assert words[words.index("--dtypes") + 1] == "float32,bfloat16"
    out = tmp_path / "train_step.json"
    for name, value in (("--sizes", "tiny"), ("--batch", str(BATCH)), ("--steps", "5"),
                        ("--repeats", "1"), ("--timeout", "600"), ("--out", str(out))):
        words = replace_option(words, name, value)
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_step.py"),
                           *words], capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = json.loads(out.read_text())
    assert [(r["spec"]["size"], r["spec"]["dtype"], r["spec"]["remat"]) for r in rows] == [
        ("tiny", "float32", False), ("tiny", "bfloat16", False)]
    fp32, bf16 = rows
    for row in rows:
        (times,) = row["rounds"]
        assert len(times) == 5 and all(t > 0 for t in times)
        assert row["step_s"] == statistics.median(times)
        info = row["info"]
        assert info["platform"] == "cpu" and info["compile_s"] > 0
        assert info["rss_step_peak"] >= info["rss_after_init"] > 0
        assert info["peak_fp32"] > 0 and info["peak_bf16"] > 0
    # The same network arithmetic in both dtypes: XLA's counts agree to a few percent.
    assert bf16["flops"] == pytest.approx(fp32["flops"], rel=0.05)
    assert bf16["vs_fp32"] == pytest.approx([bf16["step_s"] / fp32["step_s"]])

    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("| tiny ")]
    assert len(table) == 2
    for line, row in zip(table, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[3]) == pytest.approx(row["step_s"], abs=5e-4)     # step s
        assert float(cells[4]) == pytest.approx(BATCH / row["step_s"], rel=0.01, abs=0.05)
    assert table[1].rstrip(" |").endswith(f"{bf16['vs_fp32'][0]:.2f}x ({bf16['vs_fp32'][0]:.2f})")
    assert re.search(r"batch 4, 8x8x3 \(tiny\);", proc.stdout)


@pytest.mark.slow
def test_onednn_rows_count_the_convolutions_xla_cannot_see():
    from sde_lab import onednn, parallel

    if onednn.unavailable() is not None:
        pytest.skip(str(onednn.unavailable()))
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import train_step

    compiled_flops = {}
    for conv_backward in ("auto", "onednn"):
        step_fn, make_state, data, keys = train_step.sde_lab_step_parts(
            "tiny", BATCH, "float32", False, conv_backward)
        cost = step_fn.lower(parallel.abstract(make_state(shapes_only=True)), data,
                             keys[0]).compile().cost_analysis()
        compiled_flops[conv_backward] = float(
            (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
    spec = dict(size="tiny", batch=BATCH, dtype="float32", remat=False)
    ffi = train_step._ffi_convolution_flops(spec, data, keys, make_state)
    # Most of the step's arithmetic is in the convolutions that oneDNN runs...
    assert compiled_flops["onednn"] < 0.5 * compiled_flops["auto"]
    assert ffi > compiled_flops["onednn"]
    # ...and with them counted the onednn step's count is XLA's for the same step with its
    # own convolutions (to the few percent by which unoptimised and compiled HLO differ).
    assert compiled_flops["onednn"] + ffi == pytest.approx(compiled_flops["auto"], rel=0.08)
