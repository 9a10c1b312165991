"""CIFAR-10, sub-VP, DSM, network ddpmpp_cont. Published: FID 2.61, IS 9.56 (Song+21, Table 3).

  python main.py --config configs/cifar10_ddpmpp_subvp.py --workdir runs/cifar10_ddpmpp_subvp
  python main.py --config configs/cifar10_ddpmpp_subvp.py:runlocal --workdir /tmp/cifar10_ddpmpp_subvp

CIFAR-10 must be prepared first: pip install "sde_lab[tf]" && tfds build cifar10
--file_format=array_record.
Source: score_sde configs/subvp/cifar10_ddpmpp_continuous.py.
Every setting with its source field, and what sde_lab cannot follow: configs/cifar10.py.
"""

from configs import cifar10


def get_config(arg: str | None = None):
    return cifar10.get_config("ddpmpp_subvp" + ("," + arg if arg else ""))
