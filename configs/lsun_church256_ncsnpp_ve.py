"""LSUN church_outdoor 256x256, VE SDE, NCSN++ (score_sde's
configs/ve/church_ncsnpp_continuous.py settings: sigma_max 380, data in [0, 1]; network
`ncsnpp_256`, 65.6M parameters at 256x256).

  pip install "sde_lab[tf]" && tfds build lsun/church_outdoor --file_format=array_record
  python main.py --config configs/lsun_church256_ncsnpp_ve.py --workdir runs/church
  python main.py --config configs/lsun_church256_ncsnpp_ve.py:runlocal --workdir /tmp/church

Song et al. 2021 show LSUN samples but report no FID for them; bits/dim is off (images
are resized to 256).
"""

from configs import default, runlocal


def get_config(arg: str | None = None):
    config = default.get_default()
    d, s, m = config.data, config.sde, config.model
    d.dataset, d.image_size, d.num_channels = "lsun/church_outdoor", 256, 3
    d.num_levels, d.centered, d.random_flip = 256, False, True
    s.name, s.ve.sigma_max, s.ve.t_min = "ve", 380.0, 1e-5
    m.name, m.size, m.parameterization = "ncsnpp", "ncsnpp_256", "score"
    config.train.batch_size = 64
    config.train.num_steps = 1_300_000
    config.train.checkpoint_every_steps = 50_000
    config.optim.ema_rate = 0.999
    config.sample.sampler = "pc"
    pc = config.sample.pc
    pc.predictor, pc.corrector, pc.snr = "reverse_diffusion", "langevin", 0.075
    config.eval.feature_extractor, config.eval.enable_bpd = "inception", False
    if arg == "runlocal":
        runlocal.shrink(config)
        config.data.image_size = 32
        config.eval.feature_extractor = "none"
    elif arg:
        raise ValueError(f"configs/lsun_church256_ncsnpp_ve.py: unknown variant '{arg}'; "
                         "available: ['runlocal']")
    return config
