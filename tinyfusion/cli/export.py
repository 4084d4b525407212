"""Export a DiT checkpoint to diffusers: a DiTTransformer2DModel folder, or with --vae a whole DiTPipeline folder.

    python -m tinyfusion.cli.export --checkpoint results/imagenet/finetune/<run>/model.pt --out exported/tinydit-d14
    python -m tinyfusion.cli.export --checkpoint TinyDiT-D14.pt --model DiT-XL/2 --vae data/local/sd-vae-ft-ema \\
        --out exported/tinydit-d14-pipeline

In-process and the details (key mapping, diffusers' timestep spacing): ``tinyfusion.export``.
"""
from __future__ import annotations

import sys

from tinyfusion.cli.common import DIT, VAE, check_input, cli_main

DEFAULTS = dict(checkpoint="", out="", model="", vae="")
INPUTS = dict(checkpoint=("torch", DIT), vae=("vae", VAE))
OUTPUTS = dict(out="folder")
HELP = dict(checkpoint="DiT checkpoint to export (ours, or a raw official state dict with --model; required)",
            out="output folder (required)",
            model="registered config of a raw state dict (--model DiT-XL/2 for DiT-XL-2-256x256.pt, TinyDiT-D14/D7; "
                  "default: none, the checkpoint's stored config)",
            vae="SD-VAE folder or file: write a whole DiTPipeline folder (default: the transformer only)")


def run(**cfg):
    from tinyfusion.export import export

    cfg = {**DEFAULTS, **cfg}
    if not cfg["checkpoint"] or not cfg["out"]:
        raise ValueError("--checkpoint and --out are required")
    check_input("--checkpoint", cfg["checkpoint"], "torch", DIT)
    if cfg["vae"]:
        from tinyfusion.models.registry import objective_of
        if objective_of(cfg["checkpoint"], cfg["model"] or None) != "ddpm":
            raise ValueError(f"--checkpoint {cfg['checkpoint']} is a SiT (flow objective), but --vae writes a "
                             f"DiTPipeline, whose DDIM scheduler samples DDPM models only; export the transformer "
                             f"alone (leave out --vae) or pass a DiT checkpoint")
    return export(cfg["checkpoint"], cfg["out"], cfg["model"], cfg["vae"])


def main(argv=None, console=False):
    return cli_main(run, sys.modules[__name__], argv, console)


if __name__ == "__main__":
    main(console=True)
