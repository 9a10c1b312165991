"""CIFAR-10, flow matching / 1-rectified flow (Liu et al. 2023) with DDPM++: the `flow`
path, velocity prediction, the flow-matching loss (t uniform), network ddpmpp_cont with
dropout 0.15, adaptive Dopri5 ODE sampling at rtol = atol = 1e-5.
Published: FID 2.58 (1-rectified flow, RK45; gnobitab/RectifiedFlow README and Liu+23,
Table 1). Lipman et al. 2023's OT flow matching: FID 6.35, 2.99 bits/dim (ADM's U-Net).

  python main.py --config configs/cifar10_ddpmpp_flow.py --workdir runs/cifar10_ddpmpp_flow
  python main.py --config configs/cifar10_ddpmpp_flow.py:runlocal --workdir /tmp/cifar10_ddpmpp_flow

CIFAR-10 must be prepared first: pip install "sde_lab[tf]" && tfds build cifar10
--file_format=array_record. Settings and what differs from rectified flow's code:
configs/cifar10.py.
"""

from configs import cifar10


def get_config(arg: str | None = None):
    return cifar10.get_config("ddpmpp_flow" + ("," + arg if arg else ""))
