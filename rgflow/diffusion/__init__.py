"""Diffusion models on the RG hierarchy, exact in their Gaussian part, with exact densities.

* :mod:`~rgflow.diffusion.gaussian` -- the ensemble's Gaussian part as whitening maps: the Gaussian
  RG pyramid on the Layout's levels and whitened Fourier (Hartley) modes;
* :mod:`~rgflow.diffusion.stages` -- the noise schedules (``rg``: level by level, coarse to fine;
  ``standard``; ``ve``) as TrigFlow stages;
* :mod:`~rgflow.diffusion.nets` -- the local network, the U-Net, the MLP, exact Z2 oddness;
* :mod:`~rgflow.diffusion.model` -- :class:`DiffusionModel`, a density ``sample(n) -> (x, ln q)``;
* :mod:`~rgflow.diffusion.sampler` -- Heun (probability-flow ODE) and reverse-SDE samplers;
* :mod:`~rgflow.diffusion.exact`, :mod:`~rgflow.diffusion.jacobian` -- exact densities (colouring,
  sparse LU);
* :mod:`~rgflow.diffusion.train` -- denoising (and force-target) score matching through the one loop.
"""
from rgflow.diffusion.gaussian import GaussianPyramid, SpectralWhitening, power_spectrum
from rgflow.diffusion.model import DiffusionModel
from rgflow.diffusion.sampler import sample_fields

__all__ = ["GaussianPyramid", "SpectralWhitening", "power_spectrum", "DiffusionModel", "sample_fields"]
