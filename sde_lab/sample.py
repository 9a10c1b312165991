"""Drawing samples from an experiment's model, and `--mode sample`.

`make_generator` jits one sampling call (the configured sampler and guidance, or another
sampler spec) over a batch; `generate` draws any number in batches; `save_grid` writes a
PNG (a scatter over the data for vector data; one row per class for samples of all
classes). `run` is `--mode sample`: the newest checkpoint's EMA parameters,
`sample.num_samples` samples to `samples/samples_<step>.npz` (x, and y for labelled
samples) and a grid to `samples/samples_<step>.png`.

Labelled sampling (a class-conditional network, or classifier guidance): sample i of a
run gets class `sample.label`, or i mod K for label -1, so every class is drawn equally
often whatever the batch size (`GuidanceSpec.labels`).
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from sde_lab import parallel, state as state_lib

GRID_SIZE = 64
CLASS_GRID_COLUMNS = 10   # samples per class (row) in a grid of all classes


def make_generator(exp, batch_size: int, sampler=None, method: str | None = None):
    """A jitted gen(key, params, labels=None, classifier_params=None) -> (x [batch_size,
    ...], nfe) with `sampler` (a `SamplerSpec`, default the experiment's) and guidance
    `method` (default `sample.guidance`). labels: [batch_size] int, from `batch_labels`."""
    sample_fn = (sampler or exp.sampler).make()
    shape = (batch_size,) + exp.shape

    def gen(key, params, labels=None, classifier_params=None):
        # The first half of the split once drew random labels; kept, so that unconditional
        # samples are the same as before labels were given.
        _, key_s = jax.random.split(key)
        score_fn = exp.guided_score_fn(params, labels, classifier_params, method)
        x, stats = sample_fn(key_s, exp.sde_of(params), score_fn, shape)
        return x, stats["nfe"]

    return jax.jit(gen)


def batch_labels(exp, start: int, num: int, method: str | None = None) -> np.ndarray | None:
    """Labels of samples start..start+num-1 (None: unlabelled sampling)."""
    method = method or exp.guidance.method
    if exp.num_classes == 0 and method != "classifier":
        return None
    return exp.guidance.labels(start, num)


def generate(exp, params, key, num: int, batch_size: int, classifier_params=None,
             method: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """`num` samples in model space, float32 [num, ...], drawn batch by batch, and their
    labels [num] (None for unlabelled sampling)."""
    gen = make_generator(exp, batch_size, method=method)
    xs, ys = [], []
    for i in range(-(-num // batch_size)):
        y = batch_labels(exp, i * batch_size, batch_size, method)
        xs.append(np.asarray(gen(jax.random.fold_in(key, i), params, y, classifier_params)[0]))
        ys.append(y)
    labels = None if ys[0] is None else np.concatenate(ys)[:num]
    return np.concatenate(xs)[:num], labels


def to_images(exp, x: np.ndarray) -> np.ndarray:
    """Model-space samples -> uint8 images for PNGs."""
    return exp.data.scaler.to_uint8(x)


def _class_rows(images: np.ndarray, labels: np.ndarray, num_classes: int
                ) -> tuple[np.ndarray, int]:
    """Images arranged as row k = the first samples of class k (white where a class has
    fewer): ([num_classes * columns, H, W, C], columns)."""
    columns = min(CLASS_GRID_COLUMNS, max(int(np.sum(labels == k)) for k in range(num_classes)))
    blank = np.full(images.shape[1:], 255, np.uint8)
    cells = []
    for k in range(num_classes):
        row = list(images[labels == k][:columns])
        cells += row + [blank] * (columns - len(row))
    return np.stack(cells), columns


def save_grid(exp, x: np.ndarray, path: str, labels: np.ndarray | None = None) -> str:
    """Writes model-space samples as a PNG: with `labels` of every class, one row per class
    (row k: the first `CLASS_GRID_COLUMNS` samples of class k); otherwise the first 64 in
    a square grid (vector data: all of them as a scatter over the data density)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if exp.data.is_toy:
        from sde_lab import plots

        plots.scatter(path, x, exp.data.dataset[4:], exp.data.toy_dim)
        return path
    from sde_lab.data import save_png

    upscale = max(1, 64 // exp.shape[0])
    if labels is not None and exp.guidance.label < 0:
        images, columns = _class_rows(to_images(exp, x), labels, exp.guidance.num_classes)
        save_png(path, images, upscale=upscale, ncol=columns)
    else:
        save_png(path, to_images(exp, x[:GRID_SIZE]), upscale=upscale)
    return path


def grid_description(exp, n: int, labels: np.ndarray | None = None) -> str:
    """What `save_grid` draws of `n` samples, in words."""
    if exp.data.is_toy:
        return f"all {n} samples"
    if labels is not None and exp.guidance.label < 0:
        return f"up to {CLASS_GRID_COLUMNS} samples per class, one row per class"
    return f"the first {min(n, GRID_SIZE)} samples"


def write_grid(exp, params, path: str, key) -> str:
    """Samples `GRID_SIZE` examples and writes them with `save_grid` (during training: the
    configured guidance, except classifier guidance, whose classifier may not exist yet)."""
    method = "none" if exp.guidance.method == "classifier" else None
    n = GRID_SIZE
    if batch_labels(exp, 0, 1, method) is not None and exp.guidance.label < 0:
        n = CLASS_GRID_COLUMNS * exp.guidance.num_classes
    x, labels = generate(exp, params, key, n, n, method=method)
    return save_grid(exp, x, path, labels)


def restore_classifier(exp, workdir: str):
    """The classifier's EMA variables for classifier guidance (None without it)."""
    if exp.guidance.method != "classifier":
        return None, None
    return state_lib.restore_classifier(exp, exp.classifier.directory(workdir))


def run(exp, workdir: str) -> int:
    """--mode sample: `sample.num_samples` samples of the newest readable checkpoint."""
    params, step = state_lib.restore_params(exp, workdir)
    classifier_params, classifier_step = restore_classifier(exp, workdir)
    t0 = time.time()
    x, labels = generate(exp, params, exp.keys.sample(step), exp.sampler.num_samples,
                         exp.sampler.batch_size, classifier_params)
    if parallel.is_main_process():
        out = os.path.join(workdir, "samples")
        os.makedirs(out, exist_ok=True)
        npz = os.path.join(out, f"samples_{step}.npz")
        np.savez_compressed(npz, x=x, **({} if labels is None else {"y": labels}))
        png = save_grid(exp, x, os.path.join(out, f"samples_{step}.png"), labels)
        how = exp.sampler.name
        if labels is not None:
            how += ", " + ", ".join(f"{k} {v}" for k, v in exp.guidance.describe().items())
        if classifier_step is not None:
            how += f", classifier of step {classifier_step}"
        print(f"wrote {len(x)} samples of step {step} ({how}, {time.time() - t0:.1f} s):\n"
              f"  {npz}: all {len(x)}, model space, shape {list(x.shape)}"
              f"{'' if labels is None else ', labels y'}\n"
              f"  {png}: {grid_description(exp, len(x), labels)}", flush=True)
    return 0
