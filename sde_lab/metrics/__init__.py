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

import importlib

# Names are resolved on first use (PEP 562), so `python -m sde_lab.metrics.stats` (or
# .digits_classifier, .convert) does not import its own module twice through this package.
_EXPORTS = {
    "extractors": ("FeatureExtractor", "available", "make_extractor", "register"),
    "scores": ("frechet_distance", "gaussian_statistics", "inception_score", "kid",
               "kid_subsets", "mmd2_unbiased"),
    "stats": ("Stats", "compute_stats", "load_stats", "real_data_scores", "save_stats"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'sde_lab.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sde_lab.metrics.{_WHERE[name]}"), name)


def __dir__():
    return __all__
