"""Diffusion models in RG coordinates on the shared :class:`~rgflow.layout.Layout`.

* :mod:`~rgflow.diffusion.schedule` -- per-level variance-preserving noise schedules (the RG
  schedule erases fine levels first; Delta = 0 is the standard schedule);
* :mod:`~rgflow.diffusion.coords` -- RG coordinates ``u = R(x)`` (the orthonormal Haar map or a
  trained flow) with per-level or global data scaling;
* :mod:`~rgflow.diffusion.network` -- an EDM-preconditioned periodic U-Net denoiser;
* :mod:`~rgflow.diffusion.sampler` -- Heun (probability-flow ODE) and Euler-Maruyama (reverse
  SDE) samplers that count every network evaluation;
* :mod:`~rgflow.diffusion.train` -- denoising score matching through the one training loop.
"""
from rgflow.diffusion.coords import RGCoordinates
from rgflow.diffusion.sampler import GaussianDenoiser, sample_coords
from rgflow.diffusion.schedule import RGSchedule

__all__ = ["RGSchedule", "RGCoordinates", "GaussianDenoiser", "sample_coords"]
