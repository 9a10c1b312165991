"""Every configuration field of sde_lab, defined once, with its meaning.

Experiment files (`configs/<name>.py`) start from `get_default()` and override a handful of
fields. Each `get_config(arg)` accepts the variant `runlocal`, which shrinks the run so it
finishes on a laptop CPU in under a minute. Configs are locked by main.py: a mistyped
override fails with the closest valid field names.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_default() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42                      # all PRNG keys derive from this and fold_in(step)

    # ---- Forward SDE (sde_lab.sdes) ----
    config.sde = sde = ml_collections.ConfigDict()
    sde.name = "vp"                       # vp | subvp | ve | cosine_vp
    sde.beta_min = 0.1                    # vp, subvp
    sde.beta_max = 20.0                   # vp, subvp
    sde.sigma_min = 0.01                  # ve
    sde.sigma_max = 50.0                  # ve (score_sde: max pairwise data distance)
    sde.log_snr_min = -20.0               # cosine_vp
    sde.log_snr_max = 20.0                # cosine_vp
    sde.t_min = 1e-3                      # smallest sampling time (score_sde: 1e-3 VP, 1e-5 VE)

    # ---- Score network (sde_lab.models) ----
    config.model = model = ml_collections.ConfigDict()
    model.name = "ncsnpp"                 # ncsnpp | ddpm | ncsnv2 | vdm | mlp
    model.size = "digits"                 # a named size of models.sizes(name)
    model.parameterization = "eps"        # eps | score | x0 | edm (sde_lab.parameterization)
    model.dropout = -1.0                  # >= 0 overrides the size's dropout rate
    model.num_classes = 0                 # > 0: class-conditional network (labels from data)

    # ---- Data (sde_lab.data) ----
    config.data = data = ml_collections.ConfigDict()
    data.dataset = "digits"               # digits | toy:<gmm|checkerboard|moons> | a TFDS name
    data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data_dir
    data.center_crop = 0                  # > 0: central square crop before resizing
    data.image_size = 8                   # images are resized to this (square)
    data.num_channels = 1
    data.num_levels = 17                  # quantization levels of the raw data (256 for uint8)
    data.centered = True                  # scale to [-1, 1] (else [0, 1])
    data.random_flip = False              # horizontal flips for training
    data.uniform_dequantization = False   # (k + u) / L instead of k / (L - 1)
    data.train_split = "train"
    data.eval_split = "test"
    data.toy_dim = 2                      # dimension of toy:<...> vector data

    # ---- Training (sde_lab.train) ----
    config.train = train = ml_collections.ConfigDict()
    train.batch_size = 128                # global batch, divisible by the device count
    train.num_steps = 4000
    train.loss = "dsm"                    # dsm | ddpm | smld | vdm_vlb (sde_lab.losses)
    train.weighting = "std2"              # dsm: std2 | likelihood
    train.importance_sampling = False     # dsm with likelihood weighting only
    train.reduce = "mean"                 # mean | sum over data dimensions
    train.t_eps = 1e-5                    # smallest training time of the continuous loss
    train.num_levels = 1000               # ddpm / smld: number of discrete noise levels
    train.steps_per_dispatch = 1          # train steps fused into one jitted call (lax.scan;
                                          # measured ~20x slower per step on XLA:CPU for
                                          # conv nets, so keep 1 on CPU; for TPU/GPU hosts)
    train.log_every_steps = 100
    train.checkpoint_every_steps = 1000
    train.sample_every_steps = 0          # 0: no sample grids during training
    train.max_to_keep = 3                 # checkpoints kept (the newest)
    train.eval_at_end = True              # run the eval (samples, FID, bits/dim) when done

    # ---- Optimizer (optax) ----
    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "adam"              # adam | adamw
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.weight_decay = 0.0              # adamw only
    optim.warmup_steps = 5000             # linear warmup from 0 (score_sde: 5000)
    optim.grad_clip = 1.0                 # global-norm clipping; <= 0 disables
    optim.ema_rate = 0.9999               # EMA of parameters used for sampling/eval

    # ---- Sampling (sde_lab.samplers) ----
    config.sample = sample = ml_collections.ConfigDict()
    sample.sampler = "pc"                 # any name of samplers.make
    sample.num_steps = 1000               # fixed-step samplers
    sample.predictor = "reverse_diffusion"  # pc only
    sample.corrector = "langevin"         # pc only: langevin | annealed_langevin | none
    sample.snr = 0.16                     # pc corrector signal-to-noise ratio
    sample.n_steps_each = 1               # pc corrector steps per noise level
    sample.order = placeholder(int)       # dpm_solver++ (2, 3), unipc (1-4); None: default
    sample.sigma_max = placeholder(float)  # heun, dpm_solver++, unipc: grid start (EDM's)
    sample.rtol = 1e-5                    # ode
    sample.atol = 1e-5                    # ode
    sample.denoise = True                 # final Tweedie denoising step where defined
    sample.num_samples = 64               # --mode sample: how many
    sample.batch_size = 64                # per sampling call (global)

    # ---- Evaluation (sde_lab.evaluate) ----
    config.eval = ev = ml_collections.ConfigDict()
    ev.num_samples = 1000                 # samples for FID/KID/IS
    ev.batch_size = 250                   # global batch for sampling and features
    ev.feature_extractor = "digits"       # digits | inception | none
    ev.inception_weights = ""             # .npz from `python -m sde_lab.metrics.convert`
    ev.reference_stats = ""               # .npz stats file; "" computes them from eval_split
    ev.enable_bpd = True                  # bits/dim on eval_split via the PF-ODE likelihood
    ev.bpd_num_passes = 1                 # dequantization passes (score_sde used 5)
    ev.bpd_num_examples = 0               # 0: the whole split
    ev.bpd_rtol = 1e-5
    ev.bpd_atol = 1e-5
    ev.bpd_estimator = "hutchinson"       # hutchinson | exact
    ev.bpd_t_min = 1e-5                   # PF-ODE starts here (score_sde: 1e-5 for all SDEs)
    ev.checkpoints = ""                   # comma-separated steps; "" = each one as it appears
    ev.wait_seconds = 0                   # > 0: keep polling for new checkpoints this long

    # ---- Parallelism (sde_lab.parallel) ----
    config.parallel = par = ml_collections.ConfigDict()
    par.mode = "jit"                      # jit (NamedSharding over ('data',)) | pmap
    par.coordinator_address = ""          # multi-host: host:port; "" = from Slurm/TPU env
    par.num_processes = 0                 # multi-host: 0 = from the environment
    par.process_id = -1                   # multi-host: -1 = from the environment
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The defaults alone (the digits experiment); see configs/digits.py for its variants."""
    del arg
    return get_default()
