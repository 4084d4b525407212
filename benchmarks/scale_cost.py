"""What a rung of the scale ladder (notebook 12) costs per sample, against today's teacher; prints one JSON object.

    python benchmarks/scale_cost.py                 # the cpu ladder: cpu, cpu-w128, cpu-t49 (one thread)
    python benchmarks/scale_cost.py --rounds 5 --out /tmp/scale_cost.json

For each rung's model (random weights: the cost does not depend on them), one pre-training step (the profile's batch,
the objective's loss, backward, AdamW) and one batch of sampling network calls (the evaluation batch, CFG doubling it,
no grad), timed round by round with the rungs interleaved, so a busy machine slows them alike; the medians of
process CPU time, which other jobs on a shared CPU disturb least, and their ratios to the first rung. The estimates
scale today's measured teacher training (``data/teacher_cpu.json``: wall time of its 12,000 steps) by the ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tinyfusion import diffusion
from tinyfusion.io import print_json
from tinyfusion.models.registry import build
from tinyfusion.profiles import ROOT, get_profile
from tinyfusion.scale import ladder


def _cpu_time(fn):
    t = time.process_time()
    fn()
    return time.process_time() - t


def _train_step(model, objective, prof):
    """One pre-training step of ``model`` at the profile's batch: the objective's loss, backward, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=prof.pretrain_lr)
    size, ch = prof.image_size, model.config["in_channels"]
    x = torch.randn(prof.pretrain_batch, ch, size, size)
    y = torch.randint(0, 10, (prof.pretrain_batch,))

    def step():
        t = torch.randint(0, objective.num_timesteps, (len(x),))
        loss = objective.training_losses(model, x, t, dict(y=y))["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _sample_call(model, prof):
    """One network call of sampling: the evaluation batch, doubled by CFG, without grad."""
    size, ch = prof.image_size, model.config["in_channels"]
    x = torch.randn(2 * prof.batch_eval, ch, size, size)
    t = torch.full((len(x),), 500)
    y = torch.randint(0, 11, (len(x),))

    def call():
        with torch.no_grad():
            model(x, t, y)
    return call


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--profile", default="cpu", help="base profile whose ladder is measured (scale.ladder)")
    p.add_argument("--rounds", type=int, default=5, help="timing rounds (medians are reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the study runs one per worker)")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rungs = ladder(args.profile)
    work = {}
    for r in rungs:
        prof = get_profile(r)
        model = build(prof.model)
        objective = diffusion.objective_for(model)
        work[r] = {"train": _train_step(model, objective, prof), "sample": _sample_call(model.eval(), prof),
                   "params": sum(q.numel() for q in model.parameters()),
                   "tokens": (model.config["input_size"] // model.config["patch_size"]) ** 2}
        work[r]["train"]()  # warm-up
    times = {r: {"train": [], "sample": []} for r in rungs}
    for _ in range(args.rounds):
        for r in rungs:
            for kind in ("train", "sample"):
                times[r][kind].append(_cpu_time(work[r][kind]))
    base = rungs[0]
    med = {r: {k: statistics.median(v) for k, v in times[r].items()} for r in rungs}
    teacher_log = ROOT / "data" / "teacher_cpu.json"
    base_wall = json.loads(teacher_log.read_text())["wall_s"] if teacher_log.exists() else None
    out = {"profile": args.profile, "threads": args.threads, "rounds": args.rounds,
           "base_teacher_wall_min": round(base_wall / 60, 1) if base_wall else None,
           "note": "teacher_estimate_min: the base teacher's wall time (its own threads, data/teacher_cpu.json) x train_ratio",
           "rungs": {}}
    for r in rungs:
        ratio = {k: med[r][k] / med[base][k] for k in ("train", "sample")}
        out["rungs"][r] = {"model": get_profile(r).model, "params": work[r]["params"], "tokens": work[r]["tokens"],
                           "train_step_cpu_s": round(med[r]["train"], 4), "sample_call_cpu_s": round(med[r]["sample"], 4),
                           "train_ratio": round(ratio["train"], 2), "sample_ratio": round(ratio["sample"], 2),
                           "teacher_estimate_min": round(base_wall / 60 * ratio["train"], 0) if base_wall else None}
    return print_json(out, args.out)


if __name__ == "__main__":
    main()
