"""Depth pruning: index sets, model surgery, baselines, random study, learnable pruning, the CLI."""
import json

import numpy as np
import pytest
import torch

from tinyfusion.diffusion import create_objective
from tinyfusion.io import load_checkpoint, save_checkpoint
from tinyfusion.models import build_model, load_dit
from tinyfusion.models.dit import DiT
from tinyfusion.pruning.indices import check_kept, mask_from_kept, oracle_indices, prune
from tinyfusion.pruning.learnable import add_lora, learn_pruning, trainable_fraction
from tinyfusion.pruning.random import random_candidate_study, random_kept, random_masks
from tinyfusion.pruning.scores import calibration_loss, calibration_set, flux_lite, sensitivity, shortgpt
from tinyfusion.training import global_batch


def tiny_dit(depth=4, seed=0, randomize=True):
    torch.manual_seed(seed)
    m = DiT(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=depth, num_heads=2, num_classes=10)
    if randomize:  # a fresh DiT is all identities (adaLN-Zero) with a zero head
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "adaLN_modulation" in name or "final_layer.linear" in name:
                    p.normal_(0, 0.1)
    return m


def toy_data(n=512, seed=0):
    """Ten fixed 8x8 class templates plus a little noise: learnable in a few hundred tiny steps."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.randint(10, (n,), generator=g)
    images = (templates[labels] + 0.1 * torch.randn(n, 1, 8, 8, generator=g)).clamp(-1, 1)
    return images, labels


@pytest.fixture(scope="module")
def known_model():
    """A depth-4 DiT whose layers 0 and 3 are exact identities (adaLN-Zero left at zero: block(x) = x) and
    whose layers 1 and 2 were trained with the rest of the network (so removing them hurts).

    Training is gentle (lr 2e-4, 200 steps): every useful layer changes the hidden state moderately, the
    regime of a deep DiT in which the straight-through gradient of a mask is a fair local estimate.
    """
    images, labels = toy_data()
    torch.manual_seed(0)
    m = DiT(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=4, num_heads=2, num_classes=10)
    useful = [1, 2]
    for i, b in enumerate(m.blocks):
        b.requires_grad_(i in useful)
    d = create_objective()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-4, weight_decay=0)
    for step in range(200):
        x, y, noise, t = global_batch(images, labels, step, 64, 0, create_objective())
        loss = d.training_losses(m, x, t, dict(y=y), noise=noise)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.requires_grad_(True)
    m.pos_embed.requires_grad_(False)
    return m, images, labels, useful


# ----------------------------------------------------------------------------- indices
def test_check_kept():
    assert check_kept([3, 0, 2], 4) == [0, 2, 3]
    with pytest.raises(ValueError, match="out of range"):
        check_kept([0, 4], 4)
    with pytest.raises(ValueError, match="out of range"):
        check_kept([-1, 2], 4)
    with pytest.raises(ValueError, match="more than once"):
        check_kept([1, 1, 2], 4)
    with pytest.raises(ValueError, match="expected 2 kept layers, got 3"):
        check_kept([0, 1, 2], 4, n_keep=2)


def test_oracle_indices():
    assert oracle_indices(28, 14) == [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27]
    for depth, keep in [(28, 7), (14, 7), (28, 19), (28, 28), (5, 1)]:
        idx = oracle_indices(depth, keep)
        assert len(idx) == keep and idx[0] == 0 and (keep == 1 or idx[-1] == depth - 1)
        assert idx == sorted(set(idx))
    with pytest.raises(ValueError):
        oracle_indices(4, 5)


# ----------------------------------------------------------------------------- surgery
def _inputs(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 8, 8, generator=g), torch.randint(1000, (n,), generator=g),
            torch.randint(10, (n,), generator=g))


def test_prune_matches_masked_model_and_loads(tmp_path):
    model = tiny_dit(depth=6).eval()
    kept = [0, 3, 5]
    small = prune(model, kept).eval()
    x, t, y = _inputs()
    mask = torch.zeros(6)
    mask[kept] = 1
    with torch.no_grad():
        assert torch.allclose(small(x, t, y), model(x, t, y, mask=mask), atol=1e-6)
    assert small.config["depth"] == 3 and len(small.blocks) == 3 and model.depth == 6
    blocks = sorted({int(k.split(".")[1]) for k in small.state_dict() if k.startswith("blocks.")})
    assert blocks == [0, 1, 2]
    assert torch.equal(small.state_dict()["blocks.1.attn.qkv.weight"], model.state_dict()["blocks.3.attn.qkv.weight"])
    save_checkpoint({"ema": small.state_dict(), "config": small.config}, tmp_path / "pruned.pt")
    loaded = load_dit(tmp_path / "pruned.pt").eval()
    assert loaded.depth == 3
    with torch.no_grad():
        assert torch.allclose(loaded(x, t, y), small(x, t, y), atol=1e-6)
    assert all(p.requires_grad for n, p in small.named_parameters() if n != "pos_embed")


def test_prune_is_bit_identical_to_a_full_rebuild():
    """``prune`` builds no full-size model, yet its result is what loading the kept blocks' weights into a fresh
    ``DiT(depth=D)`` gives: same keys in the same order, same tensors, same dtypes and ``requires_grad``."""
    model = tiny_dit(depth=6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.blocks.requires_grad_(False)  # as after training LoRA adapters: the copies must not inherit it
    model.eval()
    kept = [1, 2, 5]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = prune(model, kept)
    ref = DiT(**{**model.config, "depth": len(kept)})
    outside = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    assert not ref.load_state_dict(outside, strict=False).unexpected_keys
    for j, i in enumerate(kept):
        ref.blocks[j].load_state_dict(model.blocks[i].state_dict())
    got, want = small.state_dict(), ref.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    assert {n: p.requires_grad for n, p in small.named_parameters()} == \
        {n: p.requires_grad for n, p in ref.named_parameters()}
    assert not small.pos_embed.requires_grad and small.blocks[0].attn.qkv.weight.requires_grad
    assert small.config == ref.config and small.config["depth"] == 3 and small.pruned_from == kept
    assert not small.training and prune(model.train(), kept).training  # the source's mode
    with torch.no_grad():
        for p in small.parameters():
            p.add_(1.0)  # copies, not views: the input model is untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.blocks.parameters()) and model.depth == 6


def test_mask_from_kept():
    mask = mask_from_kept([4, 0, 2], 5)
    assert mask.dtype == torch.float32 and mask.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="out of range"):
        mask_from_kept([0, 5], 5)
    with pytest.raises(ValueError, match="more than once"):
        mask_from_kept([1, 1], 5)


def test_prune_merges_or_drops_lora():
    base = tiny_dit(depth=4).eval()
    model = add_lora(tiny_dit(depth=4), rank=4, alpha=8).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    kept = [1, 2]
    mask = torch.tensor([0.0, 1, 1, 0])
    x, t, y = _inputs()
    merged = prune(model, kept).eval()
    dropped = prune(model, kept, merge_lora=False).eval()
    assert not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        assert torch.allclose(merged(x, t, y), model(x, t, y, mask=mask), atol=1e-5)
        assert torch.allclose(dropped(x, t, y), base(x, t, y, mask=mask), atol=1e-6)
    assert any("lora" in n for n, _ in model.named_parameters())  # the input model is untouched


# ----------------------------------------------------------------------------- baselines
def test_baselines_rank_identity_layers_lowest(known_model):
    model, images, labels, useful = known_model
    calib = calibration_set(images, labels, 2, 32, seed=0, objective=create_objective())
    assert calibration_set(images, labels, 2, 32, seed=0, objective=create_objective())[1]["t"].tolist() == calib[1]["t"].tolist()
    full = calibration_loss(model, calib)
    assert calibration_loss(model, calib, torch.tensor([0.0, 1, 1, 0])) == pytest.approx(full, rel=1e-6)
    assert calibration_loss(model, calib, torch.tensor([1.0, 0, 0, 1])) > full + 0.05
    for method in (shortgpt, flux_lite, sensitivity):
        kept, scores = method(model, calib, keep=2)
        # ShortGPT (official scoring) never removes the last layer, so it keeps the better useful layer and layer 3
        want = [useful[int(scores[2] > scores[1])], 3] if method is shortgpt else useful
        assert kept == want, (method.__name__, scores)
        assert max(scores[0], scores[3]) < min(scores[1], scores[2])
        assert abs(scores[0]) < 1e-5 and abs(scores[3]) < 1e-5  # identities change nothing
    # ShortGPT scores clean inputs at near-data times: the scores do not depend on the calibration noise
    noisy = [{**b, "noise": 5 * torch.randn_like(b["noise"])} for b in calib]
    assert shortgpt(model, noisy, keep=2)[1] == shortgpt(model, calib, keep=2)[1]


def test_learnable_pruning_finds_the_useful_layers(known_model):
    model, images, labels, useful = known_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = learn_pruning(model, images, labels, groups="1:2", update="frozen", steps=100, batch_size=32, lr=1e-3,
                        progress=False)
    assert res["kept"] == useful
    assert all(c > 0.55 for c in res["confidence"])
    assert res["trainable_params"] == 0 and res["skipped_steps"] == 0
    assert res["history"][0]["step"] == 0 and res["history"][-1]["step"] == 100
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the teacher is untouched


# ----------------------------------------------------------------------------- random prunes
def test_random_masks_respect_constraints():
    g = torch.Generator().manual_seed(0)
    masks = random_masks(200, 8, 4, generator=g)
    assert (masks.sum(1) == 4).all() and masks[:, 0].mean() not in (0.0, 1.0)
    grouped = random_masks(200, 8, groups="1:2", generator=g)
    assert (grouped.view(200, 4, 2).sum(-1) == 1).all()
    kept = random_kept(28, 14, groups="2:4", generator=g)
    assert len(kept) == 14 and all(sum(1 for i in kept if 4 * b <= i < 4 * b + 4) == 2 for b in range(7))
    with pytest.raises(ValueError, match="keep 4 layers, not keep=3"):
        random_masks(2, 8, 3, groups="1:2")


@pytest.mark.parametrize("share_prefixes", [True, False])
def test_random_study_equals_one_at_a_time(share_prefixes):
    model = tiny_dit(depth=6)
    images, labels = toy_data(64)
    calib = calibration_set(images, labels, 2, 8, seed=0, objective=create_objective())
    res = random_candidate_study(model, calib, n_candidates=40, keep=3, batch_candidates=16, progress=False,
                                 seed=1, share_prefixes=share_prefixes, n_samples=None)
    assert len(res["losses"]) == 40 and len(res["kept"]) == 40 and res["rate"] > 0
    for i in range(0, 40, 7):
        mask = torch.zeros(6)
        mask[res["kept"][i]] = 1
        assert res["losses"][i] == pytest.approx(calibration_loss(model, calib, mask), rel=1e-5)
    assert res["min"]["loss"] == pytest.approx(float(np.min(res["losses"])))
    assert res["max"]["loss"] == pytest.approx(float(np.max(res["losses"])))
    assert res["min"]["loss"] <= res["median"]["loss"] <= res["max"]["loss"]
    assert res["losses"].std() > 0
    sub = random_candidate_study(model, calib, n_candidates=5, keep=3, progress=False, seed=1, n_samples=4)
    assert sub["n_samples"] == 4
    first4 = [{k: v[:4] for k, v in calib[0].items()}]
    mask = torch.zeros(6)
    mask[sub["kept"][0]] = 1
    assert sub["losses"][0] == pytest.approx(calibration_loss(model, first4, mask), rel=1e-5)


# ----------------------------------------------------------------------------- resume and the CLI
def test_learn_pruning_resume_matches_uninterrupted(tmp_path):
    model = tiny_dit(depth=4)
    images, labels = toy_data(128)
    kw = dict(groups="1:2", update="lora", steps=6, batch_size=8, lora_rank=2, progress=False, seed=3)
    whole = learn_pruning(model, images, labels, **kw)
    part = learn_pruning(model, images, labels, state_path=tmp_path / "state.pt", stop_after=3, **kw)
    assert part["stopped_at"] == 3
    rest = learn_pruning(model, images, labels, state_path=tmp_path / "state.pt", **kw)
    assert rest["step"] == 6 and rest["stopped_at"] is None
    for (k, a), b in zip(whole["gates"].state_dict().items(), rest["gates"].state_dict().values()):
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b, k  # the history is the gates' extra state
    w1 = {n: p for n, p in whole["model"].named_parameters() if "lora_" in n}
    w2 = {n: p for n, p in rest["model"].named_parameters() if "lora_" in n}
    assert w1.keys() == w2.keys() and len(w1) > 0
    assert all(torch.equal(w1[n], w2[n]) for n in w1)
    assert any(w1[n].abs().sum() > 0 for n in w1 if "lora_B" in n)  # the adapters did train
    assert [h["step"] for h in rest["history"]] == [h["step"] for h in whole["history"]]
    with pytest.raises(ValueError, match="was written by another run"):
        learn_pruning(model, images, labels, state_path=tmp_path / "state.pt", **{**kw, "update": "full"})


def test_trainable_fraction():
    frac = trainable_fraction("DiT-XL/2", "lora", lora_rank=8)
    assert 0.008 < frac < 0.0095  # the paper: about 0.9%
    assert trainable_fraction("DiT-T28/4", "frozen") == 0.0
    assert 0.99 < trainable_fraction(tiny_dit(), "full") < 1.0  # pos_embed is fixed


def test_prune_learn_cli(tmp_path, monkeypatch):
    from tinyfusion.cli import prune_learn

    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))
    teacher = build_model("DiT-T28/4", depth=4)
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                p.normal_(0, 0.05)
    save_checkpoint({"ema": teacher.state_dict(), "config": teacher.config}, tmp_path / "teacher.pt")
    cfg = dict(profile="smoke", teacher=str(tmp_path / "teacher.pt"), groups="1:2", update="lora", steps=4,
               batch_size=8)
    stopped = prune_learn.run(**cfg, stop_after=2)
    assert stopped["stopped_at"] == 2
    out = prune_learn.run(**cfg)
    assert "/prune_learn/1of2_lora_s0-" in out["out"]  # keyed by the resolved config (tinyfusion.cache)
    kept = json.loads(open(out["kept_json"]).read())
    assert kept["kept"] == out["kept"] and len(kept["kept"]) == 2 and kept["update"] == "lora"
    assert len(json.loads(open(out["history_json"]).read())["history"]) >= 2
    pruned = load_dit(out["pruned"])
    assert pruned.depth == 2
    # the pruned checkpoint holds the teacher's original weights (the adapters are dropped)
    ts, ps = teacher.state_dict(), load_checkpoint(out["pruned"])["ema"]
    for j, i in enumerate(out["kept"]):
        assert torch.equal(ps[f"blocks.{j}.attn.qkv.weight"], ts[f"blocks.{i}.attn.qkv.weight"])
    assert torch.equal(ps["final_layer.linear.weight"], ts["final_layer.linear.weight"])
    assert 0 < out["trainable_fraction"] < 1


# ----------------------------------------------------------------------------- the decisive study's parts (issue 15)
def test_all_masks_enumerates_every_n_of_m_mask_once():
    from tinyfusion.pruning.random import all_masks
    m = all_masks(6, "1:2")
    assert m.shape == (8, 6) and (m.view(8, 3, 2).sum(-1) == 1).all() and len({tuple(r.tolist()) for r in m}) == 8
    assert all_masks(4, "2:4").shape == (6, 4)
    with pytest.raises(ValueError, match="enumerate at most"):
        all_masks(28, "7:14")


def test_rescore_picks_ranks_the_pools_on_the_whole_set(known_model):
    from tinyfusion.pruning.random import candidate_losses, random_masks, rescore_picks
    model, images, labels, _ = known_model
    calib = calibration_set(images, labels, 2, 16, seed=0, objective=create_objective())
    masks = random_masks(12, 4, keep=2, generator=torch.Generator().manual_seed(0))
    full = candidate_losses(model, calib, masks)
    fake_subset = -full  # a subset ranking that is the reverse of the truth
    picks = rescore_picks(model, calib, masks, fake_subset, pool=12)
    assert picks["min"]["loss"] == pytest.approx(full.min()) and picks["max"]["loss"] == pytest.approx(full.max())
    assert picks["min"]["loss_subset"] == pytest.approx(-full.min())
    assert picks["min"]["kept"] == masks[int(full.argmin())].nonzero().flatten().tolist()


def test_rescore_picks_takes_the_subset_losses_when_the_subset_is_the_whole_set(known_model, monkeypatch):
    from tinyfusion.pruning import random as rnd
    model, images, labels, _ = known_model
    calib = calibration_set(images, labels, 2, 16, seed=0, objective=create_objective())
    masks = rnd.random_masks(12, 4, keep=2, generator=torch.Generator().manual_seed(0))
    fake_subset = -rnd.candidate_losses(model, calib, masks)
    expected = rnd.rescore_picks(model, calib, masks, fake_subset, pool=4, subset_samples=16)  # 16 of 32: rescored
    assert expected["min"]["loss"] != pytest.approx(fake_subset.min())
    monkeypatch.setattr(rnd, "candidate_losses", lambda *a, **k: pytest.fail("the whole set was scored again"))
    whole = rnd.rescore_picks(model, calib, masks, fake_subset, pool=4, subset_samples=32)
    assert whole["min"]["loss"] == pytest.approx(float(fake_subset.min()))          # the subset's own ranking
    assert whole["max"]["kept"] == masks[int(fake_subset.argmax())].nonzero().flatten().tolist()
    only_min = rnd.rescore_picks(model, calib, masks, fake_subset, pool=4, subset_samples=32, which=("min",))
    assert list(only_min) == ["min"]


def test_settled_reads_the_last_fifth_of_the_decision_history():
    from tinyfusion.models.gates import settled
    hist = [{"step": s, "kept": k} for s, k in [(0, [0, 2]), (40, [1, 2]), (80, [1, 2]), (90, [1, 3]), (100, [1, 3])]]
    ok, last = settled(hist, [[1, 2], [1, 2]])
    assert last == [40, 90] and ok == [True, False]
    with pytest.raises(ValueError, match="no decision snapshots"):
        settled([], [[1, 2]])


def test_residual_sizes_are_zero_for_identity_layers_and_positive_for_useful_ones(known_model):
    from tinyfusion.pruning.scores import residual_sizes
    model, images, labels, useful = known_model
    calib = calibration_set(images, labels, 1, 32, seed=0, objective=create_objective())
    sizes = residual_sizes(model, calib)
    assert len(sizes) == 4 and sizes[0] < 1e-6 and sizes[3] < 1e-6
    assert min(sizes[i] for i in useful) > 1e-3


def test_block_costs_name_the_block_whose_other_choice_allows_a_lower_loss():
    from tinyfusion.pruning.random import all_masks, block_costs
    masks = all_masks(6, "1:2")  # 3 blocks of 2, 8 masks
    # loss = 1 + 0.5 if block 0 keeps layer 0 + 0.1 if block 2 keeps layer 5: layer 1 and layer 4 are the better picks
    losses = 1 + 0.5 * masks[:, 0].numpy() + 0.1 * masks[:, 5].numpy()
    rows = block_costs(masks, losses, "1:2", kept=[0, 2, 5])
    assert [r["block"] for r in rows] == [0, 1, 2]
    assert rows[0]["cost"] == pytest.approx(0.5) and rows[0]["other_kept"] == [1]
    assert rows[1]["cost"] == pytest.approx(0.0)  # block 1's choice does not matter
    assert rows[2]["cost"] == pytest.approx(0.1) and rows[2]["other_kept"] == [4]
    good = block_costs(masks, losses, "1:2", kept=[1, 2, 4])
    assert all(r["cost"] <= 0 for r in good) and good[0]["cost"] == pytest.approx(-0.5)
