"""Kill -9 and resume is bit-identical; SIGINT/SIGTERM checkpoint and exit 130/143; NaN steps are
skipped and rolled back; corrupt or incompatible checkpoints are refused naming the file."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from rgflow.config import TrainConfig
from rgflow.train import CheckpointError, load_checkpoint, train
from rgflow.train import flow as flow_module
from rgflow.train.checkpoint import save_checkpoint

TINY = ["--L", "4", "--block", "affine", "--hidden", "8", "--n-couplings", "2", "--batch-size", "16"]


def _cmd(out, steps, *extra):
    return [sys.executable, "-m", "rgflow", "train", *TINY, "--steps", str(steps), "--ckpt-every", "20",
            "--deterministic", "--out", str(out), *extra]


def _wait_for_checkpoint(proc, run, timeout=60.0):
    t0 = time.time()
    while not (run / "checkpoint.pt").exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() - t0 < timeout
        time.sleep(0.01)


_KILL_AT_CHECKPOINT = """
import os, signal, sys
from rgflow.train import loop
save, target = loop.save_checkpoint, int(sys.argv[1])

def save_then_die(path, state):  # SIGKILL right after the target checkpoint is on disk
    save(path, state)
    if state["step"] == target:
        os.kill(os.getpid(), signal.SIGKILL)

loop.save_checkpoint = save_then_die
from rgflow.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    """Killed with SIGKILL exactly after its third checkpoint (no race with a timer), then resumed:
    bit-identical parameters to an uninterrupted run."""
    steps = 400
    subprocess.run(_cmd(tmp_path / "full", steps), check=True, capture_output=True, timeout=300)
    cut = _cmd(tmp_path / "cut", steps)
    proc = subprocess.run([sys.executable, "-c", _KILL_AT_CHECKPOINT, "60", *cut[3:]], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 60
    subprocess.run([sys.executable, "-m", "rgflow", "train", "--out", str(tmp_path / "cut"), "--resume"],
                   check=True, capture_output=True, timeout=300)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == steps
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_writes_checkpoint_and_exits_cleanly(tmp_path, sig, code):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(run, 10**6), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(proc, run)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert "interrupted by signal" in err and "Traceback" not in err
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] > 0


class _FlakyLoss(flow_module.ReverseKL):
    """Returns NaN on the calls listed in ``bad``."""

    bad: set = set()
    calls = 0

    def forward(self, batch_size):
        loss = super().forward(batch_size)
        _FlakyLoss.calls += 1
        return loss * float("nan") if _FlakyLoss.calls in _FlakyLoss.bad else loss


def _tiny_cfg(**kw):
    return TrainConfig(action="phi4", L=4, block="affine", hidden=8, n_couplings=2, batch_size=16, log_every=5,
                       eval_every=10**6, **kw)


def test_nan_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(flow_module, "ReverseKL", _FlakyLoss)
    _FlakyLoss.calls, _FlakyLoss.bad = 0, {3, 4, 9}
    summary = train(_tiny_cfg(steps=20, ckpt_every=10), tmp_path / "r")
    assert summary["step"] == 20 and summary["bad_steps"] == 3 and summary["rollbacks"] == 0
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["bad_steps"] == 3


def test_persistent_nan_rolls_back_with_smaller_lr(tmp_path, monkeypatch):
    monkeypatch.setattr(flow_module, "ReverseKL", _FlakyLoss)
    _FlakyLoss.calls, _FlakyLoss.bad = 0, set(range(13, 13 + 4))
    summary = train(_tiny_cfg(steps=20, ckpt_every=10, max_bad_steps=4), tmp_path / "r")
    assert summary["rollbacks"] == 1 and summary["step"] == 20
    events = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 10, "event": "rollback", "lr_scale": 0.5} in events
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert state["lr_scale"] == 0.5
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_before_any_checkpoint_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(flow_module, "ReverseKL", _FlakyLoss)
    _FlakyLoss.calls, _FlakyLoss.bad = 0, set(range(1, 100))
    with pytest.raises(FloatingPointError, match="consecutive non-finite steps before any checkpoint"):
        train(_tiny_cfg(steps=20, ckpt_every=10, max_bad_steps=3), tmp_path / "r")


@pytest.fixture
def good_run(tmp_path):
    train(_tiny_cfg(steps=5, ckpt_every=5), tmp_path / "run")
    return tmp_path / "run"


def test_corrupt_checkpoints_are_refused(good_run, tmp_path):
    ckpt = good_run / "checkpoint.pt"
    raw = ckpt.read_bytes()
    cases = {
        "truncated": raw[: len(raw) // 2],
        "garbage": b"\x00not a checkpoint" * 10,
        "empty": b"",
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{name}.pt: not a readable checkpoint"):
            load_checkpoint(path)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="other.pt: not an rgflow checkpoint"):
        load_checkpoint(other)
    state = torch.load(ckpt, weights_only=True)
    del state["format"]
    state["model"] = {k: v * float("nan") if v.is_floating_point() else v for k, v in state["model"].items()}
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(tmp_path / "nan.pt", state)
    torch.save({**state, "format": "rgflow-checkpoint-v1"}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="nan.pt: checkpoint holds non-finite parameters"):
        load_checkpoint(tmp_path / "nan.pt")


def test_incompatible_config_is_refused_and_run_left_intact(good_run):
    before = (good_run / "config.json").read_text()
    with pytest.raises(CheckpointError, match="incompatible config .hidden: checkpoint 8 vs config 16"):
        train(TrainConfig.from_dict({**json.loads(before), "hidden": 16, "steps": 10}), good_run, resume=True)
    assert (good_run / "config.json").read_text() == before


def test_previous_checkpoint_survives_a_crash_during_rename(good_run):
    # a crash between the two renames of save_checkpoint leaves only checkpoint.pt.prev
    (good_run / "checkpoint.pt").rename(good_run / "checkpoint.pt.prev")
    summary = train(TrainConfig.from_dict({**json.loads((good_run / "config.json").read_text()), "steps": 8}),
                    good_run, resume=True)
    assert summary["step"] == 8


def test_a_run_folder_from_before_symmetrised_flows_still_loads(tmp_path):
    """Config and checkpoint written before the `mixture` key (first named `symmetrize`) existed: an Ising
    run then held a plain flow, and both must be read that way (the checkpoint's config used to resolve to
    the Z2 mixture and be refused as incompatible with its own folder)."""
    from rgflow.runs import open_run

    run = tmp_path / "old"
    subprocess.run([sys.executable, "-m", "rgflow", "train", "--action", "ising", "--T", "2.3", *TINY, "--steps", "2",
                    "--mixture", "none", "--out", str(run)], check=True, capture_output=True, timeout=300)
    cfg = json.loads((run / "config.json").read_text())
    del cfg["mixture"]
    (run / "config.json").write_text(json.dumps(cfg))
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    del state["config"]["mixture"]
    torch.save(state, run / "checkpoint.pt")
    opened = open_run(run, "flow")
    cfg, flow = opened.config, opened.model
    assert cfg.mixture is None and flow.layout is not None


def _locked(folder) -> bool:
    import fcntl
    import os

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our lock, if we got it


def test_a_second_writer_is_refused_while_the_first_lives_and_a_killed_one_does_not_block(tmp_path, capsys):
    """Two `rgflow train --out RUN --resume` at once used to interleave metrics.jsonl and overwrite each
    other's checkpoints; now the second is refused in one line (exit 2); after the first is SIGKILLed
    (no chance to clean up) a resume runs."""
    from rgflow.cli import main

    run = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "2", "--out", str(run)]) == 0
    assert not _locked(run)
    first = subprocess.Popen([sys.executable, "-m", "rgflow", "train", "--out", str(run), "--resume", "--steps",
                              "100000", "--ckpt-every", "1000000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not _locked(run):
            assert first.poll() is None and time.time() - t0 < 120
            time.sleep(0.05)
        capsys.readouterr()
        assert main(["train", "--out", str(run), "--resume", "--steps", "5"]) == 2
        err = capsys.readouterr().err
        assert "being written by another running process" in err and len(err.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert not _locked(run)
    assert main(["train", "--out", str(run), "--resume", "--steps", "4"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
