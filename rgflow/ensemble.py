"""Field ensembles on disk (``.npz``): Markov chains and flow samples, with the action in the metadata.

Two producers write the same format, atomically (temporary file + rename):

* ``rgflow mcmc ... --out chain.npz`` (:func:`save_chain`): ``fields`` ``[N, C, L, L]`` = every
  ``keep_every``-th state of every chain (chain-major, ``chain`` gives the chain of each row),
  plus the primaries' full time series ``series_<name>`` ``[chains, n]``;
* ``rgflow sample RUN --out samples.npz`` (:func:`save_flow_samples`): independent flow samples
  ``fields`` with ``log_q`` and ``S``, so ``log_w = -S - log_q`` reweights them to ``exp(-S)``;
* ``rgflow diffuse sample RUN --out samples.npz`` (:func:`save_samples`): independent diffusion
  samples ``fields`` with ``S`` and ``nfe`` (no exact ``log_q``: not reweightable).

Both carry ``action`` (name), ``params`` (JSON of the couplings), ``L`` and ``source``.
:func:`load_ensemble` reads either, validates it and rebuilds the action.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from zipfile import BadZipFile

import numpy as np
import torch

__all__ = ["Ensemble", "FieldBatches", "split_ensemble", "save_chain", "save_flow_samples", "save_samples",
           "load_ensemble", "check_npz_path"]


def check_npz_path(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a Path if it names an ``.npz`` file in an existing, writable folder."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{flag} must name an .npz file, got {str(path)!r}")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise ValueError(f"{flag} {str(path)!r}: folder {str(path.parent)!r} does not exist or is not writable")
    return path


def _write_npz(path: Path, **arrays) -> Path:
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _metadata(action, L: int, source: str) -> dict:
    return {"action": action.name, "params": json.dumps(action.params), "L": L, "source": source}


def save_chain(res, path: str | Path, action, L: int) -> Path:
    """Write a :class:`~rgflow.mcmc.base.ChainResult` (kept configurations and series) to ``path``."""
    path = check_npz_path(path)
    if res.configs is None:
        fields, chain = np.zeros((0, action.channels, L, L), np.float32), np.zeros(0, np.int64)
    else:
        c, k = res.configs.shape[:2]
        fields, chain = res.configs.reshape(c * k, *res.configs.shape[2:]).numpy(), np.repeat(np.arange(c), k)
    return _write_npz(path, fields=fields, chain=chain, keep_every=res.keep_every,
                      **{f"series_{k}": v for k, v in res.series.items()}, sampler=res.sampler,
                      acceptance=res.acceptance, **_metadata(action, L, f"mcmc:{res.sampler}"))


def save_samples(path: str | Path, x: torch.Tensor, action, L: int, source: str, **extra) -> Path:
    """Write independent samples ``x`` with their action ``S`` (and e.g. ``log_q``, ``nfe``)."""
    path = check_npz_path(path)
    with torch.no_grad():
        S = action(x.double()).cpu().numpy()
    arrays = {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in extra.items()}
    return _write_npz(path, fields=x.cpu().numpy(), S=S, **arrays, **_metadata(action, L, source))


def save_flow_samples(path: str | Path, x: torch.Tensor, log_q: torch.Tensor, S: torch.Tensor, action, L: int,
                      step: int) -> Path:
    """Write independent flow samples with their ``log q`` and action (for reweighting)."""
    path = check_npz_path(path)
    return _write_npz(path, fields=x.cpu().numpy(), log_q=log_q.cpu().numpy(), S=S.cpu().numpy(), step=step,
                      **_metadata(action, L, "flow"))


@dataclass
class Ensemble:
    """A loaded ensemble: ``fields`` ``[N, C, L, L]`` (float32), the rebuilt ``action``,
    ``log_w`` (``[N]``, flow samples only; None for Markov chains), ``source`` and ``chain`` (``[N]``,
    the Markov chain of every field, chain after chain, from :func:`save_chain`; None otherwise)."""

    fields: torch.Tensor
    action: object
    L: int
    source: str
    log_w: torch.Tensor | None = None
    chain: np.ndarray | None = None


def load_ensemble(path: str | Path) -> Ensemble:
    """Read an ensemble written by :func:`save_chain` or :func:`save_flow_samples`."""
    from rgflow.physics.models import make_action

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ensemble {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ValueError(f"ensemble {str(path)!r} is not a readable .npz file ({exc})") from None
    missing = {"fields", "action", "params", "L"} - set(data)
    if missing:
        raise ValueError(f"ensemble {str(path)!r} lacks {', '.join(sorted(missing))}; write it with "
                         "`rgflow mcmc ... --out` or `rgflow sample ... --out`")
    action = make_action(str(data["action"]), **json.loads(str(data["params"])))
    L, fields = int(data["L"]), torch.from_numpy(data["fields"]).float()
    if fields.dim() != 4 or fields.shape[1:] != (action.channels, L, L):
        raise ValueError(f"ensemble {str(path)!r}: fields have shape {tuple(fields.shape)}, expected "
                         f"[N, {action.channels}, {L}, {L}] for action {action.name!r}")
    if not torch.isfinite(fields).all():
        raise ValueError(f"ensemble {str(path)!r}: fields contain NaN or inf")
    log_w = None
    if "log_q" in data:
        log_w = -torch.from_numpy(data["S"]).double() - torch.from_numpy(data["log_q"]).double()
    source = str(data["source"]) if "source" in data else ("flow" if log_w is not None else "mcmc")
    return Ensemble(fields, action, L, source, log_w, data.get("chain"))


def split_ensemble(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed ``(train, held-out)`` indices of an ensemble of ``n`` configurations (by ``seed``)."""
    if not 0 < holdout < 1:
        raise ValueError(f"holdout={holdout!r} is not allowed: a fraction in (0, 1)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = max(1, int(round(holdout * n)))
    if n - k < 1:
        raise ValueError(f"the ensemble has {n} configuration(s): too few to hold out {k} and train")
    return perm[k:], perm[:k]


class FieldBatches:
    """Random minibatches of an ensemble ``fields [N, C, L, L]`` with the target's symmetries as
    augmentation: a random periodic shift of the whole batch (``shift``) and a random sign per
    field (``sign``, for actions invariant under ``phi -> -phi``). ``__call__(batch_size)``."""

    def __init__(self, fields: torch.Tensor, generator: torch.Generator, shift: bool = True, sign: bool = True):
        self.fields, self.generator, self.shift, self.sign = fields, generator, shift, sign

    def __call__(self, batch_size: int) -> torch.Tensor:
        g, dev = self.generator, self.fields.device
        x = self.fields[torch.randint(len(self.fields), (batch_size,), generator=g, device=dev)]
        if self.shift:
            shifts = torch.randint(x.shape[-1], (2,), generator=g, device=dev).tolist()
            x = torch.roll(x, shifts, dims=(-2, -1))
        if self.sign:
            x = x * (2 * torch.randint(2, (batch_size, 1, 1, 1), generator=g, device=dev) - 1).to(x)
        return x
