"""The replication's steps, cached per profile: what the numbered notebooks call.

``Study(profile)`` owns ``results/<profile>/``. Each expensive step (random-candidate study, baselines,
learnable pruning, surgery, fine-tuning, sampling + scoring) resolves its full config with the library's own
resolver (``learnable_config``, ``recovery_config``, ``score_config``, ...), and ``tinyfusion.cache`` keys a
folder by it (``<kind>/<name>-<hash>``, ``run.json`` written last): a rerun with the same config reuses it, any
changed setting or input file recomputes into a new folder, and a half-finished step resumes from its own
checkpoint. Steps run in this process by calling the library, or under torchrun through the entry point of
the same name (``tinyfusion.launch``) when ``profile.nproc > 1``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tinyfusion import cache, paper
from tinyfusion.data import data_identity, load_dataset
from tinyfusion.io import save_json
from tinyfusion.models import prunable
from tinyfusion.models.registry import load_model
from tinyfusion.profiles import TRAIN_HERE, get_profile

BASELINES = ("shortgpt", "flux-lite", "sensitivity", "oracle")
RANDOM_PICKS = ("min-loss random", "median-loss random", "max-loss random")
RANDOM_STUDY_SAMPLES = 32  # calibration samples each random candidate is scored on (the picks are rescored on all)
PICK_POOL = 64             # candidates around each pick rescored on the whole calibration set
REFERENCES = ("best-calibration 1:2", "random 1:2")  # references inside learnable's own rule
SCORE_METRICS = ("fid", "is", "sfid", "precision", "recall", "class_accuracy")  # what a run's row keeps of its score


class Study:
    """Cached replication steps for one profile (``"smoke"``, ``"cpu"``, ``"gpu"``, ``"imagenet"``)."""

    def __init__(self, profile=None, recompute=False, **overrides):
        """``overrides``: profile fields to change (None keeps the profile's): a notebook's papermill parameters,
        e.g. ``Study("cpu", finetune_steps=1000)``; every changed setting reaches the cache keys of the steps."""
        overrides = {k: v for k, v in overrides.items() if v is not None}  # get_profile makes lists tuples
        self.prof = get_profile(profile, **overrides)
        self.root = self.prof.results
        self.recompute = recompute
        for sub in ("figures", "tables", "verdicts"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._teacher = self._data = self._calib = self._teacher_file = None

    # ------------------------------------------------------------------ inputs
    @property
    def teacher_path(self):
        """The teacher's file: the profile's (shipped in ``data/``), or, for a profile whose teacher is
        ``profiles.TRAIN_HERE`` (the smoke rungs of the scale ladder), one this study pre-trains into its cache with
        the profile's pre-training budget (``cli.pretrain``; cached by the resolved settings like every step)."""
        if self.prof.teacher != TRAIN_HERE:
            return self.prof.path(self.prof.teacher)
        if self._teacher_file is None:
            from tinyfusion.cli import pretrain
            p = self.prof
            # what cli.pretrain trains with: its defaults, this study's budget, and the data of the profile it names
            # (the named profile's, which a Study override of the data does not reach)
            train = {**pretrain.DEFAULTS, "profile": p.name, "model": p.model, "steps": p.pretrain_steps,
                     "batch_size": p.pretrain_batch, "lr": p.pretrain_lr, "log_every": max(1, p.pretrain_steps // 10)}
            config = {k: v for k, v in train.items() if k not in ("out", "ckpt_every", "log_every", "stop_after")}
            config["data"] = data_identity(get_profile(p.name))
            result = self.cached("pretrain", "teacher", config,
                                 lambda folder: pretrain.run(lock=False, **{**train, "out": str(folder)}))
            self._teacher_file = Path(result["teacher"])
        return self._teacher_file

    def teacher(self):
        """The profile's teacher (EMA weights), in eval mode: a DiT/SiT or a MAR, built by the class its checkpoint
        names (``models.registry.load_model``); every step reaches its layers through ``models.prunable``."""
        if self._teacher is None:
            if not self.teacher_path.exists():
                raise FileNotFoundError(
                    f"teacher {self.teacher_path} is missing for profile {self.prof.name!r}; train it with "
                    f"`python -m tinyfusion.cli.pretrain --profile {self.prof.name}` (or torchrun ... -m "
                    f"tinyfusion.cli.pretrain) and copy <out>/teacher.pt there")
            checksum = Path(str(self.teacher_path) + ".sha256")
            if checksum.exists():  # the shipped teachers carry one; a damaged or swapped file is refused
                from tinyfusion.io import verify_sha256
                verify_sha256(self.teacher_path, checksum)
            self._teacher = load_model(self.teacher_path, name=self.prof.model).eval()
        return self._teacher

    @property
    def depth(self):
        """How many prunable layers the teacher has (``prunable.depth``: DiT/SiT blocks, MAR encoder + decoder)."""
        return prunable.depth(self.teacher())

    @property
    def objective(self):
        """The teacher's training objective (sampling, losses): ``objective.sample(model, labels, ...)``."""
        from tinyfusion.diffusion import objective_for
        return objective_for(self.teacher())

    def data(self):
        """Training images and labels of the profile, as two tensors."""
        if self._data is None:
            self._data = load_dataset(self.prof).tensors()
        return self._data

    def _calib_config(self):
        return {"data": data_identity(self.prof), "batches": self.prof.calib_batches, "batch": self.prof.calib_batch,
                "seed": 0}

    def calib(self):
        """The calibration set every pruning method is scored on (fixed images, noise and times of the teacher's
        objective)."""
        if self._calib is None:
            from tinyfusion.pruning.scores import calibration_set
            images, labels = self.data()
            c = self._calib_config()  # the settings the cache keys of every step on this set record
            self._calib = calibration_set(images, labels, c["batches"], c["batch"], seed=c["seed"],
                                          objective=self.objective)
        return self._calib

    # ------------------------------------------------------------------ caching
    def cached(self, kind, name, config, compute):
        """``compute(folder)``'s result for the resolved ``config``, from ``results/<profile>/<kind>/`` when a
        finished run of the same config is there (see ``tinyfusion.cache``)."""
        config = {"profile": self.prof.name, **config}
        return cache.cached(cache.folder(self.root, kind, name, config), config, compute, self.recompute)

    def _step(self, kind, name, config, compute, entry, flags):
        """A step that may need several processes: the library's ``compute`` in this process, or, when the
        profile asks for ``nproc > 1``, the entry point ``tinyfusion.cli.<entry>`` under torchrun with ``flags``
        (the resolved settings), which resolves the same config and caches into the same folder."""
        if self.prof.nproc <= 1:
            return self.cached(kind, name, config, compute)
        from tinyfusion.launch import launch
        config = {"profile": self.prof.name, **config}
        out = cache.folder(self.root, kind, name, config)
        if not self.recompute and cache.done(out, config):
            cache.log_step("reused", out)
            return cache.read_record(out)["result"]
        from tinyfusion.io import check_writable
        check_writable(out)  # before torchrun starts, not after the run
        result = launch(f"tinyfusion.cli.{entry}", nproc=self.prof.nproc, **cache.jsonable(flags), out=str(out),
                        recompute=self.recompute)
        if not cache.done(out, config):
            raise RuntimeError(f"tinyfusion.cli.{entry} under torchrun resolved another config than this Study "
                               f"({out / cache.RECORD}): a profile changed in Python (get_profile(..., field=...)) "
                               f"does not reach the entry point; change the profile table or run with nproc=1")
        return result

    # ------------------------------------------------------------------ pruning
    def random_study(self):
        """Calibration losses of ``profile.random_candidates`` random 50% prunes on 32 samples (Figure 5), and the
        min/median/max-loss picks of Table 3, picked again on the whole calibration set (``rescore_picks``)."""
        from tinyfusion.pruning.random import random_candidate_study, rescore_picks
        keep = self.depth // 2

        def compute(folder):
            r = random_candidate_study(self.teacher(), self.calib(), self.prof.random_candidates, keep,
                                       n_samples=RANDOM_STUDY_SAMPLES, objective=self.objective)
            np.save(folder / "losses.npy", np.asarray(r["losses"], dtype=np.float64))
            picks = rescore_picks(self.teacher(), self.calib(), r["masks"], r["losses"], PICK_POOL, self.objective,
                                  subset_samples=RANDOM_STUDY_SAMPLES)
            return {"n": len(r["losses"]), "rate": r["rate"], "n_samples": r.get("n_samples"),
                    "min": float(np.min(r["losses"])), "max": float(np.max(r["losses"])),
                    "median": float(np.median(r["losses"])), "losses": "losses.npy",
                    "picks": {f"{k}-loss random": v for k, v in picks.items()}}
        cfg = {"n": self.prof.random_candidates, "keep": keep, "seed": 0, "n_samples": RANDOM_STUDY_SAMPLES,
               "pick_pool": PICK_POOL, "teacher": self.teacher_path, "calib": self._calib_config()}
        res = self.cached("random_study", "r50", cfg, compute)
        folder = cache.folder(self.root, "random_study", "r50", {"profile": self.prof.name, **cfg})
        return {**res, "losses": np.load(folder / res["losses"])}

    def mask_study(self, groups="1:2"):
        """Every N:M mask of the teacher (1:2: 2^14) scored on 32 calibration samples, the lowest ``PICK_POOL``
        rescored on the whole set: the best-calibration mask inside the rule, a uniformly random one (seed 0), and
        the losses (``losses``, in ``random.all_masks`` order) for the per-block costs of notebook 02."""
        import torch

        from tinyfusion.pruning.random import all_masks, candidate_losses, rescore_picks
        depth = self.depth
        masks = all_masks(depth, groups)
        if len(masks) > self.prof.mask_study_limit:  # the smoke profile scores a random subset
            masks = masks[torch.randperm(len(masks), generator=torch.Generator().manual_seed(0))[
                :self.prof.mask_study_limit]]

        def compute(folder):
            losses = candidate_losses(self.teacher(), self.calib(), masks, objective=self.objective, progress=True,
                                      n_samples=RANDOM_STUDY_SAMPLES)
            np.save(folder / "losses.npy", losses)
            best = rescore_picks(self.teacher(), self.calib(), masks, losses, PICK_POOL, self.objective,
                                 subset_samples=RANDOM_STUDY_SAMPLES, which=("min",))["min"]
            i = int(np.random.default_rng(0).integers(len(masks)))
            rand = {"index": i, "kept": masks[i].nonzero().flatten().tolist(), "loss_subset": float(losses[i]),
                    "loss": self.calibration_loss(masks[i].nonzero().flatten().tolist())}
            return {"n": len(masks), "losses": "losses.npy", "n_samples": RANDOM_STUDY_SAMPLES,
                    "picks": {f"best-calibration {groups}": best, f"random {groups}": rand}}
        cfg = {"groups": groups, "n": len(masks), "n_samples": RANDOM_STUDY_SAMPLES, "pick_pool": PICK_POOL,
               "teacher": self.teacher_path, "calib": self._calib_config()}
        res = self.cached("mask_study", groups, cfg, compute)
        folder = cache.folder(self.root, "mask_study", groups, {"profile": self.prof.name, **cfg})
        return {**res, "losses": np.load(folder / res["losses"]), "masks": masks}

    def baseline(self, method):
        """Kept indices and per-layer scores of a metric-based or hand-made baseline (28 -> 14)."""
        from tinyfusion.pruning import scores
        from tinyfusion.pruning.indices import oracle_indices
        if method not in BASELINES:
            raise ValueError(f"unknown baseline {method!r}; choose from {BASELINES}")
        keep = self.depth // 2

        def compute(folder):
            if method == "oracle":
                return {"kept": oracle_indices(self.depth, keep), "scores": None}
            f = {"shortgpt": scores.shortgpt, "flux-lite": scores.flux_lite, "sensitivity": scores.sensitivity}[method]
            kept, s = f(self.teacher(), self.calib(), keep, objective=self.objective)
            return {"kept": list(map(int, kept)), "scores": [float(v) for v in s]}
        cfg = {"method": method, "keep": keep, "teacher": self.teacher_path}
        if method != "oracle":  # the hand-made pattern depends on nothing else
            cfg["calib"] = self._calib_config()
        if method == "shortgpt":  # the official scoring (clean inputs, near-data times, last layer kept)
            from tinyfusion.pruning.scores import SHORTGPT_IMAGES
            cfg["scoring"] = {"inputs": "clean", "t": "clean_t", "images": SHORTGPT_IMAGES, "keep_last": True}
        return self.cached("baselines", method.replace("-", ""), cfg, compute)

    def learnable(self, groups="1:2", update="lora", seed=0, source=None, steps=None, lora_rank=None, ema_decay=None):
        """Learnable pruning of ``source`` (default: the teacher); the kept layers, confidences (``settled``: per
        block, whether the decision held over the last 20% of the steps) and paths. ``lora_rank``: None is the
        profile's (about the paper's 0.9% trained); ``steps``, ``ema_decay`` (of the gate logits): None are the
        profile's ``prune_steps`` and ``prune_ema_decay``."""
        from tinyfusion.pruning import learnable
        config = learnable.learnable_config(self.prof, source=source or self.teacher_path, groups=groups, update=update, seed=seed,
                                            steps=steps or 0, lora_rank=lora_rank, ema_decay=ema_decay or 0.0)
        flags = {k: config[k] for k in ("profile", "groups", "update", "steps", "batch_size", "lr", "seed",
                                        "logit_lr_mult", "lora_rank", "lora_alpha", "ema_decay", "grad_clip")}
        flags.update(teacher=config["source"], tau_start=config["tau"][0], tau_end=config["tau"][1])
        label = (f"{groups}_{update}{'' if lora_rank is None else f'_r{lora_rank}'}"
                 f"{'' if steps is None else f'_{steps}steps'}_s{seed}")
        return self._step("prune_learn", label, config,
                          lambda folder: learnable.run_learnable(config, folder), "prune_learn", flags)

    def calibration_loss(self, kept):
        from tinyfusion.pruning.indices import mask_from_kept
        from tinyfusion.pruning.scores import calibration_loss
        return calibration_loss(self.teacher(), self.calib(), mask=mask_from_kept(kept, self.depth),
                                objective=self.objective)

    def pruned(self, kept, source=None, name="pruned"):
        """Path of the compact model keeping ``kept`` layers of ``source`` (default: the teacher)."""
        from tinyfusion.io import save_checkpoint
        from tinyfusion.pruning.indices import prune
        source = Path(source or self.teacher_path)
        kept = list(map(int, kept))

        def compute(folder):
            model = prune(load_model(source, name=self.prof.model), kept)
            save_checkpoint({"ema": model.state_dict(), "config": model.config, "kept": kept,
                             "source": cache.file_id(source)}, folder / "model.pt")
            return {"path": str(folder / "model.pt"), "depth": prunable.depth(model)}
        return self.cached("pruned", name, {"kept": kept, "source": source}, compute)["path"]

    # ------------------------------------------------------------------ recovery and scoring
    def finetune(self, student, mode="finetune", k_sigma=0.0, seed=0, steps=None, teacher=None, kept=None,
                 groups="1:2", parent_map=None, name="ft", lr_steps=0, snapshots=()):
        """Fine-tune or distil the pruned checkpoint ``student``; returns the run's result (``model``: its path;
        ``snapshots``: {step: EMA checkpoint} when ``snapshots`` are asked for)."""
        from tinyfusion import recovery
        config = recovery.recovery_config(self.prof, student=student, mode=mode, k_sigma=k_sigma, seed=seed,
                                          steps=steps or 0, teacher=teacher, kept=kept, groups=groups,
                                          parent_map=parent_map, lr_steps=lr_steps, snapshots=snapshots)
        flags = {k: config[k] or 0 for k in ("steps", "batch_size", "lr", "min_lr", "k_sigma")}
        flags.update(lr_steps=config.get("lr_steps", 0), snapshots=config.get("snapshots", []))
        flags.update({k: config[k] for k in ("profile", "student", "mode", "kept", "a_kd", "a_diff", "ema_decay",
                                             "ema_warmup", "grad_clip", "seed", "inject_nan_at")},
                     teacher=config["teacher"] or "", groups=groups, parent_map=parent_map, beta0=config["beta"][0],
                     beta1=config["beta"][1])
        return self._step("finetune", f"{name}_{mode}_s{seed}", config,
                          lambda folder: recovery.run_recovery(config, folder), "finetune", flags)

    def finetune_cached(self, student, mode="finetune", seed=0, steps=None, kept=None, lr_steps=0, snapshots=()):
        """The finished result of the fine-tune :meth:`finetune` would run with these settings, or None when it is not
        cached (nothing runs)."""
        from tinyfusion import recovery
        config = {"profile": self.prof.name, **recovery.recovery_config(
            self.prof, student=student, mode=mode, k_sigma=0.0, seed=seed, steps=steps or 0, teacher=None, kept=kept,
            groups="1:2", parent_map=None, lr_steps=lr_steps, snapshots=snapshots)}
        out = cache.folder(self.root, "finetune", "lookup", config)
        return cache.read_record(out)["result"] if cache.done(out, config) else None

    def score(self, checkpoint, name=None, seed=0):
        """Sample ``profile.eval_samples`` images (sampling ``seed``, the profile's sampler, steps, CFG) and score them.

        The cache is keyed by the checkpoint and every sampling and scoring setting, so every notebook that
        scores the same model reuses one result; ``name`` only labels the folder (default: the checkpoint's run
        folder).
        """
        from tinyfusion import sampling
        name = name or Path(checkpoint).parent.name.rsplit("-", 1)[0]
        config = sampling.score_config(self.prof, checkpoint=checkpoint, seed=seed)  # sampler: the objective's

        def compute(folder):
            path = folder / "samples.npz"
            if self.prof.nproc > 1:
                from tinyfusion.launch import launch
                keys = ("profile", "checkpoint", "n", "sampler", "steps", "cfg_scale", "seed", "batch")  # the profile
                # brings the imagenet setting: VAE decode, the official 3-channel guidance, the ADM .npz layout
                launch("tinyfusion.cli.sample", nproc=self.prof.nproc,
                       **cache.jsonable({k: config[k] for k in keys}), out=str(path))
            else:
                sampling.sample_checkpoint(config, path)
            return sampling.score_samples(config, path)
        result = self.cached("scores", name if not seed else f"{name}_sampling{seed}", config, compute)
        return {k: float("nan") if v is None else v for k, v in result.items()}  # ADM scores: no class accuracy

    SAMPLING_SEEDS = (0, 1, 2, 3)

    def sampling_noise(self, checkpoint, name=None):
        """The sampling part of the noise: one checkpoint scored with each of ``SAMPLING_SEEDS`` (other noise for
        the evaluation samples, nothing else changed). Returns {"fid": [...], "sd": FID sd over the seeds}."""
        fids = [self.score(checkpoint, name=name, seed=s)["fid"] for s in self.SAMPLING_SEEDS]
        return {"fid": fids, "sd": float(np.std(fids, ddof=1)), "seeds": list(self.SAMPLING_SEEDS),
                "checkpoint": str(checkpoint)}

    def fid_floor(self, n=None):
        """Real-vs-real metrics at the profile's resolution: the floor every FID sits above. ``n``: None gives
        ``metrics.fid_floor`` on ``min(5000, n_test // 2)`` images a side; a number gives ``n`` real test images
        against the rest of the test set, as a model's ``n`` samples are scored against the whole set. On a profile
        without the Fashion-MNIST test set (imagenet: the ADM reference batch holds statistics, not a second real
        sample) every number is NaN and ``note`` says why."""
        from tinyfusion.metrics import fid_floor
        if self.prof.dataset != "fashion-mnist":
            return {k: float("nan") for k in ("fid", "sfid", "is", "precision", "recall", "kid", "class_accuracy")} | {
                "note": f"no real-vs-real floor on the {self.prof.dataset} profile: the reference batch is not a second "
                        f"real sample"}
        half = min(5000, (self.prof.eval_limit or 10000) // 2)
        evaluator = self.prof.path(self.prof.evaluator)
        if n is None:
            return self.cached("floor", "fid_floor", {"n": half, "size": self.prof.image_size, "evaluator": evaluator},
                               lambda folder: fid_floor(n=half, size=self.prof.image_size, evaluator_path=evaluator))
        rest = (self.prof.eval_limit or 10000) - n
        return self.cached("floor", f"fid_floor_{n}", {"n": n, "n_reference": rest, "size": self.prof.image_size,
                                                       "evaluator": evaluator},
                           lambda folder: fid_floor(n=n, n_reference=rest, size=self.prof.image_size,
                                                    evaluator_path=evaluator))

    def speed_sweep(self):
        """Sampling throughput of depth- and width-pruned copies of the profile's model on this machine's CPU
        (``speed.speed_sweep`` with the profile's ``extra["speed"]`` settings): a list of rows. The cache key names
        the row format (``speed.SWEEP_RECORD``), so a sweep cached before the rows carried their per-round speed-ups
        is measured again rather than reused."""
        from tinyfusion.speed import SWEEP_RECORD, speed_sweep
        kw = self.prof.extra.get("speed", {})
        return self.cached("speed", "sweep", {"model": self.prof.model, "device": "cpu", **kw, "record": SWEEP_RECORD},
                           lambda folder: {"rows": speed_sweep(self.prof.model, **kw)})["rows"]

    def recovered(self, label, kept, seed, mode="finetune", k_sigma=0.0, steps=None, source=None, teacher=None,
                  groups="1:2", parent_map=None, lr_steps=0, snapshots=()):
        """The model keeping ``kept`` layers of ``source`` (default: the teacher), recovered by ``mode`` with
        ``seed``: the cached run's result (``model``: its checkpoint). ``label`` names the folders."""
        return self.finetune(self.pruned(kept, source=source, name=label), mode=mode, k_sigma=k_sigma, seed=seed,
                             steps=steps, teacher=teacher, kept=list(map(int, kept)), groups=groups,
                             parent_map=parent_map, name=label, lr_steps=lr_steps, snapshots=snapshots)

    def recover(self, label, kept, seeds=None, mode="finetune", k_sigma=0.0, steps=None, source=None,
                teacher=None, groups="1:2", parent_map=None):
        """Prune to ``kept``, fine-tune with each seed, score each: a list of rows (one per seed). The seeds' runs go
        side by side (:meth:`parallel`)."""
        seeds = list(seeds if seeds is not None else self.prof.seeds)
        self.pruned(kept, source=source, name=label)  # here first: the parallel runs share this folder
        kw = dict(label=label, kept=list(map(int, kept)), mode=mode, k_sigma=k_sigma, steps=steps, source=source,
                  teacher=teacher, groups=groups, parent_map=parent_map)
        fts = self.parallel([("recovered", {**kw, "seed": s}) for s in seeds], desc=f"{label}: recovery")
        scores = self.parallel([("score", {"checkpoint": ft["model"]}) for ft in fts], desc=f"{label}: scoring")
        return [{"method": label, "seed": seed, "mode": mode, "k_sigma": k_sigma,
                 "skipped_steps": ft.get("skipped_steps", 0), "final_loss": ft.get("final_loss"),
                 **{k: sc[k] for k in SCORE_METRICS}}
                for seed, ft, sc in zip(seeds, fts, scores)]

    TABLE4_RANK8 = "1:2 LoRA rank 8"   # notebook 04's named ablation: the paper's LoRA rank instead of the profile's
    PAPER_LORA_RANK = 8

    def table4_cells(self, schemes=("1:2", "2:4", "7:14"), updates=("lora", "full", "frozen"), seed=None):
        """The models of Table 4 before recovery, one dict per row (method, kind, scheme, update, lora_rank, kept,
        trainable_fraction): the learnable cells (scheme x update, one pruning seed: ``seed``, default
        ``prof.seeds[0]``), the two 1:2 references inside learnable's own rule (``REFERENCES``, from
        :meth:`mask_study`: kind "reference") and learnable 1:2 with LoRA rank 8 (``TABLE4_RANK8``, kind "ablation").
        The learnable runs and the mask study are independent cached steps: they run ``prof.workers`` at a time."""
        seed = self.prof.seeds[0] if seed is None else seed
        rank8 = None if self.prof.lora_rank == self.PAPER_LORA_RANK else self.PAPER_LORA_RANK
        cells = [(f"{g} {u}", "learnable", g, u, None) for g in schemes for u in updates]
        cells.append((self.TABLE4_RANK8, "ablation", "1:2", "lora", rank8))
        runs = list(dict.fromkeys((g, u, r) for _, _, g, u, r in cells))  # one call per run: no folder written twice
        calls = [("learnable", {"groups": g, "update": u, "seed": seed, "lora_rank": r}) for g, u, r in runs]
        *learned, refs = self.parallel(calls + [("mask_study", {"groups": "1:2"})], desc="Table 4: learnable pruning")
        learned = dict(zip(runs, learned))
        rows = [{"method": m, "kind": kind, "scheme": g, "update": u, "lora_rank": learned[g, u, r]["lora_rank"],
                 "kept": list(map(int, learned[g, u, r]["kept"])),
                 "trainable_fraction": learned[g, u, r]["trainable_fraction"]} for m, kind, g, u, r in cells]
        rows[-1:-1] = [{"method": m, "kind": "reference", "scheme": "1:2", "update": "", "lora_rank": None,
                        "kept": list(map(int, refs["picks"][m]["kept"])), "trainable_fraction": math.nan}
                       for m in REFERENCES]
        return rows

    def table4(self, schemes=("1:2", "2:4", "7:14"), updates=("lora", "full", "frozen"), seed=None):
        """Table 4 with the 1:2 references and the rank-8 ablation (:meth:`table4_cells`), each pruned from the
        teacher, fine-tuned ``prof.ablation_finetune_steps`` steps (the paper's 10K-step ablation) on every seed in
        ``prof.seeds`` and scored.

        The pruning run's update is dropped before recovery (as in the paper), so a row's model is the teacher's kept
        layers: rows keeping the same layers are one model, fine-tuned and scored once per seed (the first such row
        runs it; the others carry its numbers and name it in ``same_as``). The fine-tunes run ``prof.workers`` at a
        time. Returns a DataFrame, one row per (row, seed), with the paper's IS and FID beside the nine cells, saved
        as ``tables/table4_runs.csv``; notebooks 03 and 04 read it by scheme and by update."""
        import pandas as pd
        cells = self.table4_cells(schemes, updates, seed)
        first = {}  # kept layers -> the first row keeping them: the one that is fine-tuned
        for c in cells:
            first.setdefault(tuple(c["kept"]), c["method"])
        for c in cells:  # the pruned students first, so parallel runs never write one folder twice
            if first[tuple(c["kept"])] == c["method"]:
                self.pruned(c["kept"], name=c["method"])
        jobs = [(k, s) for k in first for s in self.prof.seeds]
        results = self.parallel([("recover", {"label": first[k], "kept": list(k), "seeds": [s],
                                              "steps": self.prof.ablation_finetune_steps}) for k, s in jobs],
                                desc="Table 4: fine-tuning and scoring")
        done = {job: r[0] for job, r in zip(jobs, results)}
        rows = []
        for c in cells:
            k = tuple(c["kept"])
            paper_is, paper_fid = paper.TABLE4.get((c["scheme"], c["update"]), (math.nan, math.nan)) \
                if c["kind"] == "learnable" else (math.nan, math.nan)
            for s in self.prof.seeds:
                rows.append({**done[(k, s)], **c, "seed": s, "kept": " ".join(map(str, k)),
                             "same_as": "" if first[k] == c["method"] else first[k],
                             "paper_IS": paper_is, "paper_FID": paper_fid})
        t4 = pd.DataFrame(rows)
        self.save_table(t4, "table4_runs")
        return t4

    def table4_summary(self, t4):
        """One row per Table 4 row of ``t4`` (:meth:`table4`): FID and IS mean ± sd over the fine-tune seeds, the
        trainable share of the pruning run's update beside the paper's (LoRA rank 8: ~0.9%), the model it shares
        ("same model as"), the paper's FID and IS beside the nine cells; saved as ``tables/table4.csv``."""
        import pandas as pd
        from tinyfusion.verdicts import fmt
        agg = summarise(t4.to_dict("records"), by="method", metrics=("fid", "is"))
        first = t4.groupby("method", sort=False).first()
        table = pd.DataFrame({
            "method": agg.method, "kind": first.kind.values, "scheme": first.scheme.values,
            "update": first["update"].values,
            "trainable % (pruning)": (100 * first.trainable_fraction.values).round(2),
            "trainable % (paper)": [{"lora": round(100 * paper.LORA_SHARE, 2), "full": 100.0, "frozen": 0.0}.get(
                u, math.nan) if k != "reference" else math.nan for k, u in zip(first.kind, first["update"])],
            "FID (ours)": [fmt(m, s) for m, s in zip(agg.fid_mean, agg.fid_std)],
            "IS (ours)": [fmt(m, s) for m, s in zip(agg.is_mean, agg.is_std)], "seeds": agg.fid_count.values,
            "same model as": first.same_as.values, "kept": first.kept.values,
            "FID (paper)": first.paper_FID.values, "IS (paper)": first.paper_IS.values})
        self.save_table(table, "table4")
        return table

    def table4_evidence(self, t4):
        """The numbers the Table 4 rules read, from ``t4`` (:meth:`table4`): ``fid`` {(scheme, update) or reference /
        ablation name: FIDs over fine-tune seeds}, ``model`` {the same keys: the kept layers, one model's identity}
        and the yardstick measured on this run: ``sd``, ``df``, the pooled fine-tune-seed FID spread over the
        distinct models (each counted once, ``verdicts.pooled_sd``)."""
        from tinyfusion import verdicts
        key = lambda r: (r["scheme"], r["update"]) if r["kind"] == "learnable" else r["method"]  # noqa: E731
        records = t4.fillna({"same_as": ""}).to_dict("records")  # a table read back from CSV has NaN for ""
        fid = verdicts.distinct_models([key(r) for r in records], [r["fid"] for r in records])
        model = {key(r): r["kept"] for r in records}
        once = [r for r in records if not r["same_as"]]
        sd, df = verdicts.pooled_sd(verdicts.distinct_models([r["kept"] for r in once], [r["fid"] for r in once]))
        return {"fid": fid, "model": model, "sd": sd, "df": df}

    def table3_candidates(self):
        """The Table 3 candidates (28 -> 14): ``({method: kept}, {seed: learnable run})``: the min/median/max
        calibration-loss random picks, the baselines, and learnable 1:2 LoRA (its first seed's decision)."""
        rs = self.random_study()
        kept = {name: rs["picks"][name]["kept"] for name in RANDOM_PICKS}
        kept.update({name: self.baseline(name)["kept"] for name in BASELINES})
        learned = {s: self.learnable("1:2", "lora", seed=s) for s in self.prof.seeds}
        kept["learnable"] = learned[self.prof.seeds[0]]["kept"]
        return kept, learned

    def table3(self, save=True):
        """Table 3: every candidate pruned, fine-tuned ``prof.finetune_steps`` steps and scored, on every seed
        (learnable: its own decision per seed), with its calibration loss. Returns ``(runs, table)``: one row per
        run (``tables/01_table3_runs.csv``) and one per method with the paper beside it (``tables/01_table3.csv``).
        """
        import pandas as pd
        from tinyfusion.verdicts import fmt
        kept, learned = self.table3_candidates()
        rows = []
        for name, k in kept.items():
            if name == "learnable":
                for s in self.prof.seeds:
                    rows += [{**r, "calib_loss": self.calibration_loss(learned[s]["kept"])}
                             for r in self.recover("learnable", learned[s]["kept"], seeds=[s])]
            else:
                loss = self.calibration_loss(k)
                rows += [{**r, "calib_loss": loss} for r in self.recover(name, k)]
        runs = pd.DataFrame(rows)
        if save:
            self.save_table(runs, "01_table3_runs")
        table = self._table3(runs)
        if save:
            self.save_table(table, "01_table3")
        return runs, table

    @staticmethod
    def _table3(runs):
        """One row per method of ``runs`` (method, seed, calib_loss, fid, is, ...): ours (mean ± sd over its runs)
        beside the paper's Table 3 (NaN for the references, which the paper does not have)."""
        import pandas as pd
        from tinyfusion.verdicts import fmt
        nan = (np.nan, np.nan, np.nan)
        summary = summarise(runs.to_dict("records"), metrics=("fid", "is", "class_accuracy"))
        summary["calib_loss"] = [runs[runs.method == m]["calib_loss"].mean() for m in summary.method]
        return pd.DataFrame({
            "method": summary.method,
            "calib loss (ours)": summary.calib_loss.round(4),
            "IS (ours)": [fmt(m, s) for m, s in zip(summary.is_mean, summary.is_std)],
            "FID (ours)": [fmt(m, s) for m, s in zip(summary.fid_mean, summary.fid_std)],
            "class acc (ours)": summary.class_accuracy_mean.round(3),
            "runs": summary.fid_count,
            "calib loss (paper)": [paper.TABLE3.get(m, nan)[0] for m in summary.method],
            "IS (paper)": [paper.TABLE3.get(m, nan)[1] for m in summary.method],
            "FID (paper)": [paper.TABLE3.get(m, nan)[2] for m in summary.method]})

    def table3_at(self, curves, steps, name="01_table3"):
        """Table 3 read on the recovery curves at ``steps`` (each method's distinct runs), with the paper's beside it:
        saved as ``tables/<name>.csv``, its runs as ``tables/<name>_runs.csv`` (what the summary and
        ``seed_noise`` read)."""
        at = curves[curves.steps == steps].drop_duplicates(["method", "kept", "seed"])
        self.save_table(at.drop(columns=[c for c in ("samples", "checkpoint") if c in at]), f"{name}_runs")
        table = self._table3(at)
        self.save_table(table, name)
        return table

    # ------------------------------------------------------------------ recovery curves
    LONG_CURVES = ("learnable", "shortgpt", "min-loss random", "oracle")  # run to the last curve point

    def curve_candidates(self, learned=None):
        """Every model of the recovery curves: a list of (method, prune seed, kept). Learnable has one entry per
        pruning seed (its own decision): ``learned`` {prune seed: learnable run}, default the profile's seeds at its
        budget (Table 3's); the others are deterministic (prune seed None)."""
        kept, table3_learned = self.table3_candidates()
        learned = table3_learned if learned is None else learned
        refs = self.mask_study("1:2")["picks"]
        out = [(m, None, k) for m, k in kept.items() if m != "learnable"]
        out += [(m, None, refs[m]["kept"]) for m in REFERENCES]
        out += [("learnable", s, r["kept"]) for s, r in learned.items()]   # every pruning seed given, not the
        return out                                                           # fine-tune seeds

    def candidates(self, methods, learned=None, groups="1:2"):
        """The recovery-curve models of the named ``methods`` only (for :meth:`recovery_curves`): a list of (method,
        prune seed, kept) in the order given, each computed by its own step (the random study for ``RANDOM_PICKS``,
        :meth:`baseline` for ``BASELINES``, :meth:`mask_study` for ``REFERENCES``), and "learnable" (``groups``, LoRA)
        once per pruning seed: ``learned`` {prune seed: learnable run}, default the profile's seeds. Unlike
        :meth:`curve_candidates`, nothing else is computed (a teacher whose every-mask study would be too long, e.g.
        2^16 masks of 32 layers, leaves ``REFERENCES`` out)."""
        known = ("learnable", *RANDOM_PICKS, *BASELINES, *REFERENCES)
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise ValueError(f"unknown candidate methods {unknown}; choose from {known}")
        out = []
        for m in methods:
            if m == "learnable":
                runs = learned if learned is not None else {s: self.learnable(groups, "lora", seed=s)
                                                            for s in self.prof.seeds}
                out += [("learnable", s, r["kept"]) for s, r in runs.items()]
            elif m in RANDOM_PICKS:
                out.append((m, None, self.random_study()["picks"][m]["kept"]))
            elif m in BASELINES:
                out.append((m, None, self.baseline(m)["kept"]))
            else:
                out.append((m, None, self.mask_study(groups)["picks"][m]["kept"]))
        return out

    def curve_run(self, method, kept, seed, stop=None):
        """One recovery-curve fine-tune: ``kept`` pruned from the teacher, fine-tuned (plain) with ``seed`` to the last
        curve point (``LONG_CURVES``) or to the 500K-equivalent point, on the cosine of the longest run, with the
        EMA saved at every curve point on the way; ``stop``: end there instead when earlier (the same cosine, so
        its points compare with the longer runs'). Returns the cached result (``snapshots``: {step: checkpoint})."""
        points = self.prof.curve_points
        full = points[-1] if method in self.LONG_CURVES else self.prof.finetune_long
        steps = min(full, stop) if stop else full
        if steps < full:  # the full-length run (notebook 01's) holds these points already when it is cached: reuse it
            done = self.finetune_cached(self.pruned(kept, name=method), seed=seed, steps=full, lr_steps=points[-1],
                                        kept=list(map(int, kept)), snapshots=[p for p in points if p <= full])
            if done is not None:
                return {**done, "snapshots": {k: v for k, v in done["snapshots"].items() if int(k) <= steps}}
        return self.recovered(method, kept, seed, steps=steps, lr_steps=points[-1],
                              snapshots=[p for p in points if p <= steps])

    def curve_runs(self, candidates=None, stop=None):
        """The fine-tunes of :meth:`recovery_curves` (``prof.workers`` at a time): ``(jobs, results)``, a job being
        (method, prune seed, kept, fine-tune seed). Identical models (the same kept layers, e.g. two pruning seeds
        that chose one mask) are fine-tuned once per seed and share that result. ``candidates``: (method, prune seed,
        kept) triples, default :meth:`curve_candidates`; ``stop``: as :meth:`curve_run`."""
        cands = self.curve_candidates() if candidates is None else candidates
        for method, _, k in cands:  # the pruned students first, so parallel runs never write one folder twice
            self.pruned(k, name=method)
        jobs = [(m, ps, k, s) for m, ps, k in cands for s in self.prof.seeds]
        first = {}  # (kept, seed) -> the first job training that model: the one that runs
        for m, ps, k, s in jobs:
            first.setdefault((tuple(k), s), (m, k, s))
        unique = list(first)
        results = self.parallel([("curve_run", {"method": first[u][0], "kept": first[u][1], "seed": first[u][2],
                                                "stop": stop})
                                 for u in unique], desc="recovery curves: fine-tuning")
        done = dict(zip(unique, results))
        return jobs, [done[(tuple(k), s)] for _, _, k, s in jobs]

    def recovery_curves(self, candidates=None, name="01_recovery_curves", stop=None, points=None):
        """FID (IS, class accuracy; sFID, precision, recall) against fine-tuning steps for every Table 3 model and
        the 1:2 references, on every fine-tune seed (learnable: every pruning seed too); the fine-tunes and the scoring
        run ``prof.workers`` at a time, each distinct checkpoint scored once. Returns a DataFrame (method, prune_seed,
        seed, steps, fid, is, class_accuracy, sfid, precision, recall, calib_loss, kept; samples and checkpoint: their
        paths), saved without the paths as ``tables/<name>.csv``; ``candidates`` as for :meth:`curve_runs`. Rows of
        identical models (same ``kept`` and seed) carry the same numbers and are counted once by the verdicts.
        ``stop``: every run ends there at the latest (the same cosine; :meth:`curve_run`). ``points``: score only these
        of the curve points (None: every point the runs saved; the runs themselves are the same either way)."""
        import pandas as pd
        jobs, runs = self.curve_runs(candidates, stop)
        scored_at = None if points is None else {int(p) for p in points}
        points = [(j, int(step), path) for j, r in zip(jobs, runs) for step, path in sorted(
            r["snapshots"].items(), key=lambda kv: int(kv[0])) if scored_at is None or int(step) in scored_at]
        paths = list(dict.fromkeys(path for _, _, path in points))
        names = {}
        for j, step, path in points:
            names.setdefault(path, f"{j[0]}_p{j[1]}_s{j[3]}_{step}")
        scored = self.parallel([("score", {"checkpoint": path, "name": names[path]}) for path in paths],
                               desc="recovery curves: scoring")
        score = dict(zip(paths, scored))
        loss = {tuple(k): self.calibration_loss(k) for _, _, k, _ in jobs}
        rows = [{"method": m, "prune_seed": ps, "seed": s, "steps": step,
                 **{c: score[path][c] for c in SCORE_METRICS},
                 "calib_loss": loss[tuple(k)], "kept": " ".join(map(str, k)), "samples": score[path]["samples"],
                 "checkpoint": path}
                for (m, ps, k, s), step, path in points]
        curves = pd.DataFrame(rows)
        self.save_table(curves.drop(columns=["samples", "checkpoint"]), name)
        return curves

    def curve_points(self, curves):
        """Per curve point of ``recovery_curves``' DataFrame, what the rules take: {steps: {"fid": {method: FIDs of
        its distinct runs}, "groups": {kept: FIDs over fine-tune seeds} (one group per distinct model), "sd", "df"
        (``pooled_sd`` of the groups), "calib_loss": {method: mean over its distinct models}, "rho", "pval",
        "n_models" (Spearman of calibration loss and mean FID over the distinct models; ``pval`` a permutation p:
        exact up to 10 models, "pval_t" the t approximation used before that), "groups_rho", "groups_pval", "n_groups"
        (the same over groups of near-identical masks, ``verdicts.mask_groups``: sharing all but two kept layers)}}.
        Identical models (same kept layers and fine-tune seed, e.g. two pruning seeds that chose one mask) count
        once."""
        from tinyfusion.verdicts import mask_groups, pooled_sd, spearman_finite
        out = {}
        for steps, at in curves.groupby("steps"):
            runs = at.drop_duplicates(["method", "kept", "seed"])
            models = at.drop_duplicates(["kept", "seed"])
            groups = models.groupby("kept", sort=False).fid.apply(list).to_dict()
            sd, df = pooled_sd(groups)
            per_model = models.groupby("kept", sort=False).agg(fid=("fid", "mean"), loss=("calib_loss", "first"))
            rho, pval, n = spearman_finite(per_model.loss, per_model.fid)
            pval_t = spearman_finite(per_model.loss, per_model.fid, exact=False)[1]
            group = mask_groups([k.split() for k in per_model.index])
            by_group = per_model.groupby(group).mean()
            g_rho, g_pval, g_n = spearman_finite(by_group.loss, by_group.fid)
            out[int(steps)] = {
                "fid": runs.groupby("method", sort=False).fid.apply(list).to_dict(), "groups": groups, "sd": sd,
                "df": df, "calib_loss": runs.drop_duplicates(["method", "kept"]).groupby("method", sort=False)
                .calib_loss.mean().to_dict(), "rho": rho, "pval": pval, "pval_t": pval_t, "n_models": n,
                "groups_rho": g_rho, "groups_pval": g_pval, "n_groups": g_n}
        return out

    def curve_summary(self, curves, name="01_recovery_curves_summary"):
        """Table 3 read at every curve point: one row per method, one column per step count, ``mean ± sd (runs)`` of
        the FID over its distinct runs (``tables/<name>.csv``)."""
        import pandas as pd
        from tinyfusion.verdicts import fmt
        pts = self.curve_points(curves)
        table = pd.DataFrame({steps: {m: f"{fmt(np.mean(v), np.std(v, ddof=1) if len(v) > 1 else None, 2)} ({len(v)})"
                                      for m, v in p["fid"].items()} for steps, p in pts.items()})
        table.index.name = "method \\ fine-tuning steps"
        table = table.reset_index()
        self.save_table(table, name)
        return table

    def curve_noise(self, curves, sampling_sd):
        """The noise model at every curve point: pooled fine-tune-seed sd (df), the sampling sd, and Spearman of
        calibration loss and FID over the distinct models (``tables/01_curve_noise.csv``)."""
        import pandas as pd
        rows = [{"steps": steps, "pooled seed sd": p["sd"], "df": p["df"], "sampling sd": sampling_sd,
                 "distinct models": p["n_models"], "Spearman rho": p["rho"], "p": p["pval"]}
                for steps, p in self.curve_points(curves).items()]
        table = pd.DataFrame(rows)
        self.save_table(table, "01_curve_noise")
        return table

    def curve_verdicts(self, curves, sampling_sd, spearman_p="pval", k=None, save=True):
        """Claims 1 and 2 on the recovery curves: each rule (``claim1_recovery``, ``claim2_recovery``) applied at every
        point, the status recorded at the paper's 100K point (``verdicts.VERDICT_POINT``: ``prof.finetune_steps``). Beyond
        the 500K point only the methods run that long (``LONG_CURVES``) have FIDs: claim 2 is judged there against the
        baselines among them (ShortGPT, Oracle), claim 1 among the models there.
        ``spearman_p``: "pval" (a permutation p) or "pval_t" (the t approximation of the first cpu run, shown in
        notebook 01 for the record; nothing is saved then). ``k``: None calls differences at the t critical value of
        the pooled df (issue 25); 2.0 is the rule before it, shown for the record (nothing is saved then either).
        ``save``: False keeps the table out of ``tables/`` (other teachers' curves in notebook 11).
        Returns ``(claim 1 verdict, claim 2 verdict, DataFrame of the status per claim and point)``."""
        import pandas as pd
        from tinyfusion import verdicts as V
        pts = self.curve_points(curves)
        at = lambda key: {s: p[key] for s, p in pts.items()}  # noqa: E731
        steps = list(pts)
        v1, rows1 = V.curve_verdicts(V.claim1_recovery, steps, self.prof.finetune_steps, fid=at("fid"),
                                     calib_loss=at("calib_loss"), sd=at("sd"), df=at("df"), sampling_sd=sampling_sd,
                                     rho=at("rho"), pval=at(spearman_p), n_models=at("n_models"), k=k,
                                     groups={s: (p["groups_rho"], p["groups_pval"], p["n_groups"])
                                             for s, p in pts.items()})
        v2, rows2 = V.curve_verdicts(V.claim2_recovery, steps, self.prof.finetune_steps, fid=at("fid"),
                                     baselines={s: [b for b in BASELINES if b in p["fid"]] for s, p in pts.items()},
                                     sd=at("sd"), df=at("df"), sampling_sd=sampling_sd,
                                     references=REFERENCES, k=k)
        table = pd.DataFrame([{"claim": c, **r} for c, rows in ((1, rows1), (2, rows2)) for r in rows])
        if spearman_p == "pval" and k is None and save:
            self.save_table(table, "01_verdicts_by_point")
        return v1, v2, table

    def curve_samples(self, curves, steps):
        """The sample files (``.npz``) of every distinct curve model at ``steps``, fine-tune seed ``prof.seeds[0]``:
        {method: path} (learnable: one per distinct pruning decision), for sample grids."""
        at = curves[(curves.steps == steps) & (curves.seed == self.prof.seeds[0])].drop_duplicates(["method", "kept"])
        return {m if (at.method == m).sum() == 1 else f"{m} (pruning seed {ps})": path
                for m, ps, path in zip(at.method, at.prune_seed, at.samples)}

    def parallel(self, calls, desc="steps"):
        """Run independent cached steps ``[(method name, kwargs), ...]`` of this Study and return their results in
        order: ``prof.workers`` processes side by side, one thread each (two single-thread processes do ~1.4x the
        work of one two-thread process on these 2-core machines), or one by one in this process when the profile
        asks for one worker or for torchrun (``nproc > 1``). Every step caches, so a killed run resumes."""
        import os

        from tinyfusion.progress import tqdm
        if self.prof.workers <= 1 or self.prof.nproc > 1 or len(calls) <= 1 or os.environ.get(_IN_WORKER):
            return [getattr(self, name)(**kw) for name, kw in tqdm(calls, desc=desc)]
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(self.prof.workers, mp_context=mp.get_context("spawn"),
                                 initializer=_one_thread, initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(_study_call, self.prof, self.recompute, name, kw) for name, kw in calls]
            return [f.result() for f in tqdm(futures, desc=f"{desc} ({self.prof.workers} workers)")]

    TABLE2_KD = "learnable + masked KD"

    def table2(self):
        """Table 2's analogue for this profile's teacher (SiT on the ``-sit`` profiles): every Table 3 candidate
        fine-tuned and scored as :meth:`table3` does, plus each seed's learnable D14 recovered by Masked KD (2 sigma,
        the profile's ``kd_beta``: SiT's 2e-4) as the paper's TinySiT-D14. Returns ``(runs, table)``: one row per run
        (``tables/10_table2_runs.csv``) and one per method with the paper's Table 2 beside it (``10_table2.csv``)."""
        import pandas as pd
        from tinyfusion.verdicts import fmt
        runs, _ = self.table3(save=False)  # Table 3's paper columns are DiT's: only the runs are used here
        _, learned = self.table3_candidates()
        kd = [{**r, "calib_loss": self.calibration_loss(learned[s]["kept"])}
              for s in self.prof.seeds
              for r in self.recover(self.TABLE2_KD, learned[s]["kept"], seeds=[s], mode="masked_kd", k_sigma=2.0)]
        runs = pd.concat([runs, pd.DataFrame(kd)], ignore_index=True)
        self.save_table(runs, "10_table2_runs")
        teacher = self.score(self.teacher_path)
        summary = summarise(runs.to_dict("records"))
        paper_fid = {self.TABLE2_KD: paper.TABLE2["TinySiT-D14"]}
        table = pd.DataFrame(
            [{"method": f"teacher ({self.prof.model}, {self.depth} layers)", "depth": self.depth,
              "FID (ours)": fmt(teacher["fid"]), "IS (ours)": fmt(teacher["is"]),
              "class acc (ours)": round(teacher["class_accuracy"], 3), "seeds": 1,
              "FID (paper, Table 2)": paper.TABLE2["SiT-XL/2"]}]
            + [{"method": m, "depth": self.depth // 2, "FID (ours)": fmt(fm, fs), "IS (ours)": fmt(im, is_),
                "class acc (ours)": round(acc, 3), "seeds": int(n), "FID (paper, Table 2)": paper_fid.get(m, np.nan)}
               for m, fm, fs, im, is_, acc, n in zip(summary.method, summary.fid_mean, summary.fid_std,
                                                      summary.is_mean, summary.is_std, summary.class_accuracy_mean,
                                                      summary.fid_count)])
        self.save_table(table, "10_table2")
        return runs, table

    def table2_yardstick(self, runs, kept):
        """``(sd, df)``: the pooled fine-tune-seed FID spread of :meth:`table2`'s ``runs`` over the distinct models whose
        mask does not depend on the seed (every candidate but learnable, whose seed also chose its layers, and its
        Masked KD row; ``kept`` {method: kept layers}, :meth:`table3_candidates`; methods keeping the same layers are
        one model, counted once): claim 9's yardstick under ``verdicts.called``."""
        from tinyfusion.verdicts import pooled_sd
        fixed = runs[~runs.method.isin(["learnable", self.TABLE2_KD])].copy()
        fixed["kept"] = [" ".join(map(str, kept[m])) for m in fixed.method]
        once = fixed.drop_duplicates(["kept", "seed"])
        return pooled_sd(once.groupby("kept", sort=False).fid.apply(list).to_dict())

    def block_confidence(self, runs):
        """Per scheme and block of learnable-pruning ``runs`` ({scheme: run}): the final confidence of the decision
        beside the uniform 1 / candidates (``tables/02_block_confidence.csv``)."""
        import pandas as pd
        from tinyfusion.models.gates import candidate_matrix, parse_groups
        depth = self.depth
        rows = [{"scheme": g, "block": b, "confidence": conf, "uniform": 1 / c, "candidates": c,
                 "settled": r.get("settled", [None] * (b + 1))[b], "last_change": r.get("last_change", [None] * (b + 1))[b]}
                for g, r in runs.items()
                for b, (conf, c) in enumerate(zip(r["confidence"],
                                                  [candidate_matrix(n, m).shape[0] for n, m in parse_groups(g, depth)]))]
        conf = pd.DataFrame(rows)
        self.save_table(conf, "02_block_confidence")
        return conf

    def settled_summary(self, runs):
        """Per scheme of learnable-pruning ``runs`` ({scheme: run}): blocks, how many settled (the EMA decision unchanged
        over the last 20% of the steps), which did not and when they last changed, the mean and lowest final
        confidence beside the uniform 1 / candidates (``tables/02_settled.csv``)."""
        import pandas as pd
        conf = self.block_confidence(runs)
        rows = []
        for g, c in conf.groupby("scheme", sort=False):
            bad = c[c.settled == False]  # noqa: E712  (None: a run from before ``settled`` was recorded)
            rows.append({"scheme": g, "steps": runs[g].get("steps", self.prof.prune_steps), "blocks": len(c),
                         "settled": int((c.settled == True).sum()),  # noqa: E712
                         "not settled (last change)": ", ".join(f"block {b} ({s})" for b, s in
                                                                zip(bad.block, bad.last_change)) or "-",
                         "mean confidence": round(c.confidence.mean(), 3), "min confidence": round(c.confidence.min(), 3),
                         "uniform": round(c.uniform.iloc[0], 4), "candidates per block": int(c.candidates.iloc[0])})
        table = pd.DataFrame(rows)
        self.save_table(table, "02_settled")
        return table

    def hidden_stats(self):
        """Per layer of the teacher, the hidden-state statistics of claim 5 (``activations.hidden_stats``: max |h| /
        std, the share of positions beyond 2, 4 and 10 sigma ...) on the first calibration batch, as a DataFrame.
        Not cached: one forward pass."""
        import pandas as pd

        from tinyfusion.activations import hidden_states, hidden_stats
        return pd.DataFrame(hidden_stats(hidden_states(self.teacher(), self.calib()[0], self.objective)))

    def residual_sizes(self):
        """Per layer of the teacher, ``||f(h) - h|| / ||h||`` over the calibration set (``scores.residual_sizes``)."""
        from tinyfusion.pruning.scores import residual_sizes
        return self.cached("analysis", "residual_sizes", {"teacher": self.teacher_path, "calib": self._calib_config()},
                           lambda folder: {"sizes": residual_sizes(self.teacher(), self.calib(), self.objective)})["sizes"]

    def gate_costs(self, run, groups="1:2"):
        """Where a learnable-pruning ``run`` (its result) may have gone wrong, per block of ``groups``: the calibration-
        loss cost of its choice (``random.block_costs`` over every mask of :meth:`mask_study`), the residual size of
        the layers it kept and dropped, the final EMA confidence and whether the decision settled
        (``tables/02_gate_costs.csv``). The block with the largest cost is first in ``worst``."""
        import pandas as pd
        from tinyfusion.pruning.random import block_costs
        ms = self.mask_study(groups)
        res = self.residual_sizes()
        rows = block_costs(ms["masks"], ms["losses"], groups, run["kept"])
        table = pd.DataFrame([{
            "block": r["block"], "layers": " ".join(map(str, r["layers"])), "kept": " ".join(map(str, r["kept"])),
            "best other": " ".join(map(str, r["other_kept"])), "cost": r["cost"],
            "best loss (this choice)": r["best_loss_same"], "best loss (other)": r["best_loss_other"],
            "residual kept": float(np.mean([res[i] for i in r["kept"]])),
            "residual dropped": float(np.mean([res[i] for i in r["layers"] if i not in r["kept"]])),
            "confidence": run["confidence"][r["block"]], "settled": run.get("settled", [None] * len(rows))[r["block"]],
            "last change": run.get("last_change", [None] * len(rows))[r["block"]]} for r in rows])
        self.save_table(table, "02_gate_costs")
        return table

    def corrected(self, run, costs):
        """``run``'s kept layers with its costliest block (largest ``cost`` in :meth:`gate_costs`) given the best other
        choice: ``(block, kept)``."""
        worst = costs.sort_values("cost", ascending=False).iloc[0]
        layers = set(map(int, worst["layers"].split()))
        new = [i for i in run["kept"] if i not in layers] + list(map(int, worst["best other"].split()))
        return int(worst["block"]), sorted(new)

    def corrected_gap(self, curves, block):
        """What correcting ``block`` did, as a sentence: at every point both curves of :meth:`recovery_curves` have, the
        corrected model's mean FID against learnable's, called with ``verdicts.called`` on the two models' pooled
        fine-tune-seed sd (a finding of notebook 02, not a claim's verdict)."""
        from tinyfusion.verdicts import called, fmt
        parts = []
        for steps, p in self.curve_points(curves).items():
            names = list(p["fid"])
            if len(names) < 2:
                continue
            a, b = p["fid"][names[1]], p["fid"][names[0]]
            c = called(a, b, p["sd"], p["df"])
            word = {"a": "better", "b": "worse"}.get(c, "within noise")
            parts.append(f"{steps} steps: {fmt(np.mean(a), np.std(a, ddof=1) if len(a) > 1 else None, 2)} vs "
                         f"{fmt(np.mean(b), np.std(b, ddof=1) if len(b) > 1 else None, 2)} ({word})")
        return (f"Correcting block {block}: corrected FID vs learnable FID at each point, called beyond the t critical "
                f"value (95%, two-sided, at the pooled df) of standard errors of the two models' pooled fine-tune-seed "
                f"sd: " + "; ".join(parts) + ".")

    KD_VARIANTS = (("finetune", "finetune", 0.0, "all"), ("kd", "kd", 0.0, "all"), ("repkd", "repkd", 0.0, "first"),
                   ("masked_kd_0.1", "masked_kd", 0.1, "first"), ("masked_kd_2", "masked_kd", 2.0, "all"),
                   ("masked_kd_4", "masked_kd", 4.0, "first"))

    def table5(self):
        """Table 5: the learnable D14 (first seed's decision) recovered by each of ``KD_VARIANTS`` (label, mode,
        k_sigma, seeds: all of the profile's or the first). Returns ``(runs, table, logs)``: one row per run
        (``tables/06_table5_runs.csv``), one per variant with the paper beside it (``tables/06_table5.csv``), and
        {(variant, seed): recovery result}."""
        import pandas as pd
        from tinyfusion.verdicts import fmt
        kept = self.learnable("1:2", "lora", seed=self.prof.seeds[0])["kept"]
        student = self.pruned(kept, name="learnable")
        jobs = [(label, mode, k, s) for label, mode, k, which in self.KD_VARIANTS
                for s in (self.prof.seeds if which == "all" else self.prof.seeds[:1])]
        fts = self.parallel([("finetune", dict(student=student, mode=mode, k_sigma=k, seed=s, kept=kept,
                                               name="learnable")) for _, mode, k, s in jobs], desc="Table 5: recovery")
        scores = self.parallel([("score", {"checkpoint": ft["model"]}) for ft in fts], desc="Table 5: scoring")
        rows, logs = [], {}
        for (label, _, _, s), ft, sc in zip(jobs, fts, scores):
            logs[(label, s)] = ft
            first = ft.get("first_step") or {}
            rows.append({"variant": label, "seed": s, **{k: sc[k] for k in SCORE_METRICS},
                         "skipped_steps": ft.get("skipped_steps", 0),
                         "initial_rep_loss": first.get("rep"), "initial_total_loss": first.get("loss"),
                         "final_loss": ft.get("final_loss")})
        runs = pd.DataFrame(rows)
        self.save_table(runs, "06_table5_runs")
        agg = summarise(rows, by="variant")
        table = pd.DataFrame({
            "variant": agg.variant, "FID (ours)": [fmt(m, s) for m, s in zip(agg.fid_mean, agg.fid_std)],
            "IS (ours)": [fmt(m, s) for m, s in zip(agg.is_mean, agg.is_std)], "seeds": agg.fid_count,
            "initial RepKD loss (ours)": runs.groupby("variant", sort=False).initial_rep_loss.first().values,
            "skipped steps": runs.groupby("variant", sort=False).skipped_steps.sum().values,
            "initial loss (paper)": [paper.TABLE5[v]["initial_loss"] for v in agg.variant],
            "FID (paper)": [paper.TABLE5[v]["FID"] for v in agg.variant]})
        self.save_table(table, "06_table5")
        return runs, table, logs

    def table7(self):
        """Table 7: D7 learned (1:2 LoRA) from the Masked-KD D14 or (1:4) from the teacher, each distilled (logits
        KD) from either; one seed, the four distillations side by side. Returns the rows (``tables/08_table7.csv``) with
        the layers of the 28-layer teacher each D7 keeps (``teacher_layers``: a D7 from the D14 mapped through the
        D14's kept layers) and the paper's FID beside (``samples``: each model's scored samples, for the grid; not in the CSV)."""
        import pandas as pd
        seed = self.prof.seeds[0]
        d14_kept = self.learnable("1:2", "lora", seed=seed)["kept"]
        d14 = self.finetune(self.pruned(d14_kept, name="learnable"), mode="masked_kd", k_sigma=2.0, seed=seed,
                            kept=d14_kept, name="learnable")["model"]
        sources = {"XL": (str(self.teacher_path), "1:4"), "D14": (d14, "1:2")}
        teachers = {"XL": str(self.teacher_path), "D14": d14}
        learned = {src: self.learnable(groups, "lora", seed=seed, source=path)
                   for src, (path, groups) in sources.items()}
        jobs = [(src, tname) for src in sources for tname in teachers]
        for src, (path, _) in sources.items():  # here first: the parallel runs share these folders
            self.pruned(learned[src]["kept"], source=path, name=f"D7 from {src}")
        fts = self.parallel([("recovered", dict(label=f"D7 from {src}", kept=learned[src]["kept"], seed=seed, mode="kd",
                                                source=sources[src][0], teacher=teachers[tname]))
                             for src, tname in jobs], desc="Table 7: distillation")
        scores = self.parallel([("score", {"checkpoint": ft["model"]}) for ft in fts], desc="Table 7: scoring")
        rows = [{"method": f"D7 from {src}", "seed": seed, "mode": "kd", "k_sigma": 0.0,
                 "skipped_steps": ft.get("skipped_steps", 0), "final_loss": ft.get("final_loss"),
                 **{k: sc[k] for k in SCORE_METRICS},
                 "pruned_from": src, "teacher": tname, "kept": learned[src]["kept"],
                 "teacher_layers": learned[src]["kept"] if src == "XL" else [d14_kept[i] for i in learned[src]["kept"]],
                 "paper_FID": paper.TABLE7[(tname, src)], "samples": sc["samples"]}
                for (src, tname), ft, sc in zip(jobs, fts, scores)]
        t7 = pd.DataFrame(rows)
        self.save_table(t7.drop(columns="samples"), "08_table7")
        return t7

    def seed_noise(self):
        """FID seed-to-seed spread measured in notebook 01 (median over methods of the std over seeds), the
        yardstick of the one-seed rules (claim 8; the replaced ``claim3_block_size`` and ``claim4_recoverability``,
        which notebooks 03 and 04 still show); NaN when ``tables/01_table3_runs.csv`` is absent."""
        import pandas as pd
        t3 = self.root / "tables" / "01_table3_runs.csv"
        return float(pd.read_csv(t3).groupby("method").fid.std().median()) if t3.exists() else float("nan")

    def seed_noise_df(self):
        """The yardstick of ``verdicts.claim8_iterative_called``: ``(sd, df)``, the pooled fine-tune-seed FID spread of
        notebook 01's recovery curves at the paper's 100K point (``tables/01_recovery_curves.csv``: every distinct
        model over its fine-tune seeds); (NaN, 0) when that table is absent."""
        import pandas as pd
        from tinyfusion.verdicts import pooled_sd
        path = self.root / "tables" / "01_recovery_curves.csv"
        if not path.exists():
            return float("nan"), 0
        at = pd.read_csv(path)
        at = at[at.steps == self.prof.finetune_steps].drop_duplicates(["kept", "seed"])
        return pooled_sd(at.groupby("kept", sort=False).fid.apply(list).to_dict())

    # ------------------------------------------------------------------ outputs
    def save_fig(self, fig, name):
        """Write ``fig`` as ``figures/<name>.png`` under the profile's results folder; returns that path relative to
        the folder (what an executed notebook shows, the same on every machine)."""
        path = self.root / "figures" / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return path.relative_to(self.root)

    def save_table(self, df, name):
        """Write ``df`` as ``tables/<name>.csv`` under the profile's results folder; returns the relative path."""
        path = self.root / "tables" / f"{name}.csv"
        df.to_csv(path, index=False)
        return path.relative_to(self.root)

    def verdict(self, claim, result, notebook, **extra):
        """Record the verdict on one of the paper's claims: ``result`` is the :class:`tinyfusion.verdicts.Verdict` a
        rule returned; the JSON keeps its status, evidence, ``rule`` (the function that decided) and ``yardstick``
        (the noise it weighed the differences against, and what that was measured from), plus ``extra`` fields."""
        from tinyfusion.verdicts import STATUSES, Verdict
        if not isinstance(result, Verdict):
            raise TypeError(f"Study.verdict takes the Verdict a tinyfusion.verdicts rule returned, not {result!r}")
        if result.status not in STATUSES:
            raise ValueError(f"unknown verdict status {result.status!r}; choose one of {STATUSES}")
        if not result.rule:
            raise ValueError(f"claim {claim}: the verdict names no rule; return it from a rule in tinyfusion.verdicts")
        v = {"claim": claim, "text": paper.CLAIMS[claim], "status": result.status, "evidence": result.evidence,
             "rule": result.rule, "yardstick": cache.jsonable(result.yardstick), "notebook": notebook,
             "profile": self.prof.name, **cache.jsonable(extra)}
        save_json(v, self.root / "verdicts" / f"claim{claim}.json")
        return v


_IN_WORKER = "TINYFUSION_STUDY_WORKER"


def _one_thread(parent=None):
    """Initialise a :meth:`Study.parallel` worker: one thread, and it dies with the process that started it (a killed
    notebook or script leaves no orphan holding a run folder's lock)."""
    import torch

    from tinyfusion.launch import die_with_parent
    die_with_parent(parent=parent)
    torch.set_num_threads(1)


def _study_call(profile, recompute, name, kwargs):
    """A worker of :meth:`Study.parallel`: one cached step of a fresh Study (quiet: the caller shows progress)."""
    import os
    os.environ["TINYFUSION_QUIET"] = "1"
    os.environ[_IN_WORKER] = "1"  # a step that calls ``parallel`` itself runs its calls one by one here
    return getattr(Study(profile, recompute=recompute), name)(**kwargs)


# ---------------------------------------------------------------------- statistics over seeds
def summarise(rows, by="method", metrics=SCORE_METRICS):
    """Mean and standard deviation over seeds of each metric, one row per ``by`` value (pandas DataFrame)."""
    import pandas as pd
    df = pd.DataFrame(rows)
    agg = df.groupby(by, sort=False)[list(metrics)].agg(["mean", "std", "count"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    return agg.reset_index()
