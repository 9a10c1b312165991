"""CIFAR-10, EDM (Karras et al. 2022) with its DDPM++ network ("VP" in EDM's tables):
the `edm` SDE, EDM preconditioning and loss, network ddpmpp_edm (55.7M), Heun 35 NFE.
Published: FID 1.97 unconditional at 35 NFE (Karras+22, Table 2; trained with
augmentation, which this config leaves out).

  python main.py --config configs/cifar10_ddpmpp_edm.py --workdir runs/cifar10_ddpmpp_edm
  python main.py --config configs/cifar10_ddpmpp_edm.py:runlocal --workdir /tmp/cifar10_ddpmpp_edm

CIFAR-10 must be prepared first: pip install "sde_lab[tf]" && tfds build cifar10
--file_format=array_record. Settings and what differs from NVlabs/edm: configs/cifar10.py.
"""

from configs import cifar10


def get_config(arg: str | None = None):
    return cifar10.get_config("ddpmpp_edm" + ("," + arg if arg else ""))
