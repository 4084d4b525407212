"""The SD-VAE between ImageNet images and DiT's 32x32x4 latents, through diffusers' ``AutoencoderKL``, from local files.

DiT trains and samples in the latent space of Stable Diffusion's VAE (``stabilityai/sd-vae-ft-ema``, or ``-mse``):
an image in [-1, 1] is encoded to ``latent_dist.sample() * 0.18215`` and a latent decoded by ``decode(z / 0.18215)``
(``LATENT_SCALE``, as the official ``extract_features.py`` / ``sample.py``). Nothing is downloaded at run time: the VAE
is read from ``--vae`` or ``$TINYFUSION_VAE`` (or the profile's default, ``data/local/sd-vae-ft-ema``), either

* a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``; a folder with only the pickled ``.bin``
  is refused, the hub holds both), as the Hugging Face hub
  repository ``stabilityai/sd-vae-ft-ema`` holds it (``huggingface-cli download stabilityai/sd-vae-ft-ema
  --local-dir data/local/sd-vae-ft-ema`` on a machine with internet), or
* a single weights file (``.safetensors``, ``.pt``, ``.ckpt``, ``.bin``) in the diffusers layout or the original
  LDM layout (``stabilityai/sd-vae-ft-ema-original``'s ``vae-ft-ema-560000-ema-pruned.safetensors``); its config is
  the ``config.json`` beside it, else the SD-VAE's (``SD_VAE_CONFIG``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

VAE_ENV = "TINYFUSION_VAE"
LATENT_SCALE = 0.18215
# diffusers' AutoencoderKL config of stabilityai/sd-vae-ft-ema (and -mse): 8x downsampling, 4 latent channels
SD_VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                     block_out_channels=[128, 256, 512, 512], act_fn="silu", sample_size=256,
                     down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                     scaling_factor=LATENT_SCALE)
HOW_TO_GET = ("get it on a machine with internet: `huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir "
              "data/local/sd-vae-ft-ema` (the diffusers folder; or -mse), or the single file "
              "vae-ft-ema-560000-ema-pruned.safetensors of stabilityai/sd-vae-ft-ema-original; then pass --vae PATH or "
              f"set {VAE_ENV}=PATH")


class VAENotFoundError(FileNotFoundError):
    """No VAE where it was looked for; the message names the places and how to get the files."""


def resolve_vae(path=None, default=None):
    """The VAE's path: ``path`` (``--vae``), else ``$TINYFUSION_VAE``, else ``default`` (the profile's); an error
    naming each place looked at, and how to get the files, when none exists."""
    from tinyfusion.profiles import ROOT
    tried = []
    for label, value in (("--vae", path), (f"${VAE_ENV}", os.environ.get(VAE_ENV)), ("the profile's vae", default)):
        if not value:
            tried.append(f"{label}: not set")
            continue
        p = Path(value)
        p = p if p.is_absolute() or p.exists() else ROOT / p
        if p.exists():
            return p
        tried.append(f"{label}: {p} does not exist")
        if label != "the profile's vae":
            break  # never fall back silently from a path the user named
    raise VAENotFoundError("SD-VAE not found. Looked at:\n  - " + "\n  - ".join(tried) + "\n" + HOW_TO_GET)


def _read_state(path):
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    from tinyfusion.io import load_checkpoint
    state = load_checkpoint(path, weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_vae(path=None, default=None, device="cpu"):
    """diffusers ``AutoencoderKL`` in eval mode, no gradients, from a local folder or single file (see the module
    docstring); never downloads."""
    from diffusers import AutoencoderKL

    path = resolve_vae(path, default)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise VAENotFoundError(f"{path} is a folder without config.json: not a diffusers AutoencoderKL folder; "
                                   + HOW_TO_GET)
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True, use_safetensors=True)  # never a pickle
    else:
        beside = path.parent / "config.json"
        config = json.loads(beside.read_text()) if beside.is_file() else dict(SD_VAE_CONFIG)
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        vae = AutoencoderKL(**config)
        state = _read_state(path)
        if not any(k.startswith("decoder.up_blocks.") for k in state):  # the original LDM layout: convert it
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
            state = convert_ldm_vae_checkpoint(state, dict(vae.config))
        missing, unexpected = vae.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"{path} does not fit AutoencoderKL {dict(config)}: missing {missing[:6]}"
                             f"{' ...' if len(missing) > 6 else ''}; " + HOW_TO_GET)
    vae.source = str(path)
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def decode(vae, latents, scale=LATENT_SCALE):
    """Images in [-1, 1] (B, 3, H, W) from DiT latents (``vae.decode(z / scale)``, as the official sample.py)."""
    dtype = next(vae.parameters()).dtype
    x = vae.decode(latents.to(dtype) / scale).sample
    return x.float().clamp(-1, 1)


@torch.no_grad()
def encode(vae, images, generator=None, scale=LATENT_SCALE):
    """DiT latents ``latent_dist.sample() * scale`` of images in [-1, 1] (B, 3, H, W) (the official
    extract_features.py); ``generator`` seeds the posterior sample."""
    dtype = next(vae.parameters()).dtype
    dist = vae.encode(images.to(dtype)).latent_dist
    return (dist.sample(generator=generator) * scale).float()
