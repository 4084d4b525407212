"""MAR (Li et al., 2024, "Autoregressive Image Generation without Vector Quantization") in the official layout.

MAR generates the continuous tokens of a VAE latent (ImageNet 256: the KL-16 VAE's 16x16x16 latent; with
``patch_size`` p, every p x p latent pixels form one token of ``in_channels * p * p`` values: 256 tokens of 16
values at p = 1) in a random order, several at a time. The network has three parts:

* an MAE-style **encoder** (``encoder_blocks``, timm ViT blocks, bidirectional attention): ``z_proj`` embeds the
  known tokens, ``buffer_size`` leading positions hold the class embedding (``class_emb``, or ``fake_latent`` for
  the unconditional branch of classifier-free guidance and for dropped labels), a learned position embedding is
  added, ``z_proj_ln`` normalises, and the masked (unknown) tokens are dropped before the blocks;
* an MAE-style **decoder** (``decoder_blocks``): ``decoder_embed`` maps the encoder output back onto every position,
  the unknown positions get ``mask_token``, a second learned position embedding is added; after ``decoder_norm`` the
  buffer is cut off and ``diffusion_pos_embed_learned`` is added, giving one condition vector z per position;
* a small **per-token diffusion head** (``diffloss``, the paper's "Diffusion Loss"): an MLP of residual blocks with
  adaLN on (t, z) that denoises one token vector; its loss trains the whole network, and at generation it samples
  each token given its z (``tinyfusion.diffusion.token_diffusion``: cosine schedule, 1000 steps, 100 sampling steps,
  a temperature on the per-step noise).

Training (``forward``): a random order per image; one mask ratio per batch from a normal of mean 1.0 and sd 0.25
truncated to [``mask_ratio_min`` = 0.7, 1]; the first ``ceil(ratio * L)`` positions of each order are masked; the
loss is the head's diffusion loss on the masked tokens only, each repeated ``diffusion_batch_mul`` (4) times with
its own timestep and noise; labels are replaced by the fake latent with probability ``label_drop_prob`` (0.1).
Generation (``sample``): ``num_iter`` steps; after step k, ``floor(L * cos(pi / 2 * (k + 1) / num_iter))`` tokens stay
masked (at least one fewer each step), the ones unmasked at step k are sampled by the head; classifier-free
guidance rises linearly from 1 to ``cfg`` with the fraction of tokens already known.

Depth pruning acts on the transformer **layers** only: ``layers`` is the encoder blocks followed by the decoder
blocks (MAR-L: 16 + 16 = 32, ``depth``), and ``forward(..., layer_mask=m)`` computes
``h = m_i * layer_i(h) + (1 - m_i) * h`` for each of them (TinyFusion Eq. 1). Everything else (embeddings, the two
norms, ``decoder_embed`` and the diffusion head) is kept. A pruned MAR stores how many of its layers are encoder
layers (``config["encoder_depth"]``), so its renumbered state dict (``encoder_blocks.0..E-1``,
``decoder_blocks.0..D-1``) rebuilds: ``prune_mar`` and ``load_mar``.

Keys and shapes follow LTH14/mar ``models/mar.py`` and ``models/diffloss.py``, so the official checkpoints' ``model``
or ``model_ema`` state dicts load with ``strict=True`` into ``build_mar("MAR-B" | "MAR-L" | "MAR-H")`` (whose heads
are the released ones: 6 x 1024, 8 x 1280, 12 x 1536). Our config names the latent grid directly: the official
``img_size=256, vae_stride=16, vae_embed_dim=16`` is ``input_size=16, in_channels=16`` here.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from tinyfusion.diffusion.token_diffusion import create_token_diffusion
from tinyfusion.models.dit import TimestepEmbedder


def _draw(kind, shape, generator, device, **kw):
    """``torch.rand``/``randn``/``randint`` from ``generator`` (on its own device), moved to ``device``."""
    where = generator.device if generator is not None else device
    if kind == "randint":
        return torch.randint(kw.pop("high"), shape, generator=generator, device=where).to(device)
    return getattr(torch, kind)(shape, generator=generator, device=where, **kw).to(device)


# --------------------------------------------------------------------------- the per-token diffusion head
def _modulate(x, shift, scale):
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    """One residual MLP block of the head: LayerNorm, adaLN shift/scale from the condition, MLP, gated residual."""

    def __init__(self, width):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.in_ln(x), shift, scale))


class HeadOutput(nn.Module):
    """The head's last layer: affine-free LayerNorm, adaLN shift/scale, linear to (noise, variance) values."""

    def __init__(self, width, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x, y):
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class TokenDenoiser(nn.Module):
    """The head's network (official ``SimpleMLPAdaLN``): predicts the noise and the variance values (2C outputs) of a
    noisy token x_t (N, C) at timestep t given the transformer's condition c (N, z_channels)."""

    def __init__(self, in_channels, width, z_channels, depth):
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList([ResBlock(width) for _ in range(depth)])
        self.final_layer = HeadOutput(width, 2 * in_channels)
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        zero = [b.adaLN_modulation[-1] for b in self.res_blocks]
        for layer in zero + [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, t, c):
        y = self.time_embed(t) + self.cond_embed(c)
        x = self.input_proj(x)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)

    def forward_with_cfg(self, x, t, c, cfg_scale):
        """Guided output for a batch of conditional rows then unconditional rows: both halves denoise the first half's
        x; the guided noise is shared, the variance values stay each half's own."""
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, c)
        eps, rest = out[:, :self.in_channels], out[:, self.in_channels:]
        cond, uncond = eps.chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided]), rest], dim=1)


class DiffLoss(nn.Module):
    """The per-token diffusion loss and sampler around ``TokenDenoiser`` (the diffusions hold no weights)."""

    def __init__(self, token_channels, z_channels, depth, width, num_sampling_steps="100", diffusion_steps=1000):
        super().__init__()
        self.in_channels = token_channels
        self.net = TokenDenoiser(token_channels, width, z_channels, depth)
        self.diffusion_steps = int(diffusion_steps)
        self.num_sampling_steps = str(num_sampling_steps)
        self.train_diffusion = create_token_diffusion("", self.diffusion_steps)
        self._samplers = {}

    def forward(self, target, z, generator=None):
        """Per-row diffusion loss (N,) of tokens ``target`` (N, C) given conditions ``z`` (N, D): MSE of the predicted
        noise plus the variational bound term that trains the variance, at a uniform random timestep."""
        n, dev = target.shape[0], target.device
        t = _draw("randint", (n,), generator, dev, high=self.train_diffusion.num_timesteps)
        noise = _draw("randn", tuple(target.shape), generator, dev).to(target.dtype)
        return self.train_diffusion.training_losses(self.net, target, t, {"c": z}, noise=noise)["loss"]

    def sampler(self, steps=None):
        key = str(steps or self.num_sampling_steps)
        if key not in self._samplers:
            self._samplers[key] = create_token_diffusion(key, self.diffusion_steps)
        return self._samplers[key]

    @torch.no_grad()
    def sample(self, z, temperature=1.0, cfg=1.0, steps=None, generator=None, clip_denoised=False):
        """Tokens (N, C) for conditions ``z`` (N, D); with ``cfg != 1`` the rows of ``z`` are the conditional ones
        then the unconditional ones, and the returned rows too (both halves start from the same noise).
        ``clip_denoised``: clamp the predicted x0 of every step to [-1, 1] (tokens of pixels)."""
        n = len(z) // 2 if cfg != 1.0 else len(z)
        noise = _draw("randn", (n, self.in_channels), generator, z.device).to(z.dtype)
        if cfg != 1.0:
            noise = torch.cat([noise, noise])
        return self.sampler(steps).sample_loop(self.net, noise, z, temperature, cfg, generator, clip_denoised)


# --------------------------------------------------------------------------- layers and masks
def _apply_layer(block, h, m):
    """``block(h)`` under the per-sample layer-mask column ``m`` (B,) or None.

    A 0/1 mask without gradient runs the block only on the rows that keep it. Otherwise (a gradient, or fractional
    values) the value is ``m * block(h) + (1 - m) * h`` (Eq. 1); the rows whose mask is exactly 0 run the block
    without autograd (their weights and inputs get no gradient from them anyway; only the mask's gradient needs the
    block's value), as ``dit.masked_block``.
    """
    if m is None:
        return block(h)
    hard = not m.requires_grad and bool(((m == 0) | (m == 1)).all())
    if hard:
        keep = m > 0.5
        if bool(keep.all()):
            return block(h)
        if not bool(keep.any()):
            return h
        idx = keep.nonzero(as_tuple=True)[0]
        return h.index_copy(0, idx, block(h[idx]))
    drop = m.detach() == 0
    if torch.is_grad_enabled() and bool(drop.any()) and not bool(drop.all()):
        keep_idx, drop_idx = (~drop).nonzero(as_tuple=True)[0], drop.nonzero(as_tuple=True)[0]
        with torch.no_grad():
            f = h.new_empty(h.shape)
            f[drop_idx] = block(h[drop_idx])
        f = f.index_copy(0, keep_idx, block(h[keep_idx]))
    else:
        f = block(h)
    mv = m.view(-1, 1, 1).to(h.dtype)
    return mv * f + (1 - mv) * h


# --------------------------------------------------------------------------- the model
class MAR(nn.Module):
    """Masked autoregressive model with a per-token diffusion head (official layout, any encoder/decoder depth)."""

    def __init__(self, input_size=16, patch_size=1, in_channels=16, hidden_size=1024, encoder_depth=16,
                 decoder_depth=16, num_heads=16, mlp_ratio=4.0, num_classes=1000, buffer_size=64,
                 label_drop_prob=0.1, mask_ratio_min=0.7, attn_dropout=0.1, proj_dropout=0.1, diffloss_depth=3,
                 diffloss_width=1024, diffusion_batch_mul=4, num_sampling_steps="100", arch="mar"):
        super().__init__()
        if arch != "mar":
            raise ValueError(f"a MAR config has arch 'mar', got {arch!r}")
        # ``arch`` marks a MAR's stored config (``models.registry.load_model``); a config without one is a DiT's
        self.config = dict(arch="mar", input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                           hidden_size=hidden_size, encoder_depth=encoder_depth, decoder_depth=decoder_depth,
                           num_heads=num_heads, mlp_ratio=mlp_ratio, num_classes=num_classes, buffer_size=buffer_size,
                           label_drop_prob=label_drop_prob, mask_ratio_min=mask_ratio_min, attn_dropout=attn_dropout,
                           proj_dropout=proj_dropout, diffloss_depth=diffloss_depth, diffloss_width=diffloss_width,
                           diffusion_batch_mul=diffusion_batch_mul, num_sampling_steps=str(num_sampling_steps))
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.grid = input_size // patch_size
        self.seq_len = self.grid ** 2
        self.token_channels = in_channels * patch_size ** 2
        self.num_classes = num_classes
        self.buffer_size = buffer_size
        self.label_drop_prob = label_drop_prob
        self.mask_ratio_min = mask_ratio_min
        self.diffusion_batch_mul = diffusion_batch_mul
        norm = partial(nn.LayerNorm, eps=1e-6)
        block = partial(Block, hidden_size, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm,
                        proj_drop=proj_dropout, attn_drop=attn_dropout)
        n_pos = self.seq_len + buffer_size

        # class embedding; ``fake_latent`` is the unconditional one (dropped labels, guidance)
        self.class_emb = nn.Embedding(num_classes, hidden_size)
        self.fake_latent = nn.Parameter(torch.zeros(1, hidden_size))
        # encoder
        self.z_proj = nn.Linear(self.token_channels, hidden_size)
        self.z_proj_ln = nn.LayerNorm(hidden_size, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n_pos, hidden_size))
        self.encoder_blocks = nn.ModuleList([block() for _ in range(encoder_depth)])
        self.encoder_norm = norm(hidden_size)
        # decoder
        self.decoder_embed = nn.Linear(hidden_size, hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n_pos, hidden_size))
        self.decoder_blocks = nn.ModuleList([block() for _ in range(decoder_depth)])
        self.decoder_norm = norm(hidden_size)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, hidden_size))
        self.initialize_weights()  # before the head, which initialises itself (as the official code)
        # per-token diffusion head
        self.diffloss = DiffLoss(self.token_channels, hidden_size, diffloss_depth, diffloss_width, num_sampling_steps)

    def initialize_weights(self):
        for p in (self.class_emb.weight, self.fake_latent, self.mask_token, self.encoder_pos_embed_learned,
                  self.decoder_pos_embed_learned, self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ the prunable layers (models/prunable.py)
    computes_loss = True  # forward returns the per-sample training loss itself
    objective = "mar"     # sampled through diffusion.masked_autoregressive (the one door: objective_for)

    def pruned(self, kept):
        """The compact MAR keeping the layers ``kept`` (``prune_mar``)."""
        return prune_mar(self, kept)

    @property
    def layers(self):
        """The prunable transformer layers in order: the encoder blocks, then the decoder blocks (a plain list)."""
        return list(self.encoder_blocks) + list(self.decoder_blocks)

    @property
    def encoder_depth(self):
        return len(self.encoder_blocks)

    @property
    def decoder_depth(self):
        return len(self.decoder_blocks)

    @property
    def depth(self):
        return self.encoder_depth + self.decoder_depth

    # ------------------------------------------------------------------ tokens
    def patchify(self, x):
        """(B, C, H, W) -> (B, L, C * p * p), a token's values ordered channel, row, column."""
        b, c, p, g = x.shape[0], self.in_channels, self.patch_size, self.grid
        x = x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, g * g, c * p * p)

    def unpatchify(self, tokens):
        b, c, p, g = tokens.shape[0], self.in_channels, self.patch_size, self.grid
        x = tokens.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, g * p, g * p)

    def random_orders(self, batch, generator=None, device=None):
        """A random permutation of the L positions per sample (B, L)."""
        return _draw("rand", (batch, self.seq_len), generator, device or self.mask_token.device).argsort(dim=1)

    def mask_ratio(self, generator=None):
        """One masking ratio from N(1, 0.25^2) truncated to [mask_ratio_min, 1] (inverse-CDF draw)."""
        lo = torch.special.ndtr(torch.tensor((self.mask_ratio_min - 1.0) / 0.25, dtype=torch.float64))
        u = lo + (0.5 - lo) * _draw("rand", (1,), generator, "cpu", dtype=torch.float64)
        return float((1.0 + 0.25 * torch.special.ndtri(u)).clamp(self.mask_ratio_min, 1.0))

    @staticmethod
    def mask_by_order(orders, n_masked):
        """Bool (B, L): True at the first ``n_masked`` positions of each order (the tokens still unknown)."""
        mask = torch.zeros(orders.shape, dtype=torch.bool, device=orders.device)
        return mask.scatter(1, orders[:, :int(n_masked)], True)

    def class_embedding(self, labels, generator=None):
        """Class embeddings (B, D); the label ``num_classes`` (the null class) and, in training mode, a fraction
        ``label_drop_prob`` of the labels give ``fake_latent``."""
        null = labels >= self.num_classes
        if self.training and self.label_drop_prob > 0:
            null = null | (_draw("rand", (len(labels),), generator, labels.device) < self.label_drop_prob)
        emb = self.class_emb(labels.clamp(max=self.num_classes - 1))
        return torch.where(null.unsqueeze(-1), self.fake_latent.to(emb.dtype), emb)

    # ------------------------------------------------------------------ encoder and decoder
    def _with_buffer(self, mask):
        return torch.cat([mask.new_zeros(mask.shape[0], self.buffer_size), mask], dim=1)

    def encode(self, tokens, mask, class_emb, layer_mask=None, hidden=None):
        """Encoder output (B, buffer + known tokens, D) for tokens (B, L, C) with ``mask`` (B, L, True = unknown);
        every row must have the same number of unknown tokens. ``layer_mask``: (B, encoder_depth) or None."""
        x = self.z_proj(tokens)
        b, _, d = x.shape
        x = torch.cat([class_emb.unsqueeze(1).expand(b, self.buffer_size, d).to(x.dtype), x], dim=1)
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
        x = x[~self._with_buffer(mask)].reshape(b, -1, d)
        for i, block in enumerate(self.encoder_blocks):
            x = _apply_layer(block, x, None if layer_mask is None else layer_mask[:, i])
            if hidden is not None:
                hidden.append(x)
        return self.encoder_norm(x)

    def decode(self, x, mask, layer_mask=None, hidden=None):
        """Condition vectors z (B, L, D) from the encoder output: known positions from the encoder, ``mask_token``
        at the unknown ones. ``layer_mask``: (B, decoder_depth) or None."""
        x = self.decoder_embed(x)
        known = ~self._with_buffer(mask)
        placed = x.new_zeros(*known.shape, x.shape[-1]).masked_scatter(known.unsqueeze(-1), x)
        x = torch.where(known.unsqueeze(-1), placed, self.mask_token.to(x.dtype)) + self.decoder_pos_embed_learned
        for i, block in enumerate(self.decoder_blocks):
            x = _apply_layer(block, x, None if layer_mask is None else layer_mask[:, i])
            if hidden is not None:
                hidden.append(x)
        x = self.decoder_norm(x)[:, self.buffer_size:]
        return x + self.diffusion_pos_embed_learned

    def _layer_masks(self, layer_mask, batch):
        """(encoder part, decoder part) of a (depth,) or (B, depth) layer mask, each (B, n) or None."""
        if layer_mask is None:
            return None, None
        m = torch.as_tensor(layer_mask, device=self.mask_token.device)
        if not m.is_floating_point():
            m = m.float()
        if m.dim() == 1:
            m = m.unsqueeze(0).expand(batch, -1)
        if m.shape != (batch, self.depth):
            raise ValueError(f"layer_mask of shape {tuple(m.shape)}; expected ({self.depth},) or ({batch}, "
                             f"{self.depth}) for {self.encoder_depth} encoder + {self.decoder_depth} decoder layers")
        return m[:, :self.encoder_depth], m[:, self.encoder_depth:]

    # ------------------------------------------------------------------ training loss
    def forward(self, x, labels, layer_mask=None, return_hidden=False, generator=None):
        """Per-sample training loss (B,) of latents ``x`` (B, C, H, W) with class ``labels`` (B,).

        Random orders, the batch's mask ratio, label dropout (training mode), timesteps and noise come from
        ``generator`` (the global RNG when None; dropout inside the blocks always uses the global RNG). A sample's
        loss is the head's loss averaged over its masked tokens and the ``diffusion_batch_mul`` repeats; every sample
        masks the same number of tokens, so the batch mean equals the official loss.
        ``layer_mask``: (depth,) or (B, depth): 1 runs a layer, 0 passes its input through, values in between (or
        with gradient) blend as ``m * layer(h) + (1 - m) * h``. ``return_hidden``: also return every layer's output
        (encoder layers: (B, buffer + known, D); decoder layers: (B, buffer + L, D)).
        """
        b = x.shape[0]
        tokens = self.patchify(x)
        enc_mask, dec_mask = self._layer_masks(layer_mask, b)
        n_masked = min(self.seq_len, max(1, math.ceil(self.seq_len * self.mask_ratio(generator))))
        mask = self.mask_by_order(self.random_orders(b, generator, x.device), n_masked)
        hidden = [] if return_hidden else None
        h = self.encode(tokens, mask, self.class_embedding(labels, generator), enc_mask, hidden)
        z = self.decode(h, mask, dec_mask, hidden)
        k = self.diffusion_batch_mul
        target = tokens.detach()[mask].reshape(b, n_masked, -1)
        cond = z[mask].reshape(b, n_masked, -1)
        target = target.unsqueeze(0).expand(k, -1, -1, -1).reshape(k * b * n_masked, -1)
        cond = cond.unsqueeze(0).expand(k, -1, -1, -1).reshape(k * b * n_masked, -1)
        loss = self.diffloss(target, cond, generator).reshape(k, b, n_masked).mean(dim=(0, 2))
        return (loss, hidden) if return_hidden else loss

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def sample(self, labels, num_iter=64, cfg=1.0, temperature=1.0, generator=None, cfg_schedule="linear",
               sampling_steps=None, layer_mask=None, progress=False, clip_denoised=False):
        """Latents (B, C, H, W) for class ``labels`` (B,) in the scale the model was trained on, by ``num_iter``
        masked-autoregressive steps (cosine schedule, random order); the head samples each token with
        ``sampling_steps`` (default the config's ``num_sampling_steps``) diffusion steps at ``temperature``.
        ``cfg``: classifier-free guidance, ramped linearly from 1 with the fraction of known tokens
        (``cfg_schedule="linear"``) or ``"constant"``. ``layer_mask``: as in ``forward``. ``clip_denoised``: the head
        clamps its predicted x0 to [-1, 1] at every step (tokens of pixels; latent tokens, as the official, are not)."""
        from tinyfusion.progress import tqdm

        from tinyfusion.diffusion.common import eval_mode

        if cfg_schedule not in ("linear", "constant"):
            raise ValueError(f"cfg_schedule must be 'linear' or 'constant', got {cfg_schedule!r}")
        dev = self.mask_token.device
        labels = torch.as_tensor(labels, device=dev).long()
        b, L, guided = len(labels), self.seq_len, cfg != 1.0
        enc_mask, dec_mask = self._layer_masks(layer_mask, 2 * b if guided else b)
        orders = self.random_orders(b, generator, dev)
        mask = torch.ones(b, L, dtype=torch.bool, device=dev)
        tokens = torch.zeros(b, L, self.token_channels, device=dev)
        with eval_mode(self):
            cls = self.class_embedding(labels)
            if guided:
                cls = torch.cat([cls, self.fake_latent.expand(b, -1)])
            for step in tqdm(range(num_iter), disable=not progress, desc="mar", leave=False):
                both = (lambda v: torch.cat([v, v])) if guided else (lambda v: v)
                z = self.decode(self.encode(both(tokens), both(mask), cls, enc_mask), both(mask), dec_mask)
                n_next = math.floor(L * math.cos(math.pi / 2 * (step + 1) / num_iter))
                n_next = max(1, min(int(mask[0].sum()) - 1, n_next))
                mask_next = self.mask_by_order(orders, n_next)
                to_pred = mask if step >= num_iter - 1 else mask & ~mask_next
                scale = 1 + (cfg - 1) * (L - n_next) / L if cfg_schedule == "linear" else cfg
                if bool(to_pred.any()):
                    cond = torch.cat([z[:b][to_pred], z[b:][to_pred]]) if guided else z[to_pred]
                    new = self.diffloss.sample(cond, temperature, scale, sampling_steps, generator, clip_denoised)
                    tokens = tokens.clone()
                    tokens[to_pred] = new[: len(new) // 2] if guided else new
                mask = mask_next
        return self.unpatchify(tokens)


# --------------------------------------------------------------------------- configs
def MAR_B(**kw):
    return MAR(**{**dict(hidden_size=768, encoder_depth=12, decoder_depth=12, num_heads=12, diffloss_depth=6,
                         diffloss_width=1024), **kw})


def MAR_L(**kw):
    return MAR(**{**dict(hidden_size=1024, encoder_depth=16, decoder_depth=16, num_heads=16, diffloss_depth=8,
                         diffloss_width=1280), **kw})


def MAR_H(**kw):
    return MAR(**{**dict(hidden_size=1280, encoder_depth=20, decoder_depth=20, num_heads=16, diffloss_depth=12,
                         diffloss_width=1536), **kw})


def MAR_T32_4(**kw):
    """Our cpu size: 16x16 single-channel images (Fashion-MNIST resized, used as the latent) in 4x4 patches, so 16
    tokens of 16 values as MAR-L's tokens; 16 + 16 layers of width 64; a 2-block width-64 head; 4 buffer tokens; no
    dropout."""
    return MAR(**{**dict(input_size=16, patch_size=4, in_channels=1, hidden_size=64, encoder_depth=16,
                         decoder_depth=16, num_heads=4, num_classes=10, buffer_size=4, attn_dropout=0.0,
                         proj_dropout=0.0, diffloss_depth=2, diffloss_width=64), **kw})


MAR_models = {
    "MAR-B": MAR_B,          # 208M with its released 6 x 1024 head (official README)
    "MAR-L": MAR_L,          # 479M with its released 8 x 1280 head
    "MAR-H": MAR_H,          # 943M with its released 12 x 1536 head
    "MAR-T32/4": MAR_T32_4,  # cpu size, 32 prunable layers
}


def build_mar(name, **overrides):
    """Instantiate a registered MAR config; ``overrides`` (e.g. ``encoder_depth=9, decoder_depth=7``) replace fields."""
    if name not in MAR_models:
        raise KeyError(f"unknown MAR model {name!r}; registered: {', '.join(MAR_models)}")
    return MAR_models[name](**overrides)


# --------------------------------------------------------------------------- state dicts and pruning
def mar_depths(state_dict):
    """(encoder_depth, decoder_depth) of a MAR state dict (blocks numbered 0..n-1 in each part)."""
    out = []
    for part in ("encoder_blocks", "decoder_blocks"):
        ids = {int(k.split(".")[1]) for k in state_dict if k.startswith(part + ".")}
        if ids != set(range(len(ids))):
            raise ValueError(f"{part} indices in the state dict are not 0..{len(ids) - 1}: {sorted(ids)}")
        out.append(len(ids))
    return tuple(out)


def mar_weights(ckpt):
    """The MAR state dict in a loaded checkpoint: official (``model_ema``, else ``model``), ours (``ema``, else
    ``model``) or a raw state dict."""
    if isinstance(ckpt, dict):
        for key in ("model_ema", "ema", "model"):
            if isinstance(ckpt.get(key), dict):
                return ckpt[key]
    return ckpt


def load_mar(ckpt, name=None, config=None, strict=True):
    """A MAR holding the weights of ``ckpt`` (a state dict, or a checkpoint dict as ``mar_weights`` reads), built from
    ``config``, else the checkpoint's ``config``, else the registered ``name``; its encoder and decoder depths are read
    from the keys (so pruned, renumbered state dicts rebuild). Built on the meta device, then filled."""
    state = mar_weights(ckpt)
    stored = ckpt.get("config") if isinstance(ckpt, dict) and state is not ckpt else None
    enc, dec = mar_depths(state)
    depths = dict(encoder_depth=enc, decoder_depth=dec)
    with torch.device("meta"):
        if config is not None or stored is not None:
            model = MAR(**{**(config if config is not None else stored), **depths})
        elif name is not None:
            model = build_mar(name, **depths)
        else:
            raise ValueError("a raw MAR state dict needs a registered name (one of "
                             f"{', '.join(MAR_models)}) or a config")
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=strict)
    return model


def pruned_state_dict(model, kept):
    """The state dict and config of ``model`` keeping the layers ``kept`` (indices into ``model.layers``: encoder
    layers first), renumbered per part; the config's depths are the kept counts."""
    from tinyfusion.pruning.indices import check_kept

    kept = check_kept(kept, model.depth)
    enc_kept = [i for i in kept if i < model.encoder_depth]
    dec_kept = [i - model.encoder_depth for i in kept if i >= model.encoder_depth]
    state = {}
    for key, value in model.state_dict().items():
        part, _, rest = key.partition(".")
        if part in ("encoder_blocks", "decoder_blocks"):
            idx, _, tail = rest.partition(".")
            chosen = enc_kept if part == "encoder_blocks" else dec_kept
            if int(idx) not in chosen:
                continue
            key = f"{part}.{chosen.index(int(idx))}.{tail}"
        state[key] = value
    return state, {**model.config, "encoder_depth": len(enc_kept), "decoder_depth": len(dec_kept)}


def prune_mar(model, kept):
    """A compact MAR keeping the layers ``kept`` (copies of their weights; the input model is untouched). Its loss
    equals the full model's under the layer mask that keeps ``kept``."""
    state, config = pruned_state_dict(model, kept)
    with torch.device("meta"):
        small = MAR(**config)
    small = small.to_empty(device=next(model.parameters()).device)
    small.load_state_dict(state, strict=True)
    small.pruned_from = sorted(int(i) for i in kept)
    return small.train(model.training)
