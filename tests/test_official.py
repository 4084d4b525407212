"""The official DiT layout and behaviour: raw state dicts with --model, pruned checkpoints in the official layout,
and the official classifier-free guidance of the first 3 channels (imagenet profile only)."""
import pytest
import torch

from tinyfusion.io import save_checkpoint
from tinyfusion.models import DiT, build_model, load_dit
from tinyfusion.models.dit import OFFICIAL_CFG_CHANNELS, model_name_for, stored_config
from tinyfusion.profiles import PROFILES, get_profile
from tinyfusion.pruning.indices import prune


def official_layout(depth=28, hidden=1152, patch=2, in_ch=4, tokens=256, classes=1000, mlp=4):
    """Keys and shapes of facebookresearch/DiT ``models.py``'s DiT-XL/2 (learned sigma), written out by hand from its
    modules: PatchEmbed ``x_embedder.proj``, ``t_embedder.mlp.{0,2}``, ``y_embedder.embedding_table`` (+1 null row),
    the fixed ``pos_embed``, per block timm ``Attention`` (qkv, proj), timm ``Mlp`` (fc1, fc2), ``adaLN_modulation.1``,
    and ``final_layer`` (linear, adaLN_modulation.1)."""
    h, out = hidden, patch * patch * in_ch * 2
    layout = {"x_embedder.proj.weight": (h, in_ch, patch, patch), "x_embedder.proj.bias": (h,),
              "t_embedder.mlp.0.weight": (h, 256), "t_embedder.mlp.0.bias": (h,),
              "t_embedder.mlp.2.weight": (h, h), "t_embedder.mlp.2.bias": (h,),
              "y_embedder.embedding_table.weight": (classes + 1, h), "pos_embed": (1, tokens, h),
              "final_layer.linear.weight": (out, h), "final_layer.linear.bias": (out,),
              "final_layer.adaLN_modulation.1.weight": (2 * h, h), "final_layer.adaLN_modulation.1.bias": (2 * h,)}
    for i in range(depth):
        b = f"blocks.{i}."
        layout.update({b + "attn.qkv.weight": (3 * h, h), b + "attn.qkv.bias": (3 * h,),
                       b + "attn.proj.weight": (h, h), b + "attn.proj.bias": (h,),
                       b + "mlp.fc1.weight": (mlp * h, h), b + "mlp.fc1.bias": (mlp * h,),
                       b + "mlp.fc2.weight": (h, mlp * h), b + "mlp.fc2.bias": (h,),
                       b + "adaLN_modulation.1.weight": (6 * h, h), b + "adaLN_modulation.1.bias": (6 * h,)})
    return layout


def shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def test_teacher_and_pruned_d14_have_the_official_layout_of_dit_xl2():
    with torch.device("meta"):
        teacher = build_model("DiT-XL/2")
    assert shapes(teacher.state_dict()) == official_layout(28)
    kept = list(range(1, 28, 2))  # a 1:2 decision
    d14 = prune(teacher, kept)     # the surgery cli.prune_learn writes as pruned.pt["ema"]
    assert shapes(d14.state_dict()) == official_layout(14)
    assert d14.config["depth"] == 14 and "objective" not in d14.config  # the official config keys only
    d7 = prune(d14, list(range(0, 14, 2)))
    assert shapes(d7.state_dict()) == official_layout(7)


def tiny_official(depth=4, seed=0):
    """A randomly initialised small DiT in the official layout, with its zero-initialised layers filled."""
    torch.manual_seed(seed)
    m = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=depth, num_heads=2, num_classes=10)
    for p in m.parameters():
        if p.requires_grad and torch.count_nonzero(p) == 0:
            p.data.normal_(0, 0.05)
    return m.eval()


def test_raw_state_dict_needs_model_and_reads_depth(tmp_path):
    m = tiny_official(depth=3)
    raw = tmp_path / "raw.pt"
    torch.save(m.state_dict(), raw)  # as the official DiT-XL-2-256x256.pt: a bare state dict
    ours = tmp_path / "ours.pt"
    save_checkpoint({"ema": m.state_dict(), "config": m.config}, ours)
    assert stored_config(raw) is None and stored_config(ours) == m.config
    with pytest.raises(ValueError, match="--model DiT-XL/2"):
        load_dit(raw)
    # a name registered with these shapes: the official configs are too big for a unit test, so register a small one
    from tinyfusion.models.dit import DiT_models
    DiT_models["Test-S/2"] = lambda **kw: DiT(**{**dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32,
                                                        depth=28, num_heads=2, num_classes=10), **kw})
    try:
        loaded = load_dit(raw, name="Test-S/2")
        assert loaded.depth == 3
        x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 2])
        assert torch.equal(loaded.eval()(x, t, y), m(x, t, y))
        assert model_name_for([raw], "", "Test-S/2") == "Test-S/2"   # a raw file: the profile's model is recorded
        assert model_name_for([ours], "", "Test-S/2") is None         # ours: nothing added to the config
        with pytest.raises(ValueError, match="not a registered config"):
            model_name_for([raw], "DiT-XXL/2", None)
    finally:
        del DiT_models["Test-S/2"]


def test_official_cfg_guides_first_three_channels_on_a_constructed_output():
    m = tiny_official()
    b, s = 2, 4.0
    cond = torch.arange(b * 8 * 8 * 8, dtype=torch.float32).reshape(b, 8, 8, 8) / 100
    uncond = -2 * cond + 1
    m.forward = lambda x, t, y, **kw: torch.cat([cond, uncond])  # a constructed network output
    x, t, y = torch.zeros(2 * b, 4, 8, 8), torch.zeros(2 * b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)
    guided = uncond + s * (cond - uncond)

    m.cfg_channels = OFFICIAL_CFG_CHANNELS  # the imagenet profile's setting
    out = m.forward_with_cfg(x, t, y, s)
    assert torch.equal(out[:b, :3], guided[:, :3]) and torch.equal(out[b:, :3], guided[:, :3])
    assert torch.equal(out[:b, 3:], cond[:, 3:]) and torch.equal(out[b:, 3:], uncond[:, 3:])  # eps ch. 3 unguided

    m.cfg_channels = None  # our Fashion-MNIST models: every noise channel guided
    out = m.forward_with_cfg(x, t, y, s)
    assert torch.equal(out[:b, :4], guided[:, :4]) and torch.equal(out[:b, 4:], cond[:, 4:])
    assert torch.equal(out[b:, 4:], uncond[:, 4:])


def test_only_the_paper_profiles_use_the_official_guidance():
    assert get_profile("imagenet").cfg_channels == 3 and get_profile("imagenet-sit").cfg_channels == 3
    assert all(p.cfg_channels == 0 for name, p in PROFILES.items() if not name.startswith("imagenet"))
