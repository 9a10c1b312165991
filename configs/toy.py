"""2-D toy data with an MLP score network: samples plotted over the true density.

  python main.py --config configs/toy.py --workdir /tmp/toy              # 8-Gaussian ring
  python main.py --config configs/toy.py:checkerboard --workdir /tmp/cb  # also :moons

About a minute on a 2-core CPU; writes samples/eval_<step>.png (samples over the data).
"""

from configs import default, runlocal

SETS = ("gmm", "checkerboard", "moons")


def get_config(arg: str | None = None):
    config = default.get_default()
    tokens = [t for t in (arg or "").split(",") if t]
    datasets = [t for t in tokens if t != "runlocal"] or ["gmm"]
    dataset = datasets[0]
    if dataset not in SETS or len(datasets) > 1:
        raise ValueError(f"configs/toy.py: unknown variant '{arg}'; available: "
                         f"{list(SETS)} and 'runlocal' (or 'runlocal,<set>')")
    config.data.dataset = f"toy:{dataset}"
    config.data.toy_dim = 2
    config.model.name = "mlp"
    config.model.size = "toy"
    config.train.batch_size = 256
    config.train.num_steps = 10000
    config.train.log_every_steps = 1000
    config.train.checkpoint_every_steps = 2500
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 100
    config.optim.ema_rate = 0.999
    config.sample.sampler = "dpm_solver++"
    config.sample.dpm_solver_pp.num_steps = 50
    config.sample.num_samples = 2000
    config.sample.batch_size = 2000
    config.eval.num_samples = 2000
    config.eval.batch_size = 2000
    config.eval.feature_extractor = "none"
    config.eval.enable_bpd = False
    if "runlocal" in tokens:
        runlocal.shrink(config)
        config.model.size = "tiny"
    return config
