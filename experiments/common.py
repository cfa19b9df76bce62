"""What the benchmark scripts share: their output arguments and the machine record in every JSON."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent


def add_output_arguments(p: argparse.ArgumentParser, name: str) -> None:
    """``--seed``, ``--work`` (run folders), ``--out`` (results/NAME.json), ``--figure``, ``--report``."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=f"/tmp/rgflow-{name}", help="scratch folder for the run folders")
    p.add_argument("--out", default=str(ROOT / "results" / f"{name}.json"))
    p.add_argument("--figure", default=str(ROOT.parent / "figures" / f"benchmark_{name}.png"))
    p.add_argument("--report", action="store_true", help="only redraw the figure and print the table from the JSON")


def machine() -> dict:
    """CPU count, torch version and threads, platform: stored beside every timing."""
    return {"cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "processor": platform.processor()}


def rgflow_cli(args: list[str]) -> dict:
    """Run ``rgflow ARGS`` in this process; the parsed JSON it printed (with ``--json``), else ``{}``."""
    from rgflow.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in args])
    if code != 0:
        raise RuntimeError(f"rgflow {' '.join(map(str, args))} exited with {code}")
    return json.loads(out.getvalue()) if "--json" in args else {}
