"""Random prunes: the random baselines of Table 3 and the calibration-loss histogram of Figure 5.

``random_candidate_study`` scores many random 50% prunes on one small fixed calibration batch, without
model copies. Candidates are scored a chunk at a time. The default path sorts them and computes every
distinct mask prefix once (candidates that agree on layers 0..i share the hidden state after layer i),
which halves the work; ``share_prefixes=False`` instead tiles the calibration batch once per candidate
and runs one masked ``DiT.forward`` with a hard per-sample mask, skipping a layer for the rows that drop
it. Both give the losses ``calibration_loss`` gives one mask at a time.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from tinyfusion.models import prunable
from tinyfusion.models.gates import candidate_matrix, parse_groups
from tinyfusion.progress import tqdm
from tinyfusion.pruning.scores import _flatten_calib, _objective_for, first_samples  # noqa: F401


def random_masks(n, depth, keep=None, groups=None, generator=None):
    """(n, depth) float 0/1 masks: ``keep`` layers chosen uniformly, or one uniform candidate row per N:M block."""
    if groups is not None:
        pairs = parse_groups(groups, depth)
        n_keep = sum(k for k, _ in pairs)
        if keep is not None and keep != n_keep:
            raise ValueError(f"groups {groups!r} keep {n_keep} layers, not keep={keep}")
        parts = []
        for k, m in pairs:
            cand = candidate_matrix(k, m).float()
            parts.append(cand[torch.randint(len(cand), (n,), generator=generator)])
        return torch.cat(parts, dim=1)
    if keep is None or not 1 <= keep <= depth:
        raise ValueError(f"keep must be in 1..{depth}, got {keep}")
    order = torch.rand(n, depth, generator=generator).argsort(dim=1)[:, :keep]
    return torch.zeros(n, depth).scatter_(1, order, 1.0)


def random_kept(depth, keep, groups=None, generator=None):
    """One random sorted set of ``keep`` kept layers (uniform, or N:M-constrained by ``groups``)."""
    mask = random_masks(1, depth, keep, groups, generator)[0]
    return mask.nonzero().flatten().tolist()


@torch.no_grad()
def _masked_forward_losses(model, objective, data, chunk):
    """Scores a chunk of candidates with one masked forward (``prunable.per_sample_loss``): the calibration batch
    tiled once per candidate, each copy with its own hard mask."""
    n, k = len(data["y"]), len(chunk)
    tile = {key: v.repeat(k, *([1] * (v.dim() - 1))) for key, v in data.items()}
    loss = prunable.per_sample_loss(model, objective, tile, chunk.repeat_interleave(n, dim=0),
                                    generator=torch.Generator().manual_seed(0))
    return loss.view(k, n).double().mean(1)


@torch.no_grad()
def _prefix_shared_losses(model, objective, data, chunk):
    """The same numbers as ``_masked_forward_losses``, computing each distinct mask prefix once.

    Candidates that agree on layers 0..i have the same hidden state after layer i, so the hidden states
    are kept per distinct prefix (a trie over the masks): at layer i every prefix splits by its bit and
    the block runs once for every distinct prefix that keeps it. With the chunk sorted, the first layers
    are shared by most candidates, which saves about half of the work for random 50% prunes.
    """
    prunable.require_parts(model, "the prefix-sharing random study", "embed", "blocks", "final_layer", "unpatchify")
    n, k = len(data["y"]), len(chunk)
    x_t = objective.noised(data["x0"], data["t"], data["noise"])
    h0, c = model.embed(x_t, objective.model_time(data["t"]), data["y"])
    states = h0.unsqueeze(0)                       # (distinct prefixes, n, tokens, width)
    state_of = torch.zeros(k, dtype=torch.long, device=chunk.device)
    for i, block in enumerate(model.blocks):
        key = state_of * 2 + (chunk[:, i] > 0.5).long()
        uniq, state_of = torch.unique(key, return_inverse=True)
        states = states[uniq // 2]
        run = (uniq % 2 == 1).nonzero().flatten()
        if len(run):
            u = len(run)
            h = states[run].reshape(u * n, *states.shape[2:])
            states[run] = block(h, c.repeat(u, 1)).view(u, n, *states.shape[2:])
    u = len(states)
    out = model.unpatchify(model.final_layer(states.reshape(u * n, *states.shape[2:]), c.repeat(u, 1)))
    rep = {key: v.repeat(u, *([1] * (v.dim() - 1))) for key, v in data.items()}
    x_t = objective.noised(rep["x0"], rep["t"], rep["noise"])
    terms = objective.loss_from_output(out, rep["x0"], x_t, rep["t"], rep["noise"])
    return terms["loss"].view(u, n).double().mean(1)[state_of]


@torch.no_grad()
def candidate_losses(model, calib, masks, batch_candidates=256, objective=None, progress=False, n_samples=None,
                     share_prefixes=True):
    """Calibration loss (mean ``loss`` term over the calibration samples) of every row of ``masks`` (C, depth).

    Candidates are scored ``batch_candidates`` at a time; ``share_prefixes`` (default) sorts them and runs
    every distinct mask prefix once, else each chunk goes through one masked forward. Prefix sharing needs DiT's
    layout (``embed``, ``final_layer``); another model (MAR) is scored by the masked forward.
    """

    share_prefixes = share_prefixes and prunable.has_parts(model, "embed", "blocks", "final_layer", "unpatchify")
    objective = _objective_for(model, objective)
    dev = next(model.parameters()).device
    data = {k: v.to(dev) for k, v in _flatten_calib(calib, n_samples).items()}
    masks = torch.as_tensor(masks, dtype=torch.float32)
    order = torch.arange(len(masks))
    if share_prefixes and len(masks):  # lexicographic order, first layer most significant
        for col in reversed(range(masks.shape[1])):
            order = order[torch.argsort(masks[order, col], stable=True)]
    score = _prefix_shared_losses if share_prefixes else _masked_forward_losses
    losses = torch.empty(len(masks), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(total=len(masks), disable=not progress, desc="candidates", leave=False)
        for start in range(0, len(masks), batch_candidates):
            idx = order[start:start + batch_candidates]
            losses[idx] = score(model, objective, data, masks[idx].to(dev)).cpu()
            bar.update(len(idx))
        bar.close()
    finally:
        model.train(was_training)
    return losses.numpy()


def random_candidate_study(model, calib, n_candidates, keep, batch_candidates=256, progress=True, groups=None,
                           seed=0, n_samples=32, objective=None, share_prefixes=True):
    """Calibration losses of ``n_candidates`` random prunes keeping ``keep`` layers (Figure 5, Table 3).

    ``calib``: the calibration batches; every candidate is scored on their first ``n_samples`` samples
    (default 32, so that 10,000 candidates take minutes on a CPU; None: all of them). Losses on a subset
    are not comparable with ``calibration_loss`` on the whole set: rescore the picks for a table.
    Returns a dict with ``losses`` (np.array), ``kept``
    (list of lists), ``rate`` (candidates per second), ``wall_s`` and the ``min``/``median``/``max``
    candidates (each {index, kept, loss}).
    """
    depth = prunable.depth(model)
    g = torch.Generator().manual_seed(int(seed))
    masks = random_masks(int(n_candidates), depth, keep, groups, g)
    t0 = time.time()
    losses = candidate_losses(model, calib, masks, batch_candidates, objective, progress, n_samples, share_prefixes)
    wall = time.time() - t0
    kept = [row.nonzero().flatten().tolist() for row in masks]
    rate = len(masks) / max(wall, 1e-9)
    n_used = len(_flatten_calib(calib, n_samples)["y"])
    if progress:
        print(f"random study: {len(masks)} candidates x {n_used} samples in {wall:.1f} s "
              f"({rate:.0f} candidates/s); loss {np.nanmin(losses):.4f} .. {np.nanmax(losses):.4f}", flush=True)
    order = np.argsort(np.nan_to_num(losses, nan=np.inf), kind="stable")

    def pick(i):
        return {"index": int(i), "kept": kept[i], "loss": float(losses[i])}

    return {"losses": losses, "kept": kept, "masks": masks, "rate": rate, "wall_s": wall, "n_samples": n_used,
            "min": pick(order[0]), "median": pick(order[len(order) // 2]), "max": pick(order[-1])}


def all_masks(depth, groups):
    """Every N:M mask of ``depth`` layers (C(M, N) ** blocks rows; 1:2 on 28 layers: 16,384), in a fixed order:
    row ``i`` takes block k's candidate ``(i // prod(later blocks' counts)) % count_k`` (the first block varies
    slowest)."""
    import itertools
    pairs = parse_groups(groups, depth)
    cands = [candidate_matrix(n, m).float() for n, m in pairs]
    total = int(np.prod([len(c) for c in cands], dtype=np.float64))
    if total > 1_000_000:
        raise ValueError(f"groups {groups!r} give {total:,} masks; enumerate at most 1,000,000 (use random_masks)")
    rows = [torch.cat([c[i] for c, i in zip(cands, choice)]) for choice in
            itertools.product(*[range(len(c)) for c in cands])]
    return torch.stack(rows)


def rescore_picks(model, calib, masks, losses, pool=64, objective=None, subset_samples=None,
                  which=("min", "median", "max")):
    """The lowest-, median- and highest-loss candidates of a study scored on a calibration subset, picked again on
    the whole calibration set: ``pool`` candidates around each end and the median (by the subset's ranking) are
    rescored on every sample and the pick is the minimum, median and maximum of its pool's full-set losses.
    ``subset_samples``: the number of calibration samples ``losses`` were computed on (None: not known); when that is
    the whole set (the smoke profile's 32), the pools are picked from ``losses`` as they are, since rescoring them
    would compute the same numbers again. ``which``: the picks wanted (a pool not asked for is not rescored).

    Returns {"min" | "median" | "max": {"index", "kept", "loss" (whole set), "loss_subset"}}.
    """
    losses = np.asarray(losses, dtype=np.float64)
    masks = torch.as_tensor(masks, dtype=torch.float32)
    order = np.argsort(np.nan_to_num(losses, nan=np.inf), kind="stable")
    n, half = len(order), max(1, pool // 2)
    pools = {"min": order[:pool], "median": order[max(0, n // 2 - half):n // 2 + half], "max": order[-pool:]}
    pools = {name: pools[name] for name in which}
    whole = subset_samples is not None and subset_samples >= sum(len(b["y"]) for b in calib)
    out = {}
    for name, idx in pools.items():
        full = losses[idx] if whole else candidate_losses(model, calib, masks[idx], objective=objective, n_samples=None)
        rank = np.argsort(np.nan_to_num(full, nan=np.inf), kind="stable")
        j = {"min": rank[0], "median": rank[len(rank) // 2], "max": rank[-1]}[name]
        i = int(idx[j])
        out[name] = {"index": i, "kept": masks[i].nonzero().flatten().tolist(), "loss": float(full[j]),
                     "loss_subset": float(losses[i])}
    return out


def block_costs(masks, losses, groups, kept):
    """What each block's choice costs in calibration loss, from a study of many N:M masks (``all_masks``) and their
    ``losses``: for block b of ``groups`` and the choice ``kept`` makes there, the lowest loss of any mask making the
    same choice at b against the lowest of any mask choosing otherwise (``cost`` = the difference: above 0, another
    choice at b allows a lower loss; ``other_kept``: block b's layers in that best other mask), and the mean losses of
    the two sets. Returns one dict per block."""
    masks = torch.as_tensor(masks, dtype=torch.bool)
    losses = np.asarray(losses, dtype=np.float64)
    from tinyfusion.pruning.indices import mask_from_kept
    chosen = mask_from_kept(kept, masks.shape[1]).bool()
    rows, start = [], 0
    for b, (_, m) in enumerate(parse_groups(groups, masks.shape[1])):
        layers = slice(start, start + m)
        same = (masks[:, layers] == chosen[layers]).all(1).numpy()
        mine, other = losses[same], losses[~same]
        best_other = masks[~same][int(np.nanargmin(other))]
        rows.append({"block": b, "layers": list(range(start, start + m)),
                     "kept": [i for i in range(start, start + m) if chosen[i]],
                     "other_kept": [i for i in range(start, start + m) if best_other[i]],
                     "best_loss_same": float(np.nanmin(mine)), "best_loss_other": float(np.nanmin(other)),
                     "mean_loss_same": float(np.nanmean(mine)), "mean_loss_other": float(np.nanmean(other)),
                     "cost": float(np.nanmin(mine) - np.nanmin(other))})
        start += m
    return rows

