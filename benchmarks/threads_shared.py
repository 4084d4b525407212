"""How torch's thread count behaves when another job keeps a core busy; prints one JSON object.

    python benchmarks/threads_shared.py                     # the cpu teacher's sampling calls, 1 vs 2 threads
    python benchmarks/threads_shared.py --rounds 3 --busy 1 --out results/cpu/threads_shared.json

The work is the cpu profile's sampling network call (the evaluation batch doubled by CFG, no grad: what scoring does
2,000 samples x 25 steps of), repeated ``--calls`` times per timing. It is timed in child processes pinned to
1 and to ``--threads`` torch threads, round by round, first on a quiet machine, then beside ``--busy`` competitor
processes that each keep one core busy with single-thread matrix products (as a teacher being trained beside a
reproduction does). Wall times, medians over rounds, and their ratios. Run it on an otherwise idle machine: other
jobs are competitors too and make the quiet condition busy.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from tinyfusion.io import print_json

_CHILD = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from tinyfusion.models.registry import build
from tinyfusion.profiles import get_profile
prof = get_profile("cpu")
model = build(prof.model).eval()
size, ch = prof.image_size, model.config["in_channels"]
x = torch.randn(2 * prof.batch_eval, ch, size, size)
t, y = torch.full((len(x),), 500), torch.randint(0, 11, (len(x),))
with torch.no_grad():
    model(x, t, y)  # warm-up
    t0 = time.perf_counter()
    for _ in range(int(sys.argv[2])):
        model(x, t, y)
print(time.perf_counter() - t0)
"""

_BUSY = """
import torch
torch.set_num_threads(1)
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a)
"""


def _time(threads, calls):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(threads), str(calls)], env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _rounds(threads, calls, rounds):
    times = {n: [] for n in threads}
    for _ in range(rounds):
        for n in threads:
            times[n].append(_time(n, calls))
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="the thread count set against one thread")
    p.add_argument("--busy", type=int, default=1, help="competitor processes, one busy core each")
    p.add_argument("--calls", type=int, default=20, help="sampling network calls per timing")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds (medians are reported)")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    counts = (1, args.threads)
    quiet = _rounds(counts, args.calls, args.rounds)
    busy = [subprocess.Popen([sys.executable, "-c", _BUSY], env={**os.environ, "OMP_NUM_THREADS": "1"})
            for _ in range(args.busy)]
    try:
        time.sleep(2)
        shared = _rounds(counts, args.calls, args.rounds)
    finally:
        for b in busy:
            b.kill()
            b.wait()
    med = {cond: {n: statistics.median(v) for n, v in t.items()} for cond, t in (("quiet", quiet), ("busy", shared))}
    n = args.threads
    out = {"cores": os.cpu_count(), "threads": n, "busy_competitors": args.busy, "calls": args.calls,
           "rounds": args.rounds, "wall_s": {c: {str(k): [round(x, 3) for x in v] for k, v in t.items()}
                                             for c, t in (("quiet", quiet), ("busy", shared))},
           "median_s": {c: {str(k): round(v, 3) for k, v in m.items()} for c, m in med.items()},
           f"quiet_speedup_{n}_threads": round(med["quiet"][1] / med["quiet"][n], 2),
           f"busy_slowdown_{n}_threads_vs_1": round(med["busy"][n] / med["busy"][1], 2),
           "note": "speedup > 1: more threads help on a quiet machine; slowdown > 1: beside a busy core they hurt"}
    return print_json(out, args.out)


if __name__ == "__main__":
    main()
