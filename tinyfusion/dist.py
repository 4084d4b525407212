"""Process-group helpers that also work with no process group (a plain ``python`` run or a notebook).

Under torchrun, ``init()`` starts NCCL when CUDA is present and gloo otherwise
(``TINYFUSION_DIST_BACKEND`` overrides). Everything else degrades to the single-process case. One process under
torchrun starts no process group unless ``TINYFUSION_DIST_FORCE=1`` asks for one (to exercise NCCL and DDP on a
machine with one GPU, as ``tools/device_check.py`` does).
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def is_dist():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_dist() else int(os.environ.get("RANK", 0)) if "LOCAL_RANK" in os.environ else 0


def world_size():
    return dist.get_world_size() if is_dist() else 1


def is_main():
    return rank() == 0


def device():
    """This process's device: its local GPU under torchrun with CUDA, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


FORCE_ENV = "TINYFUSION_DIST_FORCE"


def backend():
    """The process group's backend ("nccl", "gloo") or None without one (what a run's result records)."""
    return str(dist.get_backend()) if is_dist() else None


def init(timeout_s=600):
    """Join the torchrun process group if launched by torchrun; a no-op otherwise. Returns (rank, world).

    A process started by ``tinyfusion.launch`` (torchrun's workers too) first arranges to die with its parent."""
    from tinyfusion.launch import DIE_WITH_PARENT, die_with_parent
    if os.environ.get(DIE_WITH_PARENT) == "1":
        die_with_parent()
    alone = int(os.environ.get("WORLD_SIZE", 1)) <= 1 and os.environ.get(FORCE_ENV) != "1"
    if "WORLD_SIZE" not in os.environ or alone or is_dist():
        return rank(), world_size()
    name = os.environ.get("TINYFUSION_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if name == "nccl":
        torch.cuda.set_device(device())
    dist.init_process_group(name, timeout=datetime.timedelta(seconds=timeout_s))
    return rank(), world_size()


def cleanup():
    if is_dist():
        dist.destroy_process_group()


def barrier():
    if is_dist():
        dist.barrier()


def print0(*args, **kwargs):
    if is_main():
        print(*args, **kwargs, flush=True)


def all_gather_object(obj):
    """List of ``obj`` from every rank (``[obj]`` without a process group)."""
    if not is_dist():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src=0):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_dict(d, average=True):
    """All-reduce a dict of scalar tensors/floats; returns floats (means across ranks when ``average``)."""
    keys = sorted(d)
    if not keys:
        return {}
    vals = torch.tensor([float(d[k]) for k in keys], dtype=torch.float64,
                        device=device() if is_dist() and dist.get_backend() == "nccl" else "cpu")
    if is_dist():
        dist.all_reduce(vals)
        if average:
            vals /= world_size()
    return {k: float(v) for k, v in zip(keys, vals.tolist())}


def save0(save_fn, *args, **kwargs):
    """Call ``save_fn`` on rank 0 only, then wait for it on every rank."""
    if is_main():
        save_fn(*args, **kwargs)
    barrier()
