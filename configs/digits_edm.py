"""The digits job (configs/digits.py: same network, data, optimizer and 1,500 steps at
batch 128) trained the EDM way (Karras et al. 2022): the `edm` SDE (sigma 0.002..80 on
EDM's rho = 7 time grid, T = 1), EDM's preconditioning (parameterization `edm`,
sigma_data 0.5), EDM's loss (ln sigma ~ N(-1.2, 1.2^2), lambda(sigma) weighting) and EDM's
deterministic Heun sampler (17 steps on the rho grid + the final step to sigma = 0: 35 NFE,
EDM's CIFAR-10 setting).

  python main.py --config configs/digits_edm.py --workdir /tmp/digits_edm
  python main.py --config configs/digits_edm.py:runlocal --workdir /tmp/digits_edm_local

Eval as configs/digits.py: digits FID of 1,000 samples, test bits/dim through the same
PF-ODE likelihood. Expected result and time: the results table in README.md.
"""

from configs import digits


def get_config(arg: str | None = None):
    config = digits.get_config()
    config.sde.name = "edm"
    config.model.parameterization = "edm"
    config.loss.name = "edm"
    config.sample.sampler = "heun"
    config.sample.heun.num_steps = 17
    return digits.variant(config, arg, "configs/digits_edm.py")
