"""CIFAR-10, VE, DSM (1/2 sum), network ncsnpp_cont. Published: FID 2.38, IS 9.83 (Song+21, Table 3).

  python main.py --config configs/cifar10_ncsnpp_ve.py --workdir runs/cifar10_ncsnpp_ve
  python main.py --config configs/cifar10_ncsnpp_ve.py:runlocal --workdir /tmp/cifar10_ncsnpp_ve

CIFAR-10 must be prepared first: pip install "sde_lab[tf]" && tfds build cifar10
--file_format=array_record.
Source: score_sde configs/ve/cifar10_ncsnpp_continuous.py.
Every setting with its source field, and what sde_lab cannot follow: configs/cifar10.py.
"""

from configs import cifar10


def get_config(arg: str | None = None):
    return cifar10.get_config("ncsnpp_ve" + ("," + arg if arg else ""))
