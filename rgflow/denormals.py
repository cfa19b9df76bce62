"""Subnormal floats flushed to zero while rgflow computes.

Training a flow on the Ising relaxation produces subnormal floats (magnitudes below ``1.2e-38`` in
float32), and x86 CPUs take a slow path for each: on one thread a training step of a trained Ising flow
at T_c (L = 16, conv couplings, batch 16) costs 0.815 s with subnormals and 0.239 s without
(``experiments/results/denormals.json``); an untrained flow is not affected, so training slowed down as
it went. Flushing them to zero changes nothing above ``1e-38``.

:func:`flush_denormals` is a context manager and a decorator; nested uses keep the mode until the
outermost one exits (the mode has no getter in torch, so outside rgflow it is left off, torch's default).
"""
from __future__ import annotations

import contextlib
import threading

import torch

__all__ = ["flush_denormals"]

_depth = 0
_lock = threading.Lock()


class flush_denormals(contextlib.ContextDecorator):  # noqa: N801 -- used like contextlib's helpers
    """``with flush_denormals(): ...`` or ``@flush_denormals()``: subnormals read and written as zero inside."""

    def __enter__(self):
        global _depth
        with _lock:
            if _depth == 0:
                torch.set_flush_denormal(True)  # False (and no effect) where the CPU has no such mode
            _depth += 1
        return self

    def __exit__(self, *exc):
        global _depth
        with _lock:
            _depth -= 1
            if _depth == 0:
                torch.set_flush_denormal(False)
        return False
