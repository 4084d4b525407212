"""Score samples with the project's evaluator: prints one JSON object (FID, IS, sFID, precision, recall, KID, ...).

    python -m tinyfusion.cli.evaluate --npz samples.npz
    python -m tinyfusion.cli.evaluate --checkpoint model.pt --n 1000 --sampler ddim --steps 25 --cfg-scale 1.5

``--npz``: an ``.npz`` with ``images`` (uint8 (N, 28, 28)) and ``labels`` (as ``tinyfusion.cli.sample`` writes).
``--checkpoint``: a DiT checkpoint (ours, ``{"ema"/"model": state_dict, "config": ...}``, or an official raw state
dict, built as the profile's model); ``--n`` class-balanced samples (label ``i % 10``) are drawn with
``tinyfusion.sampling`` (under torchrun, split across ranks; the set does not depend on the number of ranks)
and scored against the Fashion-MNIST test set. Unset sampling flags take the profile's values.
``--save-npz`` keeps the drawn samples. Progress bars go to stderr, the JSON to stdout (rank 0).
Under torchrun put ``--`` before the flags (torchrun's parser would take ``--n`` for one of its own).
In-process: ``tinyfusion.metrics.evaluate_samples`` / ``evaluate_npz``.

With the imagenet profile (or ``--reference``) the samples are scored as the paper scores them, by the ADM evaluator's
statistics (``tinyfusion.adm``: FID, sFID, IS, precision, recall) through torch-fidelity's TF-compatible Inception
(``--evaluator``: its weights file) against the ADM reference batch (``--reference``), both local files:

    python -m tinyfusion.cli.evaluate --profile imagenet --npz samples.npz
    torchrun --standalone --nproc_per_node=8 -m tinyfusion.cli.evaluate -- --profile imagenet \
        --checkpoint model.pt --model DiT-XL/2 --n 50000 --save-npz samples.npz
"""
from __future__ import annotations

import json
import sys
import time

from tinyfusion.cli.common import DIT, EVALUATOR, REFERENCE, SAMPLES, VAE, check_input, cli_main
from tinyfusion.profiles import PROFILES

SAMPLERS = ("ddim", "ddpm", "euler", "heun", "sde", "mar")  # the objectives' SAMPLERS (a test checks), without torch
DEFAULTS = dict(profile="cpu", npz="", checkpoint="", n=None, sampler="", steps=None, cfg_scale=None, seed=0,
                batch=None, evaluator="", reference_limit=None, kid_subset_size=None, save_npz="", objective="", progress=True,
                model="", vae="", reference="")
TYPES = dict(n=int, steps=int, cfg_scale=float, batch=int, reference_limit=int, kid_subset_size=int)
INPUTS = dict(npz=("npz", SAMPLES), checkpoint=("torch", DIT), evaluator=("torch", EVALUATOR),
              reference=("npz", REFERENCE), vae=("vae", VAE))
OUTPUTS = dict(save_npz=(".npz",))
CHOICES = dict(profile=tuple(PROFILES), sampler=SAMPLERS, objective=("ddpm", "flow"))
HELP = dict(profile="profile whose evaluator, sampling settings and reference set are used",
            npz="samples to score (.npz with images, labels); give this or --checkpoint",
            checkpoint="DiT, SiT or MAR checkpoint to sample from and score; give this or --npz",
            seed="seed of the sampling noise and of the KID subsets",
            batch="samples per batch (default: the profile's batch_eval)",
            progress="show a progress bar (rank 0)",
            n="samples to draw (default: the profile's eval_samples)",
            sampler="ddim or ddpm (DDPM objective); euler, heun or sde (flow); mar (a MAR). Default: the profile's when it fits "
                    "the checkpoint's objective, else the objective's (ddim, heun)",
            steps="sampling steps (default: as --sampler)",
            objective="ddpm or flow (default: the one the checkpoint's config names, else the profile model's)",
            cfg_scale="classifier-free guidance scale (default: the profile's)",
            evaluator="evaluator checkpoint (default: the profile's, data/evaluator.pt)",
            reference_limit="real test images used as reference (default: the profile's eval_limit, else all 10k)",
            kid_subset_size="KID subset size (default: min(1000, n, n_ref))",
            save_npz="also write the drawn samples to this .npz (default: not kept; ADM scoring: "
                     "<profile results>/samples/<checkpoint name>-<key>.npz)",
            model="registered config that builds a raw state dict (--model DiT-XL/2 for the official "
                  "DiT-XL-2-256x256.pt, TinyDiT-D14/D7; depth read from its keys; default: the profile's model)",
            vae="SD-VAE folder or file for latent models (default: $TINYFUSION_VAE, else the profile's)",
            reference="ADM reference batch .npz: score with the ADM statistics and Inception (default: the "
                      "profile's; imagenet: data/local/VIRTUAL_imagenet256_labeled.npz)")


def run(**cfg):
    from tinyfusion import dist, metrics, validate
    from tinyfusion.profiles import get_profile

    cfg = {**DEFAULTS, **cfg}

    prof = get_profile(cfg["profile"])
    if bool(cfg["npz"]) == bool(cfg["checkpoint"]):
        raise ValueError("give exactly one of --npz (samples to score) or --checkpoint (a DiT to sample from)")
    if cfg["reference"] or prof.reference:
        return run_adm(prof, cfg)
    if prof.dataset != "fashion-mnist":
        raise ValueError(f"profile {prof.name!r} uses {prof.dataset}: its samples are scored with the official ADM "
                         f"evaluator suite on 50K samples, not with this Fashion-MNIST evaluator")
    evaluator = prof.path(cfg["evaluator"] or prof.evaluator)
    ref_limit = validate.given_count("reference_limit", cfg["reference_limit"]) or prof.eval_limit or None
    kid_subset = validate.given_count("kid_subset_size", cfg["kid_subset_size"]) or None
    result = dict(profile=prof.name)
    t0 = time.time()
    if cfg["npz"]:
        from tinyfusion.metrics import sample_arrays
        check_input("--npz", cfg["npz"], "npz", SAMPLES)
        z = sample_arrays(cfg["npz"])
        images, labels = z["images"], z.get("labels")
        result.update(npz=str(cfg["npz"]))
    else:
        from tinyfusion.diffusion import objective_for
        from tinyfusion.models.registry import load_model
        from tinyfusion.sampling import sample_to_npz, sampling_defaults
        n = validate.given_count("n", cfg["n"]) or prof.eval_samples
        check_input("--checkpoint", cfg["checkpoint"], "torch", DIT)
        model = load_model(cfg["checkpoint"], name=cfg["model"] or None, default_name=prof.model,
                           objective=cfg["objective"] or None)
        model = model.to(dist.device()).eval()
        default_sampler, default_steps = sampling_defaults(prof, objective_for(model))
        sampler, steps, cfg_scale = validate.sampling(
            objective_for(model), cfg["sampler"] or default_sampler, validate.given_count("steps", cfg["steps"])
            or default_steps, prof.cfg_scale if cfg["cfg_scale"] is None else cfg["cfg_scale"])
        batch = validate.given_count("batch", cfg["batch"]) or prof.batch_eval
        res = sample_to_npz(model, n, cfg["save_npz"] or None, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                            seed=cfg["seed"], batch=batch, progress=cfg["progress"])
        images, labels = res["images"], res["labels"]
        result.update(checkpoint=str(cfg["checkpoint"]), depth=model.depth, objective=model.objective,
                      sampler=sampler, steps=steps,
                      cfg_scale=cfg_scale, seed=cfg["seed"], sample_wall_s=round(res["wall_s"], 2),
                      images_per_s=round(res["images_per_s"], 1))
        if cfg["save_npz"]:
            result.update(npz=str(cfg["save_npz"]))
    if not dist.is_main():
        dist.barrier()
        return result
    t1 = time.time()
    scores = metrics.evaluate_samples(images, labels, evaluator_path=evaluator, reference_limit=ref_limit,
                                      kid_subset_size=kid_subset, seed=cfg["seed"])
    result.update(scores, evaluator=str(evaluator), eval_wall_s=round(time.time() - t1, 2),
                  wall_s=round(time.time() - t0, 2))
    print(json.dumps(result))
    sys.stdout.flush()
    dist.barrier()
    return result


def run_adm(prof, cfg):
    """Score with the ADM statistics (``tinyfusion.adm``): the ``--npz`` given, or ``--n`` samples of ``--checkpoint``
    drawn as ``tinyfusion.cli.sample`` draws them (every rank its share; VAE-decoded; ADM layout)."""
    from pathlib import Path

    from tinyfusion import adm, dist, validate
    from tinyfusion.io import config_key
    from tinyfusion.sampling import sample_checkpoint, score_config

    evaluator = adm.inception_path(prof.path(cfg["evaluator"] or prof.evaluator))
    reference = adm.reference_path(prof.path(cfg["reference"] or prof.reference))
    result, t0 = dict(profile=prof.name, evaluator=str(evaluator), reference=str(reference)), time.time()
    npz = cfg["npz"]
    if cfg["checkpoint"]:
        config = score_config(prof, checkpoint=cfg["checkpoint"], n=validate.given_count("n", cfg["n"]),
                              sampler=cfg["sampler"], steps=validate.given_count("steps", cfg["steps"]),
                              cfg_scale=cfg["cfg_scale"], seed=cfg["seed"],
                              batch=validate.given_count("batch", cfg["batch"]), evaluator=evaluator,
                              model=cfg["model"], vae=cfg["vae"] or None, reference=reference)
        if cfg["objective"]:
            config["objective"] = cfg["objective"]
        npz = cfg["save_npz"] or prof.results / "samples" / f"{Path(cfg['checkpoint']).stem}-{config_key(config)}.npz"
        result.update(sample_checkpoint(config, npz, progress=cfg["progress"]),
                      **{k: str(v) if isinstance(v, Path) else v for k, v in config.items()})
    result["npz"] = str(npz)
    if dist.is_main():
        t1 = time.time()
        result.update(adm.evaluate_npz(npz, reference, evaluator, device=dist.device()),
                      eval_wall_s=round(time.time() - t1, 2), wall_s=round(time.time() - t0, 2))
        print(json.dumps(result))
        sys.stdout.flush()
    dist.barrier()
    return result


def main(argv=None, console=False):
    return cli_main(run, sys.modules[__name__], argv, console)


if __name__ == "__main__":
    main(console=True)
