"""Sampling speed of depth- versus width-pruned DiTs (paper Fig. 4, Table 1's it/s): prints one JSON object.

    python benchmarks/speed.py                       # cpu: the profile's teacher shape and DiT-XL/2, ~5 min
    python benchmarks/speed.py --profile gpu --devices cuda   # the GPU: fp32/bf16, eager and torch.compile
    python benchmarks/speed.py --cases '[{"model": "DiT-T28/4", "batch": 8, "steps": 4}]'

Every case is one ``tinyfusion.speed.speed_sweep`` with random weights (speed does not depend on them):
for each compression ratio r a depth-pruned model (round((1-r)*28) evenly spaced blocks) and width-pruned
ones ("channels": 1-r of every block's heads and MLP channels, as structured width pruning at ratio r;
"params": the widths with the depth-pruned model's parameter count), interleaved round by round with the
unpruned model. The bars checked: D14 from D28 runs >= 1.9x as fast as D28 (paper: 1.96x on a GPU, 6.91 ->
13.54 it/s), and 50% width pruning falls short of that (paper: Diff-Pruning 50% 1.51x, 6.91 -> 10.43 it/s).
Each summary also gives the sds of the per-round speed-ups and claim 7's rule on them
(``verdicts.claim7_speedup_repeats``: depth against width at the same channel ratio, beyond 2 SE of the rounds).
Writes the JSON to ``--out`` (default ``results/<profile>/speed.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from tinyfusion.io import save_json
from tinyfusion.profiles import get_profile
from tinyfusion.speed import speed_sweep
from tinyfusion.verdicts import claim7_speedup_repeats

ALL_RATIOS = [0, 0.25, 0.5, 0.75, 0.893]
# "teacher" stands for the profile's teacher config (DiT-T28/4 for cpu, DiT-W28/4 for gpu).
CPU_CASES = [
    dict(model="teacher", batch=64, steps=2, ratios=ALL_RATIOS, repeats=5),  # prune/fine-tune batch: compute-bound
    dict(model="teacher", batch=8, steps=4, ratios=ALL_RATIOS, repeats=5),   # small batch: per-layer overhead
    dict(model="DiT-XL/2", batch=1, steps=1, ratios=[0, 0.5], warmup=0),  # 2 x 256 tokens, ~15 s a forward
]
GPU_CASES = [
    dict(model="teacher", batch=250, steps=10, ratios=ALL_RATIOS),
    dict(model="DiT-XL/2", batch=8, steps=10, ratios=ALL_RATIOS),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def summarise(rows, device, model=""):
    """The headline ratios of one sweep: D14-from-D28 and 50%-width speed-ups, and the bars.

    ``*_speedup`` are wall clock; ``*_speedup_cpu`` per second of process CPU time (robust to other jobs on a
    shared CPU). The bars use the CPU-time figures on the CPU and the wall-clock ones on a GPU. ``*_sd`` are the sds
    of the per-round speed-ups (NaN with one round); ``claim7`` is ``verdicts.claim7_speedup_repeats`` on the same
    measure (depth against width at the same channel ratio, called beyond 2 SE of the timing rounds).
    """
    at = {(r["method"], r["ratio"]): r for r in rows}
    key = "speedup_cpu" if device == "cpu" else "speedup"
    out = {"bar_measure": key}
    if ("depth", 0.5) in at:
        d = at[("depth", 0.5)]
        out.update({"depth_0.5_depth": d["depth"], "depth_0.5_speedup": d["speedup"],
                    "depth_0.5_speedup_cpu": d["speedup_cpu"], "depth_0.5_speedup_sd": d.get("speedup_sd"),
                    "depth_0.5_speedup_cpu_sd": d.get("speedup_cpu_sd"), "bar_depth_ge_1.9x": d[key] >= 1.9})
    for mode in ("channels", "params"):
        if (f"width-{mode}", 0.5) in at:
            w = at[(f"width-{mode}", 0.5)]
            out.update({f"width_{mode}_0.5_speedup": w["speedup"], f"width_{mode}_0.5_speedup_cpu": w["speedup_cpu"],
                        f"width_{mode}_0.5_speedup_sd": w.get("speedup_sd"),
                        f"width_{mode}_0.5_speedup_cpu_sd": w.get("speedup_cpu_sd"),
                        f"width_{mode}_0.5_param_ratio": w["param_ratio"],
                        f"width_{mode}_0.5_mac_ratio": w["mac_ratio"]})
            if mode == "channels":
                out["width_channels_0.5_vs_depth"] = round(w[key] / at[("depth", 0.5)][key], 4)
                out["bar_width50_short_of_2x"] = w[key] < 1.9  # 5% short of the linear 2x
                v = claim7_speedup_repeats(rows, model, ratio=0.5, measure=key, device=device)
                out["claim7"] = {"status": v.status, "rule": v.rule, "evidence": v.evidence, "yardstick": v.yardstick}
    return out


def run_case(case, device, dtype_name, compile, profile):
    model = get_profile(profile).model if case["model"] == "teacher" else case["model"]
    t0 = time.perf_counter()
    rows = speed_sweep(model, ratios=tuple(case.get("ratios", ALL_RATIOS)), batch=case["batch"],
                       steps=case["steps"], device=device, dtype=DTYPES[dtype_name], compile=compile,
                       warmup=case.get("warmup", 1), repeats=case.get("repeats", 3),
                       width_modes=tuple(case.get("width_modes", ("channels", "params"))))
    res = dict(model=model, device=str(device), dtype=dtype_name, compile=compile, batch=case["batch"],
               cfg=True, forward_batch=2 * case["batch"], steps=case["steps"],
               seconds=round(time.perf_counter() - t0, 1),
               summary=summarise(rows, str(device), model), rows=rows)
    print(f"[speed] {model} {device} {dtype_name} compile={compile} batch={case['batch']}: "
          f"{json.dumps(res['summary'])} ({res['seconds']} s)", flush=True)
    return res


def run(profile="cpu", out=None, cases=None, gpu_cases=None, devices="auto", compile_gpu=True,
        dtypes_gpu=("fp32", "bf16")):
    """All cases on the CPU, then (when a GPU is present) the GPU cases in every dtype, eager and compiled."""
    use_cpu = devices in ("auto", "cpu", "all")
    use_gpu = devices in ("auto", "cuda", "all") and torch.cuda.is_available()
    result = dict(profile=profile, torch=torch.__version__, machine=platform.machine(), cpu_count=os.cpu_count(),
                  threads=torch.get_num_threads(), loadavg_start=list(os.getloadavg()), cases=[])
    t0 = time.perf_counter()
    if use_cpu:
        for case in cases or CPU_CASES:
            result["cases"].append(run_case(case, "cpu", "fp32", False, profile))
    if use_gpu:
        result["gpu"] = torch.cuda.get_device_name(0)
        for case in gpu_cases or GPU_CASES:
            for dt in dtypes_gpu:
                for comp in ((False, True) if compile_gpu else (False,)):
                    c = dict(case, ratios=[0, 0.5]) if comp else case  # compiling every model is slow
                    result["cases"].append(run_case(c, "cuda", dt, comp, profile))
                    torch.cuda.empty_cache()
    result["loadavg_end"] = list(os.getloadavg())
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(out) if out else get_profile(profile).results / "speed.json"
    save_json(result, out)
    result["out"] = str(out)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--out", default=None, help="JSON output (default results/<profile>/speed.json)")
    p.add_argument("--cases", type=json.loads, default=None, help="CPU cases as JSON (default: built-in list)")
    p.add_argument("--gpu-cases", type=json.loads, default=None, help="GPU cases as JSON")
    p.add_argument("--devices", default="auto", choices=["auto", "cpu", "cuda", "all"],
                   help="auto: the CPU, and the GPU when present")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs on the GPU")
    a = p.parse_args(argv)
    res = run(a.profile, a.out, a.cases, a.gpu_cases, a.devices, not a.no_compile)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
