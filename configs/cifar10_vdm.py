"""CIFAR-10, learned VP, VLB, network vdm cifar10. Published: 2.65 bits/dim (Kingma+21, Table 1).

  python main.py --config configs/cifar10_vdm.py --workdir runs/cifar10_vdm
  python main.py --config configs/cifar10_vdm.py:runlocal --workdir /tmp/cifar10_vdm

CIFAR-10 must be prepared first: pip install "sde_lab[tf]" && tfds build cifar10
--file_format=array_record.
Source: google-research/vdm configs/cifar10.py.
Every setting with its source field, and what sde_lab cannot follow: configs/cifar10.py.
"""

from configs import cifar10


def get_config(arg: str | None = None):
    return cifar10.get_config("vdm" + ("," + arg if arg else ""))
