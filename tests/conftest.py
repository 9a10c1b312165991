"""Test-wide settings: silent broadcasting is a bug, and every test is offline on CPU."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests never touch the network: make any accidental TFDS download fail fast.
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), ".tfds_none"))

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
