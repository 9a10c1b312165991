"""Import the published score_sde (Flax) and score_sde_pytorch checkpoints into sde_lab.

  python -m sde_lab.convert score_sde --checkpoint ckpts/checkpoint_26 \\
      --config configs/cifar10_ncsnpp_ve.py --workdir runs/ncsnpp_ve
  python -m sde_lab.convert score_sde_pytorch --checkpoint checkpoint_8.pth \\
      --config configs/cifar10_ddpmpp_vp.py --workdir runs/ddpmpp_vp
  python main.py --config configs/cifar10_ncsnpp_ve.py --workdir runs/ncsnpp_ve --mode sample

The EMA weights are converted (what the reference samples and evaluates with; --noema
for the raw ones). Reading Flax checkpoints needs no TensorFlow; `.pth` files need torch.

Library use:

    from sde_lab import convert, models
    net = models.make("ncsnpp", size="ncsnpp_cont", rescale_input=True)
    variables, step = convert.load("score_sde", "checkpoint_26", net, (32, 32, 3))
    out = net.apply(variables, x, jnp.log(sigma))

Which published checkpoint fits which config: README.md ("Published checkpoints").
"""

from sde_lab.convert.core import check_network, convert, load, to_reference
from sde_lab.convert.mapping import FORMATS, plan
from sde_lab.convert.readers import (Checkpoint, ConversionError, read_score_sde,
                                     read_score_sde_pytorch)

__all__ = ["FORMATS", "Checkpoint", "ConversionError", "check_network", "convert", "load",
           "plan", "read_score_sde", "read_score_sde_pytorch", "to_reference"]
