"""Markov chain samplers: local Metropolis, HMC (physical and latent), latent local updates, flow IMH."""
from rgflow.mcmc.base import ChainResult
from rgflow.mcmc.hmc import hmc, latent_hmc, run_hmc
from rgflow.mcmc.imh import independence_metropolis
from rgflow.mcmc.latent import latent_local
from rgflow.mcmc.local import local_metropolis

__all__ = ["ChainResult", "hmc", "latent_hmc", "run_hmc", "local_metropolis", "independence_metropolis", "latent_local"]
