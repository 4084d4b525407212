"""The pruning interface (tinyfusion.models.prunable, issue 29 item 2): DiT through it gives exactly what the
DiT-specific code gave, and a MAR goes through surgery and the layer-masked calibration loss with no MAR branch in
pruning/."""
import ast
import copy
import re
from pathlib import Path

import pytest
import torch

from tinyfusion.diffusion import create_objective, objective_for
from tinyfusion.models import prunable
from tinyfusion.models.dit import DiT
from tinyfusion.models.mar import build_mar, prune_mar
from tinyfusion.pruning.indices import mask_from_kept, prune
from tinyfusion.pruning.random import candidate_losses, random_candidate_study
from tinyfusion.pruning.scores import (block_io_stats, calibration_loss, calibration_losses, calibration_set,
                                       residual_sizes, sensitivity, shortgpt)

ROOT = Path(__file__).resolve().parent.parent / "tinyfusion"


def tiny_dit(depth=4):
    torch.manual_seed(0)
    m = DiT(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=depth, num_heads=2, num_classes=10)
    with torch.no_grad():  # a fresh DiT is all identities (adaLN-Zero) with a zero head
        for name, p in m.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                p.normal_(0, 0.1)
    return m


def tiny_mar():
    torch.manual_seed(0)
    m = build_mar("MAR-T32/4")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # adaLN-zero and the zeroed head output: give every all-zero tensor small values
        for p in m.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


def test_dit_layers_depth_and_surgery_are_as_before():
    m = tiny_dit(6)
    assert prunable.layers(m) is m.blocks and prunable.depth(m) == len(m.blocks) == 6
    assert not prunable.computes_loss(m)
    kept = [0, 2, 5]
    small = prune(m, kept)
    assert type(small) is DiT and small.config == {**m.config, "depth": 3} and small.pruned_from == kept
    full, sd = m.state_dict(), small.state_dict()
    per_block = sum(k.startswith("blocks.0.") for k in full)
    assert len(sd) == len(full) - 3 * per_block
    src = lambda k: k if not k.startswith("blocks.") else f"blocks.{kept[int(k.split('.')[1])]}.{k.split('.', 2)[2]}"  # noqa: E731
    for k, v in sd.items():  # block i of the small model is block kept[i] of the full one, every other tensor as is
        assert torch.equal(v, full[src(k)]), k
    trainable = {k: p.requires_grad for k, p in m.named_parameters()}
    assert all(p.requires_grad == trainable[src(k)] for k, p in small.named_parameters())
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 500]), torch.tensor([1, 2])
    with torch.no_grad():  # the same function as the full model under the mask that keeps ``kept``
        assert torch.allclose(small.eval()(x, t, y), m.eval()(x, t, y, mask=mask_from_kept(kept, 6)), atol=1e-6)
    with pytest.raises(TypeError, match="prunable model"):
        prune(torch.nn.Linear(2, 2), [0])


def test_dit_calibration_loss_is_the_objective_loss_as_before():
    m = tiny_dit(4).eval()
    obj = objective_for(m)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1, torch.randint(10, (16,), generator=g)
    calib = calibration_set(images, labels, 2, 8, objective=obj)
    mask = mask_from_kept([0, 3], 4)
    old = torch.cat([obj.training_losses(m, b["x0"], b["t"], {"y": b["y"], "mask": mask}, noise=b["noise"])["loss"]
                     for b in calib])
    assert torch.equal(calibration_losses(m, calib, mask, obj), old.float())
    _, scores = sensitivity(m, calib, 2, obj)
    assert len(scores) == 4
    # the masked-forward and prefix-sharing random studies still agree with calibration_loss
    masks = torch.stack([mask, mask_from_kept([1, 2], 4)])
    for share in (True, False):
        got = candidate_losses(m, calib, masks, objective=obj, share_prefixes=share)
        want = [calibration_loss(m, calib, row, obj) for row in masks]
        assert got == pytest.approx(want, rel=1e-5)


def test_mar_through_surgery_and_the_layer_masked_calibration_loss():
    mar = tiny_mar()
    assert prunable.depth(mar) == 32 and len(prunable.layers(mar)) == 32 and prunable.computes_loss(mar)
    kept = list(range(0, 32, 2))
    small = prune(mar, kept)
    ref = prune_mar(mar, kept)
    assert type(small) is type(mar) and small.depth == 16 and small.pruned_from == kept
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in small.state_dict().items())

    obj = create_objective()  # only its sample_t: a MAR draws its own times and noise
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(8, 1, 16, 16, generator=g), torch.randint(10, (8,), generator=g)
    calib = calibration_set(images, labels, 2, 4, objective=obj)
    mask = mask_from_kept(kept, 32)
    losses = calibration_losses(mar, calib, mask, obj)
    assert losses.shape == (8,) and torch.isfinite(losses).all()
    assert torch.equal(calibration_losses(mar, calib, mask, obj), losses)  # seeded draws: deterministic
    # the masked full model is the pruned model (same draws, same numbers)
    assert torch.allclose(calibration_losses(small, calib, None, obj), losses, atol=1e-5)
    assert not torch.allclose(calibration_losses(mar, calib, None, obj), losses)

    study = random_candidate_study(mar, calib, 3, keep=16, objective=obj, progress=False, n_samples=4)
    assert len(study["losses"]) == 3 and all(torch.isfinite(torch.as_tensor(study["losses"])))
    # ShortGPT / Flux-Lite statistics: each layer's input and output caught on the MAR's own forward (prunable.layer_io)
    cos, mse = block_io_stats(mar, calib, obj)
    assert len(cos) == len(mse) == 32 and bool(torch.isfinite(torch.tensor(cos)).all()) and min(mse) >= 0
    assert block_io_stats(mar, calib, obj) == (cos, mse)  # seeded draws: deterministic
    io = prunable.layer_io(mar, obj, calib[0], torch.Generator().manual_seed(0))
    assert len(io) == 32 and io[0][0].shape[1] < io[16][0].shape[1]  # encoder: buffer + known; decoder: every position
    kept_sg, _ = shortgpt(mar, calib, 16, obj)
    assert len(kept_sg) == 16 and kept_sg[-1] == 31  # the last layer is never removed
    with pytest.raises(TypeError, match="DiT-layout"):  # DiT-layout fast paths refuse a MAR in one line
        residual_sizes(mar, calib, obj)


def _names_in_code(path):
    """Every identifier, attribute and imported module the code of ``path`` uses (docstrings and comments aside)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            out.add(node.module or "")
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_model_specific_branches_in_pruning():
    mar_names = {"MAR", "prune_mar", "load_mar", "build_mar", "MAR_models", "tinyfusion.models.mar", "mar"}
    shared = [ROOT / f for f in ("recovery.py", "training.py", "study.py", "activations.py")]
    for f in sorted((ROOT / "pruning").glob("*.py")) + shared:
        names = _names_in_code(f)
        assert not names & mar_names, f"{f.name} names MAR: {names & mar_names}"
        assert not re.search(r"isinstance\([^)]*\b(MAR|DiT)\b", f.read_text()), f"{f.name} branches on a model class"
    # surgery and learnable pruning name no DiT part; only the guarded DiT-layout fast paths (scores.py, random.py)
    # and width pruning (DiT-only by nature) do
    for f in ("indices.py", "learnable.py"):
        assert not _names_in_code(ROOT / "pruning" / f) & {"blocks", "DiT"}, f
    assert "isinstance" not in _names_in_code(ROOT / "models" / "prunable.py")


def test_wrappers_are_seen_through():
    m = tiny_dit(4)
    wrapped = torch.nn.Module()
    wrapped.module = m  # as DDP
    assert prunable.depth(wrapped) == 4 and prunable.layers(wrapped) is m.blocks
    small = prune(copy.deepcopy(wrapped), [1, 3])
    assert small.depth == 2
