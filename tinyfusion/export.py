"""Export a DiT of any depth (the teacher, a pruned TinyDiT, a recovered one) to diffusers.

    python -m tinyfusion.cli.export --checkpoint results/imagenet/finetune/<run>/model.pt --out exported/tinydit-d14
    python -m tinyfusion.cli.export --checkpoint TinyDiT-D14.pt --model DiT-XL/2 --vae data/local/sd-vae-ft-ema --out ...

writes a ``DiTTransformer2DModel`` folder (``<out>/transformer`` with a VAE, else ``<out>``: ``config.json`` +
``diffusion_pytorch_model.safetensors``, loadable with ``DiTTransformer2DModel.from_pretrained``); with ``--vae`` also
a whole ``DiTPipeline`` folder (transformer, the VAE, a ``DDIMScheduler`` with DiT's linear betas, ``model_index.json``)
that ``DiTPipeline.from_pretrained(out)`` loads offline.

The key mapping is the one diffusers' own ``scripts/convert_dit_to_diffusers.py`` applies to the official checkpoint:
``x_embedder.proj`` -> ``pos_embed.proj``; the timestep MLP and label table are copied into every block's
``norm1.emb`` (diffusers keeps one per block); ``adaLN_modulation.1`` -> ``norm1.linear``; ``attn.qkv`` split into
``to_q``/``to_k``/``to_v``; ``attn.proj`` -> ``to_out.0``; ``mlp.fc1``/``fc2`` -> ``ff.net.0.proj``/``ff.net.2``;
``final_layer.adaLN_modulation.1`` -> ``proj_out_1``; ``final_layer.linear`` -> ``proj_out_2``. Both order the six
(two) adaLN chunks the same way, and diffusers computes the same sine-cosine ``pos_embed``.

One difference is diffusers' and not ours: its timestep embedding (``Timesteps(256, flip_sin_to_cos=True,
downscale_freq_shift=1)``) spaces the sinusoid frequencies as ``10000^(-i/127)`` where DiT uses ``10000^(-i/128)``, so
a converted DiT (diffusers' own ``facebook/DiT-XL-2-256`` too) sees slightly different timestep features. The export
therefore sets the transformer's ``time_proj`` modules to DiT's spacing when it runs in this process
(:func:`match_dit_timesteps`; ``load_transformer`` applies it on loading), which makes the outputs equal to float
tolerance (tests/test_export.py); a plain ``from_pretrained`` elsewhere gets diffusers' spacing.
"""
from __future__ import annotations

from pathlib import Path

import torch


def transformer_config(dit):
    """``DiTTransformer2DModel`` kwargs equal to a DiT's config (``dit.config``)."""
    c = dit.config
    heads, hidden = int(c["num_heads"]), int(c["hidden_size"])
    if c.get("mlp_ratio", 4.0) != 4.0:
        raise ValueError(f"diffusers' DiT block has an MLP ratio of 4; this model's is {c['mlp_ratio']}")
    return dict(num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=int(c["in_channels"]),
                out_channels=dit.out_channels, num_layers=dit.depth, sample_size=int(c["input_size"]),
                patch_size=int(c["patch_size"]), num_embeds_ada_norm=int(c["num_classes"]),
                activation_fn="gelu-approximate", attention_bias=True, norm_type="ada_norm_zero",
                norm_elementwise_affine=False, norm_eps=1e-6)


def convert_state_dict(state, depth):
    """Our (official) DiT state dict -> ``DiTTransformer2DModel``'s keys."""
    s = {k: v.detach().clone() for k, v in state.items()}
    out = {"pos_embed.proj.weight": s["x_embedder.proj.weight"], "pos_embed.proj.bias": s["x_embedder.proj.bias"],
           "proj_out_1.weight": s["final_layer.adaLN_modulation.1.weight"],
           "proj_out_1.bias": s["final_layer.adaLN_modulation.1.bias"],
           "proj_out_2.weight": s["final_layer.linear.weight"], "proj_out_2.bias": s["final_layer.linear.bias"]}
    for i in range(depth):
        b, d = f"blocks.{i}.", f"transformer_blocks.{i}."
        emb = d + "norm1.emb."
        out.update({emb + "timestep_embedder.linear_1.weight": s["t_embedder.mlp.0.weight"],
                    emb + "timestep_embedder.linear_1.bias": s["t_embedder.mlp.0.bias"],
                    emb + "timestep_embedder.linear_2.weight": s["t_embedder.mlp.2.weight"],
                    emb + "timestep_embedder.linear_2.bias": s["t_embedder.mlp.2.bias"],
                    emb + "class_embedder.embedding_table.weight": s["y_embedder.embedding_table.weight"],
                    d + "norm1.linear.weight": s[b + "adaLN_modulation.1.weight"],
                    d + "norm1.linear.bias": s[b + "adaLN_modulation.1.bias"],
                    d + "attn1.to_out.0.weight": s[b + "attn.proj.weight"],
                    d + "attn1.to_out.0.bias": s[b + "attn.proj.bias"],
                    d + "ff.net.0.proj.weight": s[b + "mlp.fc1.weight"], d + "ff.net.0.proj.bias": s[b + "mlp.fc1.bias"],
                    d + "ff.net.2.weight": s[b + "mlp.fc2.weight"], d + "ff.net.2.bias": s[b + "mlp.fc2.bias"]})
        for part, w in zip(("to_q", "to_k", "to_v"), s[b + "attn.qkv.weight"].chunk(3, dim=0)):
            out[d + f"attn1.{part}.weight"] = w.contiguous()
        for part, w in zip(("to_q", "to_k", "to_v"), s[b + "attn.qkv.bias"].chunk(3, dim=0)):
            out[d + f"attn1.{part}.bias"] = w.contiguous()
    return out


class _DiTTimesteps(torch.nn.Module):
    """DiT's sinusoidal timestep features (``TimestepEmbedder.timestep_embedding``) in place of diffusers' ``Timesteps``."""

    def forward(self, t):
        from tinyfusion.models.dit import TimestepEmbedder
        return TimestepEmbedder.timestep_embedding(t.reshape(-1), 256)


def match_dit_timesteps(transformer):
    """Give a ``DiTTransformer2DModel`` DiT's timestep-frequency spacing (see the module docstring), in place."""
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj = _DiTTimesteps()
    return transformer


def to_transformer(dit):
    """A ``DiTTransformer2DModel`` holding ``dit``'s weights (with DiT's timestep spacing, :func:`match_dit_timesteps`)."""
    from diffusers import DiTTransformer2DModel
    from tinyfusion.pruning.indices import strip_adapters
    from tinyfusion.training import unwrap

    dit = strip_adapters(unwrap(dit))
    transformer = DiTTransformer2DModel(**transformer_config(dit))
    state = convert_state_dict(dit.state_dict(), dit.depth)
    missing, unexpected = transformer.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("pos_embed.pos_embed")]  # a buffer diffusers computes itself
    if missing or unexpected:
        raise RuntimeError(f"export does not cover diffusers' DiT: missing {missing[:6]}, unexpected {unexpected[:6]}")
    return match_dit_timesteps(transformer.eval())


def load_transformer(folder):
    """``DiTTransformer2DModel.from_pretrained(folder)`` (local only) with DiT's timestep spacing."""
    from diffusers import DiTTransformer2DModel
    model = DiTTransformer2DModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)  # no pickle
    return match_dit_timesteps(model.eval())


def scheduler_for(dit):
    """A diffusers ``DDIMScheduler`` with DiT's 1000-step linear betas (1e-4 to 0.02), for ``DiTPipeline``."""
    from diffusers import DDIMScheduler
    return DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         clip_sample=False, set_alpha_to_one=True)


def export(checkpoint, out, model="", vae="", id2label=None):
    """Write ``checkpoint`` (ours or a raw official state dict with ``model``) as diffusers folders; returns the paths.

    Without ``vae``: ``out`` is a ``DiTTransformer2DModel`` folder. With it: ``out`` is a ``DiTPipeline`` folder
    (``transformer/``, ``vae/``, ``scheduler/``, ``model_index.json``)."""
    from tinyfusion.models import load_dit

    dit = load_dit(checkpoint, name=model or None)
    transformer = to_transformer(dit)
    out = Path(out)
    if not vae:
        transformer.save_pretrained(str(out))
        return {"transformer": str(out), "depth": dit.depth, "config": transformer_config(dit)}
    from diffusers import DiTPipeline

    from tinyfusion.vae import load_vae
    labels = id2label or {i: str(i) for i in range(dit.num_classes)}
    pipe = DiTPipeline(transformer=transformer, vae=load_vae(vae), scheduler=scheduler_for(dit), id2label=labels)
    pipe.save_pretrained(str(out))
    return {"pipeline": str(out), "transformer": str(out / "transformer"), "depth": dit.depth,
            "config": transformer_config(dit)}
