"""The replication's steps, cached per profile: what the numbered notebooks call.

``Study(profile)`` owns ``results/<profile>/``. Each expensive step (random-candidate study, learnable pruning,
surgery, fine-tuning, sampling + scoring) writes its artefacts into a folder keyed by its config
(``<kind>/<name>-<hash>``) and a ``study.json`` last; a rerun with the same config reuses it, a changed
config recomputes into a new folder, and a half-finished step resumes from its own checkpoint.
Entry points run in-process on one process, under torchrun (``tinyfusion.launch``) when ``profile.nproc > 1``.
"""
from __future__ import annotations

import importlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from tinyfusion import paper
from tinyfusion.data import load_dataset
from tinyfusion.io import _json_default, config_key, load_json, save_json, sha256
from tinyfusion.models import load_dit
from tinyfusion.profiles import get_profile

BASELINES = ("shortgpt", "flux-lite", "sensitivity", "oracle")
RANDOM_PICKS = ("min-loss random", "median-loss random", "max-loss random")


_FINGERPRINTS = {}  # (path, size, mtime) -> start of the file's SHA-256


def _rel(path):
    """A file as a stable cache-key string: its path (relative to the repository when inside it) and, when it
    exists, the start of its SHA-256, so that a file replaced at the same path (a retrained teacher) makes every
    step computed from it recompute instead of reusing results of the old file."""
    from tinyfusion.profiles import ROOT
    p = Path(path).resolve()
    try:
        name = str(p.relative_to(ROOT))
    except ValueError:
        name = str(p)
    if not p.is_file():
        return name
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = sha256(p)[:12]
    return f"{name}@{_FINGERPRINTS[key]}"


def _plain(obj):
    """``obj`` as it reads back from JSON (numpy values and tuples become plain numbers and lists)."""
    return json.loads(json.dumps(obj, default=_json_default))


def run_entry(module, nproc=1, **cfg):
    """Run ``tinyfusion.cli.<module>``: in this process when ``nproc == 1``, else under torchrun."""
    name = module if "." in module else f"tinyfusion.cli.{module}"
    if nproc > 1:
        from tinyfusion.launch import launch
        return launch(name, nproc=nproc, **cfg)
    return importlib.import_module(name).run(**cfg)


class Study:
    """Cached replication steps for one profile (``"smoke"``, ``"cpu"``, ``"gpu"``, ``"imagenet"``)."""

    def __init__(self, profile=None, recompute=False):
        self.prof = get_profile(profile)
        self.root = self.prof.results
        self.recompute = recompute
        for sub in ("figures", "tables", "verdicts"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._teacher = self._data = self._calib = None

    # ------------------------------------------------------------------ inputs
    @property
    def teacher_path(self):
        return self.prof.path(self.prof.teacher)

    def teacher(self):
        """The profile's teacher (EMA weights), in eval mode."""
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
            self._teacher = load_dit(self.teacher_path, name=self.prof.model).eval()
        return self._teacher

    def data(self):
        """Training images and labels of the profile, as two tensors."""
        if self._data is None:
            self._data = load_dataset(self.prof).tensors()
        return self._data

    def calib(self):
        """The calibration set every pruning method is scored on (fixed images, noise and timesteps)."""
        if self._calib is None:
            from tinyfusion.pruning.scores import calibration_set
            images, labels = self.data()
            self._calib = calibration_set(images, labels, self.prof.calib_batches, self.prof.calib_batch, seed=0)
        return self._calib

    # ------------------------------------------------------------------ caching
    def cached(self, kind, name, config, fn):
        """Return ``fn(folder)``'s result for ``config``, computing it only when no finished result exists."""
        config = {"profile": self.prof.name, **config}
        folder = self.root / kind / f"{name}-{config_key(config)}"
        done = folder / "study.json"
        if done.exists() and not self.recompute:
            saved = load_json(done)
            if saved.get("config") == _plain(config):
                return saved["result"]
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        result = fn(folder)
        save_json({"config": config, "result": result, "wall_s": round(time.time() - t0, 2)}, done)
        return _plain(result)

    # ------------------------------------------------------------------ pruning
    def random_study(self):
        """Calibration losses of ``profile.random_candidates`` random 50% prunes (Figure 5)."""
        from tinyfusion.pruning.random import random_candidate_study
        keep = self.teacher().depth // 2

        def fn(folder):
            r = random_candidate_study(self.teacher(), self.calib(), self.prof.random_candidates, keep)
            np.save(folder / "losses.npy", np.asarray(r["losses"], dtype=np.float64))
            order = np.argsort(r["losses"])
            pick = {"min-loss random": int(order[0]), "median-loss random": int(order[len(order) // 2]),
                    "max-loss random": int(order[-1])}
            return {"n": len(r["losses"]), "rate": r["rate"], "n_samples": r.get("n_samples"), "min": float(np.min(r["losses"])),
                    "max": float(np.max(r["losses"])), "median": float(np.median(r["losses"])),
                    "picks": {k: {"kept": list(map(int, r["kept"][i])), "loss": float(r["losses"][i])}
                              for k, i in pick.items()}}
        cfg = {"n": self.prof.random_candidates, "keep": keep, "teacher": _rel(self.teacher_path),
               "calib": [self.prof.calib_batches, self.prof.calib_batch]}
        res = self.cached("random_study", "r50", cfg, fn)
        res["losses"] = np.load(self._path_of("random_study", "r50", cfg) / "losses.npy")
        return res

    def _path_of(self, kind, name, config):
        return self.root / kind / f"{name}-{config_key({'profile': self.prof.name, **config})}"

    def baseline(self, method):
        """Kept indices and per-layer scores of a metric-based or hand-made baseline (28 -> 14)."""
        from tinyfusion.pruning import scores
        from tinyfusion.pruning.indices import oracle_indices
        keep = self.teacher().depth // 2

        def fn(folder):
            if method == "oracle":
                return {"kept": oracle_indices(self.teacher().depth, keep), "scores": None}
            f = {"shortgpt": scores.shortgpt, "flux-lite": scores.flux_lite, "sensitivity": scores.sensitivity}[method]
            kept, s = f(self.teacher(), self.calib(), keep)
            return {"kept": list(map(int, kept)), "scores": [float(v) for v in s]}
        if method not in BASELINES:
            raise ValueError(f"unknown baseline {method!r}; choose from {BASELINES}")
        return self.cached("baselines", method.replace("-", ""), {"keep": keep, "teacher": _rel(self.teacher_path),
                           "calib": [self.prof.calib_batches, self.prof.calib_batch]}, fn)

    def learnable(self, groups="1:2", update="lora", seed=0, source=None, steps=None):
        """Learnable pruning (``cli.prune_learn``) of ``source`` (default: the teacher); cached."""
        source = str(source or self.teacher_path)
        steps = steps or self.prof.prune_steps
        cfg = {"groups": groups, "update": update, "seed": seed, "source": _rel(source), "steps": steps,
               "ema_decay": self.prof.prune_ema_decay}
        return self.cached("prune_learn", f"{str(groups).replace(':', 'of')}_{update}_s{seed}", cfg,
                           lambda folder: run_entry("prune_learn", self.prof.nproc, profile=self.prof.name,
                                                    teacher=source, groups=groups, update=update, seed=seed,
                                                    steps=steps, ema_decay=self.prof.prune_ema_decay,
                                                    out=str(folder)))

    def calibration_loss(self, kept):
        from tinyfusion.pruning.scores import calibration_loss
        mask = torch.zeros(self.teacher().depth)
        mask[list(kept)] = 1
        return calibration_loss(self.teacher(), self.calib(), mask=mask)

    def pruned(self, kept, source=None, name="pruned"):
        """Path of the compact model keeping ``kept`` layers of ``source`` (default: the teacher)."""
        from tinyfusion.io import save_checkpoint
        from tinyfusion.pruning.indices import prune
        source = Path(source or self.teacher_path)

        def fn(folder):
            model = prune(load_dit(source, name=self.prof.model), list(kept))
            save_checkpoint({"ema": model.state_dict(), "config": model.config}, folder / "model.pt")
            return {"path": str(folder / "model.pt"), "depth": model.depth}
        return self.cached("pruned", name, {"kept": list(map(int, kept)), "source": _rel(source)}, fn)["path"]

    # ------------------------------------------------------------------ recovery and scoring
    def finetune(self, student, mode="finetune", k_sigma=0.0, seed=0, steps=None, teacher=None, kept=None,
                 groups="1:2", parent_map=None, name="ft"):
        """Fine-tune (``cli.finetune``) the pruned checkpoint ``student``; returns its result dict."""
        steps = steps or self.prof.finetune_steps
        teacher = str(teacher or self.teacher_path)
        cfg = dict(student=_rel(student), mode=mode, k_sigma=k_sigma, seed=seed, steps=steps, teacher=_rel(teacher),
                   kept=kept, groups=groups, parent_map=parent_map)
        return self.cached("finetune", f"{name}_{mode}_s{seed}", cfg,
                           lambda folder: run_entry("finetune", self.prof.nproc, profile=self.prof.name,
                                                    student=str(student), teacher=teacher, mode=mode,
                                                    k_sigma=k_sigma, kept=kept, groups=groups, parent_map=parent_map,
                                                    steps=steps, seed=seed, out=str(folder)))

    def score(self, checkpoint, name=None):
        """Sample ``profile.eval_samples`` images (fixed seed, sampler, steps, CFG) and score them.

        The cache is keyed by the checkpoint and the evaluation settings, so every notebook that scores the same
        model reuses one result; ``name`` only labels the folder (default: the checkpoint's run folder).
        """
        from tinyfusion.metrics import evaluate_npz
        p = self.prof
        name = name or Path(checkpoint).parent.name.split("-")[0]
        cfg = dict(checkpoint=_rel(checkpoint), n=p.eval_samples, sampler=p.sampler, steps=p.sample_steps,
                   cfg_scale=p.cfg_scale, seed=0)

        def fn(folder):
            run_entry("sample", p.nproc, **{**cfg, "checkpoint": str(checkpoint)}, batch=p.batch_eval,
                      out=str(folder / "samples.npz"))
            return {**evaluate_npz(folder / "samples.npz", seed=0), "samples": str(folder / "samples.npz")}
        return self.cached("scores", name, cfg, fn)

    def recover(self, label, kept, seeds=None, mode="finetune", k_sigma=0.0, steps=None, source=None,
                teacher=None, groups="1:2", parent_map=None):
        """Prune to ``kept``, fine-tune with each seed, score each: a list of rows (one per seed)."""
        rows = []
        student = self.pruned(kept, source=source, name=label.replace(" ", "_").replace(":", "of"))
        for seed in seeds if seeds is not None else self.prof.seeds:
            ft = self.finetune(student, mode=mode, k_sigma=k_sigma, seed=seed, steps=steps, teacher=teacher,
                               kept=list(map(int, kept)), groups=groups, parent_map=parent_map,
                               name=label.replace(" ", "_").replace(":", "of"))
            sc = self.score(ft["model"])
            rows.append({"method": label, "seed": seed, "mode": mode, "k_sigma": k_sigma,
                         "skipped_steps": ft.get("skipped_steps", 0), "final_loss": ft.get("final_loss"),
                         **{k: sc[k] for k in ("fid", "is", "sfid", "precision", "recall", "class_accuracy")}})
        return rows

    def table4(self, schemes=("1:2", "2:4", "7:14"), updates=("lora", "full", "frozen"), seed=None):
        """The nine cells of Table 4 (scheme x update): learnable pruning, then a short fine-tune and a score.

        One seed per cell (``prof.seeds[0]``), ``prof.ablation_finetune_steps`` of fine-tuning, as the paper's
        10K-step ablation. Returns a DataFrame (one row per cell, with the paper's IS and FID beside ours), also
        saved as ``tables/table4_runs.csv``; notebooks 03 and 04 read it by scheme and by update.
        """
        import pandas as pd
        seed = self.prof.seeds[0] if seed is None else seed
        rows = []
        for g in schemes:
            for u in updates:
                r = self.learnable(g, u, seed=seed)
                for row in self.recover(f"{g} {u}", r["kept"], seeds=[seed], steps=self.prof.ablation_finetune_steps):
                    rows.append({**row, "scheme": g, "update": u, "trainable_fraction": r["trainable_fraction"],
                                 "paper_IS": paper.TABLE4[(g, u)][0], "paper_FID": paper.TABLE4[(g, u)][1]})
        t4 = pd.DataFrame(rows)
        self.save_table(t4, "table4_runs")
        return t4

    def seed_noise(self):
        """FID seed-to-seed spread measured in notebook 01 (median over methods of the std over seeds), the
        yardstick for one-seed comparisons; NaN when notebook 01 has not run."""
        import pandas as pd
        t3 = self.root / "tables" / "01_table3_runs.csv"
        return float(pd.read_csv(t3).groupby("method").fid.std().median()) if t3.exists() else float("nan")

    # ------------------------------------------------------------------ outputs
    def save_fig(self, fig, name):
        path = self.root / "figures" / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return path

    def save_table(self, df, name):
        path = self.root / "tables" / f"{name}.csv"
        df.to_csv(path, index=False)
        return path

    def verdict(self, claim, status, evidence, notebook):
        """Record the verdict on one of the paper's claims (``status``: held / not held / mixed / within noise)."""
        if status not in ("held", "not held", "mixed", "within noise"):
            raise ValueError(f"unknown verdict status {status!r}")
        v = {"claim": claim, "text": paper.CLAIMS[claim], "status": status, "evidence": evidence,
             "notebook": notebook, "profile": self.prof.name}
        save_json(v, self.root / "verdicts" / f"claim{claim}.json")
        return v


# ---------------------------------------------------------------------- statistics over seeds
def summarise(rows, by="method", metrics=("fid", "is", "sfid", "precision", "recall", "class_accuracy")):
    """Mean and standard deviation over seeds of each metric, one row per ``by`` value (pandas DataFrame)."""
    import pandas as pd
    df = pd.DataFrame(rows)
    agg = df.groupby(by, sort=False)[list(metrics)].agg(["mean", "std", "count"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    return agg.reset_index()


def compare(a, b, lower_is_better=True):
    """Which of two sets of seed results is better: "a", "b" or "within noise".

    A gap counts only when it exceeds the sum of the two standard deviations (each at least 1% of the mean);
    with one seed per side nothing can be said beyond the raw order, and the caller should say so.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        fa, fb = np.isfinite(a).all(), np.isfinite(b).all()
        return "a" if fa and not fb else "b" if fb and not fa else "within noise"
    ma, mb = a.mean(), b.mean()
    sa = max(a.std(ddof=1) if len(a) > 1 else 0.0, 0.01 * abs(ma))
    sb = max(b.std(ddof=1) if len(b) > 1 else 0.0, 0.01 * abs(mb))
    if abs(ma - mb) <= sa + sb:
        return "within noise"
    better_a = ma < mb if lower_is_better else ma > mb
    return "a" if better_a else "b"


def beyond_noise(a, b, noise):
    """Compare two one-seed FIDs: "a" / "b" when that one is lower by more than twice ``noise`` (the seed spread),
    else "within noise"; with no yardstick (NaN) the raw order decides."""
    if not np.isfinite(noise):
        return "a" if a < b else "b"
    return "within noise" if abs(a - b) <= 2 * noise else ("a" if a < b else "b")


def fmt(mean, std=None, digits=3):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "NaN"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
