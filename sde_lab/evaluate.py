"""--mode eval: sample quality (FID/KID/IS) and bits/dim of checkpoints.

For each checkpoint (the ones named in `eval.checkpoints`, else each one as it appears)
the EMA parameters are evaluated and `eval/<step>.json` is written atomically, with the
eval spec (sampler and its options, sample count and batch, metric settings, seed) and its
hash. A second eval of a step with the same spec is skipped; one with another spec runs,
and the result it replaces is appended to `eval/history.jsonl`, so nothing is lost.

Samples are drawn in numbered batches with keys fold_in(keys.eval(step), i) and each batch
is saved to `eval/<step>/samples-<h>/samples_<i>.npz` as soon as it exists, where `<h>`
hashes everything that defines the samples (sampler, options, batch size, seed): a killed
eval resumes at the first missing batch and never mixes samples of two samplers or batch
sizes. Progress (batches, features, bits/dim, ETA) is printed as it goes; results also go
to TensorBoard (`eval/<metric>` scalars and the sample grid at the checkpoint's step).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time

import jax
import numpy as np

from sde_lab import parallel, sample, state as state_lib, trackers
from sde_lab import workdir as workdir_lib
from sde_lab.progress import Progress


class NoCheckpoint(FileNotFoundError):
    pass


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _labelled(exp) -> bool:
    return sample.batch_labels(exp, 0, 1) is not None


def sample_spec(exp, classifier_step: int | None = None) -> dict:
    """Everything that defines the eval samples of a checkpoint: the sampler, and for
    labelled sampling the label, the guidance and its scale, and the classifier (where,
    which step, its size)."""
    spec = {**exp.sampler.describe(), "batch_size": exp.eval.batch_size, "seed": exp.seed}
    if _labelled(exp):
        spec.update(exp.guidance.describe())
        if exp.guidance.method == "classifier":
            c = exp.classifier
            spec["classifier"] = {"workdir": c.workdir, "step": classifier_step,
                                  "size": c.size, "sigma_data": c.sigma_data}
    return spec


def eval_spec(exp, classifier_step: int | None = None) -> dict:
    """Everything that defines an eval result of a checkpoint (labelled samples add the
    class metrics: accuracy under the digits classifier, FID per class)."""
    e = exp.eval
    spec = {**sample_spec(exp, classifier_step), "num_samples": e.num_samples,
            "feature_extractor": e.feature_extractor, "inception_weights": e.inception_weights,
            "reference_stats": e.reference_stats, "bpd": e.enable_bpd and not exp.data.is_toy
            and [e.bpd_num_passes, e.bpd_num_examples, e.bpd_rtol, e.bpd_atol,
                 e.bpd_estimator, e.bpd_t_min]}
    if _labelled(exp):
        spec["class_metrics"] = ["class_accuracy", "fid_per_class"]
    return spec


def checkpoint_steps(workdir: str) -> list[int]:
    from sde_lab import checkpointing

    ckpt = checkpointing.Checkpointer(workdir, max_to_keep=None)
    try:
        return ckpt.steps()
    finally:
        ckpt.close()


def run(exp, workdir: str, steps=None) -> int:
    """Evaluates checkpoints; with `eval.wait_seconds` > 0 keeps polling for new ones.

    Raises:
      NoCheckpoint: nothing to evaluate (no checkpoint appeared, or a named step is absent).
    """
    steps = steps if steps is not None else exp.eval.checkpoints
    source = exp.eval.source_workdir or workdir
    done: set[int] = set()
    deadline = time.time() + exp.eval.wait_seconds
    tb = _TensorBoard(workdir, trackers.for_run(exp, workdir))
    try:
        while True:
            available = checkpoint_steps(source)
            if steps is not None:
                missing = sorted(set(steps) - set(available))
                if missing:
                    raise NoCheckpoint(f"eval.checkpoints: no checkpoint {missing} in "
                                       f"{source}/checkpoints (it has {available})")
            todo = [s for s in (steps if steps is not None else available) if s not in done]
            for step in todo:
                evaluate_checkpoint(exp, workdir, step, tb)
                done.add(step)
            if steps is not None or time.time() >= deadline:
                break
            time.sleep(5)
    finally:
        tb.close()
    if not done:
        raise NoCheckpoint(f"no checkpoint to evaluate in {source}/checkpoints; train first "
                           "(--mode train), or wait for one with --config.eval.wait_seconds")
    return 0


def _sample_batches(exp, params, step: int, out_dir: str, classifier_params=None,
                    classifier_step: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """All eval samples of `step`, reusing saved batches; returns (x, labels or None, nfe
    of one batch)."""
    e = exp.eval
    spec = sample_spec(exp, classifier_step)
    out_dir = os.path.join(out_dir, f"samples-{_hash(spec)}")
    os.makedirs(out_dir, exist_ok=True)
    if parallel.is_main_process():
        workdir_lib.write_json(os.path.join(out_dir, "spec.json"), spec)
    num_batches = -(-e.num_samples // e.batch_size)
    key = exp.keys.eval(step)
    gen, nfe, xs, ys = None, 0, [], []
    progress = Progress(f"sampling ({exp.sampler.name}) batch", num_batches,
                        parallel.is_main_process())
    for i in range(num_batches):
        path = os.path.join(out_dir, f"samples_{i}.npz")
        labels = sample.batch_labels(exp, i * e.batch_size, e.batch_size)
        ys.append(labels)
        if os.path.exists(path):
            with np.load(path) as f:
                xs.append(f["x"])
                nfe = int(f["nfe"])
            progress.advance(note=" (saved earlier)")
            continue
        gen = gen or sample.make_generator(exp, e.batch_size)
        x, batch_nfe = gen(jax.random.fold_in(key, i), params, labels, classifier_params)
        x, nfe = np.asarray(x), int(batch_nfe)
        if parallel.is_main_process():
            tmp = path + ".tmp.npz"
            np.savez(tmp, x=x, nfe=nfe, **({} if labels is None else {"y": labels}))
            os.replace(tmp, path)
        xs.append(x)
        progress.advance(note=f", {nfe} NFE per sample")
    y = None if ys[0] is None else np.concatenate(ys)[:e.num_samples]
    return np.concatenate(xs)[:e.num_samples], y, nfe


def _reference_stats(exp, workdir: str, extractor):
    from sde_lab import metrics

    e = exp.eval
    if e.reference_stats:
        return metrics.load_stats(e.reference_stats)
    d = exp.data
    path = os.path.join(workdir, "eval", f"reference_{e.feature_extractor}_{d.eval_split}.npz")
    if os.path.exists(path):
        return metrics.load_stats(path)
    dataset = d.make(d.eval_split, train=False, seed=exp.seed)
    levels, _ = dataset.levels(0, len(dataset))
    print(f"  reference features of the {len(levels)} {d.eval_split} images "
          f"({e.feature_extractor})", flush=True)
    images = d.scaler.to_uint8(d.scaler.to_model(levels))
    feats, _ = extractor.features_and_logits(images, e.batch_size)
    ref = metrics.compute_stats(feats)
    if parallel.is_main_process():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        metrics.save_stats(path, ref)
    return ref


def _sample_metrics(exp, workdir: str, x: np.ndarray, labels: np.ndarray | None = None
                    ) -> dict:
    """FID / KID / IS of model-space samples `x` against the eval split (or given stats);
    with `labels`, also the class metrics (`_class_metrics`)."""
    from sde_lab import metrics

    e = exp.eval
    if exp.data.is_toy:
        return {"sliced_wasserstein": _sliced_wasserstein_to_data(exp, x)}
    if e.feature_extractor == "none":
        return {}
    kwargs = {"weights_path": e.inception_weights or None} if (
        e.feature_extractor == "inception") else {}
    extractor = metrics.make_extractor(e.feature_extractor, **kwargs)
    ref = _reference_stats(exp, workdir, extractor)
    print(f"  features of {len(x)} samples ({e.feature_extractor})", flush=True)
    feats, logits = extractor.features_and_logits(exp.data.scaler.to_uint8(x), e.batch_size)
    gen = metrics.compute_stats(feats)
    out = {"fid": metrics.frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma)}
    if ref.features is not None:
        subset = min(1000, len(feats), len(ref.features))
        out["kid"] = metrics.kid(feats, ref.features, subset_size=subset)
    if logits is not None:
        out["inception_score"] = metrics.inception_score(logits, min(10, len(logits)))[0]
    out = {k: float(v) for k, v in out.items()}
    if labels is not None:
        out.update(_class_metrics(exp, ref, feats, logits, labels))
    return out


def _class_metrics(exp, ref, feats: np.ndarray, logits, labels: np.ndarray) -> dict:
    """Metrics of labelled samples.

    class_accuracy: the fraction whose class under the digits classifier (the "digits"
    feature extractor's logits) is the intended one, overall and per class.
    fid_per_class: FID of the samples of class k against the eval images of class k (when
    the reference is the eval split), and their mean. Few reference images per class
    (digits: about 30) make it biased upward; compare it between runs, not with the FID.
    """
    from sde_lab import metrics

    out: dict = {}
    classes = [int(k) for k in np.unique(labels)]
    if exp.eval.feature_extractor == "digits" and logits is not None:
        correct = np.argmax(logits, axis=-1) == labels
        out["class_accuracy"] = float(np.mean(correct))
        out["class_accuracy_per_class"] = {str(k): float(np.mean(correct[labels == k]))
                                           for k in classes}
    if not exp.eval.reference_stats and ref.features is not None:
        d = exp.data
        ref_labels = d.make(d.eval_split, train=False, seed=exp.seed).levels(
            0, len(ref.features))[1]
        fids = {}
        for k in classes:
            gen_k, ref_k = feats[labels == k], ref.features[ref_labels == k]
            if len(gen_k) < 2 or len(ref_k) < 2:
                continue
            try:
                fids[str(k)] = metrics.frechet_distance(*metrics.gaussian_statistics(gen_k),
                                                        *metrics.gaussian_statistics(ref_k))
            except ValueError:  # covariances of few samples too ill-conditioned for sqrtm
                fids[str(k)] = None
        values = [v for v in fids.values() if v is not None]
        if fids:
            out["fid_per_class"] = fids
        if values:
            out["fid_per_class_mean"] = float(np.mean(values))
    return out


def _sliced_wasserstein_to_data(exp, x: np.ndarray, num_projections: int = 256) -> float:
    """Sliced Wasserstein-1 distance between samples and as many fresh data samples."""
    from sde_lab import data

    rng = np.random.default_rng(0)
    true = data.toy_distribution(exp.data.dataset[4:], exp.data.toy_dim).sample(rng, len(x))
    dirs = rng.standard_normal((x.shape[1], num_projections))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    proj_x, proj_t = np.sort(x @ dirs, axis=0), np.sort(true @ dirs, axis=0)
    return float(np.mean(np.abs(proj_x - proj_t)))


def _bits_per_dim(exp, params, step: int) -> dict:
    """Test-split bits/dim through the PF-ODE likelihood, `eval.bpd_num_passes` passes."""
    from sde_lab import likelihood

    e, d = exp.eval, exp.data
    if not e.enable_bpd or d.is_toy:
        return {}
    dataset = d.make(d.eval_split, train=False, seed=exp.seed)
    n = e.bpd_num_examples or len(dataset)
    levels, _ = dataset.levels(0, n)
    # Batches as even as the batch size allows, padded to one shape: one compilation of
    # the likelihood (297 test digits at batch 250 were 250 + 47, two compilations; now
    # 149 + 148 padded to 149).
    size = math.ceil(len(levels) / math.ceil(len(levels) / e.batch_size))
    batches = [levels[i:i + size] for i in range(0, len(levels), size)]
    progress = Progress(f"bits/dim ({len(levels)} {d.eval_split} images) batch",
                        len(batches) * e.bpd_num_passes, parallel.is_main_process())

    def reporting(items):  # the likelihood asks for batch i + 1 when batch i is done
        for i, b in enumerate(items):
            if i:
                progress.advance(e.bpd_num_passes)
            yield b
        progress.advance(e.bpd_num_passes)

    result = likelihood.dataset_bits_per_dim(
        exp.keys.bpd(step), exp.sde_of(params), exp.score_fn(params), reporting(batches),
        scaler=d.scaler, num_passes=e.bpd_num_passes, pad_to=size, estimator=e.bpd_estimator,
        rtol=e.bpd_rtol, atol=e.bpd_atol, t_min=e.bpd_t_min)
    out = {"bpd": result["bpd"], "bpd_se": result["bpd_se"],
           "bpd_num_examples": result["num_examples"], "bpd_nfe": result["nfe"]}
    if exp.loss_name == "vdm_vlb":
        out["vlb_bpd"] = _vdm_bound(exp, params, batches, exp.keys.bpd(step))
    return out


def _vdm_bound(exp, params, batches, key) -> float:
    """The trained loss (VDM's continuous-time VLB) of the test images, in bits/dim."""
    d = exp.data

    def bound(p, x, k):
        sde = exp.sde_of(p)
        return exp.loss(p["net"], exp.score_model(sde), sde, x, k)

    loss = jax.jit(bound)
    total = sum(float(loss(params, d.scaler.to_model(b), jax.random.fold_in(key, i))) * len(b)
                for i, b in enumerate(batches))
    return total / sum(len(b) for b in batches)


class _TensorBoard:
    """Eval scalars and sample grids in the run's TensorBoard (and the configured tracker),
    at the checkpoint's step."""

    def __init__(self, workdir: str, tracker=None):
        self.writer, self.tracker = None, tracker
        if parallel.is_main_process():
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                        filename_suffix=".eval")

    def write(self, step: int, result: dict, png: str | None) -> None:
        if self.writer is None:
            return
        scalars = {f"eval/{k}": v for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)
        if self.tracker is not None:
            self.tracker.log(step, scalars)
        if png:
            from PIL import Image

            image = np.asarray(Image.open(png).convert("RGB"))
            self.writer.add_image("eval/samples", image, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.tracker is not None:
            self.tracker.close()


def evaluate_checkpoint(exp, workdir: str, step: int, tb: _TensorBoard | None = None) -> dict:
    out_path = os.path.join(workdir, "eval", f"{step}.json")
    classifier_params, classifier_step = sample.restore_classifier(
        exp, exp.eval.source_workdir or workdir)
    spec = eval_spec(exp, classifier_step)
    spec_hash = _hash(spec)
    previous = workdir_lib.read_json(out_path)
    if previous is not None and previous.get("spec_hash") == spec_hash:
        print(f"eval of step {step} with this spec already in {out_path}", flush=True)
        return previous
    params, _ = state_lib.restore_params(exp, exp.eval.source_workdir or workdir, step)
    how = exp.sampler.name
    if _labelled(exp):
        how += ", " + ", ".join(f"{k} {v}" for k, v in exp.guidance.describe().items())
    print(f"eval of step {step}: {exp.eval.num_samples} samples ({how}), "
          f"{exp.eval.feature_extractor} features"
          f"{', bits/dim' if spec['bpd'] else ''}", flush=True)
    t0 = time.time()
    x, labels, nfe = _sample_batches(exp, params, step, os.path.join(workdir, "eval", str(step)),
                                     classifier_params, classifier_step)
    result = {"step": step, "num_samples": int(len(x)), "sampler": exp.sampler.name,
              "nfe_per_sample": nfe, "sampling_seconds": round(time.time() - t0, 2)}
    result.update(_sample_metrics(exp, workdir, x, labels))
    t1 = time.time()
    bpd = _bits_per_dim(exp, params, step)
    if bpd:
        result.update(bpd, bpd_seconds=round(time.time() - t1, 2))
    result.update(spec=spec, spec_hash=spec_hash)
    if parallel.is_main_process():
        png = sample.save_grid(exp, x, os.path.join(workdir, "samples", f"eval_{step}.png"),
                               labels)
        if previous is not None:
            with open(os.path.join(workdir, "eval", "history.jsonl"), "a") as f:
                f.write(json.dumps(previous, sort_keys=True) + "\n")
        workdir_lib.write_json(out_path, result)
        if tb is not None:
            tb.write(step, result, png)
        summary = ", ".join(f"{k}={v:.4g}" for k, v in result.items()
                            if isinstance(v, float) and k not in ("sampling_seconds",))
        print(f"eval step {step}: {summary}\n  wrote {out_path} and {png} (grid of "
              f"{sample.grid_description(exp, len(x), labels)})", flush=True)
    return result
