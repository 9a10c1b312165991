"""LSUN church_outdoor 256x256, VE SDE, NCSN++ cont.: score_sde
configs/ve/church_ncsnpp_continuous.py on configs/default_lsun_configs.py ("D"); every
value below names its source field. Data in [0, 1]; network `ncsnpp_256`, 65.6M
parameters at 256x256.

  pip install "sde_lab[tf]" && tfds build lsun/church_outdoor --file_format=array_record
  python main.py --config configs/lsun_church256_ncsnpp_ve.py --workdir runs/church
  python main.py --config configs/lsun_church256_ncsnpp_ve.py:runlocal --workdir /tmp/church

Song et al. 2021 show LSUN samples but report no FID for them; bits/dim is off (images
are resized to 256).

Where sde_lab differs from the source (not settable from a config):
- score_sde's crop_resize takes the central min(h, w) square of each image and resizes it
  to 256 (bicubic, antialiased). LSUN's images differ in size; sde_lab's data reader
  stacks a batch before its fixed-size central crop and resizes bilinearly, so it does
  not yet read LSUN as score_sde does.
- EMA warm-up and the final denoising step: as listed in configs/cifar10.py.
"""

from configs import default, runlocal


def get_config(arg: str | None = None):
    config = default.get_default()
    d, s, m, t, o = config.data, config.sde, config.model, config.train, config.optim
    d.dataset = "lsun/church_outdoor"       # D: data.dataset = 'LSUN', data.category
    d.image_size = 256                      # D: data.image_size
    d.num_channels, d.num_levels = 3, 256   # D: data.num_channels
    d.centered = False                      # D: data.centered
    d.random_flip = True                    # D: data.random_flip
    d.uniform_dequantization = False        # D: data.uniform_dequantization
    d.eval_split = "validation"             # datasets.py: eval_split_name for LSUN
    s.name = "ve"                           # training.sde = 'vesde'
    s.ve.sigma_min = 0.01                   # D: model.sigma_min
    s.ve.sigma_max = 380.0                  # model.sigma_max (D: 378)
    s.ve.t_min = 1e-5                       # run_lib.py: sampling_eps = 1e-5 for vesde
    m.name, m.size, m.parameterization = "ncsnpp", "ncsnpp_256", "score"  # scale_by_sigma
    m.dropout = 0.0                         # D: model.dropout
    config.loss.name = "dsm"                # D: training.continuous = True
    dsm = config.loss.dsm
    dsm.weighting = "std2"                  # D: training.likelihood_weighting = False
    dsm.importance_sampling = False         # (score_sde has no importance sampling)
    dsm.reduce = "sum"                      # D: training.reduce_mean = False (1/2 * sum)
    dsm.eps = 1e-5                          # losses.py: get_sde_loss_fn(eps=1e-5)
    t.batch_size = 64                       # D: training.batch_size
    t.num_steps = 2_400_000                 # D: training.n_iters = 2400001
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
    pc.snr = 0.075                          # D: sampling.snr
    pc.n_steps_each = 1                     # D: sampling.n_steps_each
    pc.num_steps = 2000                     # D: model.num_scales
    config.eval.feature_extractor, config.eval.enable_bpd = "inception", False
    if arg == "runlocal":
        runlocal.shrink(config)
        config.data.image_size = 32
        config.eval.feature_extractor = "none"
    elif arg:
        raise ValueError(f"configs/lsun_church256_ncsnpp_ve.py: unknown variant '{arg}'; "
                         "available: ['runlocal']")
    return config
