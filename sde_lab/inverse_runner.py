"""--mode inpaint | colorize | sdedit | denoise | score: inverse problems and anomaly
scores on the eval split with the newest checkpoint's EMA parameters.

Each mode reads `inverse.num_examples` examples of `data.eval_split` (0: all), runs the
`sde_lab.inverse` / `sde_lab.anomaly` function jitted over batches of
`inverse.batch_size` with the configured sampler (`sample.sampler` and its section), and
writes to `<workdir>/inverse/<mode>_<step>_<tag>.{npz,png,json}`, the tag naming the
mode's main option and the sampler (`half_replacement_pc1000`, `noise0.1_ancestral50`,
`t0.5_dpm_solver_pp50`, ...; arrays in model space;
the grid shows the first 16 examples, one per row; the JSON holds the metrics and the
whole spec, sampler included):

| mode     | columns of the grid                                   | metrics                      |
|----------|-------------------------------------------------------|------------------------------|
| inpaint  | mask (white = observed), observation (hidden pixels   | MSE on hidden pixels; digits |
|          | at the data minimum), result, truth                   | classifier accuracy          |
| colorize | observation (grey = channel mean), result, truth      | MSE, constraint error        |
| sdedit   | input (the guide: the eval image, also the truth),    | MSE to the guide; accuracy   |
|          | result                                                |                              |
| denoise  | noisy input, Tweedie mean, one posterior sample,      | PSNR (data range [0, 1])     |
|          | posterior mean, Gaussian filter, truth                |                              |

`denoise` adds N(0, inverse.noise_std^2) noise in DATA units (images in [0, 1]; the model
sees noise_std * data scale, 2 for centred data) and compares Tweedie's posterior mean,
the mean of `inverse.num_posterior_samples` posterior samples, and classical filters
(Gaussian, median) whose width / footprint is tuned on 500 train images at the same noise
level. Estimates are clipped to the data range [0, 1] before the PSNR; the noisy input is
not.

`score` writes `<workdir>/scores/scores_<step>.{npz,csv}` (one score per example and
method, higher = more anomalous, with its label) and `auroc_<step>.json`: the AUROC of
each method for the examples whose label is in `inverse.anomaly_classes` (default
`data.exclude_classes`, the classes held out of training) against the rest, and each
method's mean score per label. Methods: `anomaly.scores`' bpd (options eval.bpd_*),
reconstruction (SDEdit at inverse.reconstruction_t0s with the configured sampler),
score_norm, and score_norm_gmm: Mahmood et al. (2021)'s detector, a Gaussian mixture
fitted to the log per-level score norms of the train split (as trained, without
data.exclude_classes), its negative log-density as the score.

`check(exp, mode)` runs in `run.prepare` before anything compiles: bad input is one line.

    python -m sde_lab.inverse_runner collect ROOT   # AUROC table of a sweep's score runs
"""

from __future__ import annotations

import csv
import functools
import glob
import json
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from sde_lab import anomaly, inverse, parallel, state as state_lib
from sde_lab import workdir as workdir_lib
from sde_lab.data import TOY_EVAL_SIZE
from sde_lab.experiment import ConfigError
from sde_lab.progress import Progress
from sde_lab.registry import section_name

GRID_ROWS = 16
TUNE_EXAMPLES = 500          # train images the classical filters are tuned on
GAUSSIAN_SIGMAS = tuple(np.round(np.arange(0.25, 3.01, 0.125), 3))
# Median footprints: squares, and the 3x3 cross (keeps one-pixel strokes that squares erase).
MEDIAN_FOOTPRINTS = {"2x2": np.ones((2, 2)), "3x3": np.ones((3, 3)), "5x5": np.ones((5, 5)),
                     "cross3": np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])}


# ----------------------------------------------------------------------------- checks

def _num_examples(exp) -> int:
    d, n = exp.data, exp.inverse.num_examples
    if d.is_toy:
        return n or TOY_EVAL_SIZE
    total = len(d.make(d.eval_split, train=False, seed=exp.seed))
    return min(n, total) if n else total


def load_mask_file(path: str, shape: tuple[int, ...], num: int) -> np.ndarray:
    """The 0/1 mask of `inverse.mask_file` as float32 of shape [num, *shape].

    Accepted shapes: one example's `shape`, an image's [H, W] (all channels alike), or one
    mask per example [num, *shape]. Raises ConfigError (one line) otherwise.
    """
    field = f"inverse.mask_file={path!r}"
    if not os.path.isfile(path):
        raise ConfigError(f"{field}: no such file")
    try:
        mask = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 (numpy raises several types for a bad file)
        raise ConfigError(f"{field}: not a .npy array ({type(e).__name__})") from None
    if not isinstance(mask, np.ndarray):
        raise ConfigError(f"{field}: holds several arrays; save one array with np.save")
    allowed = [tuple(shape), (num, *shape)] + ([tuple(shape[:-1])] if len(shape) == 3 else [])
    if mask.shape not in allowed:
        raise ConfigError(f"{field}: shape {mask.shape} is not one of {allowed} (one example, "
                          "one image [H, W], or one mask per example)")
    if mask.dtype.kind not in "biuf" or not np.all((mask == 0) | (mask == 1)):
        bad = np.unique(mask[(mask != 0) & (mask != 1)])[:3] if mask.dtype.kind in "biuf" \
            else mask.dtype
        raise ConfigError(f"{field}: values must be 0 or 1 (1 = observed), found {bad}")
    if len(shape) == 3 and mask.shape == tuple(shape[:-1]):
        mask = mask[..., None]
    return np.broadcast_to(mask.astype(np.float32), (num, *shape)).copy()


def make_masks(exp, num: int) -> np.ndarray:
    """[num, *shape] float32 masks of `inverse.mask` (1 = observed): `half` hides the lower
    half of an image (the second half of a vector), `center` the central square of half the
    side (the middle half of a vector), `random` a fraction `inverse.mask_fraction` of the
    pixels of each example (all channels of a pixel alike), drawn from the seed."""
    v, shape = exp.inverse, exp.shape
    if v.mask_file:
        return load_mask_file(v.mask_file, shape, num)
    spatial = shape[:2] if len(shape) == 3 else shape
    mask = np.ones(spatial, np.float32)
    if v.mask == "half":
        mask[spatial[0] // 2:] = 0
    elif v.mask == "center":
        lo = [s // 4 for s in spatial]
        mask[tuple(slice(a, a + s // 2) for a, s in zip(lo, spatial))] = 0
    masks = np.broadcast_to(mask, (num, *spatial)).copy()
    if v.mask == "random":
        rng = np.random.default_rng([exp.seed, 7])
        size = int(np.prod(spatial))
        hidden = max(1, min(size - 1, int(round(v.mask_fraction * size))))
        flat = np.ones((num, size), np.float32)
        for i in range(num):
            flat[i, rng.permutation(size)[:hidden]] = 0
        masks = flat.reshape((num, *spatial))
    if len(shape) == 3:
        masks = np.broadcast_to(masks[..., None], (num, *shape)).copy()
    return masks


def _check_projection(exp) -> None:
    if exp.inverse.method != "replacement":
        return
    try:
        exp.sampler.make(project_fn=lambda x, t, key: x)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"inverse.method='replacement' needs a fixed-step sampler (it "
                          f"projects after every step); sample.sampler={exp.sampler.name!r} "
                          f"cannot: {' '.join(str(e).split())}") from None


def noise_model_units(exp) -> float:
    """inverse.noise_std (data units) in the model's input units."""
    return exp.inverse.noise_std * (1.0 if exp.data.is_toy else exp.data.scaler.scale)


def _check_noise_level(exp) -> None:
    """The model-unit noise level is one the SDE has (sigma/alpha between t = 0 and T)."""
    if getattr(exp.sde, "learned", False):  # its schedule needs the trained parameters
        return
    s = noise_model_units(exp)
    with jax.ensure_compile_time_eval():
        lo, hi = (float(std / mean_coeff) for mean_coeff, std in
                  (exp.sde.marginal(jnp.asarray(t, jnp.float32)) for t in (0.0, exp.sde.T)))
    if not lo * (1 - 1e-6) <= s <= hi:
        raise ConfigError(f"inverse.noise_std={exp.inverse.noise_std} ({s:.4g} in model units) "
                          f"is outside the SDE's noise levels [{lo:.4g}, {hi:.4g}]")


def check(exp, mode: str) -> None:
    """Everything a mode needs that can be checked before compiling; ConfigError if not."""
    if exp.num_classes > 0:
        raise ConfigError(f"--mode {mode} needs an unconditional model; model.num_classes="
                          f"{exp.num_classes}")
    d, v = exp.data, exp.inverse
    num = _num_examples(exp)
    if mode == "inpaint":
        if v.mask_file:
            load_mask_file(v.mask_file, exp.shape, num)
        _check_projection(exp)
    elif mode == "colorize":
        if d.is_toy or d.num_channels < 2:
            raise ConfigError(f"--mode colorize needs colour images; {d.dataset} has "
                              f"{'vectors' if d.is_toy else f'{d.num_channels} channel'}")
        _check_projection(exp)
    elif mode == "denoise":
        _check_noise_level(exp)
        if v.num_posterior_samples > 0 and exp.sampler.name not in inverse.POSTERIOR_SAMPLERS:
            raise ConfigError(
                f"inverse.num_posterior_samples={v.num_posterior_samples} needs a reverse-SDE "
                f"sampler, not sample.sampler={exp.sampler.name!r}: choose from "
                f"{list(inverse.POSTERIOR_SAMPLERS)}, or set inverse.num_posterior_samples=0")
    elif mode == "score" and "score_norm_gmm" in v.score_methods:
        d.make(d.train_split, train=False, seed=exp.seed)


# ----------------------------------------------------------------------------- helpers

def _examples(exp) -> tuple[np.ndarray, np.ndarray]:
    d = exp.data
    return d.make(d.eval_split, train=False, seed=exp.seed).examples(exp.inverse.num_examples)


def _sampler(exp) -> tuple[str, dict]:
    return exp.sampler.name, {k: v for k, v in exp.sampler.options if v is not None}


def _map_batches(fn, key, arrays: list[np.ndarray], batch_size: int, what: str):
    """Applies jitted fn(key_i, *batch) -> tuple over batches (the last padded by repeating
    its final example, so every call has one compiled shape); concatenates the outputs."""
    n = len(arrays[0])
    batch_size = min(batch_size, n)
    num_batches = -(-n // batch_size)
    progress = Progress(what, num_batches, parallel.is_main_process())
    outs = []
    for i in range(num_batches):
        part = [a[i * batch_size:(i + 1) * batch_size] for a in arrays]
        m = len(part[0])
        part = [np.concatenate([a, np.repeat(a[-1:], batch_size - m, 0)]) for a in part]
        out = fn(jax.random.fold_in(key, i), *part)
        outs.append([np.asarray(o)[:m] for o in out])
        progress.advance()
    return [np.concatenate(col) for col in zip(*outs)]


def _to_unit(exp, x: np.ndarray) -> np.ndarray:
    """Model space -> data units ([0, 1] for images; vectors as they are)."""
    if exp.data.is_toy:
        return np.asarray(x, np.float64)
    x = np.asarray(x, np.float64)
    return (x + 1.0) / 2.0 if exp.data.centered else x


def _unit_to_model(exp, y: np.ndarray) -> np.ndarray:
    if exp.data.is_toy or not exp.data.centered:
        return np.asarray(y, np.float32)
    return (2.0 * np.asarray(y) - 1.0).astype(np.float32)


def psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Mean over examples of 10 log10(1 / MSE), data range [0, 1]."""
    axes = tuple(range(1, truth.ndim))
    mse = np.mean((estimate - truth) ** 2, axis=axes)
    return float(np.mean(10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))))


def _digits_accuracy(exp, named: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    """Accuracy of the shipped digits classifier on model-space images, if it applies."""
    if exp.eval.feature_extractor != "digits" or exp.shape != (8, 8, 1):
        return {}
    from sde_lab import metrics

    net = metrics.make_extractor("digits")
    out = {}
    for name, x in named.items():
        logits = net.logits(exp.data.scaler.to_uint8(x), 100)
        out[f"accuracy_{name}"] = float(np.mean(np.argmax(logits, -1) == labels))
    return out


def tag(exp, mode: str) -> str:
    """The part of an output's name that tells runs of one mode apart: the mode's main
    option and the sampler with its step count (`half_replacement_pc250`), so comparing
    samplers on one checkpoint never overwrites an earlier result."""
    v = exp.inverse
    mask = "file" if v.mask_file else (f"random{v.mask_fraction:g}" if v.mask == "random"
                                       else v.mask)
    main = {"inpaint": f"{mask}_{v.method}", "colorize": v.method, "sdedit": f"t0{v.t0:g}",
            "denoise": f"noise{v.noise_std:g}"}[mode]
    steps = dict(exp.sampler.options).get("num_steps")
    return f"{main}_{section_name(exp.sampler.name)}{steps if steps is not None else ''}"


def _write(exp, workdir: str, mode: str, step: int, arrays: dict, columns: list[np.ndarray],
           result: dict) -> None:
    """<workdir>/inverse/<mode>_<step>_<tag>.{npz,png,json}; prints where they went."""
    if not parallel.is_main_process():
        return
    out = os.path.join(workdir, "inverse")
    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, f"{mode}_{step}_{tag(exp, mode)}")
    np.savez_compressed(base + ".npz", **arrays)
    written = [base + ".npz"]
    if not exp.data.is_toy:
        _grid(base + ".png", columns)
        written.append(base + ".png")
    workdir_lib.write_json(base + ".json", result)
    written.append(base + ".json")
    summary = ", ".join(f"{k}={v:.4g}" for k, v in result.items()
                        if isinstance(v, float) and k != "seconds")
    print(f"{mode} of step {step} ({result['num_examples']} examples, "
          f"{result['seconds']:.0f} s): {summary}\n  wrote " + ", ".join(written), flush=True)


def _grid(path: str, columns: list[np.ndarray]) -> None:
    """One example per row, `columns` (uint8 [N, H, W, C] each) side by side."""
    from PIL import Image

    from sde_lab.data import image_grid

    images = np.stack([c[:GRID_ROWS] for c in columns], 1)
    rows, cols = images.shape[:2]
    grid = image_grid(images.reshape((rows * cols,) + images.shape[2:]), ncol=cols)
    upscale = max(1, 64 // images.shape[2])
    grid = grid.repeat(upscale, 0).repeat(upscale, 1)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


def _images(exp, x: np.ndarray) -> np.ndarray:
    return exp.data.scaler.to_uint8(x)


def _mask_image(mask: np.ndarray) -> np.ndarray:
    return (np.asarray(mask) * 255).astype(np.uint8)


def _spec(exp, mode: str, **extra) -> dict:
    v = exp.inverse
    return {"mode": mode, **exp.sampler.describe(), "num_examples": v.num_examples,
            "batch_size": v.batch_size, "seed": exp.seed, **extra}


class Diverged(Exception):
    """A mode's result is not finite (a sampler or guidance that blew up)."""


def _require_finite(exp, mode: str, **arrays) -> None:
    """Raises Diverged naming how many examples are not finite, so no metric is computed
    from NaNs (they would print as plausible accuracies of the clipped images)."""
    for name, a in arrays.items():
        a = np.asarray(a)
        bad = ~np.isfinite(a.reshape(len(a), -1)).all(1) if a.ndim > 1 else ~np.isfinite(a)
        if bad.any():
            hint = (" (reconstruction guidance blows up where alpha(t) is small: try a "
                    "larger inverse.guidance_min_alpha, a smaller inverse.guidance_scale or "
                    "inverse.method=replacement)" if mode in ("inpaint", "colorize")
                    and exp.inverse.method == "guidance" else "")
            raise Diverged(f"{mode}: {int(bad.sum())} of {len(a)} {name} are not finite with "
                           f"sample.sampler={exp.sampler.name!r}{hint}; nothing was written")


def _one_line_on_divergence(run_mode):
    """Diverged -> one `error:` line and exit code 1 (the checkpoint is untouched)."""
    @functools.wraps(run_mode)
    def wrapped(exp, workdir: str) -> int:
        try:
            return run_mode(exp, workdir)
        except Diverged as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 1
    return wrapped


# ----------------------------------------------------------------------------- modes

def _start(exp, workdir: str, mode: str):
    params, step = state_lib.restore_params(exp, workdir)
    x, labels = _examples(exp)
    print(f"{mode} of step {step}: {len(x)} {exp.data.eval_split} examples "
          f"({exp.sampler.name})", flush=True)
    return params, step, x, labels, exp.keys.inverse(step, mode), time.time()


@_one_line_on_divergence
def run_inpaint(exp, workdir: str) -> int:
    v = exp.inverse
    params, step, x, labels, key, t0 = _start(exp, workdir, "inpaint")
    masks = make_masks(exp, len(x))
    name, opts = _sampler(exp)

    @jax.jit
    def fn(key, params, x, mask):
        x_hat, _ = inverse.inpaint(key, exp.sde_of(params), exp.score_fn(params), x * mask,
                                   mask, method=v.method, sampler=name, sampler_options=opts,
                                   guidance_scale=v.guidance_scale, data_var=v.data_var,
                                   guidance_min_alpha=v.guidance_min_alpha)
        return (x_hat,)

    (x_hat,) = _map_batches(lambda k, a, m: fn(k, params, a, m), key, [x, masks],
                            v.batch_size, "inpaint batch")
    _require_finite(exp, "inpaint", results=x_hat)
    low = -1.0 if exp.data.centered and not exp.data.is_toy else 0.0
    masked = np.where(masks == 1, x, low).astype(np.float32)
    hidden = masks == 0
    err = (_to_unit(exp, x_hat) - _to_unit(exp, x)) ** 2
    result = {"step": step, "num_examples": len(x), "seconds": round(time.time() - t0, 1),
              "mse_hidden": float(err[hidden].mean()) if hidden.any() else 0.0,
              "observed_kept_exactly": bool(np.array_equal(x_hat[~hidden], x[~hidden]))}
    result.update(_digits_accuracy(exp, {"result": x_hat, "masked_input": masked,
                                         "truth": x}, labels))
    result["spec"] = _spec(exp, "inpaint", mask=v.mask_file or v.mask,
                           mask_fraction=v.mask_fraction, method=v.method,
                           guidance_scale=v.guidance_scale, data_var=v.data_var,
                           guidance_min_alpha=v.guidance_min_alpha)
    columns = [] if exp.data.is_toy else [_mask_image(masks), _images(exp, masked),
                                          _images(exp, x_hat), _images(exp, x)]
    _write(exp, workdir, "inpaint", step, {"x": x_hat, "observation": masked, "mask": masks,
                                           "truth": x, "label": labels}, columns, result)
    return 0


@_one_line_on_divergence
def run_colorize(exp, workdir: str) -> int:
    v = exp.inverse
    params, step, x, labels, key, t0 = _start(exp, workdir, "colorize")
    gray = np.broadcast_to(x.mean(-1, keepdims=True), x.shape).astype(np.float32)
    name, opts = _sampler(exp)

    @jax.jit
    def fn(key, params, gray):
        x_hat, _ = inverse.colorize(key, exp.sde_of(params), exp.score_fn(params), gray,
                                    method=v.method, sampler=name, sampler_options=opts,
                                    guidance_scale=v.guidance_scale, data_var=v.data_var,
                                    guidance_min_alpha=v.guidance_min_alpha)
        return (x_hat,)

    (x_hat,) = _map_batches(lambda k, g: fn(k, params, g), key, [gray], v.batch_size,
                            "colorize batch")
    _require_finite(exp, "colorize", results=x_hat)
    result = {"step": step, "num_examples": len(x), "seconds": round(time.time() - t0, 1),
              "mse": float(np.mean((_to_unit(exp, x_hat) - _to_unit(exp, x)) ** 2)),
              "gray_max_abs_error": float(np.max(np.abs(x_hat.mean(-1) - gray[..., 0])))}
    result["spec"] = _spec(exp, "colorize", method=v.method, guidance_scale=v.guidance_scale,
                           data_var=v.data_var, guidance_min_alpha=v.guidance_min_alpha)
    columns = [_images(exp, gray), _images(exp, x_hat), _images(exp, x)]
    _write(exp, workdir, "colorize", step, {"x": x_hat, "observation": gray, "truth": x,
                                            "label": labels}, columns, result)
    return 0


@_one_line_on_divergence
def run_sdedit(exp, workdir: str) -> int:
    v = exp.inverse
    params, step, x, labels, key, t0 = _start(exp, workdir, "sdedit")
    name, opts = _sampler(exp)

    @jax.jit
    def fn(key, params, x):
        x_hat, _ = inverse.sdedit(key, exp.sde_of(params), exp.score_fn(params), x, v.t0,
                                  sampler=name, sampler_options=opts)
        return (x_hat,)

    (x_hat,) = _map_batches(lambda k, a: fn(k, params, a), key, [x], v.batch_size,
                            "sdedit batch")
    _require_finite(exp, "sdedit", results=x_hat)
    result = {"step": step, "num_examples": len(x), "seconds": round(time.time() - t0, 1),
              "mse_to_guide": float(np.mean((_to_unit(exp, x_hat) - _to_unit(exp, x)) ** 2))}
    result.update(_digits_accuracy(exp, {"result": x_hat, "guide": x}, labels))
    result["spec"] = _spec(exp, "sdedit", t0=v.t0)
    columns = [] if exp.data.is_toy else [_images(exp, x), _images(exp, x_hat)]
    _write(exp, workdir, "sdedit", step, {"x": x_hat, "guide": x, "label": labels}, columns,
           result)
    return 0


def _classical(exp, noise_std: float) -> dict[str, tuple]:
    """Gaussian and median filters (data units), each tuned on TUNE_EXAMPLES train images
    with the same noise level: name -> (filter(noisy [N, H, W, C]) -> estimate, parameter)."""
    from scipy import ndimage

    d = exp.data
    clean, _ = d.make(d.train_split, train=False, seed=exp.seed).examples(TUNE_EXAMPLES)
    clean = _to_unit(exp, clean)
    noisy = clean + noise_std * np.random.default_rng([exp.seed, 11]).standard_normal(
        clean.shape)

    def gaussian(s):
        return lambda y: np.clip(ndimage.gaussian_filter(y, (0, s, s, 0), mode="nearest"), 0, 1)

    def median(name):
        footprint = MEDIAN_FOOTPRINTS[name][None, :, :, None]
        return lambda y: ndimage.median_filter(np.clip(y, 0, 1), footprint=footprint,
                                               mode="nearest")

    out = {}
    for name, make, grid in (("gaussian", gaussian, GAUSSIAN_SIGMAS),
                             ("median", median, tuple(MEDIAN_FOOTPRINTS))):
        best = max(grid, key=lambda p: psnr(make(p)(noisy), clean))
        out[name] = (make(best), best if isinstance(best, str) else float(best))
    return out


@_one_line_on_divergence
def run_denoise(exp, workdir: str) -> int:
    v = exp.inverse
    params, step, x, labels, key, t0 = _start(exp, workdir, "denoise")
    s = noise_model_units(exp)
    k = v.num_posterior_samples
    name, opts = _sampler(exp)

    @jax.jit
    def fn(key, params, x):
        sde, score_fn = exp.sde_of(params), exp.score_fn(params)
        key_noise, key_post = jax.random.split(key)
        y = x + s * jax.random.normal(key_noise, x.shape, x.dtype)
        tweedie = inverse.denoise(sde, score_fn, y, s)
        if k == 0:
            return y, tweedie, jnp.zeros((x.shape[0], 0) + x.shape[1:], x.dtype)
        post, _ = inverse.posterior_sample(key_post, sde, score_fn, jnp.repeat(y, k, 0), s,
                                           sampler=name, sampler_options=opts)
        return y, tweedie, post.reshape((x.shape[0], k) + x.shape[1:])

    y, tweedie, post = _map_batches(lambda kk, a: fn(kk, params, a), key, [x],
                                    v.batch_size, "denoise batch")
    _require_finite(exp, "denoise", tweedie_estimates=tweedie, posterior_samples=post)
    truth = _to_unit(exp, x)
    clip = (lambda u: u) if exp.data.is_toy else (lambda u: np.clip(u, 0.0, 1.0))
    estimates = {"noisy": _to_unit(exp, y), "tweedie": clip(_to_unit(exp, tweedie))}
    if not exp.data.is_toy:
        estimates["noisy_clipped"] = clip(estimates["noisy"])   # the simplest estimate
    if k:
        estimates["posterior_sample"] = clip(_to_unit(exp, post[:, 0]))
        estimates["posterior_mean"] = clip(_to_unit(exp, post.mean(1)))
    params_used = {}
    if not exp.data.is_toy and len(exp.shape) == 3:
        for fname, (filt, p) in _classical(exp, v.noise_std).items():
            estimates[fname] = filt(estimates["noisy"])
            params_used[fname] = p
    result = {"step": step, "num_examples": len(x), "seconds": round(time.time() - t0, 1),
              "noise_std": v.noise_std, "noise_std_model_units": s}
    for ename, e in estimates.items():
        result[f"mse_{ename}"] = float(np.mean((e - truth) ** 2))
        if not exp.data.is_toy:
            result[f"psnr_{ename}"] = psnr(e, truth)
    result["classical_parameters"] = {"gaussian_sigma": params_used.get("gaussian"),
                                      "median_footprint": params_used.get("median")}
    result["spec"] = _spec(exp, "denoise", noise_std=v.noise_std, num_posterior_samples=k)
    arrays = {"noisy": y, "tweedie": tweedie, "posterior_samples": post, "truth": x,
              "label": labels}
    arrays.update({f: _unit_to_model(exp, estimates[f]) for f in params_used})
    columns = []
    if not exp.data.is_toy:
        shown = ["noisy", "tweedie", "posterior_sample", "posterior_mean", "gaussian"]
        columns = [_images(exp, _unit_to_model(exp, np.clip(estimates[c], 0, 1)))
                   for c in shown if c in estimates] + [_images(exp, x)]
    _write(exp, workdir, "denoise", step, arrays, columns, result)
    return 0


# ----------------------------------------------------------------------------- scores

def _msma(exp, params, x: np.ndarray, key) -> np.ndarray:
    """Mahmood et al. (2021): -log density of a Gaussian mixture fitted to the log per-level
    score norms of the train split (as trained), evaluated on x's."""
    from sklearn.mixture import GaussianMixture

    v, d = exp.inverse, exp.data
    with jax.ensure_compile_time_eval():
        ts = [float(t) for t in anomaly.score_norm_times(exp.sde_of(params),
                                                         v.score_norm_levels)]

    @jax.jit
    def feats(key, params, x):
        del key
        return (anomaly.score_norms(exp.sde_of(params), exp.score_fn(params), x, ts),)

    train_x, _ = d.make(d.train_split, train=False, seed=exp.seed).examples()
    f_train, = _map_batches(lambda k, a: feats(k, params, a), key, [train_x], v.batch_size,
                            "score_norm_gmm: train features batch")
    f_eval, = _map_batches(lambda k, a: feats(k, params, a), key, [x], v.batch_size,
                           "score_norm_gmm: eval features batch")
    gmm = GaussianMixture(v.gmm_components, covariance_type="full", reg_covar=1e-4,
                          random_state=exp.seed).fit(np.log(f_train))
    return -gmm.score_samples(np.log(f_eval))


def _method_scores(exp, params, x: np.ndarray, method: str, key) -> np.ndarray:
    v, e = exp.inverse, exp.eval
    if method == "score_norm_gmm":
        return _msma(exp, params, x, key)
    name, opts = _sampler(exp)
    options = {"bpd": dict(likelihood_options=dict(
        estimator=e.bpd_estimator, rtol=e.bpd_rtol, atol=e.bpd_atol, t_min=e.bpd_t_min)),
        "reconstruction": dict(t0s=v.reconstruction_t0s, sampler=name, sampler_options=opts),
        "score_norm": dict(num_levels=v.score_norm_levels)}[method]

    @jax.jit
    def fn(key, params, x):
        return (anomaly.scores(key, exp.sde_of(params), exp.score_fn(params), x, method,
                               **options),)

    return _map_batches(lambda k, a: fn(k, params, a), key, [x], v.batch_size,
                        f"score ({method}) batch")[0]


@_one_line_on_divergence
def run_score(exp, workdir: str) -> int:
    v = exp.inverse
    params, step, x, labels, key, t0 = _start(exp, workdir, "score")
    anomalous = np.isin(labels, v.anomaly_classes)
    scores, seconds = {}, {}
    for i, method in enumerate(v.score_methods):
        t = time.time()
        scores[method] = np.asarray(_method_scores(exp, params, x, method,
                                                   jax.random.fold_in(key, i)), np.float64)
        _require_finite(exp, "score", **{f"{method} scores": scores[method]})
        seconds[method] = round(time.time() - t, 1)
    toy = exp.data.make(exp.data.eval_split, train=False, seed=exp.seed).toy
    if hasattr(toy, "inlier_logpdf"):  # the exact density's score, for reference
        scores["oracle_nll"] = -toy.inlier_logpdf(x)
    result = {"step": step, "num_examples": len(x), "anomaly_classes": list(v.anomaly_classes),
              "num_anomalous": int(anomalous.sum()), "seconds": seconds}
    if anomalous.any() and (~anomalous).any():
        result["auroc"] = {m: float(anomaly.auroc(s[~anomalous], s[anomalous]))
                           for m, s in scores.items()}
    result["mean_by_label"] = {m: {str(c): float(s[labels == c].mean())
                                   for c in np.unique(labels)} for m, s in scores.items()}
    result["spec"] = _spec(exp, "score", methods=list(v.score_methods),
                           reconstruction_t0s=list(v.reconstruction_t0s),
                           score_norm_levels=v.score_norm_levels,
                           gmm_components=v.gmm_components,
                           bpd=[e for e in (exp.eval.bpd_estimator, exp.eval.bpd_rtol,
                                            exp.eval.bpd_atol, exp.eval.bpd_t_min)])
    if parallel.is_main_process():
        _write_scores(workdir, step, scores, labels, anomalous, result, time.time() - t0)
    return 0


def _write_scores(workdir, step, scores, labels, anomalous, result, seconds) -> None:
    out = os.path.join(workdir, "scores")
    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, f"scores_{step}")
    np.savez_compressed(base + ".npz", label=labels, anomalous=anomalous, **scores)
    with open(base + ".csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "anomalous", *scores])
        for i in range(len(labels)):
            writer.writerow([i, int(labels[i]), int(anomalous[i]),
                             *(f"{s[i]:.6g}" for s in scores.values())])
    path = os.path.join(out, f"auroc_{step}.json")
    workdir_lib.write_json(path, result)
    auroc = result.get("auroc")
    summary = ("AUROC " + ", ".join(f"{m}={a:.3f}" for m, a in auroc.items()) if auroc else
               "no AUROC (inverse.anomaly_classes marks none of the examples, or all)")
    print(f"scores of step {step} ({len(labels)} examples, {result['num_anomalous']} "
          f"anomalous, {seconds:.0f} s): {summary}\n  wrote {base}.npz, {base}.csv, "
          f"{path}", flush=True)


# ----------------------------------------------------------------------------- collect

def collect(root: str) -> str:
    """Markdown table of the newest `scores/auroc_<step>.json` of each run under `root`."""
    rows, methods = [], []
    for run in sorted(glob.glob(os.path.join(root, "*", "scores"))):
        files = glob.glob(os.path.join(run, "auroc_*.json"))
        if not files:
            continue
        newest = max(files, key=lambda p: int(re.findall(r"(\d+)\.json$", p)[0]))
        with open(newest) as f:
            res = json.load(f)
        if "auroc" not in res:
            continue
        methods += [m for m in res["auroc"] if m not in methods]
        rows.append((os.path.basename(os.path.dirname(run)), res))
    if not rows:
        return f"no scores/auroc_<step>.json with an AUROC under {root}"
    lines = ["| run | anomalous | " + " | ".join(methods) + " |",
             "|---|---:|" + "---:|" * len(methods)]
    for name, res in rows:
        lines.append(f"| {name} | {res['num_anomalous']} of {res['num_examples']} | " +
                     " | ".join(f"{res['auroc'].get(m, float('nan')):.3f}" for m in methods) +
                     " |")
    means = [np.mean([r["auroc"][m] for _, r in rows if m in r["auroc"]]) for m in methods]
    lines.append(f"| mean of {len(rows)} | | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "collect":
        print("usage: python -m sde_lab.inverse_runner collect ROOT", file=sys.stderr)
        return 2
    print(collect(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
