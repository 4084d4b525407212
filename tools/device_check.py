"""The checks a lent GPU session runs, as one prepared script (one JSON out; estimated at about 5 minutes on one
H200, not yet run on one).

A session is lent a GPU by chance and for 15 minutes in all (the machine's start included), so what it runs is
written and tested here beforehand, on the CPU at toy size (``--smoke``, run by tests/test_device_check.py). The
sections, in the order they run (the most needed first):

1. ``environment``: torch, CUDA, the GPU, NCCL's version.
2. ``shapes``: DiT-XL/2 with random weights: parameters (the paper: 675M), the forward's output shape, and the same
   for the 14-layer model that keeps every other block (``pruning.indices.prune``).
3. ``torchrun``: ``cli.prune_learn`` then ``cli.finetune`` (masked KD) for a few steps under torchrun with one
   process and a real process group (``TINYFUSION_DIST_FORCE=1``: NCCL on a GPU; gloo in the smoke run), on a
   random DiT-XL/2 raw state dict and synthetic latents in the official per-image layout (the ``imagenet``
   profile); each launch is stopped after 300 s.
4. ``sampling_speed``: D28 against D14 (and 50% width pruning) sampling iterations per second
   (``speed.speed_sweep``, classifier-free guidance: a forward of twice the batch) at batch 8 in fp32 and bf16 and
   at batch 64 in bf16; beside Table 1's 6.91 and 13.54 it/s (1.96x).
5. ``prune_step``: one learnable-pruning training step of DiT-XL/2 (1:2 gates, LoRA rank 8, as
   ``benchmarks/prune_step.py``): time and peak GPU memory of ours and the straightforward variant at batch 16,
   then at the official batch 128 (the official ``prune_by_learning.py`` runs one process at global batch 128;
   the straightforward variant is estimated, not yet measured, to need about 90 GB there: it would fit an H200's
   139 GiB, not an 80 GB H100, where that case records its error).

6. ``teachers`` (not run by default; for a session whose device check is already in ``results/gpu/``): the scale
   ladder's teachers (issue 26: ``cpu-w128``, ``cpu-t49``) trained side by side with ``cli.pretrain``, the
   same script and recipe as on the CPU, stopped after 480 s. A finished teacher comes back in parts of at most
   15 MiB (the device tool returns 8 files of 16 MiB at most) with its SHA-256 and training log in the JSON; here,
   ``--unpack-teachers`` joins and checks them into ``<root>/<profile>/pretrain_gpu/`` for
   ``tools/install_teacher.py``. An unfinished one records its last saved step and its log's tail (its state is too
   large to return).

Each section is timed and written into ``<out>/device_check.json`` as soon as it ends (a run cut off by its time
limit still returns what it finished); a failing section records its error and the next one runs; ``--sections``
reruns some, keeping the others' results. Exit status 1 when any section failed.

    # here, before the device call: the tracked tree is over the device tool's 64 MiB (teachers, gate runs)
    tools/device_tree.sh slim
    # the device call, in the repository root there (its python3 holds torch, timm and peft; nothing downloads),
    # with timeout_s about 420 (a rerun of what failed still fits the 15 minutes):
    PYTHONUNBUFFERED=1 python3 tools/device_check.py --out $OUT
    # here, after it: the tree as it was, then the JSON into results/gpu/ and a commit
    tools/device_tree.sh restore
    python tools/device_check.py --smoke --out /tmp/device_check       # the same code on the CPU at toy size
    # a later lent GPU (the checks committed): the teachers, then here
    PYTHONUNBUFFERED=1 python3 tools/device_check.py --sections teachers --out $OUT            # timeout_s 560
    python tools/device_check.py --unpack-teachers <files_at> --into ~/tf_results
    python tools/install_teacher.py ~/tf_results/cpu-w128/pretrain_gpu --profile cpu-w128
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# What each mode runs: the GPU mode is the paper's DiT-XL/2; the smoke mode the same code on a toy DiT on the CPU.
SETTINGS = {
    "gpu": dict(model="DiT-XL/2", device="cuda", speed_cases=((8, "fp32"), (8, "bf16"), (64, "bf16")), speed_steps=10,
                speed_repeats=3, prune_cases=(dict(batch=16, rounds=0), dict(batch=128, rounds=5, warmup=2)),
                run_steps=5, run_batch=16, run_timeout=300,
                teacher_profiles=("cpu-w128", "cpu-t49"), teacher_steps=None, teacher_timeout=480),
    "smoke": dict(model="DiT-Mini/2", device="cpu", speed_cases=((2, "fp32"),), speed_steps=1, speed_repeats=1,
                  prune_cases=(dict(batch=2, rounds=0),), run_steps=2, run_batch=4, run_timeout=300,
                  teacher_profiles=("smoke",), teacher_steps=3, teacher_timeout=300),
}
PART_BYTES = 15 * 2**20  # a returned file's limit is 16 MiB
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def environment():
    """Versions and the device this run saw."""
    cuda = torch.cuda.is_available()
    out = dict(torch=torch.__version__, python=platform.python_version(), machine=platform.machine(),
               cpu_count=os.cpu_count(), cuda=cuda)
    if cuda:
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                   device_count=torch.cuda.device_count(), cuda_version=torch.version.cuda,
                   nccl=".".join(map(str, torch.cuda.nccl.version())))
    return out


def shapes(model, device, batch=2):
    """Parameters and the forward's output shape of ``model`` (random weights) and of its every-other-block D14."""
    from tinyfusion import paper
    from tinyfusion.pruning.indices import prune
    from tinyfusion.speed import random_dit
    net = random_dit(model, device=device).eval()
    size, c = net.x_embedder.img_size[0], net.in_channels
    x, t = torch.randn(batch, c, size, size, device=device), torch.randint(0, 1000, (batch,), device=device)
    y = torch.randint(0, net.num_classes, (batch,), device=device)
    rows = {}
    depth = len(net.blocks)
    for m in (net, prune(net, list(range(0, depth, 2))).eval()):
        with torch.no_grad():
            out = m(x, t, y)
        want = (batch, 2 * c if m.learn_sigma else c, size, size)
        rows[f"D{len(m.blocks)}"] = dict(depth=len(m.blocks), params=sum(p.numel() for p in m.parameters()),
                                         tokens=m.x_embedder.num_patches, input=list(x.shape), output=list(out.shape),
                                         output_ok=tuple(out.shape) == want, finite=bool(torch.isfinite(out).all()))
    return dict(model=model, layers=rows, paper_params=paper.DIT_XL_PARAMS, paper_tokens=paper.DIT_XL_TOKENS)


def sampling_speed(model, device, batch_dtypes, steps, repeats):
    """D28 / D14 / 50%-width sampling it/s for each (batch, dtype) (``speed.speed_sweep``, interleaved rounds)."""
    from tinyfusion import paper
    from tinyfusion.speed import speed_sweep
    cases = []
    for b, dt in batch_dtypes:
        t0 = time.perf_counter()
        rows = speed_sweep(model, ratios=(0, 0.5), batch=b, steps=steps, device=device, dtype=DTYPES[dt],
                           repeats=repeats, width_modes=("channels",))
        at = {r["method"]: r for r in rows}
        cases.append(dict(batch=b, forward_batch=2 * b, dtype=dt, steps=steps, repeats=repeats,
                          d28_it_s=at["base"]["it_s"], d14_it_s=at["depth"]["it_s"],
                          d14_speedup=at["depth"]["speedup"], width50_speedup=at["width-channels"]["speedup"],
                          seconds=round(time.perf_counter() - t0, 1)))
        print(f"[device_check] speed {model} batch {b} {dt}: {json.dumps(cases[-1])}", flush=True)
    return dict(model=model, cases=cases, paper=dict(d28_it_s=paper.TABLE1[0]["its"], d14_it_s=paper._D14_ITS,
                                                   d14_speedup=round(paper.SPEEDUP_D14, 3),
                                                   width50_speedup=round(paper.SPEEDUP_WIDTH50, 3)))


def prune_step(model, device, cases):
    """``benchmarks/prune_step.py``'s cases on ``model``: per variant steps/s, peak memory, saved activations."""
    spec = importlib.util.spec_from_file_location("prune_step_bench", ROOT / "benchmarks" / "prune_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = []
    for case in cases:  # one case failing (out of memory at the larger batch, say) keeps the others
        try:
            r = bench.run_case(dict(model=model, **case), "cpu", device)
        except Exception as e:  # noqa: BLE001
            out.append(dict(batch=case["batch"], error=f"{type(e).__name__}: {str(e)[-2000:]}"))
            continue
        out.append(dict(batch=r["batch"], timing=r["timing"], ours_vs_straightforward_speed=r[
            "ours_vs_straightforward_speed"], **{f"{v}_{k}": x[k] for v, x in r["variants"].items()
                                                  for k in ("steps_per_s", "peak_mem_mb", "saved_activation_mb")}))
    return dict(model=model, cases=out)


def synthetic_latents(root, n, size=32, channels=4, classes=1000, seed=0):
    """``n`` random latents and labels in the official per-image layout (``imagenet256_features/<i>.npy`` of shape
    (1, C, H, W) float32, ``imagenet256_labels/<i>.npy`` of shape (1,) int64), as ``cli.extract_features`` writes."""
    rng = np.random.RandomState(seed)
    for sub in ("imagenet256_features", "imagenet256_labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(root / "imagenet256_features" / f"{i}.npy", rng.randn(1, channels, size, size).astype(np.float32))
        np.save(root / "imagenet256_labels" / f"{i}.npy", np.array([rng.randint(classes)], dtype=np.int64))
    return root


def torchrun(model, steps, batch, work, device, timeout):
    """``cli.prune_learn`` (1:2, LoRA) then ``cli.finetune`` (masked KD) under torchrun with one process and a
    process group, on a random raw state dict of ``model`` and synthetic latents; on the CPU (``device``) gloo even
    where a GPU exists. Each launch is stopped after ``timeout`` seconds (an NCCL hang would otherwise wait 600)."""
    from tinyfusion.dist import FORCE_ENV
    from tinyfusion.launch import launch
    from tinyfusion.speed import random_dit
    net = random_dit(model)
    teacher = work / "teacher_raw.pt"
    torch.save(net.state_dict(), teacher)  # a raw state dict, as the official DiT-XL-2-256x256.pt
    size = net.x_embedder.img_size[0]
    latents = synthetic_latents(work / "latents", steps * batch, size, net.in_channels, net.num_classes)
    del net
    env = {"TINYFUSION_LATENTS": str(latents), FORCE_ENV: "1"}
    if device == "cpu":
        env.update(TINYFUSION_DIST_BACKEND="gloo", CUDA_VISIBLE_DEVICES="")
    t0 = time.perf_counter()
    pr = launch("tinyfusion.cli.prune_learn", nproc=1, torchrun=True, timeout=timeout, env=env, profile="imagenet",
                teacher=str(teacher), model=model, groups="1:2", update="lora", steps=steps, batch_size=batch,
                out=str(work / "prune"))
    t1 = time.perf_counter()
    ft = launch("tinyfusion.cli.finetune", nproc=1, torchrun=True, timeout=timeout, env=env, profile="imagenet",
                student=str(work / "prune" / "pruned.pt"), teacher=str(teacher), model=model, mode="masked_kd",
                k_sigma=2.0, steps=steps, batch_size=batch, out=str(work / "kd"), progress=False)
    t2 = time.perf_counter()
    return dict(model=model, steps=steps, batch=batch,
                prune_learn=dict(world_size=pr["world_size"], backend=pr.get("backend"), kept=pr["kept"],
                                 steps_per_s=pr["steps_per_s"], wall_s=round(t1 - t0, 1)),
                finetune=dict(world_size=ft["world_size"], backend=ft.get("backend"), mode=ft["mode"],
                              final_loss=ft["final_loss"], finite=bool(np.isfinite(ft["final_loss"])),
                              samples_per_s=ft["samples_per_s"], layer_map=ft["layer_map"], wall_s=round(t2 - t1, 1)))


def teachers(profiles, steps, work, out, device, timeout):
    """``cli.pretrain`` of each profile's teacher, side by side on ``device`` (``steps``: None for the profile's),
    stopped after ``timeout`` seconds; a finished teacher.pt is split into ``out/teacher_<profile>.pt.<i>`` (at most
    15 MiB each) and its SHA-256, size and training summary recorded; an unfinished run records the step of its last
    state and its log's tail."""
    from tinyfusion.io import load_checkpoint, sha256
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TINYFUSION_QUIET": "1"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    procs = {}
    for p in profiles:
        cmd = [sys.executable, "-m", "tinyfusion.cli.pretrain", "--profile", p, "--out", str(work / p)]
        cmd += ["--steps", str(steps)] if steps else []
        log = open(work / f"{p}.log", "w")
        procs[p] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    t0, rows = time.perf_counter(), {}
    for p, (proc, log) in procs.items():
        try:
            proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        run, row = work / p, dict(returncode=proc.returncode, seconds=round(time.perf_counter() - t0, 1))
        if (run / "teacher.pt").is_file() and (run / "summary.json").is_file():
            blob = (run / "teacher.pt").read_bytes()
            parts = [blob[i:i + PART_BYTES] for i in range(0, len(blob), PART_BYTES)]
            for i, part in enumerate(parts):
                (Path(out) / f"teacher_{p}.pt.{i}").write_bytes(part)
            row.update(finished=True, sha256=sha256(run / "teacher.pt"), bytes=len(blob), parts=len(parts),
                       summary=json.loads((run / "summary.json").read_text()))
        else:
            state = run / "state.pt"
            step = load_checkpoint(state)["step"] if state.exists() else 0
            row.update(finished=False, steps_saved=step, log_tail=(work / f"{p}.log").read_text()[-1500:])
        rows[p] = row
    return dict(device=device, profiles=list(profiles), steps=steps, timeout=timeout, runs=rows)


def unpack_teachers(parts_dir, into):
    """Join the ``teachers`` section's parts in ``parts_dir`` (with its device_check.json) into
    ``<into>/<profile>/pretrain_gpu/`` (teacher.pt, its .sha256, summary.json), each checked against the SHA-256
    recorded on the GPU; returns the folders written."""
    from tinyfusion.io import _atomic_write, save_json
    parts_dir, into = Path(parts_dir), Path(into)
    record = json.loads((parts_dir / "device_check.json").read_text())
    runs = record.get("sections", {}).get("teachers", {}).get("runs", {})
    done = []
    for p, row in runs.items():
        if not row.get("finished"):
            print(f"{p}: not finished on the GPU ({row.get('steps_saved')} steps saved there); train it here")
            continue
        blob = b"".join((parts_dir / f"teacher_{p}.pt.{i}").read_bytes() for i in range(row["parts"]))
        if hashlib.sha256(blob).hexdigest() != row["sha256"] or len(blob) != row["bytes"]:
            raise SystemExit(f"error: the parts teacher_{p}.pt.* in {parts_dir} do not join to the teacher the GPU "
                             f"wrote (SHA-256 {row['sha256'][:12]}..., {row['bytes']} bytes); fetch them again")
        dest = into / p / "pretrain_gpu"
        dest.mkdir(parents=True, exist_ok=True)
        _atomic_write(dest / "teacher.pt", lambda f: f.write(blob))   # with its integrity record, as every artefact
        save_json(row["summary"], dest / "summary.json")
        done.append(str(dest))
        print(f"{p}: {dest} ({row['bytes'] / 1e6:.1f} MB); next: python tools/install_teacher.py {dest} --profile {p}")
    return done


SECTIONS = ("environment", "shapes", "torchrun", "sampling_speed", "prune_step", "teachers")  # the order they run in
DEFAULT_SECTIONS = SECTIONS[:-1]  # the checks; the teachers only when asked (--sections teachers)


def run(out, mode="gpu", only=None):
    """Every section (or those in ``only``) in turn, each written into ``<out>/device_check.json`` as it ends (a
    rerun of some sections keeps the others' results found there); returns the record."""
    from tinyfusion.io import save_json
    s = SETTINGS[mode]
    if s["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device_check: no CUDA device here; run it on the lent GPU machine, or --smoke on the CPU")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(only or ()) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"device_check: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    path = out / "device_check.json"
    record = dict(mode=mode, started=time.strftime("%Y-%m-%d %H:%M:%S"), settings=s, sections={}, errors={})
    if only and path.exists():  # a rerun of the sections that failed or were cut off keeps the others
        old = json.loads(path.read_text())
        if old.get("mode") == mode:
            record["sections"] = {k: v for k, v in old.get("sections", {}).items() if k not in only}
            record["errors"] = {k: v for k, v in old.get("errors", {}).items() if k not in only}
    with tempfile.TemporaryDirectory(prefix="device_check-") as tmp:
        sections = {"environment": environment,
                    "shapes": lambda: shapes(s["model"], s["device"]),
                    "torchrun": lambda: torchrun(s["model"], s["run_steps"], s["run_batch"], Path(tmp), s["device"],
                                                 s["run_timeout"]),
                    "sampling_speed": lambda: sampling_speed(s["model"], s["device"], s["speed_cases"],
                                                             s["speed_steps"], s["speed_repeats"]),
                    "prune_step": lambda: prune_step(s["model"], s["device"], s["prune_cases"]),
                    "teachers": lambda: teachers(s["teacher_profiles"], s["teacher_steps"], Path(tmp), out,
                                                 s["device"], s["teacher_timeout"])}
        for name, fn in sections.items():
            if name not in (only or DEFAULT_SECTIONS):
                continue
            t0 = time.perf_counter()
            print(f"[device_check] {name} ...", flush=True)
            try:
                record["sections"][name] = {**fn(), "seconds": round(time.perf_counter() - t0, 1)}
            except Exception as e:  # noqa: BLE001 -- record it and go on: the other sections still count
                record["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
                print(f"[device_check] {name} failed: {type(e).__name__}: {e}", flush=True)
            if s["device"] == "cuda":
                torch.cuda.empty_cache()
            record["sections"] = {k: record["sections"][k] for k in SECTIONS if k in record["sections"]}
            record["seconds"] = round(sum(v.get("seconds", 0) for v in record["sections"].values()), 1)
            save_json(record, path)
    return record


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "results" / "gpu")),
                   help="folder for device_check.json ($OUT when set)")
    p.add_argument("--smoke", action="store_true", help="the same sections on the CPU with a toy DiT (a minute)")
    p.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                   help=f"comma-separated sections to run, of {','.join(SECTIONS)} (the others' results in "
                        f"device_check.json are kept)")
    p.add_argument("--unpack-teachers", metavar="DIR", help="join the teachers section's returned parts in DIR "
                   "(with its device_check.json) into --into; runs nothing else")
    p.add_argument("--into", default=os.environ.get("TINYFUSION_RESULTS", ""),
                   help="results root the unpacked teachers go under (<into>/<profile>/pretrain_gpu)")
    a = p.parse_args(argv)
    if a.unpack_teachers:
        if not a.into:
            p.error("--unpack-teachers needs --into (a results root, e.g. ~/tf_results)")
        unpack_teachers(a.unpack_teachers, a.into)
        return 0
    only = [x.strip() for x in a.sections.split(",") if x.strip()]
    record = run(a.out, "smoke" if a.smoke else "gpu", None if set(only) == set(DEFAULT_SECTIONS) else only)
    print(json.dumps({k: record[k] for k in ("mode", "seconds", "errors")}, indent=1), flush=True)
    return 1 if record["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
