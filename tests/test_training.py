"""The one training loop: a loss that falls, hooks called as documented, a stopped-and-resumed run that equals the
uninterrupted one, a state of another run refused."""
import os

import pytest
import torch

from tinyfusion.diffusion import create_objective
from tinyfusion.training import LoopConfig, make_ema, train


def _setup(seed=0):
    torch.manual_seed(seed)
    images = torch.randn(256, 4)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0)
    return model, opt, images, torch.zeros(256, dtype=torch.long)


def loss_fn(net, batch, step):
    x, y, noise, t = batch
    err = (net(x) - 2 * x).pow(2).mean()
    return {"loss": err, "err": err}


def test_loss_falls_and_hooks_are_called():
    model, opt, images, labels = _setup()
    ema, updates = make_ema(model), []

    def on_log(step, entry):
        entry["extra"] = step * 10
        return {"shown": "x"}
    res = train(model, loss_fn, opt, images, labels, create_objective(), LoopConfig(steps=60, batch_size=32,
                log_every=20), lr_at=lambda s: 0.05 if s < 30 else 0.01, ema=ema, after_update=updates.append,
                on_log=on_log, progress=False)
    log = res["log"]
    assert [e["step"] for e in log] == [0, 19, 39, 59] and [e["extra"] for e in log] == [0, 190, 390, 590]
    assert log[-1]["loss"] < 0.05 * log[0]["loss"] and res["first"] is log[0]
    assert [e["lr"] for e in log] == [0.05, 0.05, 0.01, 0.01]
    assert updates == list(range(60)) and res["steps_run"] == 60 and res["stopped_at"] is None
    assert not torch.equal(ema.weight, model.weight)  # the EMA trails the weights ...
    assert (ema.weight - 2 * torch.eye(4)).abs().max() < 0.5  # ... towards the same solution


def test_stopped_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    cfg = dict(steps=30, batch_size=16, seed=3, log_every=5)
    whole, opt, images, labels = _setup()
    ref = train(whole, loss_fn, opt, images, labels, create_objective(), LoopConfig(**cfg), progress=False)

    def run(stop_after, identity):
        model, opt, images, labels = _setup()
        res = train(model, loss_fn, opt, images, labels, create_objective(), LoopConfig(**cfg, stop_after=stop_after),
                    state={"model": model, "opt": opt}, state_path=tmp_path / "state.pt", identity=identity,
                    progress=False)
        return model, res
    _, part = run(12, {"run": 1})
    assert part["stopped_at"] == 12 and part["steps_run"] == 12
    with pytest.raises(ValueError, match="was written by another run.*'run': \\(1, 2\\)"):
        run(0, {"run": 2})
    model, rest = run(0, {"run": 1})
    assert rest["steps_run"] == 18 and torch.equal(model.weight, whole.weight) and torch.equal(model.bias, whole.bias)
    assert [e["step"] for e in rest["log"]] == [e["step"] for e in ref["log"]]
    assert rest["first"] == ref["first"]  # the initial loss survives the resume
    # each call's thread count, priority, steps and time are recorded (a run is bit-identical only on the same
    # thread count; a rate is read from a call that had the cores to itself); the total time sums the calls'
    me = {"threads": torch.get_num_threads(), "world_size": 1, "torch": str(torch.__version__), "nice": os.nice(0)}
    span = lambda seg: {k: seg[k] for k in (*me, "from_step", "to_step")}  # noqa: E731
    assert [span(s) for s in rest["segments"]] == [{"from_step": 0, "to_step": 12, **me},
                                                   {"from_step": 12, "to_step": 30, **me}]
    assert [span(s) for s in ref["segments"]] == [{"from_step": 0, "to_step": 30, **me}]
    assert all(s["wall_s"] >= 0 for s in rest["segments"])
    assert rest["total_wall_s"] == pytest.approx(sum(s["wall_s"] for s in rest["segments"]), abs=0.11)


def test_nonfinite_steps_are_skipped_and_bounded():
    model, opt, images, labels = _setup()
    before = model.weight.detach().clone()
    res = train(model, loss_fn, opt, images, labels, create_objective(),
                LoopConfig(steps=2, batch_size=8, inject_nan_at=(0,), stop_after=1), progress=False)
    assert res["skipped_steps"] == 1 and res["log"][0]["skipped"] and torch.equal(model.weight, before)
    with pytest.raises(FloatingPointError, match="non-finite"):
        train(model, loss_fn, opt, images, labels, create_objective(),
              LoopConfig(steps=4, batch_size=8, inject_nan_at=(0, 1, 2), max_skipped=2), progress=False)
