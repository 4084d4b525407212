"""Cost of one learnable-pruning training step: ours against a straightforward version; prints one JSON object.

    python benchmarks/prune_step.py                  # cpu: the profile's teacher (batch 64), DiT-XL/2 (batch 2)
    python benchmarks/prune_step.py --profile-ops    # + where the time goes in ours (torch.profiler table)

The step (section 3 of the paper, official settings): a per-sample hard Gumbel-softmax mask over 1:2 groups
(straight-through), LoRA rank 8 / alpha 16 on every linear layer, the hybrid diffusion loss, backward,
grad-norm clip 1.0, AdamW (logits at 10x lr), EMA of the logits. Variants:

* ``straightforward``: written out here: every block computed for every sample and blended with the mask,
  LoRA as a wrapper module adding ``x @ A.T @ B.T * scale`` to each frozen linear's output, the mask from
  ``F.gumbel_softmax(hard=True)``.
* ``ours``: what ``tinyfusion.pruning.learnable.learn_pruning`` runs: peft LoRA (``add_lora``), ``NMGates``,
  ``GatedDiT`` and ``DiT.forward(mask=...)`` with a mask that requires grad, which goes through
  ``tinyfusion.models.dit.masked_block``: rows whose mask is exactly 0 run their block without autograd.
* ``ours-blend``: ours before that change (the "before" figure): the same peft model and gates, every block
  computed with autograd for every sample and blended with the mask. Same values and gradients as ``ours``
  (checked here: ``grad_check``).

Speed: the variants' steps interleaved round by round in one process (medians of wall-clock and of process
CPU time; the latter is robust to other jobs on a shared CPU). Memory: one step of each variant in a fresh
subprocess (so its peak is its own): peak RSS growth over the step on the CPU (VmHWM reset through
/proc/self/clear_refs), ``torch.cuda.max_memory_allocated`` growth on a GPU, and the bytes of activations saved for backward
(``saved_tensors_hooks``, parameters excluded; exact and noise-free). Writes ``--out`` (default
``results/<profile>/prune_step.json``).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("straightforward", "ours-blend", "ours")
# rounds: timed steps per variant, interleaved in one process after ``warmup`` steps; rounds=0: time ``steps``
# more steps in each variant's fresh (memory-measuring) process instead (DiT-XL/2 on a CPU: ~15-30 s a step).
CPU_CASES = [
    dict(model="teacher", batch=64, rounds=20, warmup=2),  # 8 rounds proved too noisy on a shared box
    dict(model="DiT-XL/2", batch=2, rounds=2, warmup=1),
]
GPU_CASES = [
    dict(model="teacher", batch=128, rounds=20, warmup=3),
    dict(model="DiT-XL/2", batch=32, rounds=10, warmup=2),
]
LR, LOGIT_MULT, RANK, ALPHA, CLIP, EMA = 1e-4, 10.0, 8, 16, 1.0, 0.999


# --------------------------------------------------------------------------- the straightforward step
class ExplicitLoRA(nn.Module):
    """A frozen linear layer plus a LoRA adapter as two explicit matmuls: ``base(x) + x A^T B^T * alpha/r``."""

    def __init__(self, base: nn.Linear, rank=RANK, alpha=ALPHA):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as peft
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale


def wrap_linears(model, rank=RANK, alpha=ALPHA):
    """Replace every ``nn.Linear`` of ``model`` by an ``ExplicitLoRA`` around it (in place)."""
    model.requires_grad_(False)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.Linear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, ExplicitLoRA(mod, rank, alpha))
    return model


class StraightforwardPruner(nn.Module):
    """1:2 logits (K blocks x 2 candidates) and the blended forward written out in full."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.logits = nn.Parameter(torch.full((len(model.blocks) // 2, 2), 0.02))
        self.register_buffer("ema", self.logits.detach().clone())

    def forward(self, x, t, y, tau=1.0):
        B, K = x.shape[0], self.logits.shape[0]
        rows = F.gumbel_softmax((self.logits * 100.0).expand(B, K, 2), tau=tau, hard=True)  # (B, K, 2)
        return blended_forward(self.model, x, t, y, rows.reshape(B, 2 * K))  # 1:2 candidates: [1, 0], [0, 1]

    def update_ema(self, decay=EMA):
        with torch.no_grad():
            self.ema.mul_(decay).add_(self.logits, alpha=1 - decay)


def blended_forward(model, x, t, y, mask):
    """DiT forward with every block computed for every sample and blended: ``m * block(h) + (1 - m) * h``."""
    h, c = model.embed(x, t, y)
    for i, block in enumerate(model.blocks):
        mi = mask[:, i].view(-1, 1, 1)
        h = mi * block(h, c) + (1 - mi) * h
    return model.unpatchify(model.final_layer(h, c))


# --------------------------------------------------------------------------- ours
def build_ours(model, blend=False):
    from tinyfusion.models.gates import NMGates
    from tinyfusion.pruning.learnable import GatedDiT, add_lora

    net = add_lora(model, RANK, ALPHA)
    gates = NMGates(len(net.blocks), "1:2").to(next(net.parameters()).device)

    class BlendGatedDiT(GatedDiT):
        def forward(self, x, t, y, tau=1.0):
            return blended_forward(self.model, x, t, y, self.gates.sample(x.shape[0], tau))

    return (BlendGatedDiT if blend else GatedDiT)(net, gates)


def build(variant, model):
    """(learner module, optimizer, trainable params, ema-update function) for a variant."""
    if variant == "straightforward":
        learner = StraightforwardPruner(wrap_linears(model))
        weights = [p for n, p in learner.model.named_parameters() if p.requires_grad]
        logits, ema = [learner.logits], learner.update_ema
    elif variant in ("ours", "ours-blend"):
        learner = build_ours(model, blend=variant == "ours-blend")
        weights = [p for p in learner.model.parameters() if p.requires_grad]
        logits, ema = list(learner.gates.parameters()), (lambda: learner.gates.update_ema(EMA))
    else:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    learner.to(next(model.parameters()).device)
    opt = torch.optim.AdamW([{"params": weights, "lr": LR}, {"params": logits, "lr": LR * LOGIT_MULT}],
                            lr=LR, weight_decay=0.0)
    return learner, opt, weights + logits, ema


def make_step(learner, opt, trainable, ema, objective):
    """One optimiser step of learnable pruning as ``training.train`` runs it for ``learn_pruning`` (loss, backward,
    clip, step, gate EMA), without the loop's per-step seeding, guard and logging."""
    def step(x, y, t, noise, tau):
        terms = objective.training_losses(learner, x, t, dict(y=y, tau=tau), noise=noise)
        loss = terms["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, CLIP)
        opt.step()
        ema()
        return loss.detach().item()
    return step


# --------------------------------------------------------------------------- measurement helpers
def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class SavedBytes:
    """Counts the bytes of tensors autograd saves for backward (unique storages, parameters excluded)."""

    def __init__(self, params):
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.seen, self.bytes = set(), 0

    def pack(self, t):
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr not in self.skip and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += s.nbytes()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def _batch(model, batch, seed, device):
    g = torch.Generator().manual_seed(seed)
    size, c = model.x_embedder.img_size[0], model.in_channels
    x = torch.rand(batch, c, size, size, generator=g) * 2 - 1
    y = torch.randint(0, model.num_classes, (batch,), generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    noise = torch.randn(batch, c, size, size, generator=g)
    return [v.to(device) for v in (x, y, t, noise)]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def worker(spec):
    """One fresh process: build the variant, one memory-measured step, ``warmup`` + ``steps`` timed steps."""
    from tinyfusion.diffusion import create_objective
    from tinyfusion.speed import random_dit

    torch.manual_seed(spec.get("seed", 0))
    device = torch.device(spec.get("device", "cpu"))
    model = random_dit(spec["model"], device=device).train()
    learner, opt, trainable, ema = build(spec["variant"], model)
    step = make_step(learner, opt, trainable, ema, create_objective(learn_sigma=model.learn_sigma))
    batches = [_batch(model, spec["batch"], 1000 + i, device) for i in range(1 + spec["warmup"] + spec["steps"])]
    params = list(learner.parameters())
    n_train = sum(p.numel() for p in trainable)

    counter = SavedBytes(params)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    hwm_ok = _reset_hwm()
    rss0 = _status_kb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    with counter.hooks():
        loss = step(*batches[0], tau=4.0)
    _sync(device)
    first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    res = dict(variant=spec["variant"], first_step_s=first, loss=loss, trainable_params=n_train,
               saved_activation_mb=counter.bytes / 2**20)
    if device.type == "cuda":
        res["peak_mem_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        res["peak_mem_mb"] = (_status_kb("VmHWM") - rss0) / 1024 if hwm_ok else None
        res["peak_rss_note"] = "VmHWM growth over the first step" if hwm_ok else "clear_refs unavailable"
    for b in batches[1:1 + spec["warmup"]]:
        step(*b, tau=2.0)
    times, cpu = [], []
    for b in batches[1 + spec["warmup"]:]:
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        step(*b, tau=2.0)
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    res["step_s"], res["step_cpu_s"] = (times, cpu) if times else ([first], [first_cpu])
    return res


def run_worker(spec, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         env=env, timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"prune_step worker {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- checks and profiling
def grad_check(model_name="DiT-T28/4", batch=16, depth=8, seed=0):
    """Max relative gradient difference between ours and ours-blend (same mask, same LoRA weights),
    and the loss of the straightforward step with the same weights and mask (it must equal ours)."""
    from tinyfusion.diffusion import create_objective
    from tinyfusion.speed import random_dit

    torch.manual_seed(seed)
    objective = create_objective()
    base = random_dit(model_name, depth=depth)
    learner = build_ours(base)
    for n, p in learner.model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.02)  # B = 0 at start would make every gradient of A zero
    x, y, t, noise = _batch(base, batch, seed, "cpu")
    mask = learner.gates.sample(batch, tau=1.0)
    grads, losses = [], []
    for fwd in (lambda xt, tt, y: learner.model(xt, tt, y, mask=mask),
                lambda xt, tt, y: blended_forward(learner.model, xt, tt, y, mask)):
        learner.zero_grad()
        torch.manual_seed(seed + 1)  # the same label dropout (CFG training) in both forwards
        xin = x.clone().requires_grad_(True)
        loss = objective.training_losses(fwd, xin, t, dict(y=y), noise=noise)["loss"].mean()
        loss.backward(retain_graph=True)
        g = {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
        g["input"] = xin.grad.clone()
        grads.append(g)
        losses.append(loss.item())
    # per gradient tensor ||g_ours - g_blend|| / ||g_ours||, worst over the weight update (LoRA) and the gate
    # logits (whose gradient is a sum of per-sample terms that nearly cancel, so float rounding shows more)
    def worst(keys):
        return max(float((grads[0][k] - grads[1][k]).norm() / (grads[0][k].norm() + 1e-30)) for k in keys)
    # the straightforward forward with peft's LoRA weights copied in, under the same mask
    plain = copy.deepcopy(learner.model)
    from tinyfusion.pruning.indices import strip_adapters
    strip_adapters(plain, merge=False)
    sf = StraightforwardPruner(wrap_linears(plain))
    lora = {n: p for n, p in learner.model.named_parameters() if "lora_" in n}
    for n, mod in sf.model.named_modules():
        if isinstance(mod, ExplicitLoRA):
            mod.A.data.copy_(lora[f"{n}.lora_A.default.weight"])
            mod.B.data.copy_(lora[f"{n}.lora_B.default.weight"])
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        sf_loss = float(objective.training_losses(lambda xt, tt, y: blended_forward(sf.model, xt, tt, y, mask), x, t,
                                                  dict(y=y), noise=noise)["loss"].mean())
    gate_keys = [k for k in grads[0] if k.startswith("gates.")]
    weight_keys = [k for k in grads[0] if k not in gate_keys]
    return dict(model=model_name, depth=depth, batch=batch, blend_max_rel_grad_diff_weights=worst(weight_keys),
                blend_max_rel_grad_diff_gates=worst(gate_keys),
                n_grads_compared=len(grads[0]), loss_ours=losses[0], loss_blend=losses[1],
                loss_straightforward=sf_loss,
                kept_fraction=float((mask.detach() != 0).float().mean()))


def profile_ours(model_name, batch, variant="ours", steps=2, rows=15):
    """torch.profiler table (self CPU time) of a few steps of a variant."""
    from torch.profiler import profile

    from tinyfusion.diffusion import create_objective
    from tinyfusion.speed import random_dit

    model = random_dit(model_name).train()
    learner, opt, trainable, ema = build(variant, model)
    step = make_step(learner, opt, trainable, ema, create_objective())
    b = _batch(model, batch, 0, "cpu")
    step(*b, tau=2.0)
    with profile() as prof:
        for _ in range(steps):
            step(*b, tau=2.0)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# --------------------------------------------------------------------------- driver
def interleaved_steps(model_name, batch, rounds, warmup, device, seed=0):
    """Step times of every variant in one process, round by round (A, B, C, A, B, C, ...): {variant: (wall, cpu)}."""
    from tinyfusion.diffusion import create_objective
    from tinyfusion.speed import random_dit

    objective, steps = create_objective(), {}
    torch.manual_seed(seed)
    base = random_dit(model_name, device=device).train()
    data = [_batch(base, batch, 1000 + i, device) for i in range(warmup + rounds)]
    for v in VARIANTS:  # the frozen base weights are shared (no variant updates them): one copy in memory
        torch.manual_seed(seed)
        model = copy.deepcopy(base, memo={id(p): p for p in base.parameters()})
        steps[v] = make_step(*build(v, model), objective)
    times = {v: ([], []) for v in VARIANTS}
    for i, b in enumerate(data):
        for v, step in steps.items():
            _sync(torch.device(device))
            t0, c0 = time.perf_counter(), time.process_time()
            step(*b, tau=2.0)
            _sync(torch.device(device))
            if i >= warmup:
                times[v][0].append(time.perf_counter() - t0)
                times[v][1].append(time.process_time() - c0)
    return times


def run_case(case, profile, device):
    """Memory (a fresh process per variant, one step) and speed (interleaved in one process, or, with
    ``rounds=0``, the fresh processes' single step) of the three variants on one model and batch."""
    from tinyfusion.profiles import get_profile

    model = get_profile(profile).model if case["model"] == "teacher" else case["model"]
    t0 = time.perf_counter()
    rounds = case.get("rounds", 0)
    extra = 0 if rounds else case.get("steps", 1)  # without rounds, the fresh processes time their next steps
    mem = {v: run_worker(dict(model=model, batch=case["batch"], steps=extra, warmup=0, device=device, variant=v))
           for v in VARIANTS}
    if rounds:
        timed = interleaved_steps(model, case["batch"], rounds, case.get("warmup", 1), device)
    else:
        timed = {v: (r["step_s"], r["step_cpu_s"]) for v, r in mem.items()}
    out = dict(model=model, device=device, batch=case["batch"], timed_steps=rounds or max(extra, 1),
               timing=("interleaved in one process" if rounds else
                       f"{'steps 2..' if extra else 'first step'} of a fresh process per variant"), variants={})
    for v in VARIANTS:
        wall, cpu = timed[v]
        out["variants"][v] = dict(
            steps_per_s=round(1 / statistics.median(wall), 4), steps_per_cpu_s=round(1 / statistics.median(cpu), 4),
            step_s=[round(x, 4) for x in wall], step_cpu_s=[round(x, 4) for x in cpu],
            peak_mem_mb=None if mem[v]["peak_mem_mb"] is None else round(mem[v]["peak_mem_mb"], 1),
            saved_activation_mb=round(mem[v]["saved_activation_mb"], 2),
            trainable_params=mem[v]["trainable_params"], first_step_loss=round(mem[v]["loss"], 5))
    v = out["variants"]
    sf = v["straightforward"]
    key = "steps_per_cpu_s" if device == "cpu" else "steps_per_s"  # CPU time: robust to other jobs on the box
    for name in ("ours-blend", "ours"):
        out[f"{name}_vs_straightforward_speed"] = round(v[name]["steps_per_s"] / sf["steps_per_s"], 3)
        out[f"{name}_vs_straightforward_speed_cpu"] = round(v[name]["steps_per_cpu_s"] / sf["steps_per_cpu_s"], 3)
        out[f"{name}_vs_straightforward_saved_mem"] = round(
            v[name]["saved_activation_mb"] / sf["saved_activation_mb"], 3)
        if sf["peak_mem_mb"] and v[name]["peak_mem_mb"]:
            out[f"{name}_vs_straightforward_peak_mem"] = round(v[name]["peak_mem_mb"] / sf["peak_mem_mb"], 3)
    out["ours_vs_blend_speed"] = round(v["ours"]["steps_per_s"] / v["ours-blend"]["steps_per_s"], 3)
    out["ours_vs_blend_speed_cpu"] = round(v["ours"]["steps_per_cpu_s"] / v["ours-blend"]["steps_per_cpu_s"], 3)
    out["bar_measure"] = key
    out["bar_ours_not_slower"] = v["ours"][key] >= 0.95 * sf[key]  # 5%: measurement noise
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[prune_step] {model} batch {case['batch']}: "
          + ", ".join(f"{k} {x['steps_per_s']} steps/s ({x['steps_per_cpu_s']} per CPU s), saved "
                      f"{x['saved_activation_mb']} MB, peak {x['peak_mem_mb']} MB" for k, x in v.items())
          + f" ({out['seconds']} s)", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--out", default=None, help="JSON output (default results/<profile>/prune_step.json)")
    p.add_argument("--cases", type=json.loads, default=None, help="cases as JSON (default: built-in list)")
    p.add_argument("--profile-ops", action="store_true", help="also print a torch.profiler table of ours")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    from tinyfusion.io import save_json
    from tinyfusion.profiles import get_profile

    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = dict(profile=a.profile, torch=torch.__version__, device=device,
                  gpu=torch.cuda.get_device_name(0) if device == "cuda" else None,
                  threads=int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())),
                  loadavg_start=list(os.getloadavg()))
    t0 = time.perf_counter()
    result["grad_check"] = grad_check()
    print(f"[prune_step] grad check: {json.dumps(result['grad_check'])}", flush=True)
    cases = a.cases or (GPU_CASES if device == "cuda" else CPU_CASES)
    result["cases"] = [run_case(c, a.profile, device) for c in cases]
    if a.profile_ops:
        teacher = get_profile(a.profile).model
        for v in VARIANTS:
            table = profile_ours(teacher, 64, variant=v)
            result.setdefault("profile_tables", {})[v] = table
            print(f"[prune_step] torch.profiler, {v}, {teacher} batch 64:\n{table}", flush=True)
    result["loadavg_end"] = list(os.getloadavg())
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(a.out) if a.out else get_profile(a.profile).results / "prune_step.json"
    save_json(result, out)
    result["out"] = str(out)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
