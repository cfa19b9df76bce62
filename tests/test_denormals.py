"""Subnormal floats are flushed inside rgflow's compute paths and left alone outside (rgflow.denormals)."""
import pytest
import torch

from rgflow.denormals import flush_denormals

TINY = 1e-39  # a float32 subnormal (the smallest normal float32 is 1.18e-38)


def _tiny() -> float:
    return (torch.tensor([TINY], dtype=torch.float32) * 1.0).item()


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="the CPU has no flush-to-zero mode")
def test_flushed_inside_nested_uses_and_restored_after():
    assert _tiny() > 0
    with flush_denormals():
        assert _tiny() == 0.0
        with flush_denormals():
            assert _tiny() == 0.0
        assert _tiny() == 0.0  # the inner exit keeps the outer's mode

    @flush_denormals()
    def decorated():
        return _tiny()

    assert decorated() == 0.0
    assert _tiny() > 0


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="the CPU has no flush-to-zero mode")
def test_the_training_loop_runs_with_subnormals_flushed(tmp_path, monkeypatch):
    from rgflow.config import TrainConfig
    from rgflow.train import flow as train_flow
    from rgflow.train import train

    seen = []
    build = train_flow.build_model
    monkeypatch.setattr(train_flow, "build_model", lambda *a, **k: (seen.append(_tiny()), build(*a, **k))[1])
    train(TrainConfig(L=4, steps=1, hidden=4, layers=1, eval_every=10**9), tmp_path / "run")
    assert seen == [0.0]
    assert _tiny() > 0
