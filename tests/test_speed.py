"""tinyfusion.speed and tinyfusion.pruning.width: width pruning, parameter/MAC accounting, throughput; DiT's
masked_block against the plain blend.

No timings are asserted (shared CPUs make them meaningless); the benchmarks under benchmarks/ measure them.
"""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tinyfusion.models import DiT
from tinyfusion.pruning.indices import oracle_indices, prune
from tinyfusion.pruning.width import count_params, forward_macs, model_params, width_for_params, width_pruned
from tinyfusion.speed import random_dit, sampling_throughput, speed_sweep


def _inputs(model, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = model.x_embedder.img_size[0]
    return (torch.randn(n, model.in_channels, size, size, generator=g), torch.randint(0, 1000, (n,), generator=g),
            torch.randint(0, model.num_classes, (n,), generator=g))


@pytest.fixture
def dit():
    torch.manual_seed(0)
    return random_dit(dict(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=6, num_heads=4,
                           num_classes=10)).eval()


def test_depth_pruned_param_count_matches_model_params(dit):
    small = prune(dit, oracle_indices(6, 3))
    assert small.pruned_from == [0, 3, 5] and small.config["depth"] == 3
    assert count_params(small) == model_params(dit.config, depth=3)


def test_width_pruned_full_width_is_identity_and_half_width_shrinks(dit):
    x, t, y = _inputs(dit)
    same = width_pruned(dit, 1.0)
    assert torch.allclose(same(x, t, y), dit(x, t, y), atol=1e-5)
    half = width_pruned(dit, 0.5)
    assert half.width == dict(heads=2, mlp_hidden=64, head_keep=0.5, mlp_keep=0.5)
    b = half.blocks[0]
    assert b.attn.qkv.weight.shape == (3 * 16, 32) and b.attn.proj.weight.shape == (32, 16)  # head_dim 8 kept
    assert b.mlp.fc1.weight.shape == (64, 32) and b.adaLN_modulation[1].weight.shape == (6 * 32, 32)
    assert half(x, t, y).shape == dit(x, t, y).shape
    assert count_params(half) == model_params(dit.config, heads=2, mlp_hidden=64)
    # keeps the largest-norm heads: zero all heads but one and that one must survive a 1-head prune
    with torch.no_grad():
        blk = dit.blocks[0]
        blk.attn.qkv.weight.view(3, 4, 8, 32)[:, [0, 1, 3]] = 0
        blk.attn.proj.weight.view(32, 4, 8)[:, [0, 1, 3]] = 0
    one = width_pruned(dit, heads=1, mlp_hidden=128)
    assert torch.equal(one.blocks[0].attn.qkv.weight.view(3, 8, 32), blk.attn.qkv.weight.view(3, 4, 8, 32)[:, 2])


def test_width_from_config_is_random_and_sized():
    cfg = dict(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=4, num_heads=4, num_classes=10)
    w = width_pruned(cfg, 0.25)
    assert w.config["depth"] == 4 and w.width["heads"] == 1
    assert count_params(w) == model_params(cfg, heads=1, mlp_hidden=32)
    assert torch.isfinite(w(*_inputs(w))).all()


def test_width_for_params_matches_depth_pruned_where_possible():
    w = width_for_params("DiT-T28/7", model_params(random_dit("DiT-T28/7").config, depth=14))
    assert w["matched"] and abs(w["params"] / w["target_params"] - 1) < 0.01
    assert abs(w["head_keep"] - w["mlp_keep"]) < 0.1  # uniform removal
    # adaLN (6 d^2 per block) cannot be width-pruned: D7's size is out of reach
    far = width_for_params("DiT-T28/7", model_params(random_dit("DiT-T28/7").config, depth=7))
    assert not far["matched"] and far["heads"] == 1 and far["params"] > far["target_params"]


def test_forward_macs_dit_xl_is_118_gflops():
    with torch.device("meta"):
        xl = DiT(depth=28, hidden_size=1152, patch_size=2, num_heads=16)
    assert abs(forward_macs(xl) / 1e9 - 118.6) < 0.1  # the DiT paper's 118.6 Gflops


def _blend(model, x, t, y, mask):
    """The plain blend, every block computed with autograd for every sample: what masked_block must equal."""
    return _load_bench("prune_step").blended_forward(model, x, t, y, mask)


def test_masked_forward_equals_blend_outputs_and_gradients(dit):
    from tinyfusion.models.gates import NMGates
    dit.train()
    gates = NMGates(6, "1:2")
    x, t, y = _inputs(dit, n=8)
    torch.manual_seed(3)
    mask = gates.sample(8, tau=1.0)
    assert (mask.detach() == 0).any() and mask.requires_grad
    grads = []
    for fwd in (lambda: dit(x, t, y, mask=mask), lambda: _blend(dit, x, t, y, mask)):
        dit.zero_grad()
        gates.zero_grad()
        torch.manual_seed(7)  # same label dropout
        out = fwd()
        (out ** 2).mean().backward(retain_graph=True)  # the mask graph is shared
        grads.append([out.detach()] + [p.grad.clone() for p in list(dit.parameters()) + list(gates.parameters())
                                       if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 10
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * a.abs().max().item())


def test_sampling_throughput_and_sweep_shapes(dit):
    assert sampling_throughput(dit, batch=2, steps=1, warmup=0, repeats=1) > 0
    rows = speed_sweep(dict(dit.config), ratios=(0, 0.5), batch=2, steps=1, warmup=0, repeats=1)
    methods = {(r["method"], r["ratio"]) for r in rows}
    assert methods == {("base", 0.0), ("depth", 0.5), ("width-channels", 0.5), ("width-params", 0.5)}
    d = next(r for r in rows if r["method"] == "depth")
    assert d["depth"] == 3 and d["ideal"] == 2.0 and d["speedup"] > 0 and len(d["runs"]) == 1
    wp = next(r for r in rows if r["method"] == "width-params")
    assert abs(wp["params"] - d["params"]) / d["params"] < 0.05


def test_speed_sweep_records_per_round_speedups_against_the_same_rounds_base(dit):
    import math
    import statistics
    rows = speed_sweep(dict(dit.config), ratios=(0, 0.5), batch=2, steps=1, warmup=0, repeats=3)
    base = next(r for r in rows if r["method"] == "base")
    assert base["speedups"] == [1.0] * 3 and base["speedups_cpu"] == [1.0] * 3 and base["speedup_sd"] == 0.0
    for r in rows:
        assert r["repeats"] == 3 and len(r["speedups"]) == len(r["speedups_cpu"]) == len(r["runs"]) == 3
        for i, s in enumerate(r["speedups"]):  # round i's speed-up: this model's it/s over the base's, same round
            assert s == pytest.approx(r["runs"][i] / base["runs"][i], rel=1e-3)
        assert r["speedup_mean"] == pytest.approx(statistics.fmean(r["speedups"]), abs=1e-3)
        assert r["speedup_sd"] == pytest.approx(statistics.stdev(r["speedups"]), abs=1e-3)
        assert r["speedup_cpu_sd"] == pytest.approx(statistics.stdev(r["speedups_cpu"]), abs=1e-3)
        assert all(s > 0 for s in r["speedups"] + r["speedups_cpu"])
    one = speed_sweep(dict(dit.config), ratios=(0, 0.5), batch=2, steps=1, warmup=0, repeats=1,
                      width_modes=("channels",))
    d = next(r for r in one if r["method"] == "depth")
    assert d["repeats"] == 1 and len(d["speedups"]) == 1 and math.isnan(d["speedup_sd"])
    # the benchmark's summary carries the sds and claim 7's rule on the CPU-time figures
    summary = _load_bench("speed").summarise(rows, "cpu", "tiny")
    assert summary["depth_0.5_speedup_sd"] == next(r for r in rows if r["method"] == "depth")["speedup_sd"]
    assert "width_channels_0.5_speedup_cpu_sd" in summary
    assert summary["claim7"]["rule"] == "claim7_speedup_repeats" and summary["claim7"]["yardstick"]["repeats"] == 3
    assert summary["claim7"]["yardstick"]["measure"] == "speedup_cpu"


def test_study_speed_sweep_cache_names_the_row_format(tmp_path, monkeypatch):
    """A sweep cached before the rows recorded their rounds (no ``record`` in its config) is not reused."""
    import tinyfusion.speed as speed
    from tinyfusion.study import Study
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path))
    st = Study("smoke")
    kw = st.prof.extra.get("speed", {})
    old = st.cached("speed", "sweep", {"model": st.prof.model, "device": "cpu", **kw},
                    lambda folder: {"rows": [{"method": "base", "ratio": 0.0, "speedup": 1.0}]})
    assert "speedups" not in old["rows"][0]
    calls = []
    monkeypatch.setattr(speed, "speed_sweep",
                        lambda *a, **k: calls.append(k) or [{"method": "base", "speedups": [1.0]}])
    assert st.speed_sweep() == [{"method": "base", "speedups": [1.0]}] and len(calls) == 1
    assert calls[0] == kw
    assert st.speed_sweep() == [{"method": "base", "speedups": [1.0]}] and len(calls) == 1  # now cached
    records = [json.loads(p.read_text()) for p in (tmp_path / "smoke" / "speed").glob("*/run.json")]
    assert sorted(r["config"].get("record", "") for r in records) == ["", speed.SWEEP_RECORD]


def _load_bench(name):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reproduce_time_summary():
    rt = _load_bench("reproduce_time")
    first = {"00_a.ipynb": {"seconds": 10.0}, "01_b.ipynb": {"seconds": 3.0, "failed": True}}
    timings = {"runs": [{"notebooks": first},
                        {"notebooks": {"01_b.ipynb": {"seconds": 50.0}}, "total_seconds": 50.0}],
               "latest": {"00_a.ipynb": 10.0, "01_b.ipynb": 50.0, "02_c.ipynb": 1.0, "03_d.ipynb": 5.0}}
    s = rt.summarise(timings, "cpu")
    assert s["total_seconds"] == 66.0
    assert [r["notebook"] for r in s["slowest"]] == ["01_b.ipynb", "00_a.ipynb", "03_d.ipynb"]
    assert s["within_budget"] and s["last_run"]["finished"] and s["last_run"]["failed"] == []
    with pytest.raises(ValueError, match="reproduce"):
        rt.summarise({"runs": []})


def test_straightforward_lora_step_equals_ours_loss():
    ps = _load_bench("prune_step")
    res = ps.grad_check("DiT-T28/4", batch=4, depth=4)
    assert res["blend_max_rel_grad_diff_weights"] < 1e-4  # LoRA and input gradients
    assert res["blend_max_rel_grad_diff_gates"] < 2e-3     # a nearly cancelling sum over samples
    assert abs(res["loss_ours"] - res["loss_straightforward"]) < 1e-5


def test_masked_forward_block_dropped_by_every_row_keeps_zero_grads(dit):
    dit.train()
    mask = torch.ones(4, 6)
    mask[:, 1] = 0          # block 1 dropped for every sample
    mask[:2, 3] = 0         # block 3 dropped for half of them
    mask.requires_grad_(True)
    x, t, y = _inputs(dit, n=4)
    grads = []
    for fwd in (lambda: dit(x, t, y, mask=mask), lambda: _blend(dit, x, t, y, mask)):
        dit.zero_grad()
        mask.grad = None
        torch.manual_seed(7)
        (fwd() ** 2).mean().backward()
        for p in dit.blocks[1].parameters():
            assert p.grad is not None and torch.count_nonzero(p.grad) == 0  # zero, not None
        assert mask.grad[:, 1].abs().sum() > 0 and mask.grad[:2, 3].abs().sum() > 0  # the gates still learn
        grads.append([mask.grad.clone()] + [p.grad.clone() for p in dit.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * a.abs().max().item())


def test_interleaved_sampling_times_whole_loops_of_any_model():
    """MAR's sampling is not one forward per iteration: interleaved_sampling times objective.sample per model, round by
    round, and reports each model's speed-up over the first in the same round."""
    from tinyfusion.diffusion import objective_for
    from tinyfusion.models import prunable
    from tinyfusion.models.mar import build_mar
    from tinyfusion.speed import interleaved_sampling
    torch.manual_seed(0)
    teacher = build_mar("MAR-T32/4", diffloss_depth=1, num_sampling_steps="2")
    res = interleaved_sampling({"D32": teacher, "D16": prunable.pruned(teacher, list(range(0, 32, 2)))},
                               objective_for(teacher), n=4, steps=2, repeats=2, warmup=0)
    assert list(res) == ["D32", "D16"] and res["D32"]["speedup"] == 1.0 and res["D32"]["speedup_sd"] == 0.0
    assert all(len(r["seconds"]) == 2 and r["img_s"] > 0 for r in res.values()) and res["D16"]["speedup"] > 0
