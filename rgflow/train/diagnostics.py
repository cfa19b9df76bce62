r"""Diagnostics of a trained sampler on a fresh, large sample (state ``N``).

With log weights ``ln w = -S - ln q`` (``S`` in the action's frame, ``ln q`` exact):

* ``ess`` -- ``(sum w)^2 / (N sum w^2)``;
* ``lnZ`` -- ``ln mean w + offset`` with ``lnZ_err = sqrt((1/ess - 1)/N)`` (delta method);
  ``offset`` maps to the reporting frame (the Ising model for the HS relaxation);
* ``pareto_k`` -- Pareto shape of the weights' upper tail; ``lnZ_reliable = pareto_k < 0.7``.
  Above it the weights have effectively infinite variance: ``lnZ`` is biased low and
  ``lnZ_err`` underestimates the error, whatever the ESS says;
* ``f_variational`` -- ``mean(ln q + S) - offset >= -lnZ_exact``; ``kl = f_variational + lnZ_exact``;
* ``sector_balance`` -- for a Z2-symmetric action and a real field, the mean sign of the magnetisation
  under ``q`` (unweighted); a flow that sees both sectors gives about 0. Above ``SECTOR_WARN`` in
  magnitude ``lnZ_warning`` says that ``ln Z`` may miss up to ``ln 2`` (a whole sector), which no
  weight diagnostic can see;
* ``imh_acceptance`` and IMH observables with tau_int-corrected errors; reweighted observables
  with jackknife errors.
"""
from __future__ import annotations

import math

import torch

from rgflow.denormals import flush_denormals
from rgflow.flows.base import device_of
from rgflow.mcmc.imh import independence_metropolis
from rgflow.physics.observables import chain_observables, estimate_observables, primaries
from rgflow.stats import KHAT_RELIABLE, effective_sample_size, log_mean_exp, pareto_khat

__all__ = ["draw", "weight_summary", "evaluate", "SECTOR_WARN", "lnz_warnings"]

#: ``|mean sign(m)|`` under the flow above which a Z2-symmetric model's ``ln Z`` gets a warning
SECTOR_WARN = 0.5


def lnz_warnings(res: dict) -> list[str]:
    """Why the ``ln Z`` of an :func:`evaluate` result may not be trusted (empty list: no known reason)."""
    out = []
    if not res.get("lnZ_reliable", True):
        out.append(f"Pareto k = {res['pareto_k']:.2f} > 0.7: heavy-tailed weights, ln Z biased low and its error too small")
    balance = res.get("sector_balance")
    if balance is not None and abs(balance) > SECTOR_WARN:
        out.append(f"the flow samples mostly one Z2 sector (mean sign of m = {balance:+.2f}) of a symmetric action: "
                   "ln Z may miss up to ln 2; train with --mixture z2")
    return out


@torch.no_grad()
def draw(flow, action, n: int, batch_size: int = 4096, generator: torch.Generator | None = None):
    """Draw ``n`` samples: ``(x [n, C, L, L], ln q [n] float64, S [n] float64)``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of samples) must be a positive integer, got {n!r}")
    xs, lqs, Ss = [], [], []
    for start in range(0, n, batch_size):
        x, log_q = flow.sample(min(batch_size, n - start), generator=generator)
        xs.append(x)
        lqs.append(log_q.double())
        Ss.append(action(x).double())
    return torch.cat(xs), torch.cat(lqs), torch.cat(Ss)


def weight_summary(log_q: torch.Tensor, S: torch.Tensor, offset: float) -> dict:
    """``ess``, ``lnZ`` and ``f_variational`` in the reporting frame (``offset`` added to ``ln Z``)."""
    log_w = (-S - log_q).double().cpu().numpy()
    return {
        "ess": effective_sample_size(log_w),
        "lnZ": log_mean_exp(log_w) + offset,
        "f_variational": float((log_q + S).double().mean()) - offset,
    }


def _jsonable(est: dict) -> dict:
    return {k: v.to_list() for k, v in est.items()}


@flush_denormals()
def evaluate(flow, action, n_samples: int = 16384, seed: int = 0, batch_size: int = 4096) -> dict:
    """All diagnostics as one JSON-ready dict (see the module docstring for the keys)."""
    device = device_of(flow)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = flow.training
    flow.eval()
    x, log_q, S = draw(flow, action, n_samples, batch_size, generator=gen)
    flow.train(was_training)
    finite = torch.isfinite(log_q) & torch.isfinite(S)
    if not bool(finite.all()):
        raise FloatingPointError(f"{int((~finite).sum())} of {n_samples} samples have non-finite ln q or S")
    L = x.shape[-1]
    log_w = (-S - log_q).cpu().numpy()
    summary = weight_summary(log_q, S, action.lnZ_offset(L))
    ess = summary["ess"]
    out = {
        "action": action.name,
        "params": dict(action.params),
        "L": L,
        "n_samples": n_samples,
        "ess": ess,
        "lnZ": summary["lnZ"],
        "lnZ_err": math.sqrt(max(1.0 / ess - 1.0, 0.0) / n_samples),
        "pareto_k": pareto_khat(log_w),
        "f_variational": summary["f_variational"],
        "f_variational_err": float((log_q + S).cpu().numpy().std(ddof=1) / math.sqrt(n_samples)),
    }
    out["lnZ_reliable"] = out["pareto_k"] < KHAT_RELIABLE
    exact = action.lnZ_exact(L)
    if exact is not None:
        out["lnZ_exact"] = exact
        out["kl"] = out["f_variational"] + exact
    chain, acceptance = independence_metropolis(log_w, seed=seed)
    out["imh_acceptance"] = acceptance
    field = action.measurement_field(x, generator=torch.Generator(device=device).manual_seed(seed + 1))
    if field.shape[1] == 1:  # every action here is invariant under phi -> -phi
        out["sector_balance"] = float(torch.sign(field.sum(dim=(1, 2, 3))).double().mean())
    out["lnZ_warnings"] = lnz_warnings(out)
    prim = primaries(field)
    prim_rw = dict(prim, L=L)
    C = field.shape[1]
    out["observables"] = _jsonable(estimate_observables(prim_rw, log_w=log_w, channels=C))
    imh = chain_observables({k: v[chain] for k, v in prim.items()}, L, channels=C)
    out["observables_imh"] = _jsonable(imh.observables)
    out["tau_int_imh"] = _jsonable(imh.tau_int)
    out["imh_n_discarded"], out["imh_reliable"] = imh.n_discarded, imh.reliable
    return out
