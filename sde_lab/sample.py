"""--mode sample: load a checkpoint's EMA parameters and write samples (.npz and PNG)."""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from sde_lab import parallel


def make_generator(exp, batch_size: int, **sampler_overrides):
    """A jitted gen(key, params) -> (x [batch_size, ...], nfe) with the configured sampler.
    Class-conditional models get uniformly drawn labels."""
    sample_fn = exp.sampler(**sampler_overrides)
    shape = (batch_size,) + exp.shape
    num_classes = exp.config.model.num_classes

    def gen(key, params):
        key_y, key_s = jax.random.split(key)
        labels = (jax.random.randint(key_y, (batch_size,), 0, num_classes)
                  if num_classes > 0 else None)
        x, stats = sample_fn(key_s, exp.sde_fn(params), exp.score_fn(params, labels), shape)
        return x, stats["nfe"]

    return jax.jit(gen)


def generate(exp, params, key, num: int, batch_size: int, **sampler_overrides) -> np.ndarray:
    """`num` samples in model space, float32 [num, ...], drawn batch by batch."""
    gen = make_generator(exp, batch_size, **sampler_overrides)
    out = [np.asarray(gen(jax.random.fold_in(key, i), params)[0])
           for i in range(-(-num // batch_size))]
    return np.concatenate(out)[:num]


def to_images(exp, x: np.ndarray) -> np.ndarray:
    """Model-space samples -> uint8 images for PNGs."""
    from sde_lab.data import Scaler

    return Scaler(exp.config.data.num_levels, exp.config.data.centered).to_uint8(x)


def save_grid(exp, x: np.ndarray, path: str) -> str:
    """Writes model-space samples as a PNG grid (vector data: a scatter over the data)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if len(exp.shape) == 1:
        from sde_lab import plots

        plots.scatter(path, x, exp.config)
    else:
        from sde_lab.data import save_png

        save_png(path, to_images(exp, x[:64]), upscale=max(1, 64 // exp.shape[0]))
    return path


def write_grid(exp, params, path: str, key, num: int = 64) -> str:
    """Samples `num` examples and writes them with `save_grid`."""
    return save_grid(exp, generate(exp, params, key, num, num), path)


def run(exp, workdir: str) -> int:
    """Writes config.sample.num_samples samples of the latest checkpoint."""
    from sde_lab import train

    cfg = exp.config.sample
    params, step = train.restore_params(exp, workdir)
    t0 = time.time()
    key = jax.random.fold_in(jax.random.PRNGKey(exp.config.seed), 10**6 + step)
    x = generate(exp, params, key, cfg.num_samples, cfg.batch_size)
    if parallel.is_main_process():
        out = os.path.join(workdir, "samples")
        os.makedirs(out, exist_ok=True)
        npz = os.path.join(out, f"samples_{step}.npz")
        np.savez_compressed(npz, x=x)
        png = save_grid(exp, x, os.path.join(out, f"samples_{step}.png"))
        print(f"wrote {len(x)} samples of step {step} to {npz} and {png} "
              f"({time.time() - t0:.1f} s)", flush=True)
    return 0
