"""Drawing samples from an experiment's model, and `--mode sample`.

`make_generator` jits one sampling call (the configured sampler, or another spec) over a
batch; `generate` draws any number in batches; `save_grid` writes a PNG (a scatter over
the data for vector data). `run` is `--mode sample`: the newest checkpoint's EMA
parameters, `sample.num_samples` samples to `samples/samples_<step>.npz` and a grid of the
first 64 to `samples/samples_<step>.png`.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from sde_lab import parallel, state as state_lib

GRID_SIZE = 64


def make_generator(exp, batch_size: int, sampler=None):
    """A jitted gen(key, params) -> (x [batch_size, ...], nfe) with `sampler` (a
    `SamplerSpec`, default the experiment's). Class-conditional models get uniformly drawn
    labels."""
    sample_fn = (sampler or exp.sampler).make()
    shape = (batch_size,) + exp.shape

    def gen(key, params):
        key_y, key_s = jax.random.split(key)
        labels = (jax.random.randint(key_y, (batch_size,), 0, exp.num_classes)
                  if exp.num_classes > 0 else None)
        x, stats = sample_fn(key_s, exp.sde_of(params), exp.score_fn(params, labels), shape)
        return x, stats["nfe"]

    return jax.jit(gen)


def generate(exp, params, key, num: int, batch_size: int) -> np.ndarray:
    """`num` samples in model space, float32 [num, ...], drawn batch by batch."""
    gen = make_generator(exp, batch_size)
    out = [np.asarray(gen(jax.random.fold_in(key, i), params)[0])
           for i in range(-(-num // batch_size))]
    return np.concatenate(out)[:num]


def to_images(exp, x: np.ndarray) -> np.ndarray:
    """Model-space samples -> uint8 images for PNGs."""
    return exp.data.scaler.to_uint8(x)


def save_grid(exp, x: np.ndarray, path: str) -> str:
    """Writes the first 64 model-space samples as a PNG grid (vector data: all of them as a
    scatter over the data density)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if exp.data.is_toy:
        from sde_lab import plots

        plots.scatter(path, x, exp.data.dataset[4:], exp.data.toy_dim)
    else:
        from sde_lab.data import save_png

        save_png(path, to_images(exp, x[:GRID_SIZE]), upscale=max(1, 64 // exp.shape[0]))
    return path


def grid_count(exp, n: int) -> int:
    """How many of `n` samples `save_grid` draws."""
    return n if exp.data.is_toy else min(n, GRID_SIZE)


def write_grid(exp, params, path: str, key) -> str:
    """Samples `GRID_SIZE` examples and writes them with `save_grid`."""
    return save_grid(exp, generate(exp, params, key, GRID_SIZE, GRID_SIZE), path)


def run(exp, workdir: str) -> int:
    """--mode sample: `sample.num_samples` samples of the newest readable checkpoint."""
    params, step = state_lib.restore_params(exp, workdir)
    t0 = time.time()
    x = generate(exp, params, exp.keys.sample(step), exp.sampler.num_samples,
                 exp.sampler.batch_size)
    if parallel.is_main_process():
        out = os.path.join(workdir, "samples")
        os.makedirs(out, exist_ok=True)
        npz = os.path.join(out, f"samples_{step}.npz")
        np.savez_compressed(npz, x=x)
        png = save_grid(exp, x, os.path.join(out, f"samples_{step}.png"))
        print(f"wrote {len(x)} samples of step {step} ({exp.sampler.name}, "
              f"{time.time() - t0:.1f} s):\n  {npz}: all {len(x)}, model space, "
              f"shape {list(x.shape)}\n  {png}: grid of the first "
              f"{grid_count(exp, len(x))}", flush=True)
    return 0
