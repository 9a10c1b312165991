"""CIFAR-10, sub-VP, DSM, network ddpmpp_cont_deep. Published: 2.99 bits/dim (Song+21, Table 2).

  python main.py --config configs/cifar10_ddpmpp_subvp_deep.py --workdir runs/cifar10_ddpmpp_subvp_deep
  python main.py --config configs/cifar10_ddpmpp_subvp_deep.py:runlocal --workdir /tmp/cifar10_ddpmpp_subvp_deep

CIFAR-10 must be prepared first: pip install "sde_lab[tf]" && tfds build cifar10
--file_format=array_record.
Source: score_sde configs/subvp/cifar10_ddpmpp_deep_continuous.py.
Every setting with its source field, and what sde_lab cannot follow: configs/cifar10.py.
"""

from configs import cifar10


def get_config(arg: str | None = None):
    return cifar10.get_config("ddpmpp_subvp_deep" + ("," + arg if arg else ""))
