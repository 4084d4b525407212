"""Profiles: one table of sizes and budgets, one name passed to every notebook and entry point.

The paper's budgets are matched by the share of the teacher's pre-training samples they spend: the paper fine-tunes
100K steps of batch 256 after DiT-XL/2's 7M (1.4%) and 500K steps (7%), so ``finetune_steps`` is the step count at
which 1.4% of our teacher's pre-training samples have been seen (Tables 1, 3, 5 and 7) and ``finetune_long`` the 7%
point; ``curve_points`` are the step counts at which the recovery curves score a long fine-tune's EMA (the longest
at 4x the 7% point). ``ablation_finetune_steps`` stands for Table 4's 10K, ``prune_steps`` for learnable pruning's
one epoch.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
TRAIN_HERE = "pretrain"  # a profile's teacher that Study.teacher_path pre-trains into its cache (smoke rungs only)


@dataclass(frozen=True)
class Profile:
    name: str
    # data
    dataset: str = "fashion-mnist"
    data_limit: int | None = None          # training images used (None: all 60k)
    image_size: int = 16                   # Fashion-MNIST is resized to this (28 = full resolution)
    eval_limit: int | None = None          # real test images for the reference statistics (None: all 10k)
    # models
    model: str = "DiT-T28/4"               # registry name of the teacher's config
    teacher: str = "data/teacher_cpu.pt"
    evaluator: str = "data/evaluator.pt"   # imagenet: torch-fidelity's Inception weights file (the ADM suite)
    # the paper's own setting (imagenet): images <-> latents through the SD-VAE, ADM-style metrics
    vae: str = ""                          # SD-VAE folder or file ($TINYFUSION_VAE overrides); "": pixel-space models
    reference: str = ""                    # ADM reference batch (.npz, arr_0 uint8 NHWC); "": the Fashion-MNIST test set
    cfg_channels: int = 0                  # output channels CFG guides (0: all in_channels; official DiT/SiT: 3)
    # teacher pre-training (cli.pretrain)
    pretrain_steps: int = 12000             # the shipped cpu teacher: 25.6 epochs of 60k images
    pretrain_batch: int = 128
    pretrain_lr: float = 4e-4
    # calibration set shared by every pruning method (fixed noise and timesteps)
    calib_batches: int = 4
    calib_batch: int = 128
    random_candidates: int = 10000
    mask_study_limit: int = 1_000_000      # N:M masks scored by Study.mask_study (all 2^14 1:2 masks unless fewer)
    # learnable pruning (cli.prune_learn); the paper: one epoch of ImageNet
    prune_steps: int = 150
    prune_batch: int = 64
    prune_lr: float = 1e-4
    prune_ema_decay: float = 0.995         # EMA of the gate logits: horizon ~1/5 of the run, as the paper's 0.999 over ~5K steps
    # the gate budget of the robustness study (notebook 11): learnable pruning at the official *step* count
    robust_prune_steps: int = 10010        # one ImageNet epoch at the official global batch 128
    robust_prune_ema: float = 0.999        # the official decay: horizon 1,000 steps, 10% of that run, as there
    robust_prune_seeds: tuple = (0, 1, 2)  # pruning seeds at both budgets, so the decision's own variance is measured
    lora_rank: int = 1                     # the paper's LoRA trains ~0.9% (rank 8 on width 1152); rank 1 on width 64: 2.0%
    # recovery (cli.finetune); the paper: 100K steps (Tables 1/3/5/7), 10K steps (Table 4)
    finetune_steps: int = 336              # 1.4% of the teacher's 12,000 x 128 pre-training samples at batch 64
    finetune_long: int = 1680              # 7% of them: the paper's 500K
    # recovery curves: EMA scored here (long runs to the last). Session 7 timed the parts of the cpu run: about
    # 4 h 10 min from empty with an 84-step point as well; its 20 scorings (~14 min) were dropped to fit 4 h.
    # That point gave every claim-1/2 status the 336 point gives (the results of commit 79dae77).
    curve_points: tuple = (336, 840, 1680, 3360, 6720)
    ablation_finetune_steps: int = 120
    finetune_batch: int = 64
    finetune_lr: float = 2e-4
    kd_beta: tuple = (1e-2, 0.0)           # weight of the hidden-state loss L_Rep, falling linearly (Table 6; SiT: 2e-4)
    # evaluation: every row of every table uses these
    eval_samples: int = 2000               # every verdict row (500 gave a sampling sd of 0.13 FID, above the gaps called)
    sampler: str = "ddim"
    sample_steps: int = 25
    cfg_scale: float = 1.5
    seeds: tuple = (0, 1)
    nproc: int = 1
    workers: int = 1                       # independent cached steps run side by side, one thread each (CPU profiles)
    batch_eval: int = 250
    # scaling of the paper's budgets, for the notebooks' tables
    paper_finetune_steps: int = 100_000
    paper_ablation_steps: int = 10_000
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def finetune_scale(self):
        return self.finetune_steps / self.paper_finetune_steps

    def path(self, rel):
        """Absolute path of a profile-relative artefact (repo-relative strings resolve against the repo). A teacher
        that a Study pre-trains (``TRAIN_HERE``) has no path before it runs: refused, naming what to pass instead."""
        if rel == TRAIN_HERE:
            raise ValueError(f"profile {self.name!r} has no teacher file: a Study pre-trains it into its cache; pass "
                             f"that file (Study({self.name!r}).teacher_path) as --teacher, or use a profile whose "
                             f"teacher ships in data/")
        p = Path(rel)
        return p if p.is_absolute() else ROOT / p

    @property
    def results(self):
        """Folder for this profile's artefacts: ``results/<profile>/`` (``$TINYFUSION_RESULTS`` overrides the root)."""
        root = Path(os.environ.get("TINYFUSION_RESULTS", ROOT / "results"))
        return root / self.name

    def to_dict(self):
        return asdict(self)


PROFILES = {
    "smoke": Profile(
        name="smoke", data_limit=512, eval_limit=512,
        pretrain_steps=30, pretrain_batch=32,
        calib_batches=1, calib_batch=32, random_candidates=64, mask_study_limit=256,
        prune_steps=6, prune_batch=16, robust_prune_steps=12, robust_prune_ema=0.9, robust_prune_seeds=(0, 1),
        finetune_steps=4, finetune_long=6, curve_points=(4, 6), ablation_finetune_steps=4, finetune_batch=16,
        eval_samples=64, sample_steps=4, seeds=(0,), batch_eval=64,
        extra={"speed": {"batch": 8, "steps": 2, "repeats": 5, "warmup": 0, "ratios": (0, 0.5)}},  # 5 rounds: an sd
        notes="tests and nbval only: numbers are meaningless, every notebook runs in seconds"),
    "cpu": Profile(
        name="cpu", prune_steps=938, workers=2,
        extra={"speed": {"repeats": 10}},  # claim 7's error bars: 10 timing rounds (~3 s each), not speed_sweep's 3
        notes="2 CPU cores, whole reproduction within 4 hours; the shipped 28-layer width-64 teacher"),
    "gpu": Profile(
        name="gpu", model="DiT-W28/4", teacher="data/teacher_gpu.pt", image_size=28,
        pretrain_steps=60000, pretrain_batch=256,
        calib_batches=8, calib_batch=256, random_candidates=100000,
        prune_steps=2000, prune_batch=128, prune_ema_decay=0.995, lora_rank=2,
        finetune_steps=1680, finetune_long=8400, curve_points=(420, 1680, 4200, 8400, 33600),
        ablation_finetune_steps=1000, finetune_batch=128,
        eval_samples=10000, sample_steps=50, seeds=(0, 1), nproc=8, batch_eval=1000,
        notes="one or more GPUs, about an hour on one H100; a wider teacher trained by cli.pretrain"),
    "imagenet": Profile(
        name="imagenet", dataset="imagenet-latents", model="DiT-XL/2", teacher="data/local/DiT-XL-2-256x256.pt",
        evaluator="data/local/weights-inception-2015-12-05-6726825d.pth", vae="data/local/sd-vae-ft-ema",
        reference="data/local/VIRTUAL_imagenet256_labeled.npz", cfg_channels=3, pretrain_steps=0,
        calib_batches=32, calib_batch=256, random_candidates=100000,
        prune_steps=10010, prune_batch=128, prune_lr=1e-4, prune_ema_decay=0.999,  # one epoch at the official batch
        lora_rank=8, finetune_steps=100_000, finetune_long=500_000, curve_points=(100_000, 500_000),
        ablation_finetune_steps=10_000, finetune_batch=256,
        eval_samples=50000, sampler="ddpm", sample_steps=250, cfg_scale=1.5, nproc=8, batch_eval=125,
        notes="8 GPUs, the official DiT-XL/2 checkpoint and ImageNet-256 latents: the paper's schedule"),
}

# The SiT variant of each profile ("cpu-sit", ...): the same data and budgets on a teacher trained with the flow
# objective (paper Table 2). Sampling uses the flow ODE; the cpu and gpu profiles take Heun steps costing the
# DDIM rows' network calls (2 per step: 13 steps ~ DDIM 25), imagenet SiT's own SDE setting for FID 2.06.
SIT_VARIANTS = {
    "smoke": dict(model="SiT-T28/4", teacher="data/sit_teacher_cpu.pt", sampler="heun", sample_steps=2),
    "cpu": dict(model="SiT-T28/4", teacher="data/sit_teacher_cpu.pt", sampler="heun", sample_steps=13),
    "gpu": dict(model="SiT-W28/4", teacher="data/sit_teacher_gpu.pt", sampler="heun", sample_steps=25),
    "imagenet": dict(model="SiT-XL/2", teacher="data/local/SiT-XL-2-256x256.pt", sampler="sde", sample_steps=250),
}
for _fields in SIT_VARIANTS.values():
    _fields["kd_beta"] = (2e-4, 0.0)  # Table 6: beta 2e-4 for SiT (read as falling to 0, like DiT's 1e-2)
for _base, _fields in SIT_VARIANTS.items():
    _p = PROFILES[_base]
    PROFILES[f"{_base}-sit"] = replace(_p, name=f"{_base}-sit", **_fields,
                                       notes=f"{_p.notes}; SiT variant: the flow-objective teacher {_fields['model']}")


# The MAR variant of each cpu-scale profile ("cpu-mar", ...): the same data and budgets on the MAR-T32/4 teacher (16 +
# 16 layers of width 64, 16 tokens, a per-token diffusion head; paper Table 2's third family), trained by
# `python -m tinyfusion.cli.pretrain --profile cpu --model MAR-T32/4`. It samples with its own masked-autoregressive
# loop: 16 iterations for 16 tokens (one token each, as the released evaluation's 256 for 256), the head's 100 steps.
MAR_VARIANTS = {
    # smoke: fewer random candidates and samples than the DiT smoke profile (each MAR sample runs the head's 100 steps)
    "smoke": dict(model="MAR-T32/4", teacher="data/mar_teacher_cpu.pt", sampler="mar", sample_steps=4,
                  random_candidates=16, eval_samples=32, batch_eval=32),
    "cpu": dict(model="MAR-T32/4", teacher="data/mar_teacher_cpu.pt", sampler="mar", sample_steps=16),
}
for _base, _fields in MAR_VARIANTS.items():
    _p = PROFILES[_base]
    PROFILES[f"{_base}-mar"] = replace(_p, name=f"{_base}-mar", **_fields,
                                       notes=f"{_p.notes}; MAR variant: the masked autoregressive teacher {_fields['model']}")


# The scale ladder (issue 26, notebook 12): teachers of today's depth, data, steps, batch and learning rate with one
# thing changed, each trained by `python -m tinyfusion.cli.pretrain --profile <rung>` and shipped in data/; every
# budget derived from the teacher's pre-training samples is therefore the cpu profile's.
SCALE_RUNGS = {
    "cpu-w128": dict(model="DiT-T28/4-w128", teacher="data/teacher_cpu_w128.pt"),            # width 128, 16 tokens
    "cpu-t49": dict(model="DiT-T28/4-t49", teacher="data/teacher_cpu_t49.pt", image_size=28),  # 49 tokens, width 64
}
for _name, _fields in SCALE_RUNGS.items():
    PROFILES[_name] = replace(PROFILES["cpu"], name=_name, **_fields,
                              notes=f"{PROFILES['cpu'].notes}; scale rung: {_fields['model']}")
# Issue 26's optional third rung, not on SCALE_LADDER yet: today's teacher (config, data, batch, learning rate)
# pre-trained LONGER times as long (`python -m tinyfusion.cli.pretrain --profile cpu-x4`: 48,000 steps, about 4.8 h
# of both cores at today's 0.36 s/step). Every budget the profiles derive from the teacher's pre-training samples scales
# with them (the 100K and 500K points: 1,344 and 6,720 fine-tune steps); the gate budget, one epoch of the data, does
# not. It joins the ladder when its teacher ships (notebook 12 then needs the file).
LONGER = 4
_cpu = PROFILES["cpu"]
PROFILES["cpu-x4"] = replace(
    _cpu, name="cpu-x4", teacher="data/teacher_cpu_x4.pt", pretrain_steps=LONGER * _cpu.pretrain_steps,
    finetune_steps=LONGER * _cpu.finetune_steps, finetune_long=LONGER * _cpu.finetune_long,
    curve_points=tuple(LONGER * p for p in _cpu.curve_points),
    ablation_finetune_steps=LONGER * _cpu.ablation_finetune_steps,
    notes=f"{_cpu.notes}; scale rung: today's teacher pre-trained {LONGER}x longer")
# The smoke profile's rungs: the same configs, each teacher pre-trained by the Study itself (10 steps, seconds: a
# shipped 8.4M-parameter file for a test is not worth its size), smaller batches (16 to pre-train, 8 to prune and
# fine-tune) and fewer candidates and samples than smoke's, so notebook 12 stays short in make test.
_SMOKE_RUNG = dict(teacher=TRAIN_HERE, pretrain_steps=10, pretrain_batch=16, prune_batch=8, finetune_batch=8,
                   random_candidates=8, mask_study_limit=8, eval_samples=32, batch_eval=32)
for _name, _fields in SCALE_RUNGS.items():
    _smoke = _name.replace("cpu", "smoke", 1)
    PROFILES[_smoke] = replace(PROFILES["smoke"], name=_smoke, **{**_fields, **_SMOKE_RUNG},
                               notes=f"{PROFILES['smoke'].notes}; scale rung {_fields['model']}, its teacher "
                                     f"pre-trained here for {_SMOKE_RUNG['pretrain_steps']} steps")
# The ladder notebook 12 climbs for each base profile: the base teacher first, then one change per rung. The smoke
# ladder (nbval) takes the rung that changes the image size, the one whose shapes differ from the base's.
SCALE_LADDER = {"cpu": ("cpu", *SCALE_RUNGS), "smoke": ("smoke", "smoke-t49")}


# A second DiT teacher (the robustness study, notebook 11): the cpu teacher's config and budget, trained with seed 1
# (`python -m tinyfusion.cli.pretrain --profile cpu --seed 1`); "<profile>-seed1" runs every step on it.
SEED1_VARIANTS = {"smoke": dict(teacher="data/teacher_cpu_seed1.pt"), "cpu": dict(teacher="data/teacher_cpu_seed1.pt")}
for _base, _fields in SEED1_VARIANTS.items():
    _p = PROFILES[_base]
    PROFILES[f"{_base}-seed1"] = replace(_p, name=f"{_base}-seed1", **_fields,
                                         notes=f"{_p.notes}; a second DiT teacher, trained with seed 1")


def get_profile(name=None, **overrides) -> Profile:
    """Profile by name (default ``$TINYFUSION_PROFILE`` or "cpu"), with field overrides."""
    name = name or os.environ.get("TINYFUSION_PROFILE", "cpu")
    if isinstance(name, Profile):
        return replace(name, **overrides) if overrides else name
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)} "
                         f"(set by -p profile ... or TINYFUSION_PROFILE)")
    prof = PROFILES[name]
    for k, v in overrides.items():
        if not hasattr(prof, k):
            raise ValueError(f"profile has no field {k!r}")
    overrides = {k: tuple_field(k, v, getattr(prof, k)) if isinstance(getattr(prof, k), tuple) else v
                 for k, v in overrides.items()}
    return replace(prof, **overrides) if overrides else prof


def listed(name, value):
    """A notebook parameter that holds several values, as a list: a list, a JSON list, values separated by commas
    (papermill's ``-p seeds 0,1,2`` hands a string), or one value."""
    from tinyfusion.validate import json_value
    value = json_value(name, value)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def tuple_field(name, value, default):
    """A tuple field (``seeds``, ``curve_points``, ...) as a notebook parameter may pass it (:func:`listed`), as a
    tuple of the default's element type; anything else is refused naming the field."""
    value = listed(name, value)
    whole = all(isinstance(d, int) for d in default)
    out = []
    for i, v in enumerate(value):
        try:
            x = float(v)
            if whole and (x != int(x) or x < 0):
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{name}[{i}] must be a {'whole number >= 0' if whole else 'number'}, got {v!r} "
                             f"(in {name} = {value!r})") from None
        out.append(int(x) if whole else x)
    return tuple(out)


from tinyfusion.validate import check_budget  # noqa: E402,F401  (the one validation layer; re-exported)
