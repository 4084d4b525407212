"""Speed of depth- versus width-pruned DiTs (paper Fig. 4 and the it/s column of Table 1).

This module holds the timing (``sampling_throughput``, ``interleaved_throughput``, ``speed_sweep``) and
``random_dit`` (random weights, built fast; from ``tinyfusion.pruning.width``, re-exported); the pruned models come from ``tinyfusion.pruning.indices.prune``
(depth) and ``tinyfusion.pruning.width`` (width, and the parameter / MAC counts).

Depth pruning removes whole blocks, so a D14 from D28 does half the block work with half the kernel launches
and half the per-layer Python overhead: its speed-up should track the linear ideal ``1 / (1 - r)``. Width
pruning (uniform removal of attention heads and MLP channels in every block) keeps every layer, its
LayerNorms, modulation and residual adds at full width and only narrows the matmuls; how much speed that
costs depends on the device (narrow GEMMs lose efficiency on a GPU; per-layer overhead does not shrink).
Beware the yardstick: adaLN holds a third of DiT's parameters but runs once per sample, not per token, so a
width-pruned model with D14's *parameter count* removes far more compute than D14 does. ``speed_sweep``
therefore reports both "channels" (1 - r of the heads and channels, about D14's MACs) and "params" widths.

    from tinyfusion.pruning.indices import oracle_indices, prune
    from tinyfusion.pruning.width import width_pruned
    from tinyfusion.speed import sampling_throughput, speed_sweep
    d14 = prune(model, oracle_indices(28, 14))        # 14 evenly spaced blocks
    w50 = width_pruned(model, 0.5)                    # half the heads and MLP channels of every block
    it_s = sampling_throughput(d14, batch=64, steps=5)
    rows = speed_sweep("DiT-T28/4", batch=250, steps=5)

Throughput is denoising iterations per second: one iteration is one DiT forward of the whole batch (twice the
batch with classifier-free guidance), as in the paper's it/s. ``speed_sweep`` interleaves the models round
by round (A/B/A/B...) so that noise on a shared machine hits every model alike, and reports medians and every
round's speed-up against the unpruned model timed in that round (their spread is a speed-up's error bar).
"""
from __future__ import annotations

import statistics
import time

import torch

from tinyfusion.pruning.indices import oracle_indices, prune
from tinyfusion.pruning.width import (_config, _randomise, _shape, count_params, forward_macs,  # noqa: F401
                                      random_dit, width_for_params, width_pruned)


# --------------------------------------------------------------------------- timing


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class _Sampler:
    """A prepared denoising loop for one model: inputs on the device, (compiled) forward, one timed call."""

    def __init__(self, model, batch, steps, device="cpu", dtype=torch.float32, compile=False, cfg=True,
                 cfg_scale=1.5, seed=0):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.steps, self.device = int(steps), device
        m = self.model
        size, c = m.x_embedder.img_size[0], m.in_channels
        g = torch.Generator().manual_seed(seed)
        n = 2 * batch if cfg else batch
        self.x = torch.randn(n, c, size, size, generator=g).to(device=device, dtype=dtype)
        y = torch.randint(0, m.num_classes, (batch,), generator=g)
        if cfg:
            y = torch.cat([y, torch.full_like(y, m.num_classes)])
        self.y = y.to(device)
        self.ts = torch.linspace(999, 0, self.steps).long().to(device)
        fwd = (lambda x, t, y: m.forward_with_cfg(x, t, y, cfg_scale)) if cfg else m.forward
        self.fn = torch.compile(fwd) if compile else fwd
        self.c = c
        # weights in ``dtype``; autocast for what the model builds in fp32 itself (timestep sinusoids)
        self.autocast = torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)

    @torch.inference_mode()
    def __call__(self):
        """(wall seconds, process CPU seconds) for ``steps`` denoising iterations (each feeds the next)."""
        x = self.x
        _sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        with self.autocast:
            for t in self.ts:
                out = self.fn(x, t.expand(len(x)), self.y)
                x = x - 0.01 * out[:, : self.c]  # a stand-in for the DDIM update: keeps the steps dependent
        _sync(self.device)
        return time.perf_counter() - t0, time.process_time() - c0


def sampling_throughput(model, batch, steps, device="cpu", dtype=torch.float32, compile=False, warmup=1,
                        repeats=3, cfg=True):
    """Denoising iterations per second of ``model`` (median of ``repeats`` timed loops of ``steps``).

    One iteration is one forward of the whole batch (``2 * batch`` with classifier-free guidance, through
    ``forward_with_cfg``), under ``torch.inference_mode``, synchronised on CUDA. A ``dtype`` other than fp32
    casts the weights and runs under ``torch.autocast`` in that dtype. ``warmup`` untimed loops run
    first (they absorb ``torch.compile``'s compilation and allocator warm-up). The model is moved to
    ``device``/``dtype`` and put in eval mode in place.
    """
    run = _Sampler(model, batch, steps, device, dtype, compile, cfg)
    for _ in range(warmup):
        run()
    return steps / statistics.median(run()[0] for _ in range(repeats))


def interleaved_throughput(models, batch, steps, device="cpu", dtype=torch.float32, compile=False, warmup=1,
                           repeats=3, cfg=True):
    """``sampling_throughput`` of several models, measured round by round (A, B, C, A, B, C, ...).

    ``models``: dict name -> DiT. Returns dict name -> dict(it_s=median over rounds of wall-clock it/s,
    it_s_cpu=the same per second of process CPU time, runs=[wall it/s of every round]). On a shared CPU the
    CPU-time figure leaves out the time the process waited for a core (with one thread it is the work
    done); on a GPU only the wall-clock figure means anything. ``runs_cpu`` is ``runs`` per second of CPU time;
    ``seconds`` and ``cpu_seconds`` are every round's unrounded timings (what per-round speed-ups are made of).
    """
    runs = {k: _Sampler(m, batch, steps, device, dtype, compile, cfg) for k, m in models.items()}
    for _ in range(warmup):
        for r in runs.values():
            r()
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, r in runs.items():
            times[k].append(r())
    return {k: dict(it_s=steps / statistics.median(w for w, _ in v),
                    it_s_cpu=steps / statistics.median(c for _, c in v),
                    runs=[round(steps / w, 4) for w, _ in v], runs_cpu=[round(steps / c, 4) for _, c in v],
                    seconds=[w for w, _ in v], cpu_seconds=[c for _, c in v]) for k, v in times.items()}


# What a speed_sweep row records; Study.speed_sweep keys its cache by it, so rows written before a field was added
# are never reused. v2: per-round speed-ups (``speedups``, ``speedups_cpu``) with their mean and sd over the rounds.
SWEEP_RECORD = "v2: per-round speed-ups against the unpruned model of the same round, mean and sd over rounds"


def _mean_sd(values):
    """Mean and sample sd (ddof 1; NaN with fewer than two values) of ``values``, rounded as the rows are."""
    m = statistics.fmean(values)
    return round(m, 4), (round(statistics.stdev(values), 4) if len(values) > 1 else float("nan"))


def speed_sweep(config_name="DiT-T28/4", ratios=(0, 0.25, 0.5, 0.75, 0.893), batch=64, steps=5, device="cpu",
                dtype=torch.float32, compile=False, warmup=1, repeats=3, cfg=True, width_modes=("channels", "params"),
                model=None, progress=False):
    """Throughput of depth- and width-pruned versions of one DiT at several compression ratios.

    For each ratio ``r``: ``D`` keeps ``round((1 - r) * depth)`` evenly spaced blocks; width pruning keeps
    every block and removes heads and MLP channels uniformly, in one or both of two ``width_modes``:
    "channels" (``1 - r`` of the heads and MLP channels, what structured width pruning such as Diff-Pruning
    at ratio ``r`` does; close to ``D`` in compute, more parameters) and "params" (the widths whose parameter
    count matches ``D``'s, see ``width_for_params``; far fewer MACs than ``D``, because the adaLN weights that
    width pruning cannot touch cost parameters but almost no compute). The unpruned model is measured in
    every round with the others (interleaved), and each speed-up is against it.

    ``model``: a DiT to prune (default: random weights of ``config_name``; it is moved to ``device``/``dtype``
    in place). Returns one dict per (ratio,
    method): ratio, method, depth, heads, mlp_hidden, params, param_ratio, macs (per sample, see
    ``forward_macs``), mac_ratio, it_s and speedup (wall clock), it_s_cpu and speedup_cpu (per second of
    process CPU time, see ``interleaved_throughput``), ideal (= 1/(1-r), the linear speed-up the paper
    plots), compute_ideal (= 1/mac_ratio), runs (wall it/s of every round), and the timing repeats behind each
    speed-up: repeats (the number of rounds), speedups / speedups_cpu (round i: the unpruned model's time in round i
    over this model's, wall clock / CPU time; the base row's are all 1), speedup_mean / speedup_sd and
    speedup_cpu_mean / speedup_cpu_sd (over the rounds, sd with ddof 1, NaN with one round). ``speedup`` stays the
    ratio of the median it/s. See ``SWEEP_RECORD``.
    """
    base = model if model is not None else random_dit(config_name, device="cpu")
    config, _ = _config(base)
    depth, P, F = config["depth"], count_params(base), forward_macs(base)
    hidden, H, hd, M = _shape(config)
    models, meta = {"base": base}, {"base": dict(ratio=0.0, method="base", depth=depth, heads=H, mlp_hidden=M)}
    for r in ratios:
        if r == 0:
            continue
        keep = max(1, round((1 - r) * depth))
        d = prune(base, oracle_indices(depth, keep))
        models[f"depth@{r}"] = d
        meta[f"depth@{r}"] = dict(ratio=r, method="depth", depth=keep, heads=H, mlp_hidden=M)
        for mode in width_modes:
            if mode == "params":
                w = width_for_params(config, count_params(d))
                extra = dict(matched=w["matched"])
                wm = width_pruned(base, heads=w["heads"], mlp_hidden=w["mlp_hidden"])
            elif mode == "channels":
                wm, extra = width_pruned(base, 1 - r), {}
            else:
                raise ValueError(f"width mode {mode!r} is not 'params' or 'channels'")
            models[f"width-{mode}@{r}"] = wm
            meta[f"width-{mode}@{r}"] = dict(ratio=r, method=f"width-{mode}", depth=depth, heads=wm.width["heads"],
                                              mlp_hidden=wm.width["mlp_hidden"], **extra)
    t0 = time.perf_counter()
    res = interleaved_throughput(models, batch, steps, device, dtype, compile, warmup, repeats, cfg)
    if progress:
        print(f"speed_sweep {config_name}: {len(models)} models in {time.perf_counter() - t0:.1f}s", flush=True)
    rows = []
    for k, m in models.items():
        p, f = count_params(m), forward_macs(m)
        # paired by round: the unpruned model ran in the same round, so load on a shared machine cancels
        per_round = {key: [b / t for b, t in zip(res["base"][src], res[k][src])]
                     for key, src in (("speedups", "seconds"), ("speedups_cpu", "cpu_seconds"))}
        (mean, sd), (mean_cpu, sd_cpu) = _mean_sd(per_round["speedups"]), _mean_sd(per_round["speedups_cpu"])
        rows.append(dict(meta[k], params=p, param_ratio=round(p / P, 4), macs=f, mac_ratio=round(f / F, 4),
                         it_s=round(res[k]["it_s"], 4), speedup=round(res[k]["it_s"] / res["base"]["it_s"], 4),
                         it_s_cpu=round(res[k]["it_s_cpu"], 4),
                         speedup_cpu=round(res[k]["it_s_cpu"] / res["base"]["it_s_cpu"], 4),
                         ideal=round(1 / (1 - meta[k]["ratio"]), 4), compute_ideal=round(F / f, 4),
                         runs=res[k]["runs"], repeats=len(res[k]["seconds"]),
                         speedups=[round(v, 4) for v in per_round["speedups"]], speedup_mean=mean, speedup_sd=sd,
                         speedups_cpu=[round(v, 4) for v in per_round["speedups_cpu"]], speedup_cpu_mean=mean_cpu,
                         speedup_cpu_sd=sd_cpu))
    return rows


@torch.no_grad()
def interleaved_sampling(models, objective, n, steps, cfg_scale=1.5, sampler=None, repeats=5, warmup=1, seed=0):
    """Whole sampling loops (``objective.sample`` of ``n`` class-balanced images, ``steps`` of ``sampler``) of several
    models, measured round by round (A, B, A, B, ...) with the same noise: for a model whose sampler is not a plain
    denoising loop (MAR: masked-autoregressive iterations, each running the per-token head), where
    :func:`interleaved_throughput`'s one-forward iteration does not apply.

    ``models``: {name: model}; the first is the reference. Returns {name: {"img_s": median images per second of wall
    time, "seconds": every round's wall seconds, "speedup": mean, "speedup_sd": sd over rounds of the reference's time
    over this model's in the same round}}.
    """
    labels = torch.arange(n) % next(iter(models.values())).num_classes
    sampler = sampler or objective.default_sampler

    def once(model):
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        objective.sample(model, labels, sampler, steps, cfg_scale, generator=g)
        return time.perf_counter() - t0
    for m in models.values():
        m.eval()
        for _ in range(warmup):
            once(m)
    times = {k: [] for k in models}
    for _ in range(repeats):
        for k, m in models.items():
            times[k].append(once(m))
    ref = times[next(iter(models))]
    out = {}
    for k, v in times.items():
        ups = [r / t for r, t in zip(ref, v)]
        mean, sd = _mean_sd(ups)
        out[k] = {"img_s": round(n / statistics.median(v), 2), "seconds": [round(t, 4) for t in v],
                  "speedup": mean, "speedup_sd": sd}
    return out
