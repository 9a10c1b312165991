"""CIFAR-10, VE, SMLD (1/2 sum), network ncsnv2 cifar10. Published: FID 10.87, IS 8.40 (Song & Ermon 2020).

  python main.py --config configs/cifar10_ncsnv2.py --workdir runs/cifar10_ncsnv2
  python main.py --config configs/cifar10_ncsnv2.py:runlocal --workdir /tmp/cifar10_ncsnv2

CIFAR-10 must be prepared first: pip install "sde_lab[tf]" && tfds build cifar10
--file_format=array_record.
Source: ermongroup/ncsnv2 configs/cifar10.yml.
Every setting with its source field, and what sde_lab cannot follow: configs/cifar10.py.
"""

from configs import cifar10


def get_config(arg: str | None = None):
    return cifar10.get_config("ncsnv2" + ("," + arg if arg else ""))
