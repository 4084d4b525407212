"""Sample a class-balanced evaluation set from a DiT, SiT or MAR checkpoint into one .npz (rank 0 writes it).

    python -m tinyfusion.cli.sample --checkpoint results/cpu/finetune/<label>-<key>/model.pt --n 1000 --out s.npz
    torchrun --nproc_per_node=2 -m tinyfusion.cli.sample -- --checkpoint ... --n 1000 --out ...

Under torchrun put ``--`` before the flags (or use ``--config-json``): torchrun's own parser would otherwise
take ``--n`` for an abbreviation of its ``--nnodes``/``--nproc-per-node`` and stop with "ambiguous option".

Sample ``i`` has label ``i % num_classes``; batch ``b`` of ``--batch`` samples draws its noise from
``(seed, b)``, so the file is the same on any number of processes. The ``.npz`` holds ``images`` (uint8,
(N, H, W) for one channel, else (N, H, W, C)) and ``labels`` (int64). In-process: ``tinyfusion.sampling``.

The paper's setting (the official DiT-XL/2 or a TinyDiT pruned from it, 50K samples for FID-50K):

    torchrun --standalone --nproc_per_node=8 -m tinyfusion.cli.sample -- --profile imagenet \
        --checkpoint data/local/DiT-XL-2-256x256.pt --model DiT-XL/2 --n 50000 --out samples.npz

With a profile that has a VAE (imagenet) or ``--vae``, the model samples latents without clipping, the SD-VAE
(``--vae``, ``$TINYFUSION_VAE`` or the profile's) decodes them, and the ``.npz`` is in the ADM layout (``arr_0``
uint8 (N, 256, 256, 3), ``arr_1`` labels); guidance acts on the profile's ``cfg_channels`` (imagenet: the first 3,
as the official ``forward_with_cfg``), and the sampler is the profile's (imagenet: DDPM 250).
"""
from __future__ import annotations

import sys
from pathlib import Path

from tinyfusion.cli.common import DIT, VAE, check_input, cli_main
from tinyfusion.profiles import PROFILES

SAMPLERS = ("ddim", "ddpm", "euler", "heun", "sde", "mar")  # the objectives' SAMPLERS (a test checks), without torch
DEFAULTS = dict(checkpoint="", n=1000, sampler="", steps=None, cfg_scale=1.5, seed=0, batch=250, out="",
                objective="", progress=True, profile="", model="", vae="", cfg_channels=None)
TYPES = dict(steps=int, cfg_channels=int)
INPUTS = dict(checkpoint=("torch", DIT), vae=("vae", VAE))
OUTPUTS = dict(out=(".npz",))
CHOICES = dict(sampler=SAMPLERS, objective=("ddpm", "flow"), profile=("",) + tuple(PROFILES))
HELP = dict(checkpoint="DiT, SiT or MAR checkpoint (teacher, pruned or recovered; ours or a raw official state dict; required)",
            n="number of samples (sample i has label i % num_classes)",
            cfg_scale="classifier-free guidance scale (1: none; 1.5 as the paper)",
            seed="seed of the noise (batch b draws from (seed, b))",
            batch="samples per batch; batch b draws its noise from (seed, b), so keep it to reproduce a file",
            progress="show a progress bar (rank 0)",
            sampler="ddim or ddpm (DDPM objective), euler, heun or sde (flow), mar (a MAR's masked-autoregressive "
                    "loop); default: the profile's when it fits the objective, else the objective's (ddim, heun, mar)",
            steps="sampling steps; for mar, masked-autoregressive iterations (at most the tokens) (default: as "
                  "--sampler: the profile's, else ddim 25, heun 13, mar 16)",
            objective="ddpm or flow (default: the one the checkpoint's config names; a MAR samples with its own)",
            profile="profile whose sampler, model, VAE and guidance channels are the defaults (imagenet: DDPM 250, "
                    "DiT-XL/2, the SD-VAE, guidance on 3 channels; default: none, the checkpoint's own)",
            model="registered config that builds a raw state dict (--model DiT-XL/2 for the official "
                  "DiT-XL-2-256x256.pt or TinyDiT-D14/D7; depth read from its keys; default: the profile's model)",
            vae="SD-VAE folder or file that decodes latent samples (default: $TINYFUSION_VAE, else the profile's; "
                "none for pixel-space models)",
            cfg_channels="output channels guidance acts on (default: the profile's; 0: all in_channels)",
            out="output .npz (default: <checkpoint folder>/samples_<sampler><steps>_cfg<scale>_n<n>_seed<seed>.npz)")


def run(**cfg):
    from tinyfusion import dist, validate
    from tinyfusion.diffusion import create_objective
    from tinyfusion.models.registry import model_name_for, objective_of
    from tinyfusion.profiles import check_budget, get_profile
    from tinyfusion.sampling import sample_checkpoint, sampling_defaults

    cfg = {**DEFAULTS, **cfg}
    if not cfg["checkpoint"]:
        raise ValueError("--checkpoint is required: the DiT, SiT or MAR checkpoint to sample from")
    n = check_budget("n", cfg["n"])
    batch = check_budget("batch", cfg["batch"])
    check_input("--checkpoint", cfg["checkpoint"], "torch", DIT)
    ckpt = Path(cfg["checkpoint"])
    prof = get_profile(cfg["profile"]) if cfg["profile"] else None
    model = model_name_for((ckpt,), cfg["model"], prof.model if prof else None)
    objective = create_objective(cfg["objective"] or objective_of(ckpt, model))
    default_sampler, default_steps = (sampling_defaults(prof, objective) if prof else
                                      (objective.default_sampler, objective.default_steps))
    cfg["sampler"], cfg["steps"], cfg["cfg_scale"] = validate.sampling(
        objective, cfg["sampler"] or default_sampler,
        default_steps if cfg["steps"] is None else cfg["steps"], cfg["cfg_scale"])
    out = Path(cfg["out"] or ckpt.parent / (f"samples_{cfg['sampler']}{cfg['steps']}_cfg{cfg['cfg_scale']}"
                                            f"_n{n}_seed{cfg['seed']}.npz"))
    if out.suffix != ".npz":
        raise ValueError(f"--out must end in .npz, got {out}")
    extra = {}
    if cfg["vae"] or (prof and prof.vae):
        from tinyfusion.vae import resolve_vae
        extra["vae"] = resolve_vae(cfg["vae"], prof.vae if prof else None)
    cfg_channels = cfg["cfg_channels"] if cfg["cfg_channels"] is not None else (prof.cfg_channels if prof else 0)
    if cfg_channels:
        extra["cfg_channels"] = validate.given_count("cfg_channels", cfg_channels)
    if model:
        extra["model"] = model
    config = dict(checkpoint=ckpt, n=n, sampler=cfg["sampler"], steps=cfg["steps"], cfg_scale=cfg["cfg_scale"],
                  seed=cfg["seed"], batch=batch, **({"objective": cfg["objective"]} if cfg["objective"] else {}),
                  **extra)
    res = sample_checkpoint(config, out, progress=cfg["progress"])
    return dict(out=str(out), **{k: str(v) if isinstance(v, Path) else v for k, v in config.items()}, **res,
                world_size=dist.world_size())


def main(argv=None, console=False):
    return cli_main(run, sys.modules[__name__], argv, console)


if __name__ == "__main__":
    main(console=True)
