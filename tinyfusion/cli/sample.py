"""Sample a class-balanced evaluation set from a DiT checkpoint into one .npz (rank 0 writes it).

    python -m tinyfusion.cli.sample --checkpoint results/cpu/finetune/<label>-<key>/model.pt --n 1000 --out s.npz
    torchrun --nproc_per_node=2 -m tinyfusion.cli.sample -- --checkpoint ... --n 1000 --out ...

Under torchrun put ``--`` before the flags (or use ``--config-json``): torchrun's own parser would otherwise
take ``--n`` for an abbreviation of its ``--nnodes``/``--nproc-per-node`` and stop with "ambiguous option".

Sample ``i`` has label ``i % num_classes``; batch ``b`` of ``--batch`` samples draws its noise from
``(seed, b)``, so the file is the same on any number of processes. The ``.npz`` holds ``images`` (uint8,
(N, H, W) for one channel, else (N, H, W, C)) and ``labels`` (int64). In-process: ``tinyfusion.sampling``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tinyfusion.cli.common import cli_main

SAMPLERS = ("ddim", "ddpm", "euler", "heun", "sde")  # the objectives' SAMPLERS (a test checks), without torch
DEFAULTS = dict(checkpoint="", n=1000, sampler="", steps=None, cfg_scale=1.5, seed=0, batch=250, out="",
                objective="", progress=True)
TYPES = dict(steps=int)
CHOICES = dict(sampler=SAMPLERS, objective=("ddpm", "flow"))
HELP = dict(checkpoint="DiT checkpoint (teacher, pruned or recovered; required)",
            n="number of samples (sample i has label i % num_classes)",
            cfg_scale="classifier-free guidance scale (1: none; 1.5 as the paper)",
            seed="seed of the noise (batch b draws from (seed, b))",
            batch="samples per batch; batch b draws its noise from (seed, b), so keep it to reproduce a file",
            progress="show a progress bar (rank 0)",
            sampler="ddim or ddpm (DDPM objective), euler, heun or sde (flow); default: the objective's (ddim, heun)",
            steps="sampling steps (default: the objective's: ddim 25, heun 13)",
            objective="ddpm or flow (default: the one the checkpoint's config names)",
            out="output .npz (default: <checkpoint folder>/samples_<sampler><steps>_cfg<scale>_n<n>_seed<seed>.npz)")


def run(**cfg):
    from tinyfusion import dist, validate
    from tinyfusion.profiles import check_budget
    from tinyfusion.sampling import sample_checkpoint

    cfg = {**DEFAULTS, **cfg}
    if not cfg["checkpoint"]:
        raise ValueError("--checkpoint is required: the DiT checkpoint to sample from")
    n = check_budget("n", cfg["n"])
    batch = check_budget("batch", cfg["batch"])
    ckpt = Path(cfg["checkpoint"])
    from tinyfusion.diffusion import create_objective
    from tinyfusion.models.dit import objective_of
    objective = create_objective(cfg["objective"] or objective_of(ckpt))
    cfg["sampler"], cfg["steps"], cfg["cfg_scale"] = validate.sampling(
        objective, cfg["sampler"] or objective.default_sampler,
        objective.default_steps if cfg["steps"] is None else cfg["steps"], cfg["cfg_scale"])
    out = Path(cfg["out"] or ckpt.parent / (f"samples_{cfg['sampler']}{cfg['steps']}_cfg{cfg['cfg_scale']}"
                                            f"_n{n}_seed{cfg['seed']}.npz"))
    if out.suffix != ".npz":
        raise ValueError(f"--out must end in .npz, got {out}")
    config = dict(checkpoint=ckpt, n=n, sampler=cfg["sampler"], steps=cfg["steps"], cfg_scale=cfg["cfg_scale"],
                  seed=cfg["seed"], batch=batch, **({"objective": cfg["objective"]} if cfg["objective"] else {}))
    res = sample_checkpoint(config, out, progress=cfg["progress"])
    return dict(out=str(out), **{k: str(v) if k == "checkpoint" else v for k, v in config.items()}, **res,
                world_size=dist.world_size())


def main(argv=None, console=False):
    return cli_main(run, sys.modules[__name__], argv, console)


if __name__ == "__main__":
    main(console=True)
