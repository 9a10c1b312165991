"""The digits job (configs/digits.py: same network, data, optimizer and 1,500 steps at
batch 128) trained by conditional flow matching (Lipman et al. 2023; rectified flow, Liu
et al. 2023): the `flow` path x_t = (1 - t) x_0 + t z (T = 0.999), a network predicting the
velocity z - x_0 (parameterization `velocity`, conditioned on 999 t as rectified flow's
DDPM++), the flow-matching loss with t ~ U[eps, T], and DPM-Solver++(2M) at 50 NFE
(the VP job's sampler until issue #15).

  python main.py --config configs/digits_flow.py --workdir /tmp/digits_flow
  python main.py --config configs/digits_flow.py:runlocal --workdir /tmp/digits_flow_local

Eval as configs/digits.py: digits FID of 1,000 samples, test bits/dim through the same
PF-ODE likelihood (the flow's ODE is the probability-flow ODE of `flow`). Expected result
and time: the results table in README.md.
"""

from configs import digits


def get_config(arg: str | None = None):
    config = digits.get_config()
    config.sde.name = "flow"
    config.model.parameterization = "velocity"
    config.loss.name = "flow_matching"
    # DPM-Solver++ 50 (the README's flow row and the docstring's), pinned so that it does
    # not move with digits.py's default sampler (reverse diffusion 200 since issue #15).
    config.sample.sampler = "dpm_solver++"
    config.sample.dpm_solver_pp.num_steps = 50
    return digits.variant(config, arg, "configs/digits_flow.py")
