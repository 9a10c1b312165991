"""sde_lab: score-based generative modelling with SDEs in JAX/Flax.

Import the submodules you need: `from sde_lab import sdes, samplers, likelihood`.
"""

__version__ = "0.1.0"
