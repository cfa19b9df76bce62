r"""Where the KL goes: the reverse KL and the variance of ``ln w`` split by RG level.

A hierarchical flow generates coarse to fine: ``x = G(z)`` with latents ``z = (z_top, z_{n-1}, ..., z_0)``
independent under the prior, level ``l`` on :attr:`rgflow.layout.Layout.level_sites` ``[l]``. Write
``z_{>=k}`` for the latents of level ``k`` and coarser and ``w(z) = e^{-S(G(z))} / q(G(z))``. Then the
target pulled back to latent space has the marginal ``p(z_{>=k}) = q(z_{>=k}) E[w | z_{>=k}] / Z``, so with

    ``V_k(z_{>=k}) = ln E[w | z_{>=k}]``  (``V_0 = ln w``, ``V_{n+2} = ln Z``; ``k = n + 1`` is the top)

the chain rule of the KL divergence gives one non-negative term per level that adds up to the total:

    ``KL(q || p) = ln Z - E[ln w] = sum_{k=0}^{n+1} KL_k``,   ``KL_k = E[V_{k+1} - V_k]``,

``KL_k = E_{z_{>k}} KL(q(z_k | z_{>k}) || p(z_k | z_{>k}))``: the KL of level ``k`` given everything coarser.
Likewise the martingale ``m_k = E[ln w | z_{>=k}]`` (``m_0 = ln w``, ``m_{n+2} = E ln w``) splits the
variance that sets the ESS (``ESS ~ e^{-Var ln w}`` for log-normal weights) into orthogonal increments
``D_k = m_k - m_{k+1}``:

    ``Var(ln w) = sum_k Var_k``,   ``Var_k = Cov(D_k, ln w) = E[D_k^2]``.

Estimator (conditional resampling): ``N`` outer draws ``z``; for every level ``k >= 1``, ``K`` copies of
each with the latents finer than ``k`` redrawn from the prior give ``V_k`` (log-mean-exp of ``w``) and
``m_k`` (mean of ``ln w``); ``E ln w`` comes from the outer draws and ``ln Z`` from all draws at the top level
(outer and redrawn: each is a full draw of ``q``), its error part of the top level's and the total's. The sums hold exactly for
the estimates. The log-mean-exp of ``K`` draws is biased low by ``Var(w)/(2 K E[w]^2)`` (which would move
KL from level ``k - 1`` to level ``k``); ``V_k`` carries that delta-method correction,
``+ (1/ess - 1)/(2K)`` with ``ess`` the ``K`` conditional weights' ESS fraction, leaving an ``O(1/K^2)``
bias. ``inner_ess`` (the mean of that fraction over the outer draws) says how far to trust the split:
near 1 it is sharp, near ``1/K`` it is not.

For a symmetrised mixture ``q_G`` (whose weight ``w`` is invariant under the group) the split runs over the
underlying flow's latents with the mixture's ``ln q_G``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rgflow.denormals import flush_denormals
from rgflow.flows.base import device_of

__all__ = ["kl_by_level", "format_by_level"]


def _decode(model, z: torch.Tensor, action, batch: int) -> torch.Tensor:
    """``ln w = -S(G(z)) - ln q(G(z))`` in float64 for latents ``z [B, C, L, L]`` (batched)."""
    from rgflow.flows.symmetrize import SymmetrizedFlow

    out = []
    for i in range(0, len(z), batch):
        zb = z[i:i + batch]
        x, logdet = model.apply(zb, inverse=True)
        log_q = model.log_prob(x) if isinstance(model, SymmetrizedFlow) else model.prior.log_prob(zb) - logdet
        out.append((-action.evaluate(x).double() - log_q.double()))
    return torch.cat(out)


def _lme(a: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.logsumexp(a, dim=dim) - math.log(a.shape[dim])


@torch.no_grad()
@flush_denormals()
def kl_by_level(model, action, n_outer: int = 512, n_inner: int = 32, seed: int = 0, batch: int = 4096) -> dict:
    """The split of the module docstring for a hierarchical flow ``model`` (an RG flow or its mixture).

    Returns a JSON-ready dict: ``levels`` (one row per level, finest first, the top last: ``level``,
    ``n_latents``, ``kl``, ``kl_err``, ``var_lnw``, ``var_lnw_err``, ``inner_ess``), ``kl_total``,
    ``kl_total_err``, ``var_lnw_total``, ``n_outer``, ``n_inner``. Errors are standard errors over the outer
draws (and, for the top level and the total, that of ``ln Z``).

    Raises:
        ValueError: for a model without an RG hierarchy (flat flow, diffusion) or bad ``n_outer``/``n_inner``.
    """
    layout = getattr(model, "layout", None)
    if layout is None or not hasattr(model, "prior") or not hasattr(model, "apply") or layout.n_levels < 1:
        raise ValueError("--by-level needs a hierarchical flow run (flow mera); this model has no RG levels to split")
    for name, v, lo in (("n_outer", n_outer, 2), ("n_inner", n_inner, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device_of(model)).manual_seed(seed)
    prior = model.prior
    z = prior.sample(n_outer, generator=gen)
    log_w = _decode(model, z, action, batch)  # V_0 = m_0
    V, m, ess = [log_w], [log_w], [torch.ones_like(log_w)]
    level = layout.level_of_site.to(z.device)
    for k in range(1, layout.n_levels + 1):  # fix levels >= k, redraw the finer ones
        finer = (level < k).view(1, 1, *level.shape)
        zz = z.repeat_interleave(n_inner, dim=0)
        zz = torch.where(finer, prior.sample(len(zz), generator=gen), zz)
        lw = _decode(model, zz, action, batch).view(n_outer, n_inner)
        frac = torch.exp(2 * torch.logsumexp(lw, 1) - torch.logsumexp(2 * lw, 1)) / n_inner
        V.append(_lme(lw, 1) + (1 / frac - 1) / (2 * n_inner))
        m.append(lw.mean(1))
        ess.append(frac)
    pooled = torch.cat([log_w, lw.flatten()])  # every draw at the top level is a full draw of q
    lnZ = _lme(pooled, 0)
    ess_z = float(torch.exp(2 * torch.logsumexp(pooled, 0) - torch.logsumexp(2 * pooled, 0)))
    lnZ_err = math.sqrt(max(1 / ess_z - 1 / len(pooled), 0.0))
    V.append(lnZ.expand(n_outer))
    m.append(log_w.mean().expand(n_outer))
    centred = log_w - log_w.mean()
    rows = []
    for k in range(layout.n_levels + 1):
        kl_k = (V[k + 1] - V[k]).cpu().numpy()
        var_k = ((m[k] - m[k + 1]) * centred).cpu().numpy()
        rows.append({
            "level": "top" if k == layout.n_levels else k,
            "n_latents": int(layout.n_latents[k]) * model.channels,
            "kl": float(kl_k.mean()),
            "kl_err": math.hypot(float(kl_k.std(ddof=1) / math.sqrt(n_outer)), lnZ_err if k == layout.n_levels else 0),
            "var_lnw": float(var_k.mean()), "var_lnw_err": float(var_k.std(ddof=1) / math.sqrt(n_outer)),
            "inner_ess": float(ess[k].mean()),
        })
    model.train(was_training)
    lw = log_w.cpu().numpy()
    return {"levels": rows, "kl_total": float(lnZ - log_w.mean()),
            "kl_total_err": math.hypot(float(lw.std(ddof=1) / math.sqrt(n_outer)), lnZ_err),
            "var_lnw_total": float(np.mean((lw - lw.mean()) ** 2)), "n_outer": n_outer, "n_inner": n_inner}


def format_by_level(res: dict) -> str:
    """The split as a table (one row per level, the shares of the total in per cent)."""
    from rgflow.stats import format_value_error as fmt

    def cell(v: float, e: float) -> str:  # a level that cannot matter (e.g. ln w independent of it) shows 0
        return "0" if max(abs(v), e) < 1e-10 else fmt(v, e)

    kl, var = res["kl_total"], res["var_lnw_total"]
    lines = [f"  by RG level ({res['n_outer']} draws x {res['n_inner']} conditional redraws; "
             f"KL = {fmt(kl, res['kl_total_err'])}, "
             f"Var ln w = {var:.4f})",
             f"  {'level':<6} {'latents':>8} {'KL':>16} {'share':>6} {'Var ln w':>16} {'share':>6} {'inner ESS':>9}"]
    for r in res["levels"]:
        lines.append(f"  {str(r['level']):<6} {r['n_latents']:>8} {cell(r['kl'], r['kl_err']):>16} "
                     f"{100 * r['kl'] / kl if kl else 0:>5.0f}% {cell(r['var_lnw'], r['var_lnw_err']):>16} "
                     f"{100 * r['var_lnw'] / var if var else 0:>5.0f}% {r['inner_ess']:>9.3f}")
    return "\n".join(lines)
