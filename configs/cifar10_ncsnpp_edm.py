"""CIFAR-10, EDM (Karras et al. 2022) with its NCSN++ network ("VE" in EDM's tables):
the `edm` SDE, EDM preconditioning and loss, network ncsnpp_edm (56.4M), Heun 35 NFE.
Published: FID 1.98 unconditional at 35 NFE (Karras+22, Table 2; trained with
augmentation, which this config leaves out).

  python main.py --config configs/cifar10_ncsnpp_edm.py --workdir runs/cifar10_ncsnpp_edm
  python main.py --config configs/cifar10_ncsnpp_edm.py:runlocal --workdir /tmp/cifar10_ncsnpp_edm

CIFAR-10 must be prepared first: pip install "sde_lab[tf]" && tfds build cifar10
--file_format=array_record. Settings and what differs from NVlabs/edm: configs/cifar10.py.
"""

from configs import cifar10


def get_config(arg: str | None = None):
    return cifar10.get_config("ncsnpp_edm" + ("," + arg if arg else ""))
