"""Markov chain samplers: flow independence Metropolis and physical-space HMC."""
from rgflow.mcmc.hmc import HMCResult, hmc
from rgflow.mcmc.imh import independence_metropolis

__all__ = ["independence_metropolis", "hmc", "HMCResult"]
