"""Markov chain samplers: local Metropolis, HMC (physical and latent), embedded cluster updates,
latent local updates, flow IMH.

One driver (:func:`~rgflow.mcmc.chain.run_chain`) runs every sampler; each sampler is a kernel
(:class:`CheckerboardKernel`, :class:`HMCKernel`, :class:`ClusterKernel`, :class:`LevelKernel`,
:class:`IndependenceKernel`).
"""
from rgflow.mcmc.base import ChainResult
from rgflow.mcmc.chain import run_chain
from rgflow.mcmc.cluster import ClusterKernel, cluster
from rgflow.mcmc.hmc import HMCKernel, hmc, run_hmc
from rgflow.mcmc.imh import IndependenceKernel, flow_imh, independence_metropolis
from rgflow.mcmc.latent import LevelKernel, effective_action, latent_hmc, latent_local
from rgflow.mcmc.local import CheckerboardKernel, local_metropolis

__all__ = ["ChainResult", "run_chain", "HMCKernel", "CheckerboardKernel", "ClusterKernel", "LevelKernel",
           "IndependenceKernel", "effective_action", "cluster", "hmc", "latent_hmc", "run_hmc", "local_metropolis",
           "independence_metropolis", "latent_local", "flow_imh"]
