"""Every configuration field of sde_lab, defined once, with its meaning.

Experiment files (`configs/<name>.py`) start from `get_default()` and override a handful of
fields. Each `get_config(arg)` accepts the variant `runlocal`, which shrinks the run so it
finishes on a laptop CPU in under a minute. Configs are locked by main.py: a mistyped
override fails with the closest valid field names.

Choices backed by a registry (the SDE, the loss, the sampler) have a `name` field and one
section per registered entry holding all of that entry's keyword options with their
documented defaults, read from the code's own signatures (so a new sampler's options are
config fields with no edit here):

    config.sde.name = "ve";          config.sde.ve.sigma_max = 50.0
    config.loss.name = "dsm";        config.loss.dsm.weighting = "likelihood"
    config.sample.sampler = "pc";    config.sample.pc.snr = 0.16
    --config.sample.sampler=dpm_solver++ --config.sample.dpm_solver_pp.num_steps=20

Section names are the registry names with "++" spelled "_pp". Only the chosen entry's
section is read; a changed field in another entry's section is an error, not silently
dropped.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from sde_lab import losses, samplers, sdes
from sde_lab.registry import section_name

# Options the runner derives from other fields, never set by hand.
DERIVED = {("loss", "vdm_vlb"): ("num_levels",)}   # = data.num_levels


def option_sections(registry, kind: str) -> ml_collections.ConfigDict:
    """One ConfigDict per registry entry with its scalar keyword options and defaults."""
    out = ml_collections.ConfigDict()
    for name in registry.available():
        section = ml_collections.ConfigDict()
        for option, spec in registry.options(name).items():
            if option in DERIVED.get((kind, name), ()):
                continue
            section[option] = (placeholder(spec.type) if spec.default is None
                               else spec.type(spec.default))
        out[section_name(name)] = section
    return out


def get_default() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42                      # all PRNG keys derive from this and fold_in(step)

    # ---- Forward SDE (sde_lab.sdes): vp | subvp | ve | cosine_vp | vdm | edm | flow ----
    # Defaults are score_sde's CIFAR-10 values (VP/sub-VP beta 0.1..20, VE sigma 0.01..50),
    # EDM's (sigma 0.002..80 on its rho = 7 grid) and the flow path's (T = 0.999);
    # t_min is the smallest sampling time (score_sde: 1e-3 VP-type, 1e-5 VE). vdm with
    # learned=True trains VDM's schedule network (needs loss.name='vdm_vlb').
    config.sde = option_sections(sdes.REGISTRY, "sde")
    config.sde.name = "vp"

    # ---- Score network (sde_lab.models) ----
    config.model = model = ml_collections.ConfigDict()
    model.name = "ncsnpp"                 # ncsnpp | ddpm | ncsnv2 | vdm | mlp
    model.size = "digits"                 # a named size of models.sizes(name)
    model.parameterization = "eps"        # eps | eps_gamma | score | x0 | edm | velocity | v
    model.dropout = -1.0                  # >= 0 overrides the size's dropout rate
    model.num_classes = 0                 # > 0: class-conditional network (labels from data)
    model.remat = False                   # recompute residual blocks in the backward pass
                                          # (less activation memory, ~1/3 more compute; same
                                          # results); not for mlp
    model.conv_backward = "auto"          # kernel gradients of stride-1 convs: xla
                                          # (transposed conv) | gemm (one matmul per tap,
                                          # faster with YNNPACK's CPU convolutions) | auto
                                          # (gemm where XLA:CPU uses YNNPACK's convolutions,
                                          # see parallel.cpu_convolutions); same results up
                                          # to rounding; not for mlp

    # ---- Loss (sde_lab.losses): dsm | ddpm | smld | vdm_vlb | edm | flow_matching ----
    # dsm: continuous-time DSM (weighting std2 | likelihood, importance_sampling, reduce
    # mean | sum, eps = smallest training time); ddpm / smld: discrete levels; vdm_vlb:
    # VDM's continuous-time bound (its num_levels is data.num_levels); edm: EDM's log-normal
    # sigma and lambda(sigma) (p_mean, p_std, sigma_data); flow_matching: velocity regression
    # with t uniform or logit-normal (time_sampling).
    config.loss = option_sections(losses.REGISTRY, "loss")
    config.loss.name = "dsm"

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
    data.exclude_classes = ""             # comma-separated labels dropped from train_split
                                          # only (leave-classes-out anomaly detection: the
                                          # eval split keeps them), e.g. "3" or "3,5"

    # ---- Training (sde_lab.train) ----
    config.train = train = ml_collections.ConfigDict()
    train.batch_size = 128                # global batch, divisible by the device count
    train.grad_accum_steps = 1            # > 1: the batch's gradient is summed over this many
                                          # micro-batches in sequence (less memory, same step)
    train.num_steps = 4000
    train.steps_per_dispatch = 1          # train steps fused into one jitted call (lax.scan;
                                          # measured ~20x slower per step on XLA:CPU for
                                          # conv nets, so keep 1 on CPU; for TPU/GPU hosts)
    train.log_every_steps = 100
    train.checkpoint_every_steps = 1000   # 0: only at the end (and on SIGTERM / Ctrl-C)
    train.sample_every_steps = 0          # 0: no sample grids during training
    train.max_to_keep = 3                 # checkpoints kept (the newest), >= 1
    train.eval_at_end = True              # run the eval (samples, FID, bits/dim) when done
    train.compute_dtype = "float32"       # compute dtype of the train step: float32 |
                                          # bfloat16 | float16 (convs and matmuls; params,
                                          # optimizer state, EMA and checkpoints stay float32,
                                          # and so do norm statistics, softmax and the loss;
                                          # sampling and bits/dim always run in float32).
                                          # float16 has no loss scaling: prefer bfloat16
    train.label_dropout = 0.0             # classifier-free guidance: probability that an
                                          # example's label is replaced by "no label" (Ho &
                                          # Salimans: 0.1-0.2); needs model.num_classes > 0

    # ---- Optimizer (optax) ----
    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "adam"              # adam | adamw
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0              # adamw only
    optim.warmup_steps = 5000             # linear warmup from 0 (score_sde: 5000)
    optim.schedule = "constant"           # after warmup: constant (score_sde) | cosine | linear
                                          # decay to min_lr_ratio * lr at train.num_steps
    optim.min_lr_ratio = 0.0
    optim.grad_clip = 1.0                 # global-norm clipping; <= 0 disables
    optim.ema_rate = 0.9999               # EMA of parameters used for sampling/eval

    # ---- Sampling (sde_lab.samplers): the sampler and one section of options each ----
    config.sample = option_sections(samplers.REGISTRY, "sampler")
    config.sample.sampler = "pc"          # any name of samplers.available()
    config.sample.num_samples = 64        # --mode sample: how many
    config.sample.batch_size = 64         # per sampling call (global)
    # Class-conditional sampling (class-conditional models, or classifier guidance):
    config.sample.label = -1              # the class 0..K-1, or -1 for all classes (sample i
                                          # gets class i mod K; grids get one row per class)
    config.sample.guidance = "none"       # none | classifier_free (a model trained with
                                          # train.label_dropout > 0) | classifier (the
                                          # classifier of --mode train_classifier)
    config.sample.guidance_scale = 1.0    # classifier_free: uncond + s (cond - uncond), 0 =
                                          # unconditional, 1 = conditional; classifier:
                                          # uncond + s grad_x log p_t(y | x)

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
    ev.source_workdir = ""                # --mode eval: read the checkpoints of this trained
                                          # run (its config must match) and write results
                                          # here, e.g. one workdir per sampler compared

    # ---- Noise-conditional classifier p_t(y | x_t) (--mode train_classifier; guidance) ----
    # Trained on data noised by the run's SDE; its checkpoints and accuracy table go to
    # <workdir>/classifier/ (or `workdir`). Not part of the score model's run: these
    # fields may change between starts of the score model (they define the classifier's).
    config.classifier = clf = ml_collections.ConfigDict()
    clf.size = "digits"                   # a size of models.sizes("classifier")
    clf.num_classes = 0                   # 0: model.num_classes (set it for an unconditional model)
    clf.batch_size = 128
    clf.num_steps = 2000
    clf.lr = 1e-3                         # Adam(W), warmup then constant, grad clip 1
    clf.warmup_steps = 100
    clf.weight_decay = 0.0                # > 0: AdamW
    clf.ema_rate = 0.999                  # the EMA is what guidance and the table use
    clf.eps = 1e-5                        # training times t ~ U[eps, T]
    clf.sigma_data = 0.5                  # input scale (guidance.classifier_input)
    clf.log_every_steps = 100
    clf.checkpoint_every_steps = 500      # 0: only at the end (and on SIGTERM / Ctrl-C)
    clf.eval_times = ""                   # t of the accuracy table, comma-separated; "" =
                                          # the SDE's t_min and T/10, 2T/10, ..., T
    clf.eval_repeats = 4                  # noise draws per held-out example and t
    clf.workdir = ""                      # "" = <workdir>/classifier; another run's to reuse it

    # ---- Inverse problems and anomaly scores (sde_lab.inverse_runner): --mode inpaint |
    # colorize | sdedit | denoise | score on the eval split, with the newest checkpoint and
    # the configured sampler (sample.sampler and its section). Not run-defining. ----
    config.inverse = inv = ml_collections.ConfigDict()
    inv.num_examples = 0                  # eval-split examples (0: all; toy sets: 4,096 draws)
    inv.batch_size = 100                  # examples per compiled call (the last is padded)
    inv.mask = "half"                     # inpaint: half (lower half hidden) | center (central
                                          # square of half the side hidden) | random
    inv.mask_fraction = 0.5               # random: fraction of pixels hidden, per example
    inv.mask_file = ""                    # .npy of 0/1 (1 = observed), the shape of one example,
                                          # one image [H, W] or all [N, ...]; replaces inv.mask
    inv.method = "replacement"            # inpaint / colorize: replacement (score_sde) | guidance
    inv.guidance_scale = 1.0              # guidance: scale of the reconstruction guidance
    inv.data_var = 1.0                    # guidance: data variance, model units (p(y|x_t)'s width)
    inv.guidance_min_alpha = 0.1          # guidance: off where the mean coefficient alpha(t) is
                                          # below this (VP: t > 0.68): a learned network's x0
                                          # estimate is too noisy there to guide by (0: every t)
    inv.noise_std = 0.1                   # denoise: std of the added noise in DATA units (images
                                          # in [0, 1]; vector data as is); model units are scaled
    inv.num_posterior_samples = 4         # denoise: posterior samples averaged per example (needs
                                          # a reverse-SDE sample.sampler, e.g. ancestral); 0: none
    inv.t0 = 0.5                          # sdedit: noising time in (0, T]
    inv.score_methods = "bpd,reconstruction,score_norm,score_norm_gmm"  # --mode score, any of
                                          # these; score_norm_gmm: a Gaussian mixture fitted to
                                          # the train split's per-level score norms (Mahmood
                                          # et al. 2021); bpd uses eval.bpd_* options
    inv.anomaly_classes = ""              # labels that mark anomalies for the AUROC; "" =
                                          # data.exclude_classes (none: scores only)
    inv.reconstruction_t0s = "0.1,0.3,0.5"  # reconstruction: SDEdit times, errors averaged
    inv.score_norm_levels = 10            # score_norm(_gmm): noise levels, uniform in log-SNR
    inv.gmm_components = 4                # score_norm_gmm: mixture components

    # ---- Logging beyond metrics.jsonl and TensorBoard (sde_lab.trackers) ----
    config.log = log = ml_collections.ConfigDict()
    log.tracker = ""                      # "" | wandb (only if the package is installed)
    log.project = "sde_lab"               # the tracker's project

    # ---- Parallelism (sde_lab.parallel) ----
    config.parallel = par = ml_collections.ConfigDict()
    par.mode = "jit"                      # jit (NamedSharding over ('data',)) | pmap
    par.coordinator_address = ""          # multi-host: host:port; "" = from Slurm/TPU env
    par.num_processes = 0                 # multi-host: 0 = from the environment
    par.process_id = -1                   # multi-host: -1 = from the environment
    par.compilation_cache = "auto"        # directory for JAX's persistent compilation cache
                                          # (created if missing): a restart, eval or sweep
                                          # run of the same program loads it instead of
                                          # compiling. "auto": $SDE_LAB_COMPILATION_CACHE,
                                          # else $JAX_COMPILATION_CACHE_DIR, else
                                          # ~/.cache/sde_lab/jax_compilation_cache;
                                          # "none": no cache
    par.cpu_convolutions = "xla"          # XLA:CPU's kernels for convolutions: xla (its
                                          # own) | ynnpack (jaxlib's default). On a 2-core
                                          # AVX2 CPU YNNPACK's conv kernel gradients run at
                                          # half the rate and the DDPM++ train step takes
                                          # 1.25x as long (README "Training speed on CPU").
                                          # Applied before JAX starts; an XLA_FLAGS naming
                                          # --xla_cpu_experimental_ynn_fusion_type wins
    par.cpu_scheduler = "memory"          # XLA:CPU's instruction scheduler: memory (fewest
                                          # live buffers) | concurrency | default (XLA's
                                          # policy, which takes concurrency for DDPM++'s
                                          # step: 1.24 GiB of temporaries against 0.84, no
                                          # faster on 2 cores). Same results bitwise.
                                          # An XLA_FLAGS naming --xla_cpu_scheduler_type wins
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The defaults alone (the digits experiment); see configs/digits.py for its variants."""
    if arg:
        raise ValueError(f"configs/default.py: unknown variant '{arg}'; available: none")
    return get_default()
