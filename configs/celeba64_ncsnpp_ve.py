"""CelebA 64x64, VE SDE, NCSN++ (score_sde's configs/ve/celeba_ncsnpp.py settings:
sigma_max 90, central 140x140 crop resized to 64, data in [0, 1]; network `ncsnpp_64`,
the same architecture with the continuous-time Fourier embedding).

  pip install "sde_lab[tf]" && tfds build celeb_a --file_format=array_record
  python main.py --config configs/celeba64_ncsnpp_ve.py --workdir runs/celeba64
  python main.py --config configs/celeba64_ncsnpp_ve.py:runlocal --workdir /tmp/celeba64

Song et al. 2021 show CelebA samples but report no FID for this setting; bits/dim is off
because the crop and resize leave no raw pixels to score.
"""

from configs import default, runlocal


def get_config(arg: str | None = None):
    config = default.get_default()
    d, s, m = config.data, config.sde, config.model
    d.dataset, d.center_crop, d.image_size, d.num_channels = "celeb_a", 140, 64, 3
    d.num_levels, d.centered, d.random_flip = 256, False, True
    s.name, s.ve.sigma_max, s.ve.t_min = "ve", 90.0, 1e-5
    m.name, m.size, m.parameterization = "ncsnpp", "ncsnpp_64", "score"
    config.train.batch_size = 128
    config.train.num_steps = 1_300_000
    config.train.checkpoint_every_steps = 50_000
    config.optim.ema_rate = 0.999
    config.sample.sampler = "pc"
    pc = config.sample.pc
    pc.predictor, pc.corrector, pc.snr = "reverse_diffusion", "langevin", 0.17
    config.eval.feature_extractor, config.eval.enable_bpd = "inception", False
    if arg == "runlocal":
        runlocal.shrink(config)
        config.eval.feature_extractor = "none"
    elif arg:
        raise ValueError(f"configs/celeba64_ncsnpp_ve.py: unknown variant '{arg}'; "
                         "available: ['runlocal']")
    return config
