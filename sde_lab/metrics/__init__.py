"""Sample-quality metrics: FID, KID, Inception Score and the feature networks behind them.

    from sde_lab import metrics
    fid = metrics.frechet_distance(mu1, sigma1, mu2, sigma2)          # float
    ext = metrics.make_extractor("inception", weights_path="inception_fid.npz")  # or "digits"
    feats, logits = ext.features_and_logits(images)                   # [N, H, W, C] in [0, 1]
    is_mean, is_std = metrics.inception_score(logits)
    ref = metrics.load_stats("cifar10_stats.npz")                     # score_sde / pytorch-fid
    fid = metrics.frechet_distance(*metrics.gaussian_statistics(feats), ref.mu, ref.sigma)
    kid = metrics.kid(feats, ref.features)

Modules: `scores` (the formulas), `inception` (FID InceptionV3 in Flax), `convert`
(pytorch-fid weights), `extractors` (interface and registry), `digits_classifier`,
`stats` (reference statistics files and command).
"""

from sde_lab.metrics.extractors import FeatureExtractor, available, make_extractor, register
from sde_lab.metrics.scores import (frechet_distance, gaussian_statistics, inception_score,
                                    kid, kid_subsets, mmd2_unbiased)
from sde_lab.metrics.stats import Stats, compute_stats, load_stats, save_stats

__all__ = [
    "FeatureExtractor", "Stats", "available", "compute_stats", "frechet_distance",
    "gaussian_statistics", "inception_score", "kid", "kid_subsets", "load_stats",
    "make_extractor", "mmd2_unbiased", "register", "save_stats",
]
