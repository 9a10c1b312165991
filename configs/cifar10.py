"""Published CIFAR-10 experiments (Song et al. 2021; Ho et al. 2020; Song & Ermon 2020;
Kingma et al. 2021; Karras et al. 2022; Liu et al. 2023), one variant each, each following
its authors' own config. Needs CIFAR-10 prepared as array_record:

  pip install "sde_lab[tf]" && tfds build cifar10 --file_format=array_record
  python main.py --config configs/cifar10.py:ncsnpp_ve --workdir runs/ncsnpp_ve
  python main.py --config configs/cifar10.py:ddpmpp_vp,runlocal --workdir /tmp/c10   # laptop

| variant           | SDE / loss         | network          | steps | published result                       |
|-------------------|--------------------|------------------|-------|----------------------------------------|
| ncsnpp_ve         | VE, DSM (1/2 sum)  | ncsnpp_cont      | 1.3M  | FID 2.38, IS 9.83 (Song+21, Table 3)   |
| ncsnpp_ve_deep    | VE, DSM (1/2 sum)  | ncsnpp_cont_deep | 950k  | FID 2.20, IS 9.89 (Song+21, Table 3)   |
| ddpmpp_vp         | VP, DSM (mean)     | ddpmpp_cont      | 1.3M  | FID 2.55, IS 9.58 (Song+21, Table 3)   |
| ddpmpp_subvp      | sub-VP, DSM (mean) | ddpmpp_cont      | 1.3M  | FID 2.61, IS 9.56 (Song+21, Table 3)   |
| ddpmpp_subvp_deep | sub-VP, DSM (mean) | ddpmpp_cont_deep | 950k  | 2.99 bits/dim (Song+21, Table 2)       |
| ddpm              | VP, DDPM eps-MSE   | ddpm cifar10     | 800k  | FID 3.17, IS 9.46 (Ho+20, Table 1)     |
| ncsnv2            | VE, SMLD (1/2 sum) | ncsnv2 cifar10   | 300k  | FID 10.87, IS 8.40 (Song & Ermon 2020) |
| vdm               | learned VP, VLB    | vdm cifar10      | 10M   | 2.65 bits/dim (Kingma+21, Table 1)     |
| ddpmpp_edm        | EDM, EDM loss      | ddpmpp_edm       | 391k  | FID 1.97, Heun 35 NFE (Karras+22, T2)  |
| ncsnpp_edm        | EDM, EDM loss      | ncsnpp_edm       | 391k  | FID 1.98, Heun 35 NFE (Karras+22, T2)  |
| ddpmpp_flow       | flow, flow match.  | ddpmpp_cont      | 1.3M  | FID 2.58, RK45 (Liu+23, 1-rectified)   |

Sources (each the authors' own config):
- ncsnpp_ve(_deep): yang-song/score_sde configs/ve/cifar10_ncsnpp(_deep)_continuous.py
- ddpmpp_*: score_sde configs/{vp,subvp}/cifar10_ddpmpp_continuous.py and
  configs/subvp/cifar10_ddpmpp_deep_continuous.py (all on configs/default_cifar10_configs.py)
- ddpm: hojonathanho/diffusion scripts/run_cifar.py
- ncsnv2: ermongroup/ncsnv2 configs/cifar10.yml
- vdm: google-research/vdm configs/cifar10.py
- ddpmpp_edm, ncsnpp_edm: NVlabs/edm train.py defaults (--precond=edm --arch=ddpmpp|ncsnpp)
- ddpmpp_flow: gnobitab/RectifiedFlow configs/rectified_flow/cifar10_rf_gaussian_ddpmpp.py

Every training and sampling value of the first eight variants carries the source file and
field it comes from; tests/test_published_configs.py compares them with a table of the
sources' values. The losses are the sources' own: score_sde's reduce_mean=False is `reduce="sum"` (1/2 x the
sum over dimensions, so gradient clipping at 1.0 acts at the scale the authors trained at),
its reduce_mean=True is `reduce="mean"`. Append ",runlocal" to any variant for a
one-minute laptop run of the same pipeline.

Where sde_lab differs from the sources (not settable from a config):
- EMA: sde_lab's decay is min(ema_rate, (1 + step) / (10 + step)) (`train.ema_decay`);
  every source uses the constant rate from step 0. The two agree from step 9k (0.999) or
  90k (0.9999); what differs is forgotten long before the end of these runs.
- Final denoising (score_sde's noise_removal, NCSNv2's denoise): sde_lab's `denoise` is
  the Tweedie mean at t_min (one extra NFE); score_sde keeps the last predictor's mean.
- ddpm: the `ddpm` loss draws its 1,000 levels from the VP SDE's marginals at t_i = i/1000,
  not DDPM's discrete chain prod(1 - beta_j) (std up to 4.9% apart at the first level;
  see losses.discrete_dsm_loss). The `ancestral` sampler adds the posterior variance
  beta_tilde where DDPM's CIFAR-10 run samples with beta (model_var_type='fixedlarge');
  Ho et al. (Sec. 3.2) report similar results with either; its 1,000 steps run on
  linspace(1, 1e-3, 1001), DDPM's chain through the levels i/1000. DDPM clips the
  gradient of each TPU replica's share of the batch (tpu_utils.py: grad_clip /
  num_replicas) before summing them; sde_lab clips the whole batch's gradient.
  run_cifar.py sets no step limit: 800k steps is Ho et al.'s App. B.
- ncsnv2: NCSNv2's network is unconditional (s(x) / sigma), so the levels only enter
  through sigma; sde_lab's levels are sigma(t_i) with t_i = linspace(t_min = 1e-5, 1, 232)
  (NCSNv2: exactly 0.01 ... 50; 1e-5 apart in t). The pc grid runs the annealed Langevin
  corrector at num_steps grid times from T down to one step above t_min, so its 232
  levels are sigma(linspace(1, 1e-5, 233)[:-1]) = 50 ... 0.0104, where NCSNv2 anneals
  through its 232 training levels 50 ... 0.01. snr 0.176 is score_sde's translation of
  NCSNv2's step_lr 6.2e-6 (exactly sqrt(step_lr / 2) / sigma_end = 0.17607).
- vdm: VDM's CIFAR-10 config learns a scalar (linear) schedule, gamma_type =
  'learnable_scalar'; sde_lab's learned schedule is VDM's monotone network
  ('learnable_nnet', initialised to the same endpoints). In continuous time the VLB
  depends on the schedule only through its endpoints, which both learn. VDM's AdamW skips
  weight decay on biases and LayerNorm scales; sde_lab's decays every parameter. VDM's
  data sit at the bin centres (-1 + (2k + 1)/256) where sde_lab's are k/255 scaled to
  [-1, 1] (losses.vdm_vlb_terms). VDM's sampler ends at t = 0 and takes the decoder's
  argmax; sde_lab's ancestral sampler ends at t_min = 1e-3 with the Tweedie mean.

EDM (`_edm`): NVlabs/edm `train.py` defaults for `--arch=ddpmpp|ncsnpp --precond=edm`:
batch 512, 200 Mimg (390,625 steps), Adam lr 1e-3 ramped linearly over 10 Mimg (19,531
steps), EMA half-life 0.5 Mimg (0.5 ** (512 / 5e5) = 0.99929 per step), dropout 0.13, no
gradient clipping, SongUNet with channel_mult [2, 2, 2] (the `*_edm` network sizes: EDM's
parameter counts), loss summed over pixels, Heun with 18 levels (num_steps 17 + the final
step = 35 NFE). Differences: EDM's non-leaky augmentation (`--augment=0.12`, with its
9-dim augmentation conditioning) is not implemented, so these train without it, as EDM
with `--augment=0` (and `--xflip=False`, its default: no flips); EDM ramps the EMA
half-life up over the first 5% of images, sde_lab ramps the EMA decay as
min(rate, (1 + step) / (10 + step)); weights are initialised as score_sde's, not with
EDM's Xavier-uniform.

Rectified flow (`ddpmpp_flow`): gnobitab/RectifiedFlow
`configs/rectified_flow/cifar10_rf_gaussian_ddpmpp.py`: score_sde's DDPM++ cont. network
(ddpmpp_cont) with dropout 0.15, Adam lr 2e-4 with 5,000 warmup steps, gradient clipping
1, EMA 0.999999, batch 128, 1.3M steps, random flips, data in [-1, 1], t ~ U over the
path, RK45 at rtol = atol = 1e-5 (here Dopri5, the same Runge-Kutta pair, in diffrax).
Their time runs from noise (t = 0) to data (t = 1) and the network sees 999 t; here t = 0
is data and the network sees 999 t of this direction (the same information). Lipman et
al. 2023's flow matching (OT path) reports FID 6.35 and 2.99 bits/dim with a different
U-Net (ADM's).
"""

from configs import default, runlocal

VARIANTS = ("ncsnpp_ve", "ncsnpp_ve_deep", "ddpmpp_vp", "ddpmpp_subvp", "ddpmpp_subvp_deep",
            "ddpm", "ncsnv2", "vdm", "ddpmpp_edm", "ncsnpp_edm", "ddpmpp_flow")


def _cifar10(config):
    """The data set, logging and evaluation (FID of 50k samples, bits/dim), shared by all."""
    d = config.data
    d.dataset, d.image_size, d.num_channels, d.num_levels = "cifar10", 32, 3, 256
    config.train.log_every_steps = 50
    config.train.checkpoint_every_steps = 50_000
    config.train.sample_every_steps = 50_000
    config.eval.num_samples = 50_000
    config.eval.batch_size = 500
    config.eval.feature_extractor = "inception"
    config.eval.bpd_num_passes = 5          # score_sde run_lib.py: bpd_num_repeats = 5


# ---- score_sde (yang-song/score_sde). "D" = configs/default_cifar10_configs.py; the
# per-experiment files are named in each function; run_lib.py and losses.py are its code.

def _score_sde(config):
    """What every score_sde CIFAR-10 run shares (D), before its experiment file."""
    t, o, d, dsm = config.train, config.optim, config.data, config.loss.dsm
    t.batch_size = 128                      # D: training.batch_size
    t.num_steps = 1_300_000                 # D: training.n_iters = 1300001 (last ckpt: 1.3M)
    o.optimizer = "adam"                    # D: optim.optimizer = 'Adam'
    o.lr = 2e-4                             # D: optim.lr
    o.beta1 = 0.9                           # D: optim.beta1
    o.beta2 = 0.999                         # losses.py: flax.optim.Adam's default beta2
    o.eps = 1e-8                            # D: optim.eps
    o.weight_decay = 0.0                    # D: optim.weight_decay
    o.warmup_steps = 5000                   # D: optim.warmup
    o.grad_clip = 1.0                       # D: optim.grad_clip
    config.model.dropout = 0.1              # D: model.dropout
    d.centered = False                      # D: data.centered
    d.random_flip = True                    # D: data.random_flip
    d.uniform_dequantization = False        # D: data.uniform_dequantization
    config.loss.name = "dsm"                # D: training.continuous = True
    dsm.weighting = "std2"                  # D: training.likelihood_weighting = False
    dsm.importance_sampling = False         # (score_sde has no importance sampling)
    dsm.reduce = "sum"                      # D: training.reduce_mean = False (1/2 * sum)
    dsm.eps = 1e-5                          # losses.py: get_sde_loss_fn(eps=1e-5)
    config.sample.sampler = "pc"            # sampling.method = 'pc' (every file)
    pc = config.sample.pc
    pc.num_steps = 1000                     # D: model.num_scales
    pc.n_steps_each = 1                     # D: sampling.n_steps_each
    pc.snr = 0.16                           # D: sampling.snr


def _ncsnpp_ve(config, deep: bool):
    """score_sde configs/ve/cifar10_ncsnpp_continuous.py (deep: ..._deep_continuous.py)."""
    _score_sde(config)
    s, m, pc = config.sde, config.model, config.sample.pc
    s.name = "ve"                           # training.sde = 'vesde'
    s.ve.sigma_min = 0.01                   # D: model.sigma_min
    s.ve.sigma_max = 50.0                   # D: model.sigma_max
    s.ve.t_min = 1e-5                       # run_lib.py: sampling_eps = 1e-5 for vesde
    m.name, m.parameterization = "ncsnpp", "score"   # model.scale_by_sigma = True
    m.size = "ncsnpp_cont_deep" if deep else "ncsnpp_cont"
    config.optim.ema_rate = 0.999           # model.ema_rate
    pc.predictor = "reverse_diffusion"      # sampling.predictor
    pc.corrector = "langevin"               # sampling.corrector
    if deep:
        config.train.num_steps = 950_000    # training.n_iters = 950001


def _ddpmpp(config, sde: str, deep: bool):
    """score_sde configs/{vp,subvp}/cifar10_ddpmpp_continuous.py (deep:
    configs/subvp/cifar10_ddpmpp_deep_continuous.py)."""
    _score_sde(config)
    s, m, pc = config.sde, config.model, config.sample.pc
    s.name = sde                            # training.sde = 'vpsde' | 'subvpsde'
    s[sde].beta_min = 0.1                   # D: model.beta_min
    s[sde].beta_max = 20.0                  # D: model.beta_max
    s[sde].t_min = 1e-3                     # run_lib.py: sampling_eps = 1e-3 for (sub)vpsde
    m.name, m.parameterization = "ncsnpp", "eps"     # model.scale_by_sigma = False
    m.size = "ddpmpp_cont_deep" if deep else "ddpmpp_cont"
    config.loss.dsm.reduce = "mean"         # training.reduce_mean = True
    config.data.centered = True             # data.centered = True
    config.optim.ema_rate = 0.9999          # model.ema_rate
    pc.predictor = "euler_maruyama"         # sampling.predictor
    pc.corrector = "none"                   # sampling.corrector
    if deep:
        config.train.num_steps = 950_000    # training.n_iters = 950001


def _ddpm(config):
    """Ho et al. 2020: hojonathanho/diffusion scripts/run_cifar.py, the defaults of its
    train() ("R"), with diffusion_tf/tpu_utils/tpu_utils.py ("TPU") and diffusion_tf/utils.py."""
    s, m, o, t, d = config.sde, config.model, config.optim, config.train, config.data
    s.name = "vp"                           # R: beta_schedule = 'linear'
    s.vp.beta_min = 0.1                     # R: beta_start = 1e-4, times T = 1000
    s.vp.beta_max = 20.0                    # R: beta_end = 0.02, times T = 1000
    s.vp.t_min = 1e-3                       # the first of DDPM's levels t = 1/T
    m.name, m.size = "ddpm", "cifar10"      # R: model_name = 'unet2d16b2'
    m.parameterization = "eps"              # R: model_mean_type = 'eps'
    m.dropout = 0.1                         # R: dropout
    config.loss.name = "ddpm"               # R: loss_type = 'mse' (unweighted eps-MSE)
    config.loss.ddpm.num_levels = 1000      # R: num_diffusion_timesteps
    config.loss.ddpm.reduce = "mean"        # diffusion_utils_2.py: nn.meanflat
    t.batch_size = 128                      # R: total_bs
    t.num_steps = 800_000                   # Ho et al. App. B (R sets no limit)
    o.optimizer = "adam"                    # R: optimizer = 'adam'
    o.lr = 2e-4                             # R: lr
    o.beta1, o.beta2 = 0.9, 0.999           # utils.py: tf.train.AdamOptimizer's defaults
    o.eps = 1e-8                            # utils.py: make_optimizer(epsilon=1e-8)
    o.weight_decay = 0.0                    # (none)
    o.warmup_steps = 5000                   # R: warmup
    o.grad_clip = 1.0                       # R: grad_clip
    o.ema_rate = 0.9999                     # TPU: run_training(ema_decay=0.9999)
    d.centered = True                       # TPU: normalize_data = x / 127.5 - 1
    d.random_flip = True                    # R: randflip = 1
    d.uniform_dequantization = False        # (none)
    config.sample.sampler = "ancestral"     # diffusion_utils_2.py: p_sample_loop
    config.sample.ancestral.num_steps = 1000  # R: num_diffusion_timesteps


def _ncsnv2(config):
    """Song & Ermon 2020: ermongroup/ncsnv2 configs/cifar10.yml ("Y"), with its code
    (losses/, runners/ncsn_runner.py); score_sde configs/ve/ncsnv2/cifar10.py agrees except
    for the length (it inherits score_sde's 1.3M steps)."""
    s, m, o, t, d = config.sde, config.model, config.optim, config.train, config.data
    s.name = "ve"                           # Y: model.sigma_dist = geometric
    s.ve.sigma_min = 0.01                   # Y: model.sigma_end
    s.ve.sigma_max = 50.0                   # Y: model.sigma_begin
    s.ve.t_min = 1e-5                       # score_sde run_lib.py: sampling_eps for vesde
    m.name, m.size, m.parameterization = "ncsnv2", "cifar10", "score"  # Y: ngf = 128
    config.loss.name = "smld"               # losses/dsm.py: anneal_dsm_score_estimation
    config.loss.smld.num_levels = 232       # Y: model.num_classes
    config.loss.smld.reduce = "sum"         # losses/dsm.py: 1/2 * sum, anneal_power 2
    t.batch_size = 128                      # Y: training.batch_size
    t.num_steps = 300_000                   # Y: training.n_iters = 300001, sampling.ckpt_id
    o.optimizer = "adam"                    # Y: optim.optimizer = 'Adam'
    o.lr = 1e-4                             # Y: optim.lr
    o.beta1 = 0.9                           # Y: optim.beta1
    o.beta2 = 0.999                         # losses/__init__.py: betas=(beta1, 0.999)
    o.eps = 1e-8                            # Y: optim.eps
    o.weight_decay = 0.0                    # Y: optim.weight_decay
    o.warmup_steps = 0                      # ncsn_runner.py: no warmup
    o.grad_clip = -1.0                      # ncsn_runner.py: no clipping (off)
    o.ema_rate = 0.999                      # Y: model.ema_rate
    d.centered = False                      # Y: data.rescaled = false ([0, 1])
    d.random_flip = True                    # Y: data.random_flip
    d.uniform_dequantization = False        # Y: data.uniform_dequantization
    config.sample.sampler = "pc"
    pc = config.sample.pc
    pc.predictor = "none"                   # NCSNv2 samples by annealed Langevin only
    pc.corrector = "annealed_langevin"      # models/__init__.py: anneal_Langevin_dynamics
    pc.n_steps_each = 5                     # Y: sampling.n_steps_each
    pc.snr = 0.176                          # Y: sampling.step_lr = 6.2e-6 (score_sde's snr)
    pc.num_steps = 232                      # Y: model.num_classes
    pc.denoise = True                       # Y: sampling.denoise


def _vdm(config):
    """Kingma et al. 2021: google-research/vdm configs/cifar10.py ("V"), with its code
    (experiment.py, experiment_vdm.py, dataset.py)."""
    s, m, o, t, d = config.sde, config.model, config.optim, config.train, config.data
    s.name = "vdm"
    s.vdm.learned = True                    # V: model.gamma_type = 'learnable_scalar'
    s.vdm.gamma_min = -13.3                 # V: model.gamma_min
    s.vdm.gamma_max = 5.0                   # V: model.gamma_max
    m.name, m.size, m.parameterization = "vdm", "cifar10", "eps_gamma"
    m.dropout = 0.1                         # V: model.sm_pdrop
    config.loss.name = "vdm_vlb"            # V: model.sm_n_timesteps = 0 (continuous)
    config.loss.vdm_vlb.antithetic = True   # V: model.antithetic_time_sampling
    config.loss.vdm_vlb.t_min = 0.0         # experiment_vdm.py: t ~ U[0, 1]
    t.batch_size = 128                      # V: training.batch_size_train
    t.num_steps = 10_000_000                # V: training.num_steps_train
    o.optimizer = "adamw"                   # V: optimizer.name
    o.lr = 2e-4                             # V: optimizer.learning_rate (lr_decay=False)
    o.beta1 = 0.9                           # V: optimizer.args.b1
    o.beta2 = 0.99                          # V: optimizer.args.b2
    o.eps = 1e-8                            # V: optimizer.args.eps
    o.weight_decay = 0.01                   # V: optimizer.args.weight_decay
    o.warmup_steps = 100                    # V: training.num_steps_lr_warmup
    o.grad_clip = -1.0                      # experiment.py: no optimizer.gradient_clip_norm
    o.ema_rate = 0.9999                     # V: optimizer.ema_rate
    d.centered = True                       # V: data in [-1, 1] (VDM's encoder)
    d.random_flip = False                   # dataset.py: _preprocess_cifar10 (no augment)
    d.uniform_dequantization = False        # (the VLB models discrete data)
    config.sample.sampler = "ancestral"     # model_vdm.py: sample from q(z_s | z_t, x_hat)
    config.sample.ancestral.num_steps = 1000  # experiment_vdm.py: T = 1000 when
                                              # sm_n_timesteps = 0


def _edm(config, size):
    """Karras et al. 2022's CIFAR-10 training (config F without augmentation; see above)."""
    o, d = config.optim, config.data
    config.sde.name = "edm"
    o.optimizer, o.beta1, o.beta2, o.eps = "adam", 0.9, 0.999, 1e-8  # torch.optim.Adam
    o.weight_decay = 0.0
    d.centered, d.uniform_dequantization = True, False  # images in [-1, 1]
    config.model.name, config.model.size, config.model.parameterization = "ncsnpp", size, "edm"
    config.model.dropout = 0.13               # train.py --dropout (also the *_edm sizes')
    config.loss.name = "edm"
    config.loss.edm.reduce = "sum"  # EDM sums over pixels (here 1/2 x; Adam ignores it)
    config.train.batch_size = 512
    config.train.num_steps = 390_625          # 200 Mimg
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 19_531        # 10 Mimg
    config.optim.ema_rate = 0.5 ** (512 / 500_000)  # half-life 0.5 Mimg
    config.optim.grad_clip = 0.0
    config.data.random_flip = False
    config.sample.sampler = "heun"
    config.sample.heun.num_steps = 17         # 18 levels, 35 NFE


def _flow(config):
    """Liu et al. 2023's 1-rectified flow with DDPM++ (gnobitab/RectifiedFlow: score_sde's
    CIFAR-10 defaults, data centred)."""
    _score_sde(config)
    config.data.centered = True
    config.sde.name = "flow"
    m = config.model
    m.name, m.size, m.parameterization, m.dropout = "ncsnpp", "ddpmpp_cont", "velocity", 0.15
    config.loss.name = "flow_matching"
    config.optim.ema_rate = 0.999999
    config.sample.sampler = "ode"
    ode = config.sample.ode
    ode.solver, ode.rtol, ode.atol = "dopri5", 1e-5, 1e-5


def _apply(config, variant):
    if variant.endswith("_edm"):
        _edm(config, variant)
    elif variant == "ddpmpp_flow":
        _flow(config)
    elif variant.startswith("ncsnpp_ve"):
        _ncsnpp_ve(config, deep=variant.endswith("deep"))
    elif variant.startswith("ddpmpp"):
        _ddpmpp(config, "subvp" if "subvp" in variant else "vp", deep=variant.endswith("deep"))
    elif variant == "ddpm":
        _ddpm(config)
    elif variant == "ncsnv2":
        _ncsnv2(config)
    elif variant == "vdm":
        _vdm(config)


def get_config(arg: str | None = None):
    tokens = [t for t in (arg or "ddpmpp_vp").split(",") if t]
    variants = [t for t in tokens if t != "runlocal"] or ["ddpmpp_vp"]
    if len(variants) != 1 or variants[0] not in VARIANTS:
        raise ValueError(f"configs/cifar10.py: unknown variant '{arg}'; available: "
                         f"{list(VARIANTS)}, each optionally with ',runlocal'")
    config = default.get_default()
    _cifar10(config)
    _apply(config, variants[0])
    if "runlocal" in tokens:
        runlocal.shrink(config)
        config.eval.feature_extractor = "none"
    return config
