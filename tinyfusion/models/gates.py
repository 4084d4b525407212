"""N:M Gumbel gates: TinyFusion's learnable layer mask (section 3, Eqs. 3-5).

The L layers are cut into consecutive local blocks of M layers, of which exactly N are kept. A block with
C(M, N) candidate masks owns one categorical distribution over them (logits start equal at 0.02 and are
multiplied by ``scale`` = 100 before the softmax, as in the official code). A training step draws, per
sample and per block, a hard one-hot row by Gumbel-softmax with temperature ``tau`` (straight-through: hard
in the forward pass, the soft relaxation's gradient in the backward pass) and turns it into layer bits by
multiplying with the block's candidate matrix. After training, each block keeps its most probable row
(from an EMA of the logits), which is the pruning decision.

    gates = NMGates(depth=28, groups="1:2")
    mask = gates.sample(batch_size, tau=tau_schedule(step, total))   # (B, 28), 0/1 with gradient
    out = dit(x, t, y, mask=mask)
    kept, confidence = gates.decision()
"""
from __future__ import annotations

import itertools
import math
import re

import torch
import torch.nn as nn


def candidate_matrix(n, m):
    """All 0/1 rows of length ``m`` with exactly ``n`` ones, more leading ones first (C(m, n) rows).

    ``candidate_matrix(2, 3)`` is ``[[1,1,0],[1,0,1],[0,1,1]]``, the paper's example.
    """
    n, m = int(n), int(m)
    if not 1 <= n <= m:
        raise ValueError(f"an N:M block needs 1 <= N <= M, got {n}:{m}")
    rows = []
    for ones in itertools.combinations(range(m), n):  # lexicographic in the positions of the ones
        row = [0] * m
        for i in ones:
            row[i] = 1
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def parse_groups(groups, depth):
    """The list of (N, M) local blocks covering ``depth`` layers.

    ``groups``: "N:M" (one block size repeated to cover the depth, e.g. "1:2" for 28 layers gives 14 blocks),
    a single (N, M) pair (repeated likewise), or an explicit list such as ``[[2, 4], [3, 4], ...]`` whose
    block sizes M must add up to ``depth``.
    """
    depth = int(depth)
    if isinstance(groups, str):
        text = groups.strip()
        if text.startswith("["):
            import json
            return parse_groups(json.loads(text), depth)
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
        if not match:
            raise ValueError(f"groups {groups!r} is not of the form 'N:M' (e.g. '1:2') or a list of [N, M] pairs")
        groups = (int(match.group(1)), int(match.group(2)))
    if (isinstance(groups, (tuple, list)) and len(groups) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in groups)):
        n, m = groups
        _check_pair(n, m)
        if depth % m:
            raise ValueError(f"{n}:{m} blocks cannot cover {depth} layers ({depth} is not a multiple of {m}); "
                             f"choose M dividing {depth} or pass an explicit list of [N, M] blocks")
        return [(n, m)] * (depth // m)
    try:
        pairs = [(int(n), int(m)) for n, m in groups]
    except (TypeError, ValueError):
        raise ValueError(f"groups {groups!r} is neither 'N:M' nor a list of [N, M] pairs") from None
    if not pairs:
        raise ValueError("groups is an empty list; give at least one [N, M] block")
    for n, m in pairs:
        _check_pair(n, m)
    covered = sum(m for _, m in pairs)
    if covered != depth:
        raise ValueError(f"the blocks {pairs} cover {covered} layers but the model has {depth}; "
                         f"the block sizes M must add up to the depth exactly")
    return pairs


def _check_pair(n, m):
    if m < 1 or n < 1:
        raise ValueError(f"block {n}:{m} is invalid: N and M must be >= 1 (each block keeps at least one layer)")
    if n > m:
        raise ValueError(f"block {n}:{m} is invalid: cannot keep N={n} layers out of M={m}; need N <= M")


def tau_schedule(step, total, start=4.0, end=0.1):
    """Gumbel temperature at ``step`` of ``total``: linear from ``start`` (step 0) to ``end`` (last step)."""
    frac = min(max(step / max(total - 1, 1), 0.0), 1.0)
    return start + (end - start) * frac


class NMGates(nn.Module):
    """Learnable N:M layer mask: one categorical distribution over candidate masks per local block.

    Parameters: ``logits.k`` (one vector of C(M_k, N_k) entries per block). Buffers: ``ema.k`` (EMA of the
    logits, which gives the decision) and the candidate matrices. ``history`` collects snapshots of the
    probabilities (per candidate row and per layer) for plots of the decision dynamics (paper Figs. 6, 9-11).
    """

    def __init__(self, depth, groups="1:2", init=0.02, scale=100.0):
        super().__init__()
        self.depth = int(depth)
        self.groups = parse_groups(groups, depth)
        self.scale = float(scale)
        self.logits = nn.ParameterList(
            [nn.Parameter(torch.full((math.comb(m, n),), float(init))) for n, m in self.groups])
        for k, (n, m) in enumerate(self.groups):
            self.register_buffer(f"cand_{k}", candidate_matrix(n, m).float(), persistent=False)
            self.register_buffer(f"ema_{k}", torch.full((math.comb(m, n),), float(init)))
        self.offsets = [sum(m for _, m in self.groups[:k]) for k in range(len(self.groups))]
        self.history = []

    @property
    def n_keep(self):
        """Number of layers every mask keeps (sum of the N's)."""
        return sum(n for n, _ in self.groups)

    def candidates(self, k):
        return getattr(self, f"cand_{k}")

    def ema_logits(self, k):
        return getattr(self, f"ema_{k}")

    def sample(self, batch_size, tau, hard=True, generator=None):
        """Per-sample layer masks (B, depth) by Gumbel-softmax over every block's candidate rows.

        ``hard=True``: forward values are exactly 0/1 (one candidate row per block and sample) and the
        gradient is the soft relaxation's (straight-through). ``hard=False``: the relaxed mask itself.
        """
        parts = []
        for k, logits in enumerate(self.logits):
            z = (logits * self.scale).unsqueeze(0).expand(batch_size, -1)
            u = torch.rand(z.shape, device=z.device, generator=generator).clamp_(1e-10, 1.0 - 1e-7)
            gumbel = -torch.log(-torch.log(u))
            soft = torch.softmax((z + gumbel) / tau, dim=-1)
            if hard:
                one_hot = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
                rows = one_hot - soft.detach() + soft
            else:
                rows = soft
            parts.append(rows @ self.candidates(k))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def probs(self, use_ema=False):
        """List (one per block) of the probabilities of the candidate rows, softmax(scale * logits)."""
        return [torch.softmax(self.scale * (self.ema_logits(k) if use_ema else lg.detach()), dim=-1)
                for k, lg in enumerate(self.logits)]

    @torch.no_grad()
    def update_ema(self, decay=0.999):
        for k, lg in enumerate(self.logits):
            self.ema_logits(k).mul_(decay).add_(lg.detach(), alpha=1 - decay)

    @torch.no_grad()
    def decision(self, use_ema=True):
        """(kept layer indices, confidence per block): each block's most probable candidate row."""
        kept, confidence = [], []
        for k, p in enumerate(self.probs(use_ema=use_ema)):
            row = int(p.argmax())
            kept += [self.offsets[k] + int(i) for i in self.candidates(k)[row].nonzero().flatten()]
            confidence.append(float(p[row]))
        return kept, confidence

    @torch.no_grad()
    def layer_probs(self, use_ema=False):
        """(depth,) probability that each layer is kept: the candidate-row probabilities times the rows."""
        return torch.cat([p @ self.candidates(k) for k, p in enumerate(self.probs(use_ema=use_ema))])

    def record(self, step, tau=None, max_rows=1024, **extra):
        """Append a snapshot to ``history`` and return it: step, tau, per-layer keep probabilities
        (``layer_probs``, ``ema_layer_probs``), the EMA decision and confidence, and the per-block row
        probabilities (``probs``, ``ema_probs``; left out, None, when the blocks hold more than ``max_rows``
        candidate rows in all, e.g. 7:14 with 2 x 3432)."""
        kept, conf = self.decision(use_ema=True)
        full = sum(len(lg) for lg in self.logits) <= max_rows
        entry = {"step": int(step), "tau": None if tau is None else float(tau),
                 "layer_probs": self.layer_probs().tolist(), "ema_layer_probs": self.layer_probs(True).tolist(),
                 "probs": [p.tolist() for p in self.probs()] if full else None,
                 "ema_probs": [p.tolist() for p in self.probs(use_ema=True)] if full else None,
                 "kept": kept, "confidence": conf, **extra}
        self.history.append(entry)
        return entry

    def get_extra_state(self):
        """The decision history travels with the gates' state dict (resumed runs keep their snapshots)."""
        return {"history": list(self.history)}

    def set_extra_state(self, state):
        self.history = list(state.get("history", []))

    def extra_repr(self):
        return f"depth={self.depth}, groups={self.groups}, scale={self.scale}"


def block_bounds(groups):
    """[(first layer, one past the last)] of each block of ``groups`` ([N, M] pairs, in order)."""
    bounds, start = [], 0
    for _, m in groups:
        bounds.append((start, start + int(m)))
        start += int(m)
    return bounds


def settled(history, groups, tail=0.2):
    """Per block, whether the EMA decision stayed the same over the last ``tail`` of the run, and when it last changed.

    ``history``: the snapshots of :meth:`NMGates.record` (each with ``step`` and the EMA decision ``kept``);
    ``groups``: the run's blocks as [N, M] pairs. A block is settled when its kept layers are the same in every
    snapshot from step ``(1 - tail) * last step`` on. Returns ``(settled, last_change)``: a list of bools and a list
    of the step at which each block's decision last differed from the one before (0: never changed).
    """
    if not history:
        raise ValueError("no decision snapshots: the run recorded no history")
    bounds = block_bounds(groups)
    steps = [int(h["step"]) for h in history]
    cut = (1.0 - float(tail)) * steps[-1]
    per_block = [[tuple(k for k in h["kept"] if a <= k < b) for h in history] for a, b in bounds]
    last_change = [max([steps[i] for i in range(1, len(seq)) if seq[i] != seq[i - 1]], default=0)
                   for seq in per_block]
    return [lc <= cut for lc in last_change], last_change
