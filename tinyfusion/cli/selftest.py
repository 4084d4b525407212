"""Check that torchrun, the process group and tinyfusion.dist work on this machine (and test launch's failures).

    python -m tinyfusion.cli.selftest
    torchrun --standalone --nproc_per_node=2 -m tinyfusion.cli.selftest --out /tmp/selftest

Every rank gathers ``{"rank", "pid"}`` with ``all_gather_object``, averages its rank with ``reduce_dict``,
runs a short progress bar on rank 0 and tries to write ``<out>/saved_by_rank<r>.json`` through ``save0``
(so only rank 0's file should exist). ``fail_rank``/``fail_mode`` make one rank fail after the process group
is up, to exercise ``tinyfusion.launch``: ``raise`` (an exception), ``kill`` (SIGKILL itself), ``hang``
(sleep forever) or ``exit0`` (leave with status 0 before any result is written).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from tinyfusion.cli.common import cli_main

DEFAULTS = dict(out="", fail_rank=-1, fail_mode="raise", message="selftest", bar_steps=3)
FAIL_MODES = ("raise", "kill", "hang", "exit0")
CHOICES = dict(fail_mode=FAIL_MODES)
OUTPUTS = dict(out="folder")
HELP = dict(out="folder where each rank tries to write saved_by_rank<r>.json (default: none)",
            fail_rank="rank that fails after the process group is up (-1: none)",
            fail_mode="how that rank fails: raise, kill (SIGKILL), hang or exit0 (status 0, no result)",
            message="text printed first (and in the failure)", bar_steps="steps of the progress bar on rank 0")


def fail(mode, message):
    """Fail the way ``mode`` says (see the module docstring), after printing the time (to measure detection)."""
    from tinyfusion import dist
    print(f"{message}: rank {dist.rank()} fails ({mode}) at unix time {time.time():.3f}", flush=True)
    if mode == "raise":
        raise RuntimeError(f"{message}: deliberate failure on rank {dist.rank()}")
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hang":
        while True:
            time.sleep(1)
    if mode == "exit0":
        os._exit(0)
    raise ValueError(f"fail_mode={mode!r}: use one of {FAIL_MODES}")


def run(**cfg):
    from tinyfusion.progress import tqdm

    from tinyfusion import dist
    from tinyfusion.io import save_json

    cfg = {**DEFAULTS, **cfg}
    r, world = dist.rank(), dist.world_size()
    dist.print0(f"{cfg['message']}: world size {world}")
    gathered = dist.all_gather_object({"rank": r, "pid": os.getpid()})
    reduced = dist.reduce_dict({"rank": float(r), "one": 1.0})
    if r == cfg["fail_rank"]:
        fail(cfg["fail_mode"], cfg["message"])
    for _ in tqdm(range(cfg["bar_steps"]), desc="selftest", disable=not dist.is_main()):
        time.sleep(0.05)
    saved = []
    if cfg["out"]:
        out = Path(cfg["out"])
        dist.save0(save_json, {"rank": r}, out / f"saved_by_rank{r}.json")
        saved = sorted(p.name for p in out.glob("saved_by_rank*.json"))
    dist.barrier()  # ranks that were not told to fail wait here for one that was
    return {"world_size": world, "gathered": gathered, "reduced": reduced, "saved": saved}


def main(argv=None, console=False):
    return cli_main(run, sys.modules[__name__], argv, console)


if __name__ == "__main__":
    main(console=True)
