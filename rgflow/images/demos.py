r"""Scale separation in a hierarchical flow: the RG-Flow demos (Hu et al. 2020, arXiv:2010.00029).

Every function takes a ``model`` with the bijection contract (``forward``: data -> latent,
``inverse``: latent -> data), a ``prior`` and a ``layout`` -- an :class:`~rgflow.images.model.ImageFlow`
(images ``u`` in ``(0, 1)``) or a lattice :class:`~rgflow.flows.rgflow.RGFlow` (fields ``phi``): the
same code shows the image and the physics analogue. Levels are the layout's: ``0`` (finest bulk
latents) ... ``n_levels`` (top); ``level_of_site [L, L]`` says where each is stored.

* :func:`mix` -- latents of levels ``>= level`` from ``a``, ``< level`` from ``b``;
* :func:`sample_with_temperatures` -- prior samples with a temperature per level;
* :func:`receptive_fields` -- ``E_z |dx/dz_i|`` and the impulse response of latents per level, with
  their effective radius;
* :func:`progressive` -- coarse latents fixed, finer levels resampled, level by level;
* :func:`inpaint` -- refill a masked region by changing only the latents in its light cone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["mix", "sample_with_temperatures", "receptive_fields", "ReceptiveFields", "progressive", "inpaint",
           "InpaintResult", "effective_radius", "label_agreement"]


def _layout(model):
    layout = model.layout
    if layout is None or layout.kind != "mera":
        raise ValueError("this demo needs a hierarchical run (flow 'mera'): the flat baseline has no RG levels")
    return layout


def _levels(model, like: torch.Tensor) -> torch.Tensor:
    return _layout(model).level_of_site.to(like.device)


def _check_level(model, level: int) -> None:
    top = _layout(model).n_levels
    if not isinstance(level, int) or not 0 <= level <= top + 1:
        raise ValueError(f"level={level!r} is not allowed: 0 (all latents from the first) ... {top + 1} (none)")


@torch.no_grad()
def mix(model, a: torch.Tensor, b: torch.Tensor, level: int) -> torch.Tensor:
    """Decode the latents of levels ``>= level`` of ``a`` and ``< level`` of ``b``: ``[B, C, L, L]``.

    ``level = 0`` gives ``a`` back, ``level = n_levels + 1`` gives ``b`` (to rounding)."""
    _check_level(model, level)
    za, zb = model.forward(a)[0], model.forward(b)[0]
    z = torch.where(_levels(model, za) >= level, za, zb)
    return model.inverse(z)[0]


@torch.no_grad()
def sample_with_temperatures(model, n: int, temperatures, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` samples with the prior of level ``l`` scaled by ``temperatures[l]`` (``n_levels + 1``
    entries, fine to top; 1 everywhere is the model)."""
    top = _layout(model).n_levels
    temps = torch.as_tensor(temperatures, dtype=torch.float64)
    if temps.shape != (top + 1,) or not bool((temps >= 0).all()):
        raise ValueError(f"temperatures must be {top + 1} numbers >= 0 (one per level, fine to top)")
    z = model.prior.sample(n, generator=generator)
    return model.inverse(z * temps.to(z)[_levels(model, z)])[0]


def effective_radius(weight: torch.Tensor) -> float:
    r"""RMS distance of a non-negative map ``weight [L, L]`` from its (circular) centroid on the torus:
    ``sqrt(sum w d^2 / sum w)``, ``d`` the periodic distance."""
    L = weight.shape[-1]
    w = weight.double() / weight.double().sum()
    coord = torch.arange(L, dtype=torch.float64)
    angle = 2 * math.pi * coord / L
    centre = []
    for axis in (1, 0):  # marginal over the other axis
        marg = w.sum(axis)
        centre.append(torch.atan2((marg * angle.sin()).sum(), (marg * angle.cos()).sum()) * L / (2 * math.pi))
    d = [torch.remainder(coord - c + L / 2, L) - L / 2 for c in centre]
    d2 = d[0][:, None] ** 2 + d[1][None, :] ** 2
    return float((w * d2).sum().sqrt())


@dataclass
class ReceptiveFields:
    """Per level: ``mean_abs[l]`` = ``E_z |dx/dz_i| [C, L, L]`` and ``impulse[l]`` = ``dx/dz_i`` at
    ``z = 0`` for one latent ``i`` of the level (the one nearest the centre, ``sites[l]``), and
    ``radius[l]`` the mean effective radius of ``E_z |dx/dz_i|`` over up to ``per_level`` latents."""

    mean_abs: list[torch.Tensor]
    impulse: list[torch.Tensor]
    sites: list[tuple[int, int]]
    radius: list[float]

    def to_dict(self) -> dict:
        return {"levels": list(range(len(self.radius))), "radius": self.radius, "sites": self.sites}


def _column(model, z: torch.Tensor, site: int, channel: int = 0) -> torch.Tensor:
    """``dx/dz_{channel, site}`` for each row of ``z``: ``[B, C, L, L]`` (one Jacobian-vector product)."""
    tangent = torch.zeros_like(z)
    tangent.view(z.shape[0], z.shape[1], -1)[:, channel, site] = 1.0
    with torch.enable_grad():
        return torch.autograd.functional.jvp(lambda v: model.inverse(v)[0], z, tangent)[1]


def receptive_fields(model, n: int = 16, per_level: int = 4, generator: torch.Generator | None = None) -> ReceptiveFields:
    """Receptive field of the latents of each level (module docstring); ``n`` prior draws."""
    layout = _layout(model)
    L = layout.L
    z = model.prior.sample(n, generator=generator)
    mean_abs, impulse, sites, radius = [], [], [], []
    for ix in layout.level_sites:
        rows, cols = ix // L, ix % L
        dist = (rows - L / 2).abs() + (cols - L / 2).abs()
        chosen = ix[torch.argsort(dist, stable=True)[:per_level]]
        cols_abs = [_column(model, z, int(i)).abs().mean(0) for i in chosen]
        mean_abs.append(cols_abs[0].detach())
        impulse.append(_column(model, torch.zeros_like(z[:1]), int(chosen[0]))[0].detach())
        sites.append((int(chosen[0]) // L, int(chosen[0]) % L))
        radius.append(sum(effective_radius(c.sum(0)) for c in cols_abs) / len(cols_abs))
    return ReceptiveFields(mean_abs, impulse, sites, radius)


@torch.no_grad()
def progressive(model, reference: torch.Tensor, n_variants: int = 4, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Coarse-to-fine generation around ``reference [1, C, L, L]``: row ``k`` keeps the reference's
    latents of levels ``>= n_levels + 1 - k`` and resamples the finer ones (``n_variants`` times).

    Returns ``[n_levels + 2, n_variants, C, L, L]``: row 0 resamples everything, the last row is
    the reference itself."""
    top = _layout(model).n_levels
    z_ref = model.forward(reference)[0]
    rows = []
    for k in range(top + 2):
        keep = top + 1 - k
        z = model.prior.sample(n_variants, generator=generator) * temperature
        z = torch.where(_levels(model, z) >= keep, z_ref.expand_as(z), z)
        rows.append(model.inverse(z)[0])
    return torch.stack(rows)


@dataclass
class InpaintResult:
    """``filled [B, C, L, L]`` (visible sites equal to the input), the number of latents changed
    against all, ``log_prob [B]`` of the filled fields and the masked-region error against
    ``truth`` (RMS over masked sites, when the truth was given)."""

    filled: torch.Tensor
    n_changed: int
    n_latents: int
    log_prob: torch.Tensor
    rms_error: torch.Tensor | None


def inpaint(model, corrupted: torch.Tensor, mask: torch.Tensor, method: str = "optimize", cone: bool = True,
            steps: int = 200, candidates: int = 64, lr: float = 0.05, truth: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> InpaintResult:
    """Refill the sites ``mask [L, L]`` (bool) of ``corrupted [B, C, L, L]``.

    Only the latents in the mask's light cone (:meth:`rgflow.layout.Layout.light_cone`; all latents
    when ``cone=False``) change; the decoded field is composited with the visible sites, so those are
    kept exactly. ``method``: ``"sample"`` draws ``candidates`` prior samples of the changed latents
    and keeps the one of highest ``ln q`` of the composite; ``"optimize"`` then ascends ``ln q`` of the
    composite in those latents (Adam, ``steps``, ``lr``).
    """
    if method not in ("sample", "optimize"):
        raise ValueError(f"method={method!r} is not allowed; allowed: sample, optimize")
    layout = _layout(model)
    mask = mask.to(corrupted.device)
    free = (layout.light_cone(mask.cpu()) if cone else torch.ones_like(mask.cpu())).to(corrupted.device)
    visible = (~mask).to(corrupted.dtype)

    def composite(z):
        return corrupted * visible + model.inverse(z)[0] * (1 - visible)

    with torch.no_grad():
        z0 = model.forward(corrupted)[0]
        best_z, best_lp = z0.clone(), torch.full((len(z0),), -math.inf, dtype=z0.dtype, device=z0.device)
        for _ in range(candidates):
            z = torch.where(free, model.prior.sample(len(z0), generator=generator), z0)
            lp = model.log_prob(composite(z))
            better = lp > best_lp
            best_z[better], best_lp[better] = z[better], lp[better]
    if method == "optimize":
        delta = torch.zeros_like(best_z, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        f = free.to(best_z.dtype)
        for _ in range(steps):
            opt.zero_grad()
            loss = -model.log_prob(composite(best_z + delta * f)).sum()
            loss.backward()
            opt.step()
        best_z = (best_z + delta.detach() * f)
    with torch.no_grad():
        filled = composite(best_z)
        lp = model.log_prob(filled)
    err = None
    if truth is not None:
        err = ((filled - truth) ** 2 * (1 - visible)).flatten(1).sum(1).div((1 - visible).sum() * filled.shape[1]).sqrt()
    return InpaintResult(filled, int(free.sum()) * corrupted.shape[1], layout.V * corrupted.shape[1], lp, err)


def label_agreement(mixes: torch.Tensor, reference: torch.Tensor, reference_labels, labels_coarse,
                    labels_fine) -> tuple[float, float]:
    """Fractions of ``mixes [B, C, L, L]`` whose nearest neighbour (Euclidean, in ``reference
    [N, C, L, L]``) carries the coarse source's label and the fine source's label."""
    d = torch.cdist(mixes.flatten(1).double(), reference.flatten(1).double())
    pred = torch.as_tensor(reference_labels)[d.argmin(1).cpu()]
    coarse = float((pred == torch.as_tensor(labels_coarse)).double().mean())
    fine = float((pred == torch.as_tensor(labels_fine)).double().mean())
    return coarse, fine
