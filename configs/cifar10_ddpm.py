"""CIFAR-10, VP, DDPM eps-MSE, network ddpm cifar10. Published: FID 3.17, IS 9.46 (Ho+20, Table 1).

  python main.py --config configs/cifar10_ddpm.py --workdir runs/cifar10_ddpm
  python main.py --config configs/cifar10_ddpm.py:runlocal --workdir /tmp/cifar10_ddpm

CIFAR-10 must be prepared first: pip install "sde_lab[tf]" && tfds build cifar10
--file_format=array_record.
Source: hojonathanho/diffusion scripts/run_cifar.py.
Every setting with its source field, and what sde_lab cannot follow: configs/cifar10.py.
"""

from configs import cifar10


def get_config(arg: str | None = None):
    return cifar10.get_config("ddpm" + ("," + arg if arg else ""))
