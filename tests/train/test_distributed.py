"""DDP on CPU (gloo, 2 processes): the loss trajectory and parameters equal a single-process run
that draws the same two per-rank batches and averages their losses (the combined batch)."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from rgflow.config import TrainConfig
from rgflow.train import ReverseKL, build_model, train
from rgflow.train.distributed import sampler_seed

CFG = dict(action="phi4", L=4, block="affine", hidden=8, n_couplings=2, batch_size=8, steps=6, log_every=1,
           ckpt_every=3, eval_every=10**6, lr_schedule="constant", dtype="float64", seed=5, learn_level_scale=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, run_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(TrainConfig(**CFG), run_dir)


def _reference(world):
    cfg = TrainConfig(**CFG)
    torch.manual_seed(cfg.seed)
    flow = build_model(cfg)
    action = cfg.make_action()
    fns = [ReverseKL(flow, action, generator=torch.Generator().manual_seed(sampler_seed(cfg.seed, r))) for r in range(world)]
    opt = torch.optim.Adam(flow.parameters(), lr=cfg.lr)
    losses = []
    for _ in range(cfg.steps):
        opt.zero_grad()
        loss = sum(fn(cfg.batch_size // world) for fn in fns) / world
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
    return losses, flow.state_dict()


def test_ddp_two_ranks_equal_single_process_with_combined_batch(tmp_path):
    run = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, _free_port(), str(run)), nprocs=2, join=True)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    checksums = [r["param_checksums"] for r in lines if r.get("event") == "checkpoint"]
    assert len(checksums) == 2 and all(len(c) == 2 and c[0] == c[1] for c in checksums)  # ranks agree
    ref_losses, ref_state = _reference(2)
    assert losses == pytest.approx(ref_losses, rel=1e-9, abs=1e-9)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == CFG["steps"] and len(state["rng"]["sampler"]) == 2
    for k, v in ref_state.items():
        torch.testing.assert_close(state["model"][k], v, rtol=1e-9, atol=1e-10)


def test_single_process_run_is_rank0_of_the_same_scheme(tmp_path):
    train(TrainConfig(**CFG), tmp_path / "one")
    lines = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in lines if "loss" in r] == pytest.approx(_reference(1)[0], rel=1e-9, abs=1e-9)


def test_batch_must_split_evenly_over_ranks(tmp_path):
    from rgflow.train.distributed import DistContext
    from rgflow.train.flow import _flow_task
    from rgflow.train.checkpoint import FolderLock
    from rgflow.train.loop import _train

    with pytest.raises(ValueError, match="batch_size=7 must be a multiple of the number of processes \\(2\\)"):
        _train(TrainConfig(**{**CFG, "batch_size": 7}), tmp_path / "r", False, False, DistContext(0, 2, 0), "cpu",
               _flow_task, FolderLock())
    assert not (tmp_path / "r").exists()
