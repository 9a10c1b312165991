"""Published CIFAR-10 experiments (Song et al. 2021; Ho et al. 2020; Song & Ermon 2020;
Kingma et al. 2021; Karras et al. 2022; Liu et al. 2023), one variant each. Needs CIFAR-10 prepared as array_record:

  pip install "sde_lab[tf]" && tfds build cifar10 --file_format=array_record
  python main.py --config configs/cifar10.py:ncsnpp_ve --workdir runs/ncsnpp_ve
  python main.py --config configs/cifar10.py:ddpmpp_vp,runlocal --workdir /tmp/c10   # laptop

| variant              | SDE / loss            | network            | published result                      |
|----------------------|-----------------------|--------------------|---------------------------------------|
| ncsnpp_ve            | VE, DSM               | ncsnpp_cont        | FID 2.38, IS 9.83 (Song+21, Table 3)  |
| ncsnpp_ve_deep       | VE, DSM               | ncsnpp_cont_deep   | FID 2.20, IS 9.89 (Song+21, Table 3)  |
| ddpmpp_vp            | VP, DSM               | ddpmpp_cont        | FID 2.55, IS 9.58 (Song+21, Table 3)  |
| ddpmpp_subvp         | sub-VP, DSM           | ddpmpp_cont        | FID 2.61, IS 9.56 (Song+21, Table 3)  |
| ddpmpp_subvp_deep    | sub-VP, likelihood wt | ddpmpp_cont_deep   | 2.99 bits/dim (Song+21, Table 2)      |
| ddpm                 | VP, DDPM eps-MSE      | ddpm cifar10       | FID 3.17, IS 9.46 (Ho+20, Table 1)    |
| ncsnv2               | VE, SMLD              | ncsnv2 cifar10     | FID 10.87, IS 8.40 (Song & Ermon 2020)|
| vdm                  | learned VP, VLB       | vdm cifar10        | 2.65 bits/dim (Kingma+21, Table 1)    |
| ddpmpp_edm           | EDM, EDM loss         | ddpmpp_edm         | FID 1.97, Heun 35 NFE (Karras+22, T2) |
| ncsnpp_edm           | EDM, EDM loss         | ncsnpp_edm         | FID 1.98, Heun 35 NFE (Karras+22, T2) |
| ddpmpp_flow          | flow, flow matching   | ddpmpp_cont        | FID 2.58, RK45 (Liu+23, 1-rectified)  |

Score_sde's variants train 1.3M steps at batch 128 as in the papers (8 TPU v3 cores,
days); the EDM ones 200 Mimg at batch 512 as NVlabs/edm (8 V100s, ~2 days); rectified
flow 1.3M steps at batch 128. Append ",runlocal" to any variant for a one-minute laptop
run of the same pipeline.

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
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.num_channels = 3
    config.data.num_levels = 256
    config.data.random_flip = True
    config.train.batch_size = 128
    config.train.num_steps = 1_300_000
    config.train.log_every_steps = 50
    config.train.checkpoint_every_steps = 50_000
    config.train.sample_every_steps = 50_000
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.ema_rate = 0.9999
    config.eval.num_samples = 50_000
    config.eval.batch_size = 500
    config.eval.feature_extractor = "inception"
    config.eval.bpd_num_passes = 5
    config.sample.sampler = "pc"


def _edm(config, size):
    """Karras et al. 2022's CIFAR-10 training (config F without augmentation; see above)."""
    config.sde.name = "edm"
    config.model.name, config.model.size, config.model.parameterization = "ncsnpp", size, "edm"
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
    """Liu et al. 2023's 1-rectified flow with DDPM++ (gnobitab/RectifiedFlow)."""
    config.sde.name = "flow"
    m = config.model
    m.name, m.size, m.parameterization, m.dropout = "ncsnpp", "ddpmpp_cont", "velocity", 0.15
    config.loss.name = "flow_matching"
    config.optim.ema_rate = 0.999999
    config.sample.sampler = "ode"
    ode = config.sample.ode
    ode.solver, ode.rtol, ode.atol = "dopri5", 1e-5, 1e-5


def _apply(config, variant):
    m, s, loss, pc = config.model, config.sde, config.loss, config.sample.pc
    if variant.endswith("_edm"):
        _edm(config, variant)
    elif variant == "ddpmpp_flow":
        _flow(config)
    elif variant.startswith("ncsnpp_ve"):
        s.name, s.ve.sigma_max, s.ve.t_min = "ve", 50.0, 1e-5
        config.data.centered = False  # score_sde's VE models see [0, 1] data
        m.name, m.parameterization = "ncsnpp", "score"
        m.size = "ncsnpp_cont_deep" if variant.endswith("deep") else "ncsnpp_cont"
        pc.predictor, pc.corrector = "reverse_diffusion", "langevin"
    elif variant.startswith("ddpmpp"):
        s.name = "subvp" if "subvp" in variant else "vp"
        m.name, m.parameterization = "ncsnpp", "eps"
        m.size = "ddpmpp_cont_deep" if variant.endswith("deep") else "ddpmpp_cont"
        m.dropout = 0.1
        pc.predictor, pc.corrector = "euler_maruyama", "none"
        if variant == "ddpmpp_subvp_deep":
            loss.dsm.weighting, loss.dsm.importance_sampling = "likelihood", True
            config.data.uniform_dequantization = True
    elif variant == "ddpm":
        s.name, m.name, m.size, m.parameterization = "vp", "ddpm", "cifar10", "eps"
        loss.name, m.dropout = "ddpm", 0.1
        config.sample.sampler = "ancestral"
    elif variant == "ncsnv2":
        s.name, s.ve.sigma_min, s.ve.sigma_max = "ve", 0.01, 50.0
        config.data.centered = False
        m.name, m.size, m.parameterization = "ncsnv2", "cifar10", "score"
        loss.name, loss.smld.num_levels = "smld", 232
        pc.predictor, pc.corrector = "none", "annealed_langevin"
        pc.n_steps_each, pc.snr, pc.num_steps = 5, 0.176, 232
    elif variant == "vdm":
        s.name, s.vdm.learned = "vdm", True
        m.name, m.size, m.parameterization = "vdm", "cifar10", "eps_gamma"
        loss.name = "vdm_vlb"
        config.sample.sampler = "ancestral"


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
