"""Anomaly scoring on tabular (vector) data: 10 features, an MLP score model.

toy:outliers (sde_lab/data.py `Outliers`): correlated inliers (a 3-component Gaussian
mixture near 4-D subspaces, label 0) and 10% outliers (label 1) whose features are drawn
independently from the inliers' own marginals, so every single feature looks normal; only
the joint density separates them (the exact inlier density gives AUROC 0.96).

  python main.py --config configs/tabular.py --workdir /tmp/tab                # train, inliers only
  python main.py --config configs/tabular.py --workdir /tmp/tab --mode score   # scores + AUROC
  python main.py --config configs/tabular.py:contaminated --workdir /tmp/tabc  # 10% outliers
                                                                               # in training

The score mode scores 4,096 fresh draws of the eval split (about 410 outliers) by each
method and writes scores/auroc_<step>.json, with the exact density's AUROC as
`oracle_nll`. Results: README.md, "Inverse problems and anomaly detection".
"""

from configs import default, runlocal


def get_config(arg: str | None = None):
    tokens = [t for t in (arg or "").split(",") if t]
    unknown = [t for t in tokens if t not in ("runlocal", "contaminated")]
    if unknown:
        raise ValueError(f"configs/tabular.py: unknown variant '{arg}'; available: "
                         "['runlocal', 'contaminated'] (or both, comma-separated)")
    config = default.get_default()
    config.data.dataset = "toy:outliers"
    config.data.toy_dim = 10
    # Clean training data by default (semi-supervised anomaly detection); the
    # contaminated variant trains on the mixture as drawn (unsupervised).
    config.data.exclude_classes = "" if "contaminated" in tokens else "1"
    config.model.name = "mlp"
    config.model.size = "tabular"
    config.train.batch_size = 256
    config.train.num_steps = 6000
    config.train.log_every_steps = 500
    config.train.checkpoint_every_steps = 2000
    config.train.eval_at_end = False
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 100
    config.optim.ema_rate = 0.999
    config.sample.sampler = "dpm_solver++"
    config.sample.dpm_solver_pp.num_steps = 50
    config.sample.num_samples = 2000
    config.sample.batch_size = 2000
    config.eval.feature_extractor = "none"
    config.eval.enable_bpd = False
    config.eval.bpd_estimator = "exact"     # 10 JVPs per evaluation: cheap at 10-D
    config.eval.bpd_rtol = 1e-3             # enough to rank (anomalies differ by nats); the
    config.eval.bpd_atol = 1e-3             # batch of 1,024 shares one step size
    config.inverse.anomaly_classes = "1"
    config.inverse.batch_size = 1024
    if "runlocal" in tokens:
        runlocal.shrink(config)
        config.model.size = "tiny"
        config.inverse.num_examples = 64
        config.inverse.batch_size = 32
    return config
