r"""Embedded Swendsen-Wang cluster updates (Brower & Tamayo 1989; Wolff 1989), for the critical point.

Every nearest-neighbour action of rgflow has the form
``S = sum_x V(|phi_x|) - J sum_<xy> phi_x . phi_y`` (``<xy>`` each link once) with ``J = c`` of
:meth:`~rgflow.physics.models.Action.local_form` (``e(phi_x)`` holds ``-c phi_x . h_x``, and every
link through ``x`` appears in ``h_x`` once): ``J = 1`` (free), ``2`` (phi4), ``2 kappa``
(phi4-hopping), ``2 t`` (complex-phi4).

**Embedding.** Pick a random unit vector ``r`` (``r = +-1`` for one component) and write
``phi_x = phi_perp,x + eps_x |p_x| r`` with ``p_x = phi_x . r`` and ``eps_x = sign p_x``. The
reflection ``phi_x -> phi_x - 2 p_x r`` flips ``eps_x`` and leaves ``|phi_x|`` and ``phi_perp,x``
alone, so at fixed ``|p|`` and ``phi_perp`` the signs ``eps`` are an Ising model with link couplings
``J |p_x p_y|``: reflecting a set ``C`` of sites changes the action by
``dS = 2 J sum_{<xy>: x in C, y not in C} p_x p_y``. Its Swendsen-Wang update is exact: bond every
link with probability ``P_xy = 1 - exp(-2 J p_x p_y)`` if ``p_x p_y > 0`` (else 0), and reflect each
connected cluster with probability 1/2. (Fortuin-Kasteleyn: the joint weight of signs and bonds
``b_xy in {0, 1}``, ``prod_<xy> [(1 - P_xy)(1 - b_xy) + P_xy b_xy delta(eps_x, eps_y)]`` with
``P_xy = 1 - exp(-2 J |p_x p_y|)``, has the embedded Ising model as its marginal in ``eps``, and
given the bonds it is uniform over the signs that are constant on each cluster; so reflecting
clusters at random needs no accept/reject.) For the complex field (two channels) this is Wolff's
O(n) embedding; for the real field ``r = +-1`` and the reflection is ``phi -> -phi``.

The reflection leaves every ``|phi_x|`` fixed, so one step (:class:`ClusterKernel`) of a field
action is **one Swendsen-Wang update followed by an update of the magnitudes**: sampler ``cluster``
(the default) does one checkerboard Metropolis sweep (:class:`~rgflow.mcmc.local.CheckerboardKernel`,
width tuned in warm-up), ``cluster-hmc`` one HMC trajectory (:class:`~rgflow.mcmc.hmc.HMCKernel`,
``--leapfrog`` steps, step size tuned in warm-up). The sweep is cheaper per step; near the critical
point of weakly coupled phi^4 the trajectory decorrelates ``|m|`` in fewer steps (the cluster update
decorrelates the sign of ``m`` either way).

**Ising** (``action="ising"``): the cluster chain runs on the Ising spins themselves, not on the
Hubbard-Stratonovich field -- ``phi = s = +-1``, ``J = beta = 1/T``, ``P = 1 - exp(-2 beta)`` on
every satisfied link -- so it samples the exact Ising model, and its primaries are those of ``s``.
Configurations kept for an ensemble are relaxation fields ``x ~ P(x | s)``
(:func:`~rgflow.physics.actions.ising_field_given_spins`), like those of every other sampler, and
``x`` is then distributed as ``exp(-S_relax(x))``.

Clusters are labelled on the CPU (``scipy.sparse.csgraph.connected_components`` on the bond graph
of all chains at once, which handles the periodic links). Costs: the bond probabilities need the
link products ``p_x p_y`` (counted as one action evaluation), plus those of the sweep or trajectory;
the step's rate is the acceptance of the sweep or trajectory (the cluster move is always taken; an
Ising step reports 1).

References: R. H. Swendsen & J.-S. Wang, PRL 58, 86 (1987); U. Wolff, PRL 62, 361 (1989);
R. C. Brower & P. Tamayo, PRL 62, 1087 (1989).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from rgflow.mcmc.base import ChainResult
from rgflow.mcmc.chain import State, Step, observe_field, run_chain
from rgflow.mcmc.hmc import HMCKernel
from rgflow.mcmc.local import CheckerboardKernel
from rgflow.physics.actions import ising_field_given_spins
from rgflow.physics.observables import primaries

__all__ = ["ClusterKernel", "swendsen_wang_flips", "cluster", "MAGNITUDE_UPDATES"]


def swendsen_wang_flips(p: torch.Tensor, J: float, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Which sites one Swendsen-Wang update of the embedded Ising model flips.

    Args:
        p: the projections ``p_x = phi_x . r`` of every chain, ``[chains, L, L]``.
        J: the link coupling of ``-J sum_<xy> phi_x . phi_y`` (``J >= 0``).
        generator: for the bonds and the clusters' coin flips.

    Returns:
        ``[chains, L, L]`` bool: every site of a cluster that drew heads. Links ``(x, x + mu)`` bond
        with probability ``1 - exp(-2 J p_x p_{x+mu})`` where ``p_x p_{x+mu} > 0``; clusters are the
        connected components (periodic, never across chains).
    """
    chains, L, _ = p.shape
    site = torch.arange(chains * L * L, device=p.device).reshape(chains, L, L)
    neighbour = torch.stack([torch.roll(site, -1, d) for d in (-2, -1)], -1)  # [chains, L, L, 2]: x + mu
    link = p[..., None] * torch.stack([torch.roll(p, -1, d) for d in (-2, -1)], -1)  # p_x p_{x+mu}
    u = torch.rand(link.shape, dtype=p.dtype, device=p.device, generator=generator)
    bond = (u < -torch.expm1(-2.0 * J * link.clamp(min=0.0))).reshape(-1, 2).cpu().numpy()  # never where P = 0
    indptr = np.concatenate([[0], np.cumsum(bond.sum(1))])  # row x of the bond graph: its bonds to x + mu
    indices = neighbour.reshape(-1, 2).cpu().numpy()[bond]
    graph = csr_matrix((np.ones(len(indices), np.int8), indices, indptr), shape=(site.numel(),) * 2)
    n_clusters, labels = connected_components(graph, directed=False)
    heads = torch.rand(n_clusters, device=p.device, generator=generator) < 0.5
    return heads[torch.as_tensor(labels, device=p.device)].reshape(chains, L, L)


class ClusterKernel:
    """Embedded Swendsen-Wang on ``x [chains, C, L, L]`` with link coupling ``J``, then one step of
    ``then`` for the magnitudes: a :class:`~rgflow.mcmc.local.CheckerboardKernel` sweep or an
    :class:`~rgflow.mcmc.hmc.HMCKernel` trajectory (None for Ising spins, which the cluster update
    alone samples ergodically).

    ``step`` draws a uniform unit vector ``r`` per chain, reflects ``x -> x - 2 (x . r) r`` on the
    flipped clusters (:func:`swendsen_wang_flips` of ``p = x . r``), then runs ``then`` (with
    ``tune`` it adapts its ``step_size``). The reflection changes ``S``, so an HMC trajectory
    starts with one more gradient evaluation.
    """

    def __init__(self, J: float, generator: torch.Generator, then: CheckerboardKernel | HMCKernel | None = None):
        self.J, self.generator, self.then = J, generator, then
        self.restart = int(isinstance(then, HMCKernel))  # gradients to restart HMC after a reflection

    @property
    def step_size(self) -> float | None:
        return None if self.then is None else self.then.step_size

    def step(self, state: State, tune: bool = False) -> tuple[State, Step]:
        x = state.x
        r = torch.randn(x.shape[:2], dtype=x.dtype, device=x.device, generator=self.generator)
        r = (r / r.norm(dim=1, keepdim=True))[..., None, None]
        p = (x * r).sum(1)
        flip = swendsen_wang_flips(p, self.J, self.generator)
        x = x - 2.0 * (flip * p)[:, None] * r
        if self.then is None:
            return State(x, x), Step(1.0, action_evals=1)
        state, inner = self.then.step(self.then.start(x) if self.restart else State(x, x), tune)
        return state, Step(inner.rate, grad_evals=inner.grad_evals + self.restart,
                           action_evals=1 + inner.action_evals + self.restart, divergences=inner.divergences)


#: What follows each cluster update of a field action: ``name -> (sampler name, default step size,
#: target acceptance)`` of a checkerboard sweep or an HMC trajectory.
MAGNITUDE_UPDATES = {"local": ("cluster", 1.0, 0.5), "hmc": ("cluster-hmc", 0.1, 0.8)}


def cluster(action, L: int, n: int, chains: int = 16, seed: int = 0, warmup: int = 200, magnitudes: str = "local",
            step_size: float | None = None, n_leapfrog: int = 10, dtype=torch.float64, device: str = "cpu",
            keep_every: int = 0, progress: bool = False) -> ChainResult:
    """Cluster chains on ``exp(-S)`` (field actions) or on the exact Ising model (``action.name == "ising"``),
    recording primaries after every step and keeping every ``keep_every``-th configuration. Chains
    start from white noise ``N(0, 1)`` (fields) or random spins.

    Args:
        magnitudes: ``"local"`` (a checkerboard sweep after every cluster update; sampler ``cluster``)
            or ``"hmc"`` (an HMC trajectory of ``n_leapfrog`` steps; sampler ``cluster-hmc``).
        step_size: initial sweep width or leapfrog step (tuned in warm-up); default 1.0 and 0.1.

    Raises:
        ValueError: an unknown ``magnitudes``, an antiferromagnetic coupling (``J < 0``), an odd
            ``L`` for the checkerboard sweep, or ``magnitudes="hmc"`` on Ising spins.
    """
    if magnitudes not in MAGNITUDE_UPDATES:
        raise ValueError(f"magnitudes must be one of {', '.join(MAGNITUDE_UPDATES)}, got {magnitudes!r}")
    sampler, default_size, target = MAGNITUDE_UPDATES[magnitudes]
    size = default_size if step_size is None else step_size
    gen = torch.Generator(device=device).manual_seed(seed)
    if action.name == "ising":
        if magnitudes != "local":
            raise ValueError(f"sampler {sampler!r} updates field magnitudes; Ising spins have none (use cluster)")
        T, shift = action.params["T"], action.params["shift"]
        s = torch.randint(0, 2, (chains, 1, L, L), device=device, generator=gen).to(dtype) * 2 - 1

        def observe(state):
            field = ising_field_given_spins(state.x, T, shift, gen) if keep_every else None
            return primaries(state.x), field

        return run_chain(ClusterKernel(1.0 / T, gen), State(s, s), n, observe, sampler=sampler, warmup=warmup,
                         keep_every=keep_every, progress=progress)
    J = action.local_form()[2]
    if J < 0:
        raise ValueError(f"sampler {sampler!r} needs a ferromagnetic coupling; {action.name} {dict(action.params)} "
                         f"has J = {J:g} < 0")
    if magnitudes == "local":
        if L % 2:
            raise ValueError(f"sampler 'cluster' needs an even L (its Metropolis sweep is a checkerboard), got L={L}")
        then = CheckerboardKernel(action, L, size, target, gen)
    else:
        then = HMCKernel(action.evaluate, n_leapfrog, size, target, gen)
    # white noise, not the 0.1 N(0, 1) of local and hmc: from a field far below its equilibrium size an
    # HMC trajectory at L = 64 has dH ~ 9, and a chain can stay there through all of warm-up
    phi = torch.randn(chains, action.channels, L, L, dtype=dtype, device=device, generator=gen)
    return run_chain(ClusterKernel(J, gen, then), State(phi, phi), n, observe_field(lambda x: x), sampler=sampler,
                     warmup=warmup, keep_every=keep_every, progress=progress)
