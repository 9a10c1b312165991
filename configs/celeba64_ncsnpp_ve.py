"""CelebA 64x64, VE SDE, NCSN++ trained with score_sde's discrete SMLD loss: score_sde
configs/ve/celeba_ncsnpp.py on configs/default_celeba_configs.py ("D"); every value below
names its source field. Central 140x140 crop resized to 64 (score_sde datasets.py), data in
[0, 1]; network `ncsnpp_64`.

  pip install "sde_lab[tf]" && tfds build celeb_a --file_format=array_record
  python main.py --config configs/celeba64_ncsnpp_ve.py --workdir runs/celeba64
  python main.py --config configs/celeba64_ncsnpp_ve.py:runlocal --workdir /tmp/celeba64

Song et al. 2021 show CelebA samples but report no FID for this setting; bits/dim is off
because the crop and resize leave no raw pixels to score.

Where sde_lab differs from the source (not settable from a config):
- score_sde's discrete NCSN++ embeds the integer level index (embedding_type =
  'positional') and its sampler rounds t to the nearest of the 1,000 levels; sde_lab's
  network takes log sigma through the Fourier embedding and is sampled at the grid's own
  times. sde_lab's levels are sigma(t_i), t_i = linspace(1e-5, 1, 1000) (score_sde's:
  exactly 0.01 ... 90; 1e-5 apart in t).
- EMA warm-up and the final denoising step: as listed in configs/cifar10.py.
"""

from configs import default, runlocal


def get_config(arg: str | None = None):
    config = default.get_default()
    d, s, m, t, o = config.data, config.sde, config.model, config.train, config.optim
    d.dataset = "celeb_a"                   # D: data.dataset = 'CELEBA'
    d.center_crop = 140                     # datasets.py: central_crop(img, 140)
    d.image_size = 64                       # D: data.image_size
    d.num_channels, d.num_levels = 3, 256   # D: data.num_channels
    d.centered = False                      # D: data.centered
    d.random_flip = True                    # D: data.random_flip
    d.uniform_dequantization = False        # D: data.uniform_dequantization
    d.eval_split = "validation"             # datasets.py: eval_split_name for CELEBA
    s.name = "ve"                           # training.sde = 'vesde'
    s.ve.sigma_min = 0.01                   # D: model.sigma_min
    s.ve.sigma_max = 90.0                   # D: model.sigma_max (model.sigma_begin = 90)
    s.ve.t_min = 1e-5                       # run_lib.py: sampling_eps = 1e-5 for vesde
    m.name, m.size, m.parameterization = "ncsnpp", "ncsnpp_64", "score"  # scale_by_sigma
    m.dropout = 0.1                         # D: model.dropout
    config.loss.name = "smld"               # training.continuous = False (losses.py:
                                            # get_smld_loss_fn)
    config.loss.smld.num_levels = 1000      # D: model.num_scales
    config.loss.smld.reduce = "sum"         # D: training.reduce_mean = False (1/2 * sum)
    t.batch_size = 128                      # D: training.batch_size
    t.num_steps = 1_300_000                 # D: training.n_iters = 1300001
    t.checkpoint_every_steps = 50_000       # D: training.snapshot_freq
    o.optimizer = "adam"                    # D: optim.optimizer = 'Adam'
    o.lr = 2e-4                             # D: optim.lr
    o.beta1 = 0.9                           # D: optim.beta1
    o.beta2 = 0.999                         # losses.py: flax.optim.Adam's default beta2
    o.eps = 1e-8                            # D: optim.eps
    o.weight_decay = 0.0                    # D: optim.weight_decay
    o.warmup_steps = 5000                   # D: optim.warmup
    o.grad_clip = 1.0                       # D: optim.grad_clip
    o.ema_rate = 0.999                      # model.ema_rate
    config.sample.sampler = "pc"            # sampling.method = 'pc'
    pc = config.sample.pc
    pc.predictor = "reverse_diffusion"      # sampling.predictor
    pc.corrector = "langevin"               # sampling.corrector
    pc.snr = 0.17                           # D: sampling.snr
    pc.n_steps_each = 1                     # D: sampling.n_steps_each
    pc.num_steps = 1000                     # D: model.num_scales
    config.eval.feature_extractor, config.eval.enable_bpd = "inception", False
    if arg == "runlocal":
        runlocal.shrink(config)
        config.eval.feature_extractor = "none"
    elif arg:
        raise ValueError(f"configs/celeba64_ncsnpp_ve.py: unknown variant '{arg}'; "
                         "available: ['runlocal']")
    return config
