#!/usr/bin/env bash
# One short GPU check of issue #19: images/s of the full training step (Adam, clipping, EMA:
# the trainer's own step) for DDPM++ cont. and NCSN++ cont. at batch 128 in float32 and
# bfloat16, with compile times and peak device memory. Made for one run on an H200 with a
# strict device budget: it needs no ml-collections, tensorflow-datasets or tensorboardX
# (the GPU image's jax, flax, optax and orbax suffice), prints as it goes, and every part
# has its own timeout; the whole script stops by itself after ~7 minutes at most.
#
#   bash benchmarks/gpu_check.sh                      # from the repository root
#   OUT=/some/dir bash benchmarks/gpu_check.sh        # keeps the logs and JSON there
#
# The four workers (2 networks x 2 dtypes) compile concurrently (16 host cores), so the
# compile times printed are contended ones; the timed steps are then interleaved, one worker
# at a time (2 rounds x 10 steps each after 2 warm-up steps). "fp32" on the GPU means XLA's
# default precision (TF32 tensor cores for fp32 convolutions/matmuls on Hopper).
# Goal of the issue: >= 1,500 images/s in bf16 on an H100/H200 (score_sde: ~160 images/s
# per V100, 0.20 s per batch-128 step on 4 V100s).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sde_lab_gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
START=$(date +%s)
say() { echo "== [$(( $(date +%s) - START )) s] $*"; }

say "host: $(nproc) CPUs; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
timeout 60 "$PY" - <<'EOF' || say "python/jax check failed or timed out"
import jax, flax, optax
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "devices", jax.devices(), "default matmul precision", jax.config.jax_default_matmul_precision)
EOF

say "train step, batch 128, ddpmpp_cont + ncsnpp_cont, float32 + bfloat16 (4 workers)"
timeout 420 "$PY" benchmarks/train_step.py --sizes ddpmpp_cont,ncsnpp_cont --batch 128 \
    --dtypes float32,bfloat16 --remat off --steps 10 --repeats 2 --one-group \
    --parallel-start --timeout 330 --out "$OUT/train_step.json" 2>&1 | tee "$OUT/train_step.log"
status=${PIPESTATUS[0]}
[ "$status" -eq 124 ] && say "train_step.py hit its 420 s timeout (partial output above)"
[ "$status" -ne 0 ] && [ "$status" -ne 124 ] && say "train_step.py failed with status $status"

say "nvidia-smi after:"
nvidia-smi --query-gpu=memory.used,utilization.gpu,clocks.sm --format=csv 2>&1 | head -3
say "done; logs in $OUT"
