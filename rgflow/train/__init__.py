"""Training: the one loop (:mod:`~rgflow.train.loop`), the flow family (:mod:`~rgflow.train.flow`),
losses, checkpoints and diagnostics.

The flow family's names are loaded on first use, so that the run registry (:mod:`rgflow.runs`), which
reads checkpoints through :mod:`rgflow.train.checkpoint`, sits below the families without a cycle.
"""
import importlib

from rgflow.train.checkpoint import CheckpointError, RunFolderError, load_checkpoint, save_checkpoint

__all__ = [
    "ReverseKL", "train", "build_model", "evaluate", "draw",
    "CheckpointError", "load_checkpoint", "save_checkpoint", "RunFolderError", "TrainingInterrupted",
]

_LAZY = {"train": "rgflow.train.flow", "build_model": "rgflow.train.flow", "evaluate": "rgflow.train.diagnostics",
         "draw": "rgflow.train.diagnostics", "TrainingInterrupted": "rgflow.train.loop", "ReverseKL": "rgflow.train.loss"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rgflow.train' has no attribute {name!r}")
