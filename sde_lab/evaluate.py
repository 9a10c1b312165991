"""--mode eval: sample quality (FID/KID/IS) and bits/dim of checkpoints.

For each checkpoint (the ones named in `eval.checkpoints`, else each one as it appears)
the EMA parameters are evaluated and `workdir/eval/<step>.json` is written atomically.
Samples are drawn in numbered batches with keys fold_in(eval_key(step), i) and each batch
is saved to `eval/<step>/samples_<i>.npz` as soon as it exists, so a killed eval resumes
at the first missing batch: no sample is lost or drawn twice.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from sde_lab import parallel


def _steps_to_evaluate(exp, workdir: str, steps) -> list[int]:
    from sde_lab import checkpointing

    if steps is None and exp.config.eval.checkpoints:
        steps = [int(s) for s in exp.config.eval.checkpoints.split(",")]
    if steps is not None:
        return list(steps)
    ckpt = checkpointing.Checkpointer(workdir, max_to_keep=None)
    try:
        return ckpt.steps()
    finally:
        ckpt.close()


def run(exp, workdir: str, steps=None) -> int:
    """Evaluates checkpoints; with `eval.wait_seconds` > 0 keeps polling for new ones."""
    done: set[int] = set()
    deadline = time.time() + exp.config.eval.wait_seconds
    while True:
        todo = [s for s in _steps_to_evaluate(exp, workdir, steps) if s not in done]
        for step in todo:
            evaluate_checkpoint(exp, workdir, step)
            done.add(step)
        if steps is not None or time.time() >= deadline:
            break
        time.sleep(5)
    if not done:
        print(f"no checkpoint to evaluate in {workdir}", flush=True)
    return 0


def _sample_batches(exp, params, step: int, out_dir: str) -> tuple[np.ndarray, int]:
    """All eval samples of `step`, reusing saved batches; returns (x, nfe of one batch)."""
    from sde_lab import sample

    cfg = exp.config.eval
    os.makedirs(out_dir, exist_ok=True)
    num_batches = -(-cfg.num_samples // cfg.batch_size)
    key = jax.random.fold_in(jax.random.PRNGKey(exp.config.seed), 2 * 10**6 + step)
    gen, nfe, xs = None, 0, []
    for i in range(num_batches):
        path = os.path.join(out_dir, f"samples_{i}.npz")
        if os.path.exists(path):
            with np.load(path) as f:
                xs.append(f["x"])
                nfe = int(f["nfe"])
            continue
        gen = gen or sample.make_generator(exp, cfg.batch_size)
        x, batch_nfe = gen(jax.random.fold_in(key, i), params)
        x, nfe = np.asarray(x), int(batch_nfe)
        if parallel.is_main_process():
            tmp = path + ".tmp.npz"
            np.savez(tmp, x=x, nfe=nfe)
            os.replace(tmp, path)
        xs.append(x)
    return np.concatenate(xs)[:cfg.num_samples], nfe


def _sample_metrics(exp, workdir: str, x: np.ndarray) -> dict:
    """FID / KID / IS of model-space samples `x` against the eval split (or given stats)."""
    from sde_lab import metrics, run as run_lib
    from sde_lab.data import Scaler

    cfg = exp.config.eval
    if len(exp.shape) == 1:
        return {"sliced_wasserstein": _sliced_wasserstein_to_data(exp, x)}
    if cfg.feature_extractor == "none":
        return {}
    kwargs = {"weights_path": cfg.inception_weights or None} if (
        cfg.feature_extractor == "inception") else {}
    extractor = metrics.make_extractor(cfg.feature_extractor, **kwargs)
    scaler = Scaler(exp.config.data.num_levels, exp.config.data.centered)
    ref_path = cfg.reference_stats or os.path.join(
        workdir, "eval", f"reference_{cfg.feature_extractor}.npz")
    if os.path.exists(ref_path):
        ref = metrics.load_stats(ref_path)
    else:  # real eval-split images through the same uint8 path as the samples
        dataset = run_lib.make_dataset(exp.config, exp.config.data.eval_split, train=False)
        levels, _ = dataset.levels(0, len(dataset))
        feats, _ = extractor.features_and_logits(scaler.to_uint8(scaler.to_model(levels)),
                                                 cfg.batch_size)
        ref = metrics.compute_stats(feats)
        if parallel.is_main_process():
            metrics.save_stats(ref_path, ref)
    feats, logits = extractor.features_and_logits(scaler.to_uint8(x), cfg.batch_size)
    gen = metrics.compute_stats(feats)
    out = {"fid": metrics.frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma)}
    if ref.features is not None:
        subset = min(1000, len(feats), len(ref.features))
        out["kid"] = metrics.kid(feats, ref.features, subset_size=subset)
    if logits is not None:
        out["inception_score"] = metrics.inception_score(logits, min(10, len(logits)))[0]
    return {k: float(v) for k, v in out.items()}


def _sliced_wasserstein_to_data(exp, x: np.ndarray, num_projections: int = 256) -> float:
    """Sliced Wasserstein-1 distance between samples and as many fresh data samples."""
    from sde_lab import data

    rng = np.random.default_rng(0)
    true = data.toy_distribution(exp.config.data.dataset[4:], exp.config.data.toy_dim).sample(
        rng, len(x))
    dirs = rng.standard_normal((x.shape[1], num_projections))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    proj_x, proj_t = np.sort(x @ dirs, axis=0), np.sort(true @ dirs, axis=0)
    return float(np.mean(np.abs(proj_x - proj_t)))


def _bits_per_dim(exp, params, step: int) -> dict:
    """Test-split bits/dim through the PF-ODE likelihood, `eval.bpd_num_passes` passes."""
    from sde_lab import likelihood, run as run_lib
    from sde_lab.data import Scaler

    cfg, d = exp.config.eval, exp.config.data
    if not cfg.enable_bpd or len(exp.shape) == 1:
        return {}
    dataset = run_lib.make_dataset(exp.config, d.eval_split, train=False)
    n = cfg.bpd_num_examples or len(dataset)
    levels, _ = dataset.levels(0, n)
    batches = [levels[i:i + cfg.batch_size] for i in range(0, len(levels), cfg.batch_size)]
    key = jax.random.fold_in(jax.random.PRNGKey(exp.config.seed), 3 * 10**6 + step)
    result = likelihood.dataset_bits_per_dim(
        key, exp.sde_fn(params), exp.score_fn(params), batches, scaler=Scaler(d.num_levels, d.centered),
        num_passes=cfg.bpd_num_passes, estimator=cfg.bpd_estimator, rtol=cfg.bpd_rtol,
        atol=cfg.bpd_atol, t_min=cfg.bpd_t_min)
    out = {"bpd": result["bpd"], "bpd_se": result["bpd_se"],
           "bpd_num_examples": result["num_examples"], "bpd_nfe": result["nfe"]}
    if exp.learned_schedule:
        out["vlb_bpd"] = _vdm_bound(exp, params, batches, key)
    return out


def _vdm_bound(exp, params, batches, key) -> float:
    """VDM's continuous-time VLB of the same test images, in the same bits/dim units."""
    from sde_lab import losses
    from sde_lab.data import Scaler

    d = exp.config.data
    loss = jax.jit(lambda p, x, k: losses.vdm_vlb_loss(
        p, exp.score_model(), exp.sde_fn, x, k, num_levels=d.num_levels,
        data_range=(-1.0, 1.0) if d.centered else (0.0, 1.0)))
    scaler = Scaler(d.num_levels, d.centered)
    total = sum(float(loss(params, scaler.to_model(b), jax.random.fold_in(key, i))) * len(b)
                for i, b in enumerate(batches))
    return total / sum(len(b) for b in batches)


def evaluate_checkpoint(exp, workdir: str, step: int) -> dict:
    from sde_lab import run as run_lib, sample, train

    out_path = os.path.join(workdir, "eval", f"{step}.json")
    if os.path.exists(out_path):
        print(f"eval of step {step} already in {out_path}", flush=True)
        return {}
    params, _ = train.restore_params(exp, workdir, step)
    t0 = time.time()
    x, nfe = _sample_batches(exp, params, step, os.path.join(workdir, "eval", str(step)))
    result = {"step": step, "num_samples": int(len(x)), "sampler": exp.config.sample.sampler,
              "nfe_per_sample": nfe, "sampling_seconds": round(time.time() - t0, 2)}
    result.update(_sample_metrics(exp, workdir, x))
    t1 = time.time()
    bpd = _bits_per_dim(exp, params, step)
    if bpd:
        result.update(bpd, bpd_seconds=round(time.time() - t1, 2))
    if parallel.is_main_process():
        png = sample.save_grid(exp, x, os.path.join(workdir, "samples", f"eval_{step}.png"))
        run_lib.write_json(out_path, result)
        summary = ", ".join(f"{k}={v:.4g}" for k, v in result.items()
                            if isinstance(v, float) and k not in ("sampling_seconds",))
        print(f"eval step {step}: {summary}\n  wrote {out_path} and {png}", flush=True)
    return result
