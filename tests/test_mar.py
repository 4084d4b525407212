"""MAR (tinyfusion.models.mar) and its per-token diffusion (tinyfusion.diffusion.token_diffusion): the official layout,
parameter counts, the training loss under layer masks, sampling, and pruned state dicts."""
import math

import numpy as np
import pytest
import torch

from tinyfusion.diffusion.token_diffusion import cosine_betas, create_token_diffusion
from tinyfusion.models.mar import MAR_models, build_mar, load_mar, mar_depths, prune_mar, pruned_state_dict
from tinyfusion.pruning.indices import mask_from_kept


def _official_layout(width, enc, dec, head_depth, head_width, tokens=256, buffer=64, channels=16, classes=1000):
    """Key -> shape of the official LTH14/mar state dict (models/mar.py, models/diffloss.py; timm ViT blocks)."""
    D, W = width, head_width
    keys = {"fake_latent": (1, D), "encoder_pos_embed_learned": (1, tokens + buffer, D), "mask_token": (1, 1, D),
            "decoder_pos_embed_learned": (1, tokens + buffer, D), "diffusion_pos_embed_learned": (1, tokens, D),
            "class_emb.weight": (classes, D), "z_proj.weight": (D, channels), "z_proj.bias": (D,),
            "z_proj_ln.weight": (D,), "z_proj_ln.bias": (D,), "encoder_norm.weight": (D,), "encoder_norm.bias": (D,),
            "decoder_embed.weight": (D, D), "decoder_embed.bias": (D,), "decoder_norm.weight": (D,),
            "decoder_norm.bias": (D,)}
    block = {"norm1.weight": (D,), "norm1.bias": (D,), "attn.qkv.weight": (3 * D, D), "attn.qkv.bias": (3 * D,),
             "attn.proj.weight": (D, D), "attn.proj.bias": (D,), "norm2.weight": (D,), "norm2.bias": (D,),
             "mlp.fc1.weight": (4 * D, D), "mlp.fc1.bias": (4 * D,), "mlp.fc2.weight": (D, 4 * D), "mlp.fc2.bias": (D,)}
    for part, n in (("encoder_blocks", enc), ("decoder_blocks", dec)):
        for i in range(n):
            keys.update({f"{part}.{i}.{k}": s for k, s in block.items()})
    head = {"time_embed.mlp.0.weight": (W, 256), "time_embed.mlp.0.bias": (W,), "time_embed.mlp.2.weight": (W, W),
            "time_embed.mlp.2.bias": (W,), "cond_embed.weight": (W, D), "cond_embed.bias": (W,),
            "input_proj.weight": (W, channels), "input_proj.bias": (W,),
            "final_layer.linear.weight": (2 * channels, W), "final_layer.linear.bias": (2 * channels,),
            "final_layer.adaLN_modulation.1.weight": (2 * W, W), "final_layer.adaLN_modulation.1.bias": (2 * W,)}
    for i in range(head_depth):
        head.update({f"res_blocks.{i}.in_ln.weight": (W,), f"res_blocks.{i}.in_ln.bias": (W,),
                     f"res_blocks.{i}.mlp.0.weight": (W, W), f"res_blocks.{i}.mlp.0.bias": (W,),
                     f"res_blocks.{i}.mlp.2.weight": (W, W), f"res_blocks.{i}.mlp.2.bias": (W,),
                     f"res_blocks.{i}.adaLN_modulation.1.weight": (3 * W, W),
                     f"res_blocks.{i}.adaLN_modulation.1.bias": (3 * W,)})
    keys.update({f"diffloss.net.{k}": s for k, s in head.items()})
    return keys


@pytest.mark.parametrize("name, width, depth, head, params, paper", [
    ("MAR-B", 768, 12, (6, 1024), 207_924_768, 208e6),
    ("MAR-L", 1024, 16, (8, 1280), 478_326_304, 479e6),
    ("MAR-H", 1280, 20, (12, 1536), 942_403_104, 943e6),
])
def test_official_layout_and_parameter_counts(name, width, depth, head, params, paper):
    with torch.device("meta"):
        model = build_mar(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _official_layout(width, depth, depth, *head)
    assert model.depth == 2 * depth and len(model.layers) == 2 * depth
    n = sum(p.numel() for p in model.parameters())
    assert n == params                      # the official code builds the same count (README: 208M / 479M / 943M)
    assert abs(n - paper) / paper < 0.005
    if name == "MAR-L":
        assert got["encoder_blocks.0.attn.qkv.weight"] == (3072, 1024)
        assert got["diffloss.net.res_blocks.7.adaLN_modulation.1.weight"] == (3840, 1280)


def _randomise(model):
    """adaLN-zero and the zeroed head output make the head's output 0 at init (no gradient reaches the transformer):
    give every all-zero tensor small random values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return _randomise(build_mar("MAR-T32/4"))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, 1, 16, 16, generator=g), torch.tensor([0, 3, 7, 9])


def _loss(model, batch, seed=11, **kw):
    return model(*batch, generator=torch.Generator().manual_seed(seed), **kw)


def test_tiny_config_and_gradient_reaches_every_layer(tiny, batch):
    assert (tiny.depth, tiny.encoder_depth, tiny.decoder_depth) == (32, 16, 16)
    assert (tiny.seq_len, tiny.token_channels) == (16, 16)
    assert "MAR-T32/4" in MAR_models
    loss = _loss(tiny, batch)
    assert loss.shape == (4,) and torch.isfinite(loss).all()
    loss.mean().backward()
    for i, layer in enumerate(tiny.layers):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters()), i


def test_layer_mask_of_ones_is_no_mask(tiny, batch):
    tiny.eval()
    base = _loss(tiny, batch)
    assert torch.equal(_loss(tiny, batch, layer_mask=torch.ones(32)), base)
    soft = torch.ones(4, 32, requires_grad=True)
    assert torch.allclose(_loss(tiny, batch, layer_mask=soft), base, atol=1e-6)
    with pytest.raises(ValueError, match="layer_mask"):
        _loss(tiny, batch, layer_mask=torch.ones(31))


@pytest.mark.parametrize("i", [3, 20])  # an encoder layer and a decoder layer
def test_layer_masked_out_is_independent_of_its_weights(tiny, batch, i):
    tiny.eval()
    mask = torch.ones(32)
    mask[i] = 0
    before, full = _loss(tiny, batch, layer_mask=mask), _loss(tiny, batch)
    soft = mask.clone().requires_grad_(True)
    _loss(tiny, batch, layer_mask=soft).mean().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in tiny.layers[i].parameters())
    assert soft.grad[i] != 0  # the mask still learns whether to run layer i
    with torch.no_grad():
        for p in tiny.layers[i].parameters():
            p.add_(torch.randn_like(p))
    assert torch.equal(_loss(tiny, batch, layer_mask=mask), before)
    assert not torch.allclose(_loss(tiny, batch), full)  # unmasked, the layer matters


def test_return_hidden_gives_every_layer(tiny, batch):
    loss, hidden = _loss(tiny, batch, return_hidden=True)
    assert torch.equal(loss, _loss(tiny, batch))
    assert len(hidden) == 32
    assert all(h.shape[:1] == (4,) and h.shape[-1] == 64 for h in hidden)
    assert hidden[16].shape[1] == 4 + 16          # decoder: buffer + every position
    assert hidden[0].shape[1] < 4 + 16            # encoder: buffer + the known tokens only


def test_mask_ratio_is_the_truncated_normal(tiny):
    g = torch.Generator().manual_seed(0)
    r = np.array([tiny.mask_ratio(g) for _ in range(4000)])
    assert r.min() >= 0.7 and r.max() <= 1.0
    phi = lambda v: math.exp(-v * v / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))  # noqa: E731
    mean = 1.0 - 0.25 * (phi(0) - phi(-1.2)) / (cdf(0) - cdf(-1.2))  # ~0.867
    assert abs(r.mean() - mean) < 0.01


def test_loss_falls_with_adam(batch):
    torch.manual_seed(0)
    model = build_mar("MAR-T32/4").train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = _loss(model, batch).mean()  # same masks, timesteps and noise every step: a fixed objective
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses


def test_sample_shape_and_determinism(tiny):
    labels = torch.tensor([1, 2, 5])

    def run(cfg):
        return tiny.sample(labels, num_iter=4, cfg=cfg, temperature=0.9, sampling_steps=5,
                           generator=torch.Generator().manual_seed(0))

    out = run(3.0)
    assert out.shape == (3, 1, 16, 16) and torch.isfinite(out).all()
    assert torch.equal(out, run(3.0))
    assert run(1.0).shape == (3, 1, 16, 16)
    assert tiny.training  # sampling restores the mode


def test_pruned_state_dict_rebuilds_and_matches_the_mask(tiny, batch):
    tiny.eval()
    kept = [0, 1, 2, 4, 6, 8, 10, 12, 15] + [16 + i for i in (0, 3, 5, 8, 11, 13, 15)]  # 9 encoder + 7 decoder
    state, config = pruned_state_dict(tiny, kept)
    assert mar_depths(state) == (9, 7) and (config["encoder_depth"], config["decoder_depth"]) == (9, 7)
    assert "encoder_blocks.8.attn.qkv.weight" in state and "encoder_blocks.9.attn.qkv.weight" not in state
    rebuilt = load_mar({"model": state, "config": config}).eval()
    assert (rebuilt.encoder_depth, rebuilt.decoder_depth) == (9, 7)
    build_mar("MAR-T32/4", encoder_depth=9, decoder_depth=7).load_state_dict(state, strict=True)
    load_mar(state, name="MAR-T32/4")
    small = prune_mar(tiny, kept)
    full = _loss(tiny, batch, layer_mask=mask_from_kept(kept, 32))
    assert torch.allclose(_loss(rebuilt, batch), full, atol=1e-5)
    assert torch.allclose(_loss(small, batch), full, atol=1e-5)


def test_token_diffusion_cosine_schedule():
    betas = cosine_betas(1000)
    a = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert betas[0] == pytest.approx(1 - a(0.001) / a(0.0))
    assert betas[-1] == pytest.approx(0.999)  # capped
    train, gen = create_token_diffusion(""), create_token_diffusion("100")
    assert train.num_timesteps == 1000 and gen.num_timesteps == 100
    assert np.allclose(gen.alphas_cumprod, train.alphas_cumprod[gen.timestep_map])
    assert gen.config["noise_schedule"] == "cosine"


def test_head_sampler_clamps_x0_of_pixel_tokens():
    """A head whose noise prediction explains half the noise (data: zeros) leaves the 100-step cosine chain far out of
    [-1, 1] without the clamp (the first step alone: x0 = x_t / sqrt(abar_999), abar_999 = 2.4e-9) and inside it
    with the clamp, from the first step to the last."""
    train = create_token_diffusion("")
    abar = torch.tensor(train.alphas_cumprod, dtype=torch.float32)

    def net(x, t, c):  # the true noise of x0 = 0 is x_t / sqrt(1 - abar_t); variance values at the middle
        return torch.cat([0.5 * x / torch.sqrt(1 - abar[t]).unsqueeze(1), torch.zeros_like(x)], dim=1)

    d = create_token_diffusion("100")
    noise = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    cond = torch.zeros(64, 8)
    first = torch.full((64,), d.num_timesteps - 1, dtype=torch.long)
    out = net(noise, d._scale_t(first), cond)
    assert d.p_mean_variance(out, noise, first)[0].abs().max() > 100
    assert d.p_mean_variance(out, noise, first, clip_denoised=True)[0].abs().max() < 1
    free = d.sample_loop(net, noise, cond, generator=torch.Generator().manual_seed(1))
    clamped = d.sample_loop(net, noise, cond, generator=torch.Generator().manual_seed(1), clip_denoised=True)
    assert free.abs().max() > 5
    assert clamped.abs().max() <= 1.0 + 1e-5


def test_mar_score_key_records_the_head_clamp():
    """Scores of MAR samples drawn before the head clamped its x0 are not reused: the clamp is in the cache key."""
    from tinyfusion.sampling import score_config
    assert score_config("smoke-mar", checkpoint="data/mar_teacher_cpu.pt")["head_x0_clip"] is True
    assert "head_x0_clip" not in score_config("smoke", checkpoint="data/teacher_cpu.pt")
