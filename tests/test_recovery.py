"""Recovery: layer matching, (masked) distillation losses, resumable and guarded fine-tuning, DDP = 1 process,
and class-balanced sampling."""
import json
import os
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyfusion.io import load_checkpoint, load_json, load_npz, save_checkpoint
from tinyfusion.models.dit import DiT
from tinyfusion.recovery import finetune, kd_losses, layer_map, masked_rep_loss
from tinyfusion.models import load_dit
from tinyfusion.sampling import sample_batches, sample_to_npz

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(input_size=8, patch_size=4, in_channels=1, hidden_size=32, num_heads=2, num_classes=10)


def tiny(depth, seed=0, **kw):
    torch.manual_seed(seed)
    m = DiT(**{**TINY, **kw}, depth=depth)
    with torch.no_grad():  # adaLN-Zero starts blocks as the identity; make them do something
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return m


def data(n=64, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g) * 2 - 1, torch.randint(10, (n,), generator=g)


# --------------------------------------------------------------------------- layer_map
def test_layer_map_uniform_groups():
    assert layer_map(list(range(0, 28, 2)), "1:2", 28) == list(range(1, 28, 2))
    assert layer_map(list(range(1, 28, 2)), "1:2", 28) == list(range(1, 28, 2))
    assert layer_map([0, 3, 5, 6], "2:4", 8) == [1, 3, 5, 7]
    assert layer_map([2, 3, 4, 7], [2, 4], 8) == [1, 3, 5, 7]
    assert layer_map([0, 1, 2, 3, 4, 5, 6], "7:14", 14) == [1, 3, 5, 7, 9, 11, 13]
    assert layer_map([0, 2, 4, 8, 9, 10, 13, 14, 15, 16, 20, 21, 25, 27], "7:14", 28) == list(range(1, 28, 2))
    assert layer_map([0, 5, 9], "3:12", 12) == [3, 7, 11]


def test_layer_map_mixed_and_uneven_groups():
    assert layer_map([1, 2, 5, 6, 7, 9], [[1, 2], [2, 4], [3, 6]], 12) == [1, 3, 5, 7, 9, 11]
    assert layer_map([1, 2, 5, 6, 7, 9], "[[1, 2], [2, 4], [3, 6]]", 12) == [1, 3, 5, 7, 9, 11]
    # 2 of 3 layers: sub-spans end at ceil(3/2)-1 = 1 and 2
    assert layer_map([0, 2, 5], [[2, 3], [1, 3]], 6) == [1, 2, 5]
    # no block structure (ShortGPT-like prune): one block over the whole depth
    assert layer_map([0, 1, 2, 3], None, 8) == [1, 3, 5, 7]


def test_layer_map_composes_through_parent_map():
    d14_kept = [0, 3, 4, 7, 9, 10, 12, 15, 16, 19, 21, 22, 25, 26]
    d14 = layer_map(d14_kept, "1:2", 28)
    assert d14 == list(range(1, 28, 2))
    d7 = layer_map([1, 2, 5, 7, 8, 11, 12], "1:2", 28, parent_map=d14)
    assert d7 == [3, 7, 11, 15, 19, 23, 27]
    # D7 from a D14 distilled by the D14 itself: no parent map, indices into the 14 layers
    assert layer_map([1, 2, 5, 7, 8, 11, 12], "1:2", 14) == [1, 3, 5, 7, 9, 11, 13]
    # 2:4 over a D14 whose map is not uniform
    assert layer_map([0, 1, 6, 7], "2:4", 28, parent_map=[0, 2, 5, 9, 11, 13, 20, 27]) == [2, 9, 13, 27]


@pytest.mark.parametrize("kept, groups, depth, parent, match", [
    ([0, 1, 4, 6], "1:2", 8, None, "should keep 1"),
    ([3, 1], "1:2", 4, None, "strictly increasing"),
    ([1, 9], "1:2", 4, None, "outside"),
    ([1, 3], "1:3", 4, None, "not a multiple of 3"),
    ([1, 3], "x:2", 4, None, "not of the form 'N:M'"),
    ([1, 3], [[1, 2], [1, 4]], 4, None, "cover 6 layers"),
    ([1, 3], "3:2", 4, None, "need N <= M"),
    ([1, 2], "1:2", 28, [1, 3, 5], "cannot cover 3 layers"),
    ([0, 2], "1:2", 8, [1, 3, 30, 31], "outside the teacher"),
    ([], "1:2", 4, None, "empty"),
])
def test_layer_map_rejects_bad_input(kept, groups, depth, parent, match):
    with pytest.raises(ValueError, match=match):
        layer_map(kept, groups, depth, parent)


# --------------------------------------------------------------------------- losses
def test_masked_rep_loss_excludes_exactly_the_planted_outliers():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(3, 16, 32, generator=g) * 2 - 1
    t = torch.rand(3, 16, 32, generator=g) * 2 - 1
    out_s = torch.zeros_like(s, dtype=torch.bool)
    out_t = torch.zeros_like(t, dtype=torch.bool)
    out_s[0, 1, 2] = out_s[1, 5, 7] = out_s[2, 0, 0] = out_s[2, 15, 31] = True
    out_t[0, 3, 4] = out_t[1, 5, 7] = out_t[2, 9, 9] = True
    s[out_s], t[out_t] = 300.0, -500.0
    keep = ~(out_s | out_t)
    err = (s - t) ** 2
    by_hand = torch.stack([err[b][keep[b]].mean() for b in range(3)]).mean()
    for k in (2.0, 4.0):
        assert torch.allclose(masked_rep_loss(s, t, k), by_hand, rtol=1e-6)
    unmasked = masked_rep_loss(s, t)
    assert torch.allclose(unmasked, err.mean(), rtol=1e-6)
    assert unmasked > 100 * by_hand  # the outliers dominate the unmasked loss
    # lists average over layers (the official code; the sum made a D14's loss 14x)
    assert torch.allclose(masked_rep_loss([s, s], [t, t], 2.0), by_hand, rtol=1e-6)
    assert torch.allclose(masked_rep_loss([s, t], [t, t], 2.0), by_hand / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="k_sigma"):
        masked_rep_loss(s, t, 0.0)
    with pytest.raises(ValueError, match="widths"):
        masked_rep_loss(s, t[:, :, :16])


def test_masked_rep_loss_passes_gradient_only_through_kept_positions():
    s = torch.zeros(1, 8, 16)
    s[0, 0, 0] = 100.0
    s = s + 0.01 * torch.randn(1, 8, 16)
    s.requires_grad_(True)
    t = 0.01 * torch.randn(1, 8, 16)
    masked_rep_loss(s, t, 2.0).backward()
    assert s.grad[0, 0, 0] == 0 and s.grad.abs().sum() > 0


def test_kd_losses_vanish_when_student_is_teacher():
    model = tiny(4).train()  # train mode: its own label dropout must stay off inside kd_losses
    x, y = data(16)
    t = torch.randint(1000, (16,))
    noise = torch.randn_like(x)
    for mode, k in (("kd", None), ("repkd", None), ("masked_kd", 2.0), ("masked_kd", 4.0)):
        terms = kd_losses(model, model, x, t, y, mode, [0, 1, 2, 3], k, x0=x, noise=noise)
        assert terms["kd"].item() == 0.0
        if mode != "kd":
            assert terms["rep"].item() == 0.0
        assert terms["diff"].item() > 0
    other = tiny(4, seed=1)
    terms = kd_losses(model, other, x, t, y, "masked_kd", [0, 1, 2, 3], 2.0)
    assert terms["kd"].item() > 0 and terms["rep"].item() > 0 and "diff" not in terms
    with pytest.raises(ValueError, match="unknown mode"):
        kd_losses(model, model, x, t, y, "distil")


# --------------------------------------------------------------------------- fine-tuning loop
def test_finetune_modes_and_argument_checks():
    teacher, images, labels = tiny(4, seed=1), *data()
    lm = layer_map([1, 2], "1:2", 4)
    for mode, k in (("finetune", None), ("kd", None), ("repkd", None), ("masked_kd", 2.0)):
        s = tiny(2)
        before = deepcopy(s.state_dict())
        r = finetune(s, images, labels, mode, teacher, lm, steps=2, batch_size=8, k_sigma=k, progress=False)
        first = r["first_step_components"]
        assert len(r["log"]) == 2 and r["skipped_steps"] == 0 and r["samples_per_s"] > 0
        if mode == "finetune":
            assert first["loss"] == pytest.approx(first["diff"]) and "kd" not in first
        elif mode == "kd":
            assert first["loss"] == pytest.approx(0.9 * first["kd"] + 0.1 * first["diff"], rel=1e-5)
        else:
            assert first["beta"] == pytest.approx(1e-2) and r["log"][-1]["beta"] == 0.0
            assert first["loss"] == pytest.approx(0.9 * first["kd"] + 0.1 * first["diff"] + 1e-2 * first["rep"],
                                                  rel=1e-5)
        assert [e["lr"] for e in r["log"]] == pytest.approx([2e-4, 1.5e-4])  # cosine from 2e-4 towards 1e-4
        assert any(not torch.equal(before[k_], v) for k_, v in s.state_dict().items())
    s = tiny(2)
    with pytest.raises(ValueError, match="unknown mode"):
        finetune(s, images, labels, "distil", steps=1, batch_size=8)
    with pytest.raises(ValueError, match="teacher"):
        finetune(s, images, labels, "kd", steps=1, batch_size=8)
    with pytest.raises(ValueError, match="layer_map"):
        finetune(s, images, labels, "repkd", teacher, steps=1, batch_size=8)
    with pytest.raises(ValueError, match="k_sigma"):
        finetune(s, images, labels, "masked_kd", teacher, lm, steps=1, batch_size=8)
    with pytest.raises(ValueError, match="layer_map"):
        finetune(s, images, labels, "repkd", teacher, [1, 3, 5], steps=1, batch_size=8)
    with pytest.raises(ValueError, match="hidden_size"):
        finetune(s, images, labels, "kd", tiny(4, hidden_size=64), steps=1, batch_size=8)


def test_a_checkpoint_the_notebooks_prune_goes_to_the_kd_modes_of_the_entry_point(tmp_path, monkeypatch):
    """``Study.pruned`` (what the notebooks write) stores ``kept``: ``cli.finetune``'s KD modes, RepKD's layer map
    included, take it without ``--kept``."""
    from tinyfusion.cli import finetune as cli
    from tinyfusion.profiles import get_profile
    from tinyfusion.study import Study

    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))
    torch.manual_seed(0)
    m = DiT(input_size=16, patch_size=4, in_channels=1, hidden_size=16, depth=4, num_heads=2, num_classes=10)
    teacher = tmp_path / "teacher.pt"
    save_checkpoint({"ema": m.state_dict(), "config": m.config}, teacher)
    student = Study(get_profile("smoke", teacher=str(teacher))).pruned([0, 3])
    assert load_checkpoint(student)["kept"] == [0, 3]
    for mode, extra in (("kd", []), ("masked_kd", ["--k-sigma", "2"])):
        res = cli.main(["--profile", "smoke", "--teacher", str(teacher), "--student", student, "--mode", mode,
                        *extra, "--steps", "2", "--batch-size", "4", "--no-progress", "--out", str(tmp_path / mode)])
        recovered = load_checkpoint(res["model"])
        assert recovered["kept"] == [0, 3] and recovered["config"]["depth"] == 2
        if mode == "masked_kd":
            assert load_json(tmp_path / mode / "run.json")["config"]["layer_map"] == [1, 3]  # 1:2 blocks' ends


def test_stopped_and_resumed_run_matches_uninterrupted(tmp_path):
    teacher, images, labels = tiny(4, seed=1), *data()
    init = tiny(2)
    kw = dict(steps=5, batch_size=8, k_sigma=2.0, progress=False, seed=3)
    full = finetune(deepcopy(init), images, labels, "masked_kd", teacher, [1, 3], **kw)
    part = finetune(deepcopy(init), images, labels, "masked_kd", teacher, [1, 3], state_path=tmp_path / "s.pt",
                    stop_after=2, **kw)
    assert part["stopped_at"] == 2 and len(part["log"]) == 2
    rest = finetune(deepcopy(init), images, labels, "masked_kd", teacher, [1, 3], state_path=tmp_path / "s.pt",
                    **kw)
    assert rest["steps_run"] == 3 and [e["step"] for e in rest["log"]] == [0, 1, 2, 3, 4]
    assert rest["first_step_components"] == full["first_step_components"] == full["log"][0]  # the initial loss
    for a, b in ((full["model"], rest["model"]), (full["ema"], rest["ema"])):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(va, vb, atol=1e-6, rtol=0), k
    assert [e["loss"] for e in full["log"]] == pytest.approx([e["loss"] for e in rest["log"]], abs=1e-6)
    with pytest.raises(ValueError, match="delete it"):  # a state written by another config is refused
        finetune(deepcopy(init), images, labels, "masked_kd", teacher, [1, 3], state_path=tmp_path / "s.pt",
                 **{**kw, "k_sigma": 4.0})


def test_nonfinite_loss_is_skipped_counted_and_bounded():
    images, labels = data()
    init = tiny(2)
    kw = dict(steps=3, batch_size=8, progress=False)
    skipped = finetune(deepcopy(init), images, labels, inject_nan_at=[1], stop_after=2, **kw)
    one_step = finetune(deepcopy(init), images, labels, stop_after=1, **kw)
    assert skipped["skipped_steps"] == 1 and [e["skipped"] for e in skipped["log"]] == [False, True]
    assert skipped["log"][1]["loss"] != skipped["log"][1]["loss"]  # NaN logged
    for va, vb in zip(skipped["model"].state_dict().values(), one_step["model"].state_dict().values()):
        assert torch.equal(va, vb)  # the NaN step changed nothing
    with pytest.raises(FloatingPointError, match="non-finite"):
        finetune(deepcopy(init), images, labels, inject_nan_at=[0, 1, 2], max_skipped=2, **kw)


# --------------------------------------------------------------------------- torchrun: 2 processes = 1 process
def _ckpts(tmp_path):
    mk = dict(input_size=16, patch_size=4)  # the smoke profile trains at 16x16
    teacher, student = tiny(4, seed=1, **mk), tiny(2, seed=2, **mk)
    save_checkpoint({"ema": teacher.state_dict(), "config": teacher.config}, tmp_path / "teacher.pt")
    save_checkpoint({"ema": student.state_dict(), "config": student.config, "kept": [1, 2]}, tmp_path / "student.pt")
    return tmp_path / "student.pt", tmp_path / "teacher.pt"


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_two_process_finetune_matches_one_process(tmp_path):
    from tinyfusion.cli import finetune as cli

    student, teacher = _ckpts(tmp_path)
    cfg = dict(profile="smoke", student=str(student), teacher=str(teacher), mode="masked_kd", k_sigma=2.0,
               groups="1:2", steps=3, batch_size=8, inject_nan_at=[1], progress=False)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "out": str(tmp_path / "two")}))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "tinyfusion.cli.finetune", "--config-json", str(tmp_path / "cfg.json"),
                           "--result-json", str(tmp_path / "two.json")],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = cli.run(**cfg, out=str(tmp_path / "one"))
    two = load_json(tmp_path / "two.json")
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["layer_map"] == one["layer_map"] == [1, 3]
    assert two["skipped_steps"] == one["skipped_steps"] == 1
    log1, log2 = load_json(one["log"]), load_json(two["log"])
    for a, b in zip(log1, log2):
        for k in ("loss", "diff", "kd", "rep"):
            if a["skipped"] and k == "loss":
                continue
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["step"], k)
    m1, m2 = load_checkpoint(one["model"])["ema"], load_checkpoint(two["model"])["ema"]
    for k in m1:
        assert torch.allclose(m1[k], m2[k], atol=1e-6, rtol=1e-5), k
    # a finished run is reused, not recomputed
    assert cli.run(**cfg, out=str(tmp_path / "one"))["cached"] is True


# --------------------------------------------------------------------------- sampling
def test_sample_to_npz_is_balanced_and_independent_of_rank_split(tmp_path):
    model = tiny(2)
    res = sample_to_npz(model, 13, tmp_path / "s.npz", steps=2, batch=5, seed=7, progress=False)
    z = load_npz(tmp_path / "s.npz")
    assert z["images"].shape == (13, 8, 8) and z["images"].dtype == np.uint8
    assert z["labels"].dtype == np.int64 and list(z["labels"]) == [i % 10 for i in range(13)]
    assert np.array_equal(z["images"], res["images"])
    again = sample_to_npz(model, 13, steps=2, batch=5, seed=7, progress=False)
    assert np.array_equal(again["images"], z["images"])
    other = sample_to_npz(model, 13, steps=2, batch=5, seed=8, progress=False)
    assert not np.array_equal(other["images"], z["images"])
    rgb = sample_to_npz(tiny(2, in_channels=3), 4, steps=2, batch=4, progress=False, cfg_scale=1.0)
    assert rgb["images"].shape == (4, 8, 8, 3)


def test_sampling_split_across_ranks_matches_one_process(tmp_path):
    from tinyfusion.cli import sample as cli

    student, _ = _ckpts(tmp_path)
    res = cli.run(checkpoint=str(student), n=7, steps=2, batch=3, out=str(tmp_path / "one.npz"), progress=False)
    one = load_npz(res["out"])
    assert one["images"].shape == (7, 16, 16) and res["depth"] == 2  # _ckpts builds 16x16 models
    model = load_dit(student)
    kw = dict(steps=2, batch=3, seed=0)
    rank0, rank1 = sample_batches(model, 7, [0, 2], **kw), sample_batches(model, 7, [1], **kw)  # 3 batches, 2 ranks
    split = np.concatenate([rank0[0], rank1[1], rank0[2]])
    assert np.array_equal(split, one["images"])


def test_curve_snapshots_equal_a_shorter_run_on_the_same_schedule(tiny_dit):
    """A recovery curve's EMA snapshot at step k is exactly the EMA of a k-step run on the same (longer) cosine."""
    from copy import deepcopy
    images, labels = torch.rand(64, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (64,))
    seen = {}
    kw = dict(steps=6, batch_size=8, lr_steps=6, progress=False, seed=1)
    finetune(deepcopy(tiny_dit), images, labels, snapshots=(3,),
             on_snapshot=lambda done, ema: seen.update({done: deepcopy(ema.state_dict())}), **kw)
    short = finetune(deepcopy(tiny_dit), images, labels, **{**kw, "steps": 3})
    assert list(seen) == [3]
    for k, v in short["ema"].state_dict().items():
        assert torch.equal(v, seen[3][k]), k


def test_distillation_loss_is_zero_for_the_teacher_itself_and_positive_otherwise():
    from tinyfusion.diffusion import create_objective
    ddpm = create_objective("ddpm")
    x = torch.randn(4, 1, 8, 8)
    t = torch.tensor([1, 5, 10, 30])  # early steps, where the learned variance spans a real range
    out = torch.randn(4, 2, 8, 8)
    assert torch.allclose(ddpm.distillation_loss(out, out, x, t), torch.zeros(4), atol=1e-6)
    var_only = out.clone()
    var_only[:, 1:] += 0.5  # only the variance channel differs: the KL sees it, the noise MSE does not
    assert (ddpm.distillation_loss(var_only, out, x, t) > 0).all()
    s = out.clone().requires_grad_(True)
    ddpm.distillation_loss(s, var_only, x, t).sum().backward()
    assert s.grad[:, 1:].abs().sum() > 0
    flow = create_objective("flow")
    assert torch.allclose(flow.distillation_loss(out, out + torch.cat([torch.zeros(4, 1, 8, 8), torch.ones(4, 1, 8, 8)], 1),
                                                 x, torch.rand(4)), torch.zeros(4))  # the spare half is ignored
