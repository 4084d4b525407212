"""Class-balanced sample sets for evaluation, in-process or split across torchrun ranks.

Sample ``i`` has label ``i % num_classes``. Samples are drawn in fixed batches of ``batch`` global indices;
batch ``b`` takes its noise from a generator seeded by ``(seed, b)`` and runs on rank ``b % world``, so the
set does not depend on the number of processes (only on ``seed`` and ``batch``). Rank 0 gathers the batches
and writes one ``.npz`` (``images`` uint8 (N, H, W) for one channel or (N, H, W, C), ``labels`` int64).

Latent-space models (the imagenet profile: DiT-XL/2 on SD-VAE latents) sample without clipping and are decoded by
the VAE (``tinyfusion.vae``); their ``.npz`` is in the ADM layout the ADM evaluator reads: ``arr_0`` uint8
(N, H, W, 3) and ``arr_1`` the labels.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from tinyfusion import dist
from tinyfusion.diffusion import objective_for
from tinyfusion import validate
from tinyfusion.io import check_writable, save_npz
from tinyfusion.progress import tqdm
from tinyfusion.training import step_seed


def balanced_labels(n, num_classes):
    """Labels ``0, 1, ..., num_classes - 1, 0, 1, ...`` for ``n`` samples."""
    return torch.arange(n) % num_classes


def to_uint8(x):
    """Samples in [-1, 1] of shape (B, C, H, W) -> uint8 numpy in the ADM ``.npz`` layout: (B, H, W) for C = 1,
    else (B, H, W, C). (``metrics.to_uint8`` is the evaluator's input form: a (B, 1, H, W) tensor.)"""
    x = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()
    x = x.permute(0, 2, 3, 1).numpy()
    return x[..., 0] if x.shape[-1] == 1 else x


@torch.no_grad()
def sample_batches(model, n, batch_ids, sampler=None, steps=None, cfg_scale=1.5, seed=0, batch=250, progress=False,
                   vae=None):
    """{b: uint8 images of global batch b} for the given batch indices (samples b*batch ... of ``n``); ``sampler``
    and ``steps`` default to the model's objective's (DDPM: ddim 25, flow: heun 13). With ``vae`` (a diffusers
    ``AutoencoderKL``) the model samples latents without clipping, which the VAE decodes to images."""
    dev = next(model.parameters()).device
    labels = balanced_labels(n, model.num_classes)
    objective = objective_for(model)
    sampler, steps, cfg_scale = validate.sampling(objective, sampler or objective.default_sampler,
                                                  steps or objective.default_steps, cfg_scale)
    was_training = model.training
    model.eval()
    parts = {}
    for b in tqdm(batch_ids, desc=f"sample {sampler}{steps}", disable=not progress, dynamic_ncols=True):
        g = torch.Generator(device=dev).manual_seed(step_seed(seed, b, salt=3))
        ys = labels[b * batch:(b + 1) * batch]
        x = objective.sample(model, ys, sampler=sampler, steps=steps, cfg_scale=cfg_scale, generator=g,
                             clip=vae is None)
        if vae is not None:
            from tinyfusion.vae import decode
            x = decode(vae, x)
        parts[b] = to_uint8(x)
    model.train(was_training)
    return parts


def sample_to_npz(model, n, path=None, sampler=None, steps=None, cfg_scale=1.5, seed=0, batch=250, progress=True,
                  vae=None):
    """Draw ``n`` class-balanced samples from ``model`` (on every rank under torchrun) and return
    ``{"images": uint8 array, "labels": int64 array, "wall_s", "images_per_s"}`` (rank 0 holds the gathered
    arrays; other ranks get None for them). With ``path``, rank 0 writes them atomically: keys ``images`` and
    ``labels``, or with ``vae`` (latents decoded to RGB) the ADM layout ``arr_0`` (uint8 NHWC) and ``arr_1``.
    """
    n, batch = validate.check_budget("n", n), validate.check_budget("batch", batch)
    if path is not None and dist.is_main():
        check_writable(Path(path).parent, "the samples' folder")  # before the sampling, not after it
    labels = balanced_labels(n, model.num_classes)
    n_batches = (n + batch - 1) // batch
    t0 = time.time()
    parts = sample_batches(model, n, range(dist.rank(), n_batches, dist.world_size()), sampler, steps, cfg_scale,
                           seed, batch, progress and dist.is_main(), vae=vae)
    gathered = dist.all_gather_object(parts)
    wall = time.time() - t0
    out = {"images": None, "labels": None, "wall_s": wall, "images_per_s": n / max(wall, 1e-9)}
    if dist.is_main():
        merged = {b: p for d in gathered for b, p in d.items()}
        missing = sorted(set(range(n_batches)) - set(merged))
        if missing:
            raise RuntimeError(f"sample batches {missing[:10]} were not produced by any rank")
        images = np.concatenate([merged[b] for b in range(n_batches)])
        out.update(images=images, labels=labels.numpy().astype(np.int64))
        if path is not None and vae is not None:
            save_npz(path, embed_digest=False, arr_0=images, arr_1=out["labels"])  # the ADM evaluator's layout, exactly
        elif path is not None:
            save_npz(path, images=images, labels=out["labels"])
    dist.barrier()
    return out


def sampling_defaults(prof, objective):
    """(sampler, steps) for a model trained with ``objective``: the profile's when its sampler is one of the
    objective's (a DiT on "cpu", a SiT on "cpu-sit"), else the objective's own defaults (a SiT scored on "cpu")."""
    if prof.sampler in objective.SAMPLERS:
        return prof.sampler, prof.sample_steps
    return objective.default_sampler, objective.default_steps


# --------------------------------------------------------------------------- one scoring run
def score_config(profile=None, *, checkpoint, n=0, sampler="", steps=0, cfg_scale=None, seed=0, batch=0,
                 evaluator=None, reference_limit=None, model="", vae=None, reference=None):
    """The resolved settings of scoring one checkpoint (sample ``n`` images, score them against the real test
    set): profile defaults for 0 / "" / None (the sampler: :func:`sampling_defaults` for the checkpoint's
    objective), the checkpoint and the evaluator as ``Path`` (hashed by the cache).

    Profiles with a VAE (imagenet) add what the paper's setting needs, and only they: ``vae`` (``--vae``,
    ``$TINYFUSION_VAE`` or the profile's), ``reference`` (the ADM reference batch), ``cfg_channels`` (the official
    guidance of the first 3 channels); ``evaluator`` is then the Inception weights file. ``model`` (a raw official
    state dict's registered config, default the profile's) is recorded only for a raw state dict."""
    from pathlib import Path

    from tinyfusion.diffusion import create_objective
    from tinyfusion.models.registry import model_name_for, objective_of
    from tinyfusion.profiles import check_budget, get_profile

    prof = get_profile(profile)
    model = model_name_for((checkpoint,), model, prof.model)
    objective = create_objective(objective_of(checkpoint, model or prof.model))
    default_sampler, default_steps = sampling_defaults(prof, objective)
    sampler, steps, cfg_scale = validate.sampling(objective, sampler or default_sampler, steps or default_steps,
                                                  prof.cfg_scale if cfg_scale is None else cfg_scale)
    extra = {}
    if prof.vae or vae:
        from tinyfusion.vae import resolve_vae
        extra.update(vae=resolve_vae(vae, prof.vae), reference=Path(prof.path(reference or prof.reference)))
    if prof.cfg_channels:
        extra.update(cfg_channels=int(prof.cfg_channels))
    if model:
        extra.update(model=model)
    if objective.name == "mar":  # the head clamps its x0 for pixel tokens (not latents): scores from before differ
        extra.update(head_x0_clip=not (prof.vae or vae))
    return dict(profile=prof.name, checkpoint=Path(checkpoint), n=check_budget("n", n or prof.eval_samples),
                sampler=sampler, steps=steps, cfg_scale=cfg_scale, seed=int(seed),
                batch=check_budget("batch", batch or prof.batch_eval),
                evaluator=Path(prof.path(evaluator or prof.evaluator)),
                reference_limit=reference_limit if reference_limit is not None else prof.eval_limit, **extra)


def sample_checkpoint(config, path, progress=True):
    """Draw the samples of a :func:`score_config` from its checkpoint into the ``.npz`` at ``path`` (every rank
    under torchrun; rank 0 writes)."""
    from tinyfusion.models.registry import load_model

    c = config
    model = load_model(c["checkpoint"], name=c.get("model"), objective=c.get("objective")).to(dist.device()).eval()
    model.cfg_channels = c.get("cfg_channels") or None  # the imagenet profile: the official guidance of 3 channels
    vae = None
    if c.get("vae"):
        from tinyfusion.vae import load_vae
        vae = load_vae(c["vae"], device=dist.device())
    res = sample_to_npz(model, c["n"], path, sampler=c["sampler"], steps=c["steps"], cfg_scale=c["cfg_scale"],
                        seed=c["seed"], batch=c["batch"], progress=progress, vae=vae)
    return {"depth": model.depth, "wall_s": round(res["wall_s"], 2), "images_per_s": round(res["images_per_s"], 1)}


def score_samples(config, path):
    """The metrics of the samples at ``path`` (``metrics.evaluate_npz`` with the config's evaluator and
    reference; with an ADM reference batch, ``adm.evaluate_npz``: Inception FID, sFID, IS, precision, recall)."""
    if config.get("reference"):
        from tinyfusion.adm import evaluate_npz as adm_evaluate_npz
        return {**adm_evaluate_npz(path, config["reference"], config["evaluator"], device=dist.device()),
                "class_accuracy": None, "samples": str(path)}  # no class accuracy in the ADM suite
    from tinyfusion.metrics import evaluate_npz
    return {**evaluate_npz(path, seed=0, evaluator_path=config["evaluator"],
                           reference_limit=config["reference_limit"]), "samples": str(path)}
