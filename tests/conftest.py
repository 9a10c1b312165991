"""Test-wide settings: silent broadcasting is a bug, and every test is offline on CPU."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests never touch the network: make any accidental TFDS download fail fast.
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), ".tfds_none"))

# Each test compiles afresh (the runner's default keeps a cache in ~/.cache; the cache's own
# tests and the sweep test set a directory of their own).
os.environ.setdefault("SDE_LAB_COMPILATION_CACHE", "none")

import jax  # noqa: E402

from sde_lab import parallel  # noqa: E402

# The runner's default CPU convolution kernels (XLA's own, not YNNPACK's), so that tests
# computing in this process round as main.py does, and its memory-optimized scheduler.
# Before any device is touched.
parallel.set_cpu_convolutions("xla")
parallel.set_cpu_scheduler("memory")

jax.config.update("jax_numpy_rank_promotion", "raise")
