"""The digits job (configs/digits.py: same network, data, optimizer and 1,500 steps at
batch 128) trained by conditional flow matching (Lipman et al. 2023; rectified flow, Liu
et al. 2023): the `flow` path x_t = (1 - t) x_0 + t z (T = 0.999), a network predicting the
velocity z - x_0 (parameterization `velocity`, conditioned on 999 t as rectified flow's
DDPM++), the flow-matching loss with t ~ U[eps, T], and the same sampler as the VP job
(DPM-Solver++(2M), 50 NFE).

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
    return digits.variant(config, arg, "configs/digits_flow.py")
