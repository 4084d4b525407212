import pytest
import torch

from tinyfusion.io import save_checkpoint
from tinyfusion.models import DiT_models, build_model, load_dit


def _randomise(model):
    """adaLN-Zero starts every block as the identity; give the zero-initialised layers weights."""
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if p.requires_grad and torch.count_nonzero(p) == 0:
            p.data.normal_(0, 0.05)
    return model


def test_official_keys_and_xl_shapes():
    model = DiT_models["DiT-XL/2"]
    with torch.device("meta"):
        m = model()
    sd = m.state_dict()
    for k in ("blocks.3.attn.qkv.weight", "blocks.3.adaLN_modulation.1.weight", "final_layer.linear.weight",
              "y_embedder.embedding_table.weight", "pos_embed", "x_embedder.proj.weight", "t_embedder.mlp.0.weight"):
        assert k in sd, k
    assert sd["y_embedder.embedding_table.weight"].shape == (1001, 1152)
    assert sd["pos_embed"].shape == (1, 256, 1152)
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert 670e6 < n < 680e6  # 675M in the paper
    assert m.out_channels == 8  # learned sigma


def test_forward_shapes_and_cfg(tiny_dit):
    m = _randomise(tiny_dit).eval()
    x = torch.randn(4, 1, 8, 8)
    out = m(x, torch.tensor([1, 10, 100, 999]), torch.tensor([0, 1, 2, 3]))
    assert out.shape == (4, 2, 8, 8)
    y = torch.tensor([3, 3, 10, 10])
    g = m.forward_with_cfg(torch.cat([x[:2], x[:2]]), torch.tensor([5] * 4), y, cfg_scale=4.0)
    assert g.shape == (4, 2, 8, 8)
    assert torch.allclose(g[:2, :1], g[2:, :1])  # guided eps is shared by both halves


def test_mask_is_eq1(tiny_dit):
    m = _randomise(tiny_dit).eval()
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([10, 500, 900]), torch.tensor([1, 2, 3])
    mask = torch.tensor([[1, 0, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.float)
    hard = m(x, t, y, mask=mask)
    soft = m(x, t, y, mask=mask.clone().requires_grad_())
    assert torch.allclose(hard, soft, atol=1e-6)
    full = m(x, t, y)
    assert torch.allclose(hard[1], full[1], atol=1e-6)
    # a mask of zeros skips every block: the output depends on the embeddings only
    h, c = m.embed(x[2:], t[2:], y[2:])
    assert torch.allclose(hard[2:], m.unpatchify(m.final_layer(h, c)), atol=1e-6)
    out, hidden = m(x, t, y, return_hidden=True)
    assert len(hidden) == 6 and hidden[0].shape == (3, 4, 32)


def test_any_depth_loads_and_mismatch_is_explained(tmp_path, tiny_dit):
    m = _randomise(tiny_dit)
    sd = {k: v for k, v in m.state_dict().items() if not k.startswith("blocks.") or int(k.split(".")[1]) < 3}
    path = tmp_path / "d3.pt"
    save_checkpoint({"ema": sd, "config": m.config}, path)
    d3 = load_dit(path)
    assert d3.depth == 3
    raw = tmp_path / "raw.pt"
    save_checkpoint(sd, raw)
    with pytest.raises(ValueError, match="no config"):
        load_dit(raw)
    with pytest.raises(ValueError) as e:
        load_dit(raw, name="DiT-T28/7")
    assert "does not fit" in str(e.value) and "raw.pt" in str(e.value) and "hidden_size" in str(e.value)
    gap = {k.replace("blocks.2.", "blocks.5."): v for k, v in sd.items()}
    with pytest.raises(ValueError, match="not 0..2"):
        load_dit({"ema": gap, "config": m.config})


def test_registry_overrides():
    m = build_model("DiT-T28/7", depth=14)
    assert m.depth == 14 and m.config["hidden_size"] == 64
    with pytest.raises(KeyError, match="unknown model"):
        build_model("DiT-XXL/2")


def test_backward_reaches_every_block(tiny_dit):
    from tinyfusion.diffusion import create_objective
    m = _randomise(tiny_dit)
    d = create_objective()
    loss = d.training_losses(m, torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999]),
                             dict(y=torch.arange(4)))["loss"].mean()
    loss.backward()
    for i, b in enumerate(m.blocks):
        assert b.attn.qkv.weight.grad.abs().sum() > 0, i


def test_scale_ladder_rungs_change_one_thing_each():
    """Issue 26's rungs: DiT-T28/4 with only the width (128: 8.4M parameters) or only the resolution (28x28: 49
    tokens) changed; their profiles keep the cpu profile's data, steps and budgets."""
    from dataclasses import asdict

    from tinyfusion.models.dit import build_model
    from tinyfusion.profiles import get_profile
    base = build_model("DiT-T28/4")
    w128, t49 = build_model("DiT-T28/4-w128"), build_model("DiT-T28/4-t49")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(w128) == 8_403_488 and w128.x_embedder.num_patches == base.x_embedder.num_patches == 16
    assert t49.x_embedder.num_patches == 49 and len(t49.blocks) == len(w128.blocks) == len(base.blocks) == 28
    cpu = asdict(get_profile("cpu"))
    for rung, changed in (("cpu-w128", {"model", "teacher"}), ("cpu-t49", {"model", "teacher", "image_size"})):
        p = asdict(get_profile(rung))
        assert {k for k in cpu if cpu[k] != p[k]} == changed | {"name", "notes"}
