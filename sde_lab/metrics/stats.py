"""Reference feature statistics: compute, save and load (mu, sigma and the features for KID).

File format (`.npz`): `mu` [d], `sigma` [d, d] (float64) and `pool_3` [N, d] (float32
features; the key score_sde's `cifar10_stats.npz` uses). `load_stats` accepts any file with
`pool_3` (mu/sigma are then computed) or with `mu` and `sigma` (pytorch-fid's stats files;
no KID then).

Command (features of a dataset split, written to --out):

    python -m sde_lab.metrics.stats --extractor digits --dataset digits --split train --out digits_train_stats.npz
    python -m sde_lab.metrics.stats --extractor inception --weights inception_fid.npz \\
        --dataset tfds:cifar10 --split train --out cifar10_train_stats.npz
    python -m sde_lab.metrics.stats --extractor inception --weights inception_fid.npz \\
        --images samples.npz --out samples_stats.npz   # [N, H, W, C] uint8 or [0, 1] floats
    python -m sde_lab.metrics.stats --extractor digits --dataset digits --split train \\
        --against test --num_samples 1000 --draws 200   # what real data scores (no file)

`--dataset` goes through the trainer's own splits and scaling (`sde_lab.data`: digits has
1,500 train / 297 test images), so stats made here equal the eval's. `tfds:<name>` reads a
prepared TFDS dataset through `tfds.data_source` (no TensorFlow) and never downloads: an
unprepared dataset fails at once with the command that prepares it. Errors are one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from sde_lab.metrics import extractors, scores


@dataclasses.dataclass(frozen=True)
class Stats:
    """Gaussian statistics of features, plus the features themselves when kept (for KID)."""

    mu: np.ndarray            # [d] float64
    sigma: np.ndarray         # [d, d] float64
    features: np.ndarray | None = None  # [N, d] float32


def compute_stats(features) -> Stats:
    """[N, d] features -> Stats with float64 mean and unbiased covariance (and the features)."""
    features = np.asarray(features, np.float32)
    mu, sigma = scores.gaussian_statistics(features)
    return Stats(mu, sigma, features)


def save_stats(path: str, stats: Stats) -> None:
    """Writes `mu`, `sigma` and, if kept, `pool_3` to an `.npz`."""
    arrays = {"mu": stats.mu, "sigma": stats.sigma}
    if stats.features is not None:
        arrays["pool_3"] = stats.features
    np.savez(path, **arrays)


def load_stats(path: str) -> Stats:
    """Reads a stats `.npz`: this module's, score_sde's (`pool_3`) or pytorch-fid's (`mu`, `sigma`)."""
    with np.load(path) as data:
        keys = set(data.files)
        features = np.asarray(data["pool_3"], np.float32) if "pool_3" in keys else None
        if {"mu", "sigma"} <= keys:
            stats = Stats(np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64), features)
        elif features is not None:
            stats = compute_stats(features)
        else:
            raise ValueError(f"'{path}' has neither 'pool_3' nor 'mu' and 'sigma'; keys: {sorted(keys)}")
    d = stats.mu.shape[0]
    if stats.sigma.shape != (d, d) or (stats.features is not None and stats.features.shape[1] != d):
        raise ValueError(f"'{path}': inconsistent shapes mu {stats.mu.shape}, sigma {stats.sigma.shape}")
    return stats


def fid(stats1: Stats, stats2: Stats) -> float:
    """Frechet distance between two Stats."""
    return scores.frechet_distance(stats1.mu, stats1.sigma, stats2.mu, stats2.sigma)


def real_data_scores(features, reference: Stats, num_samples: int, draws: int,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """FID and KID of `draws` random subsets (without replacement) of `num_samples` real
    images' `features` [N, d] against `reference`: what a generator that samples the data
    distribution exactly scores under the same metric.

    FID is biased upward at finite sample sizes (for digits: 1,000 train images against
    the 297 test images score 19.4 on average, all 1,500 score 17.8), so a generator's FID
    means something only next to this figure at the eval's own sizes. KID is unbiased (its
    expectation is 0 for one distribution) but noisy at these sizes. Deterministic in `seed`.

    Returns {"fid": [draws], "kid": [draws]}; each KID on 10 subsets of min(1000,
    num_samples, len(reference)) examples (the eval: 100 subsets, same expectation; the mean
    over draws is what to read), empty without reference.features.
    """
    features = np.asarray(features, np.float32)
    if not 0 < num_samples <= len(features):
        raise ValueError(f"num_samples must be in [1, {len(features)}] (the real images "
                         f"available), got {num_samples}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"fid": [], "kid": []}
    for _ in range(draws):
        sub = features[rng.permutation(len(features))[:num_samples]]
        out["fid"].append(fid(compute_stats(sub), reference))
        if reference.features is not None:
            size = min(1000, num_samples, len(reference.features))
            out["kid"].append(scores.kid(sub, reference.features, num_subsets=10,
                                         subset_size=size, seed=len(out["kid"])))
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def _dataset_images(dataset: str, split: str, num_examples: int | None) -> np.ndarray:
    """uint8 images of a split, through the trainer's own split and scaling (sde_lab.data),
    so that reference statistics made here equal the ones the eval computes."""
    from sde_lab import data

    if dataset == "digits":
        source = data.make("digits", split, num_levels=17, train=False)
    elif dataset.startswith("tfds:"):
        source = data.make(dataset[5:], split, num_levels=256, train=False)
    else:
        raise ValueError(f"unknown --dataset '{dataset}'; available: ['digits', 'tfds:<name>'] "
                         "(e.g. tfds:cifar10)")
    n = len(source) if num_examples is None else min(num_examples, len(source))
    levels, _ = source.levels(0, n)
    return source.scaler.to_uint8(source.scaler.to_model(levels))


def _file_images(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path)
    with np.load(path) as data:
        key = "images" if "images" in data.files else data.files[0]
        return data[key]


def _extractor(args):
    kwargs = {"weights_path": args.weights} if args.weights or args.extractor == "inception" else {}
    return extractors.make_extractor(args.extractor, **kwargs)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {' '.join(message.split())}\n")


def main(argv: list[str] | None = None) -> None:
    parser = _Parser(prog="python -m sde_lab.metrics.stats",
                     description="Compute and save feature statistics.")
    parser.add_argument("--extractor", default="inception", choices=extractors.available())
    parser.add_argument("--weights", default=None, help="weights file of the extractor")
    parser.add_argument("--dataset", default=None, help="'digits' or 'tfds:<name>'")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", default=None, help=".npy/.npz of [N, H, W, C] images instead of --dataset")
    parser.add_argument("--num_examples", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--out", default=None, help="where to write the stats (.npz)")
    parser.add_argument("--against", default=None, metavar="SPLIT",
                        help="instead of writing stats: the FID/KID of --draws random subsets "
                             "of --num_samples images of --split against all of SPLIT (the "
                             "score of real data at an eval's sample sizes; --dataset only)")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.dataset is None) == (args.images is None):
        parser.error("give exactly one of --dataset and --images")
    if args.against is not None:
        if args.dataset is None:
            parser.error("--against needs --dataset (the real images come from its splits)")
        return _real_data_floor(parser, args)
    if args.out is None:
        parser.error("--out is required (or --against SPLIT to score real data)")
    try:
        images = (_file_images(args.images)[:args.num_examples] if args.images
                  else _dataset_images(args.dataset, args.split, args.num_examples))
        extractor = _extractor(args)
        start = time.time()
        stats = compute_stats(extractor.features(images, args.batch_size))
    except (ValueError, FileNotFoundError, OSError) as e:
        parser.error(str(e).splitlines()[0])
    save_stats(args.out, stats)
    print(f"wrote {args.out}: {stats.features.shape[0]} x {stats.features.shape[1]} features "
          f"({args.extractor}) in {time.time() - start:.1f} s")


def _real_data_floor(parser, args) -> None:
    try:
        extractor = _extractor(args)
        pool = extractor.features(_dataset_images(args.dataset, args.split, None), args.batch_size)
        reference = compute_stats(extractor.features(
            _dataset_images(args.dataset, args.against, None), args.batch_size))
        r = real_data_scores(pool, reference, args.num_samples, args.draws, args.seed)
    except (ValueError, FileNotFoundError, OSError) as e:
        parser.error(str(e).splitlines()[0])
    f, k = r["fid"], r["kid"]
    sd = f.std(ddof=1) if len(f) > 1 else 0.0
    print(f"{args.num_samples} of {len(pool)} real '{args.split}' images vs the "
          f"{len(reference.features)} '{args.against}' images ({args.extractor} features), "
          f"{args.draws} draw{'s' if args.draws > 1 else ''} (seed {args.seed}):")
    print(f"  FID mean {f.mean():.2f} sd {sd:.2f}; 5% / 50% / 95%: "
          + " / ".join(f"{np.percentile(f, q):.2f}" for q in (5, 50, 95)))
    print(f"  KID mean {k.mean():.1f} (SE of the mean {k.std(ddof=1) / np.sqrt(len(k)) if len(k) > 1 else 0.0:.1f})")


if __name__ == "__main__":
    main()
