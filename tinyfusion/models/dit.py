"""DiT (Peebles & Xie, 2023) in the official state-dict layout, built from timm blocks.

Keys match the official ``models.py`` (``blocks.3.attn.qkv.weight``, ``blocks.3.adaLN_modulation.1.weight``,
``final_layer.linear.weight``, ``y_embedder.embedding_table.weight``, ``pos_embed``...), so official
checkpoints, the official TinyFusion D14/D7 checkpoints, and the pruned checkpoints written here are
interchangeable. Two additions serve depth pruning:

* ``forward(..., mask=...)`` takes a per-sample layer mask ``m`` of shape (B, depth) and computes
  ``x = m_i * block_i(x) + (1 - m_i) * x`` (TinyFusion Eq. 1). A hard mask without gradient skips the
  masked rows entirely, so scoring many random prunes costs only the kept layers.
* ``forward(..., return_hidden=True)`` also returns every block's output (for RepKD and the
  massive-activation study).
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import torch.nn as nn
from timm.layers import Mlp, PatchEmbed
from timm.models.vision_transformer import Attention


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Embeds scalar timesteps with sinusoids followed by a 2-layer MLP."""

    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t):
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Embeds class labels; the extra row ``num_classes`` is the null label used for CFG."""

    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels, train, force_drop_ids=None):
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            if force_drop_ids is None:
                drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            else:
                drop = force_drop_ids == 1
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    """A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning."""

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.mlp = Mlp(in_features=hidden_size, hidden_features=mlp_hidden_dim,
                       act_layer=lambda: nn.GELU(approximate="tanh"), drop=0)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def masked_block(block, h, c, m):
    """``m * block(h, c) + (1 - m) * h`` for a per-sample mask ``m`` (B,) that carries gradient (Eq. 1).

    Same value and gradients as the plain blend, with less work: for a row whose mask value is exactly 0
    (a hard Gumbel sample that drops the block) nothing flows back into ``block(h)``, so the block's
    weights and input get no gradient through that row; only the mask's gradient ``<g, block(h) - h>``
    needs the block's *value*. Those rows therefore run under ``no_grad``: no saved activations, no
    backward. With 1:2 gates about half of all block-rows are dropped (see benchmarks/prune_step.py).
    """
    drop = m.detach() == 0
    mv = m.view(-1, 1, 1).to(h.dtype)
    if not bool(drop.any()) or not torch.is_grad_enabled():
        f = block(h, c)
    elif bool(drop.all()):
        with torch.no_grad():
            f = block(h, c)
        # the plain blend gives this block's trainable parameters exact zero gradients (not None): DDP expects
        # every parameter used and AdamW treats a zero gradient unlike a missing one, so keep it that way
        params = [p for p in block.parameters() if p.requires_grad]
        if params:
            f = f + 0 * sum(p.reshape(-1)[0] for p in params)
    else:
        keep, dropped = (~drop).nonzero(as_tuple=True)[0], drop.nonzero(as_tuple=True)[0]
        with torch.no_grad():
            f = h.new_empty(h.shape)
            f[dropped] = block(h[dropped], c[dropped])
        f = f.index_copy(0, keep, block(h[keep], c[keep]))
    return mv * f + (1 - mv) * h


class DiT(nn.Module):
    """Diffusion model with a transformer backbone (official layout, any depth)."""

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True, objective="ddpm"):
        super().__init__()
        self.config = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                           hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           class_dropout_prob=class_dropout_prob, num_classes=num_classes, learn_sigma=learn_sigma)
        if objective != "ddpm":  # the official DiT config stays as it is; a SiT's (flow) config names its objective
            self.config["objective"] = objective
        self.objective = objective  # the registered name ``tinyfusion.diffusion.objective_for`` builds
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.num_classes = num_classes
        # output channels classifier-free guidance acts on (None: all ``in_channels``); not part of ``config``, so the
        # state-dict layout and checkpoints are unchanged. The imagenet profile sets OFFICIAL_CFG_CHANNELS (3).
        self.cfg_channels = None

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @property
    def depth(self):
        return len(self.blocks)

    # ------------------------------------------------------------------ the pruning interface (models/prunable.py)
    @property
    def layers(self):
        """The prunable layers in order: the blocks."""
        return self.blocks

    def pruned(self, kept):
        """A compact DiT keeping the blocks ``kept`` (sorted): copies of their weights renumbered 0..D-1 in the
        official key layout, ``config["depth"] = D``, built on the meta device and filled from the state dict (no
        full-size model is initialised), every parameter trainable as in a newly built DiT (``pos_embed`` frozen), on
        this model's device, in its training mode, with ``pruned_from = kept``. ``pruning.indices.prune`` is the entry
        point (it checks ``kept`` and removes adapters first)."""
        kept = [int(i) for i in kept]
        state = {}
        for key, value in self.state_dict().items():
            if key.startswith("blocks."):
                _, idx, rest = key.split(".", 2)
                if int(idx) not in kept:
                    continue
                key = f"blocks.{kept.index(int(idx))}.{rest}"
            state[key] = value
        with torch.device("meta"):
            small = DiT(**{**self.config, "depth": len(kept)})
        small = small.to_empty(device=next(self.parameters()).device)
        small.load_state_dict(state, strict=True)  # copies the values
        small.pruned_from = kept
        return small.train(self.training)

    def initialize_weights(self):
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        self.apply(_basic_init)
        grid = int(self.x_embedder.num_patches ** 0.5)
        pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], grid)
        self.pos_embed.data.copy_(torch.from_numpy(pos_embed).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x):
        c, p = self.out_channels, self.x_embedder.patch_size[0]
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, h * p)

    def embed(self, x, t, y):
        """Token embedding and conditioning vector: (B, T, D), (B, D)."""
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        return x, c

    def forward(self, x, t, y, mask=None, return_hidden=False):
        """Predict noise (and variance) for images ``x`` at timesteps ``t`` with labels ``y``.

        mask: optional (B, depth) or (depth,) layer mask; 1 runs the block, 0 passes x through (Eq. 1).
        return_hidden: also return the list of every block's output (after masking).
        """
        h, c = self.embed(x, t, y)
        if mask is not None and mask.dim() == 1:
            mask = mask.unsqueeze(0).expand(h.shape[0], -1)
        hidden = []
        for i, block in enumerate(self.blocks):
            if mask is None:
                h = block(h, c)
            elif mask.requires_grad:  # learnable mask: h = m * block(h) + (1 - m) * h, cheaply
                h = masked_block(block, h, c, mask[:, i])
            else:  # hard mask: compute the block only where it is kept
                keep = mask[:, i] > 0.5
                if bool(keep.all()):
                    h = block(h, c)
                elif bool(keep.any()):
                    idx = keep.nonzero(as_tuple=True)[0]
                    h = h.index_copy(0, idx, block(h[idx], c[idx]))
            if return_hidden:
                hidden.append(h)
        out = self.unpatchify(self.final_layer(h, c))
        return (out, hidden) if return_hidden else out

    def forward_with_cfg(self, x, t, y, cfg_scale, cfg_channels=None, **kwargs):
        """Classifier-free guidance: the first half of the batch is conditional, the second uses the null label.

        Guidance acts on the first ``cfg_channels`` output channels (default: ``self.cfg_channels``, else all
        ``in_channels``); the other channels of each half keep their own (conditional or unconditional) values.
        The official DiT ``forward_with_cfg`` guides only the first **3** of the 4 noise channels ("for exact
        reproducibility" of the published FIDs): the imagenet profile sets ``cfg_channels = OFFICIAL_CFG_CHANNELS``
        to reproduce it; our own Fashion-MNIST models guide all of their ``in_channels``.
        """
        n = int(cfg_channels or self.cfg_channels or self.in_channels)
        if not 1 <= n <= self.in_channels:
            raise ValueError(f"cfg_channels={n}: guidance acts on 1..{self.in_channels} of the noise channels")
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = self.forward(combined, t, y, **kwargs)
        eps, rest = model_out[:, :n], model_out[:, n:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        eps = torch.cat([half_eps, half_eps], dim=0)
        return torch.cat([eps, rest], dim=1)


OFFICIAL_CFG_CHANNELS = 3  # facebookresearch/DiT models.py forward_with_cfg: ``model_out[:, :3]``


def get_2d_sincos_pos_embed(embed_dim, grid_size):
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb_h = _1d_sincos(embed_dim // 2, grid[0])
    emb_w = _1d_sincos(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def _1d_sincos(embed_dim, pos):
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


# --------------------------------------------------------------------------- configs
def DiT_XL_2(**kw): return DiT(**{**dict(depth=28, hidden_size=1152, patch_size=2, num_heads=16), **kw})
def DiT_XL_4(**kw): return DiT(**{**dict(depth=28, hidden_size=1152, patch_size=4, num_heads=16), **kw})
def DiT_XL_8(**kw): return DiT(**{**dict(depth=28, hidden_size=1152, patch_size=8, num_heads=16), **kw})
def DiT_L_2(**kw): return DiT(**{**dict(depth=24, hidden_size=1024, patch_size=2, num_heads=16), **kw})
def DiT_L_4(**kw): return DiT(**{**dict(depth=24, hidden_size=1024, patch_size=4, num_heads=16), **kw})
def DiT_L_8(**kw): return DiT(**{**dict(depth=24, hidden_size=1024, patch_size=8, num_heads=16), **kw})
def DiT_B_2(**kw): return DiT(**{**dict(depth=12, hidden_size=768, patch_size=2, num_heads=12), **kw})
def DiT_B_4(**kw): return DiT(**{**dict(depth=12, hidden_size=768, patch_size=4, num_heads=12), **kw})
def DiT_B_8(**kw): return DiT(**{**dict(depth=12, hidden_size=768, patch_size=8, num_heads=12), **kw})
def DiT_S_2(**kw): return DiT(**{**dict(depth=12, hidden_size=384, patch_size=2, num_heads=6), **kw})
def DiT_S_4(**kw): return DiT(**{**dict(depth=12, hidden_size=384, patch_size=4, num_heads=6), **kw})
def DiT_S_8(**kw): return DiT(**{**dict(depth=12, hidden_size=384, patch_size=8, num_heads=6), **kw})

# The project's own 28-layer configs (depth mirrors DiT-XL) for grayscale Fashion-MNIST. DiT-T28/4 sees the
# images at 16x16 in 4x4 patches: 16 tokens of 16 values each in a width-64 stream (DiT-XL/2: 16 values in 1152).
# DiT-T28/7 (28x28, 7x7 patches) was our first cpu teacher: 49 noisy values per token through width 64 proved too
# narrow to predict the noise precisely at high noise levels, and its samples were not recognisable.
_FMNIST = dict(input_size=28, in_channels=1, num_classes=10)
def DiT_T28_4(**kw): return DiT(**{**_FMNIST, **dict(input_size=16, depth=28, hidden_size=64, patch_size=4, num_heads=4), **kw})
def DiT_T28_7(**kw): return DiT(**{**_FMNIST, **dict(depth=28, hidden_size=64, patch_size=7, num_heads=4), **kw})
def DiT_W28_4(**kw): return DiT(**{**_FMNIST, **dict(depth=28, hidden_size=256, patch_size=4, num_heads=4), **kw})
def DiT_W28_2(**kw): return DiT(**{**_FMNIST, **dict(depth=28, hidden_size=384, patch_size=2, num_heads=6), **kw})

DiT_models = {
    "DiT-XL/2": DiT_XL_2, "DiT-XL/4": DiT_XL_4, "DiT-XL/8": DiT_XL_8,
    "DiT-L/2": DiT_L_2, "DiT-L/4": DiT_L_4, "DiT-L/8": DiT_L_8,
    "DiT-B/2": DiT_B_2, "DiT-B/4": DiT_B_4, "DiT-B/8": DiT_B_8,
    "DiT-S/2": DiT_S_2, "DiT-S/4": DiT_S_4, "DiT-S/8": DiT_S_8,
    "DiT-T28/4": DiT_T28_4,   # cpu profile teacher: 16x16 input, width 64, 16 tokens
    "DiT-T28/7": DiT_T28_7,   # 28x28 input, width 64, 16 tokens of 49 values (too narrow; see above)
    "DiT-W28/4": DiT_W28_4,   # gpu profile teacher: width 256, 49 tokens
    "DiT-W28/2": DiT_W28_2,   # gpu profile, full resolution tokens: width 384, 196 tokens
    # the scale ladder (issue 26): DiT-T28/4 with one thing changed each, trained with the cpu teacher's recipe
    "DiT-T28/4-w128": partial(DiT_T28_4, hidden_size=128),  # width 128, 16 tokens (8.4M; profile cpu-w128)
    "DiT-T28/4-t49": partial(DiT_T28_4, input_size=28),     # full 28x28 resolution: 49 tokens, width 64 (cpu-t49)
    # DiT-XL/2's input and layout (32x32x4 latents in 2x2 patches, 256 tokens, learned sigma) at toy width: the
    # end-to-end test of the imagenet path (tests/test_imagenet_path.py) trains, prunes, samples and exports it on CPU
    "DiT-Mini/2": partial(DiT, input_size=32, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2,
                          num_classes=10),
}

# SiT (Ma et al., 2024) is the DiT network trained with the flow objective (``tinyfusion.diffusion.flow``): the
# official SiT checkpoints share DiT's layout and learned-sigma output (whose second half SiT ignores). Our own
# SiT configs predict the velocity alone.
_SIT = dict(objective="flow")
SiT_models = {name.replace("DiT", "SiT"): partial(fn, **_SIT) for name, fn in DiT_models.items() if "28/" not in name}
SiT_models.update({
    "SiT-T28/4": partial(DiT_T28_4, learn_sigma=False, **_SIT),   # cpu-sit profile teacher (DiT-T28/4's shape)
    "SiT-W28/4": partial(DiT_W28_4, learn_sigma=False, **_SIT),   # gpu-sit profile teacher
})
DiT_models.update(SiT_models)


def build_model(name, **overrides):
    """Instantiate a registered config by name; ``overrides`` (e.g. ``depth=14``) replace its fields."""
    if name not in DiT_models:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(DiT_models)}")
    return DiT_models[name](**overrides)


def depth_of_state_dict(state_dict):
    """Number of blocks in a DiT state dict (blocks may have been renumbered after pruning)."""
    ids = {int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.")}
    if ids and ids != set(range(len(ids))):
        raise ValueError(f"block indices in the state dict are not 0..{len(ids) - 1}: {sorted(ids)}")
    return len(ids)


def state_dict_of(ckpt):
    """The weights in a checkpoint: ours (``{"ema" or "model": state_dict, "config": ...}``) or a raw state dict."""
    if isinstance(ckpt, dict) and ("ema" in ckpt or "model" in ckpt):
        return ckpt.get("ema") or ckpt["model"]
    return ckpt


def dit_weights(ckpt, label):
    """The DiT state dict in a loaded checkpoint ``ckpt`` (ours or a raw state dict), refusing with a one-line error
    that names ``label`` (the file, or the flag and file) anything else: a list, a bare tensor, a dict without
    weights, or weights with no ``blocks.*`` keys (not a DiT)."""
    state = state_dict_of(ckpt)
    what = (f"a {type(ckpt).__name__}" if not isinstance(ckpt, dict) else
            f"a dict with keys {sorted(map(str, ckpt))[:6]}" if ckpt else "an empty dict")
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and torch.is_tensor(v)
                                                           for k, v in state.items()):
        raise ValueError(f"{label} holds {what}, not DiT weights (a state dict of tensors, or {{'ema' or 'model': "
                         f"state dict, 'config': ...}}); pass a DiT checkpoint (cli.pretrain's teacher.pt, "
                         f"cli.prune_learn's pruned.pt, cli.finetune's model.pt, or an official DiT/SiT .pt)")
    if any(k.startswith(("encoder_blocks.", "decoder_blocks.")) for k in state):
        raise ValueError(f"{label} is a MAR checkpoint (encoder and decoder blocks), not a DiT; this entry point takes "
                         f"DiT/SiT checkpoints only (a MAR goes through cli.pretrain, prune_learn, finetune --mode finetune, "
                         f"sample and evaluate)")
    if not any(k.startswith("blocks.") for k in state):
        raise ValueError(f"{label} holds weights without DiT blocks (keys such as {sorted(state)[:4]}): not a DiT "
                         f"checkpoint (the evaluator's data/evaluator.pt is a classifier); pass a DiT checkpoint")
    return state


def stored_config(path):
    """The config a checkpoint of ours stores, or None for a raw state dict (the official DiT/SiT/TinyDiT files),
    which needs a registered name (``--model DiT-XL/2``) to be built; its depth is read from its keys."""
    from tinyfusion.io import checkpoint_skeleton
    ckpt = checkpoint_skeleton(path)
    if isinstance(ckpt, dict) and state_dict_of(ckpt) is not ckpt and isinstance(ckpt.get("config"), dict):
        return ckpt["config"]
    return None


def input_shape(path, label=None):
    """``(in_channels, input_size)`` of the DiT checkpoint at ``path``: its stored config's, else read from the
    shapes of its weights (a raw state dict; ``(None, None)`` when they do not tell). ``label`` names it in errors."""
    from tinyfusion.io import checkpoint_skeleton
    ckpt = checkpoint_skeleton(path)
    state = dit_weights(ckpt, label or str(path))
    config = ckpt.get("config") if state is not ckpt else None
    if not (isinstance(config, dict) and {"in_channels", "input_size"} <= set(config)):
        config = guess_config(state) or {}
    return config.get("in_channels"), config.get("input_size")


def model_name_for(paths, name, default):
    """The registry name to record for loading ``paths``: ``name`` when given, else ``default`` (the profile's model)
    when one of them is a raw state dict, else None (our checkpoints carry their config; a config key is added only
    where it is needed, so the cache keys of runs on our own checkpoints stay as they were)."""
    if name:
        if name not in DiT_models:
            raise ValueError(f"--model {name!r} is not a registered config; choose one of {', '.join(DiT_models)}")
        return name
    return default if any(p and _is_raw(p) for p in paths) else None


def _is_raw(path):
    """Whether ``path`` holds a raw state dict (an unreadable or missing file: not known to be one; loading it later
    raises the error that names it)."""
    try:
        return stored_config(path) is None
    except Exception:
        return False


def objective_of(path, name=None):
    """The objective a checkpoint's model was trained with, read without building it: the stored config's, else the
    registered ``name``'s (SiT names: flow), else DDPM (the official DiT layout). For a checkpoint of any
    architecture: ``registry.objective_of``."""
    from tinyfusion.io import checkpoint_skeleton
    ckpt = checkpoint_skeleton(path)
    if isinstance(ckpt, dict) and state_dict_of(ckpt) is not ckpt and isinstance(ckpt.get("config"), dict):
        return ckpt["config"].get("objective", "ddpm")
    return getattr(DiT_models.get(name), "keywords", {}).get("objective", "ddpm")


def load_dit(path_or_state, name=None, config=None, strict=True, objective=None, label=None):
    """Load a DiT checkpoint of any depth into the official layout.

    ``path_or_state``: a path to a ``.pt`` file (official raw state dict, or one of ours with ``model``/``ema``
    and ``config`` keys) or a state dict. The model is built from ``config`` (a DiT kwargs dict), else from the
    checkpoint's stored config, else from the registered ``name``; the depth is read from the state dict.
    A shape mismatch raises an error naming the checkpoint, the offending keys and the config it was built with.
    Only tensors and plain containers are read: a file carrying pickled objects is refused unread.
    ``objective`` (a registered name) replaces the objective the config names (default: its own; DDPM if none).
    ``label``: how errors name the checkpoint (default: its path). A MAR checkpoint is refused in one line
    (``dit_weights``); ``tinyfusion.models.registry.load_model`` loads either.
    """
    from tinyfusion.io import load_checkpoint

    label = label or (str(path_or_state) if not isinstance(path_or_state, dict) else "<state dict>")
    ckpt = load_checkpoint(path_or_state, weights_only=True) if not isinstance(path_or_state, dict) else path_or_state
    state = dit_weights(ckpt, label)
    stored_config = ckpt.get("config") if state is not ckpt else None
    if stored_config is not None:
        import inspect
        extra = sorted(set(stored_config) - set(inspect.signature(DiT.__init__).parameters))
        if extra:
            raise ValueError(f"{label} is not a DiT checkpoint: its config has keys a DiT does not take ({', '.join(extra)}"
                             f"{'; it looks like the evaluator, data/evaluator.pt' if 'widths' in extra else ''}); "
                             f"pass a DiT checkpoint (cli.pretrain's teacher.pt, cli.prune_learn's pruned.pt, "
                             f"cli.finetune's model.pt)")
    depth = depth_of_state_dict(state)
    override = {"objective": objective} if objective else {}
    if config is not None:
        model = DiT(**{**config, "depth": depth, **override})
    elif stored_config is not None:
        model = DiT(**{**stored_config, "depth": depth, **override})
    elif name is not None:
        model = build_model(name, depth=depth, **override)
    else:
        raise ValueError(f"{label} is a raw state dict with no config stored; name its registered config (--model "
                         f"DiT-XL/2 on the command line, name= in Python; one of {', '.join(DiT_models)}): the "
                         f"depth is read from its keys")
    own = model.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if bad or (strict and (missing or unexpected)):
        msg = [f"checkpoint {label} does not fit DiT config {model.config}"]
        if bad:
            msg.append("shape mismatches: " + "; ".join(bad[:6]) + (" ..." if len(bad) > 6 else ""))
        if missing:
            msg.append("missing keys: " + ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else ""))
        if unexpected:
            msg.append("unexpected keys: " + ", ".join(unexpected[:6]) + (" ..." if len(unexpected) > 6 else ""))
        hint = guess_config(state)
        if hint:
            msg.append(f"a config that fits: {hint}")
        raise ValueError("\n".join(msg))
    model.load_state_dict(state, strict=strict)
    return model


def guess_config(state):
    """Best-effort DiT kwargs implied by a state dict's shapes (for error messages)."""
    try:
        w = state["x_embedder.proj.weight"]
        hidden, in_ch, p, _ = w.shape
        n_tokens = state["pos_embed"].shape[1]
        out = state["final_layer.linear.weight"].shape[0] // (p * p)
        n_cls = state["y_embedder.embedding_table.weight"].shape[0]
        mlp = state["blocks.0.mlp.fc1.weight"].shape[0] / hidden
        return dict(input_size=int(round(n_tokens ** 0.5)) * p, patch_size=p, in_channels=in_ch, hidden_size=hidden,
                    depth=depth_of_state_dict(state), mlp_ratio=mlp, learn_sigma=out == 2 * in_ch,
                    num_classes=n_cls - 1)  # the last row is the CFG null label
    except Exception:
        return None
