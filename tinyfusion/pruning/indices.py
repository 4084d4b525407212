"""Layer index sets and model surgery: validate a set of kept layers, the Oracle pattern, the mask of a set,
and ``prune``.

``prune(model, kept)`` turns a decision into a compact shallow model through the model's own surgery
(``tinyfusion.models.prunable``). A DiT gives a DiT: copies of the kept blocks' weights, renumbered 0..D-1 (official
key layout ``blocks.0`` ... ``blocks.{D-1}``), with ``config["depth"] = D``; its state dict loads with
``tinyfusion.models.load_dit``. Either way its output equals the full model's output under the mask that keeps
``kept`` (Eq. 1, ``mask_from_kept``).
"""
from __future__ import annotations

import copy
import math

import torch


def check_kept(kept, depth, n_keep=None):
    """``kept`` as a sorted list of ints after checking it: in range, no duplicates, ``n_keep`` entries."""
    try:
        kept = [int(i) for i in kept]
    except (TypeError, ValueError):
        raise ValueError(f"kept layers must be a list of integers, got {kept!r}") from None
    bad = [i for i in kept if not 0 <= i < depth]
    if bad:
        raise ValueError(f"kept layers {bad} are out of range for a model of depth {depth} (valid: 0..{depth - 1})")
    dup = sorted({i for i in kept if kept.count(i) > 1})
    if dup:
        raise ValueError(f"kept layers list {dup} more than once; each layer can be kept only once")
    if not kept:
        raise ValueError("kept layers is empty; a pruned model needs at least one layer")
    if n_keep is not None and len(kept) != n_keep:
        raise ValueError(f"expected {n_keep} kept layers, got {len(kept)}: {sorted(kept)}")
    return sorted(kept)


def mask_from_kept(kept, depth):
    """The (depth,) float32 0/1 mask with ones at the layers ``kept`` (checked with ``check_kept``)."""
    mask = torch.zeros(depth)
    mask[check_kept(kept, depth)] = 1.0
    return mask


def oracle_indices(depth=28, keep=14):
    """The hand-made BK-SDM / Oracle pattern: ``keep`` evenly spaced layers including the first and the last.

    Layer ``i`` of the shallow model is ``round(i * (depth - 1) / (keep - 1))`` (halves rounded up);
    28 -> 14 gives the paper's [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27].
    """
    depth, keep = int(depth), int(keep)
    if not 1 <= keep <= depth:
        raise ValueError(f"cannot keep {keep} of {depth} layers; need 1 <= keep <= depth")
    if keep == 1:
        return [0]
    step = (depth - 1) / (keep - 1)
    return check_kept([int(math.floor(i * step + 0.5)) for i in range(keep)], depth, keep)


def strip_adapters(model, merge=True):
    """A plain module without peft LoRA adapters (in place): merged into the base weights, or dropped.

    Accepts a ``peft.PeftModel`` wrapper or a model with adapters injected by ``inject_adapter_in_model``.
    """
    try:
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no peft, so no adapters
        return model
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            if merge:
                module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model


def has_adapters(model):
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return False
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def prune(model, kept, merge_lora=True):
    """A compact model keeping the layers ``kept`` (a new model; the input model is untouched).

    LoRA adapters, if any, are merged first (``merge_lora=False`` drops them instead); the surgery is the model's own
    (``tinyfusion.models.prunable.pruned``). For a DiT the result is a ``DiT(**config, depth=len(kept))`` holding
    copies of the weights: no gates, no adapters, blocks renumbered 0..D-1, every parameter trainable as in a newly
    built DiT (``pos_embed`` frozen), on the model's device, in its training mode, with ``pruned_from = kept``. It is
    built on the meta device and filled from the state dict, so no full-size model is ever initialised (cheap for
    DiT-XL/2). A MAR gives a compact MAR (``models.mar.prune_mar``).
    """
    from tinyfusion.models import prunable

    model = prunable.base_model(model)
    if not all(hasattr(model, a) for a in ("layers", "depth", "pruned")):
        raise TypeError(f"prune expects a prunable model (with .layers, .depth and .pruned(kept), e.g. a DiT), "
                        f"got {type(model).__name__}")
    kept = check_kept(kept, prunable.depth(model))
    if has_adapters(model):
        model = strip_adapters(copy.deepcopy(model), merge=merge_lora)
    return prunable.pruned(model, kept)
