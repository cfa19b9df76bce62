"""Reverse-KL training: loss module, training loop, checkpoints, diagnostics."""
from rgflow.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rgflow.train.diagnostics import draw, evaluate
from rgflow.train.loop import RunFolderError, TrainingInterrupted, build_model, load_run, train
from rgflow.train.loss import ReverseKL

__all__ = [
    "ReverseKL", "train", "build_model", "load_run", "evaluate", "draw",
    "CheckpointError", "load_checkpoint", "save_checkpoint", "RunFolderError", "TrainingInterrupted",
]
