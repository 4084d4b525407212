"""Speed of depth- versus width-pruned DiTs (paper Fig. 4 and the it/s column of Table 1).

Depth pruning removes whole blocks, so a D14 from D28 does half the block work with half the kernel launches
and half the per-layer Python overhead: its speed-up should track the linear ideal ``1 / (1 - r)``. Width
pruning (uniform removal of attention heads and MLP channels in every block) keeps every layer, its
LayerNorms, modulation and residual adds at full width and only narrows the matmuls; how much speed that
costs depends on the device (narrow GEMMs lose efficiency on a GPU; per-layer overhead does not shrink).
Beware the yardstick: adaLN holds a third of DiT's parameters but runs once per sample, not per token, so a
width-pruned model with D14's *parameter count* removes far more compute than D14 does. ``speed_sweep``
therefore reports both "channels" (1 - r of the heads and channels, about D14's MACs) and "params" widths.

    from tinyfusion.speed import depth_pruned, width_pruned, sampling_throughput, speed_sweep
    d14 = depth_pruned(model, 14)
    w50 = width_pruned(model, 0.5)                    # half the heads and MLP channels of every block
    it_s = sampling_throughput(d14, batch=64, steps=5)
    rows = speed_sweep("DiT-T28/4", batch=250, steps=5)

Throughput is denoising iterations per second: one iteration is one DiT forward of the whole batch (twice the
batch with classifier-free guidance), as in the paper's it/s. ``speed_sweep`` interleaves the models round
by round (A/B/A/B...) so that noise on a shared machine hits every model alike, and reports medians.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn as nn
from timm.layers import Mlp
from timm.models.vision_transformer import Attention

from tinyfusion.models.dit import DiT, DiTBlock, build_model

# --------------------------------------------------------------------------- models


class WidthPrunedBlock(DiTBlock):
    """A DiT block with ``heads`` attention heads of the original ``head_dim`` and ``mlp_hidden`` MLP channels.

    Same forward ``(x, c) -> x`` and the same state-dict keys as ``DiTBlock``; only the attention inner width
    (``heads * head_dim``, qkv ``Linear(dim, 3 * inner)``, proj ``Linear(inner, dim)``) and the MLP hidden
    width shrink. adaLN modulation, LayerNorms and the residual stream keep the full ``hidden_size``.
    """

    def __init__(self, hidden_size, heads, head_dim, mlp_hidden):
        nn.Module.__init__(self)
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=heads, attn_head_dim=head_dim, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(in_features=hidden_size, hidden_features=mlp_hidden,
                       act_layer=lambda: nn.GELU(approximate="tanh"), drop=0)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))


def _config(model_or_config):
    """(config dict, model or None) from a DiT, a DiT kwargs dict or a registered name such as "DiT-XL/2"."""
    if isinstance(model_or_config, nn.Module):
        if not hasattr(model_or_config, "config") or not hasattr(model_or_config, "blocks"):
            raise TypeError(f"expected a DiT (with .config and .blocks), got {type(model_or_config).__name__}")
        return dict(model_or_config.config), model_or_config
    if isinstance(model_or_config, str):
        with torch.device("meta"):
            return dict(build_model(model_or_config).config), None
    if isinstance(model_or_config, dict):
        return dict(model_or_config), None
    raise TypeError(f"expected a DiT, a DiT config dict or a model name, got {type(model_or_config).__name__}")


def count_params(model):
    """Number of parameters (trainable or not, ``pos_embed`` included, as the paper's 675M)."""
    return sum(p.numel() for p in model.parameters())


def forward_macs(model):
    """Multiply-accumulates of one sample's forward pass (linear layers, patch conv and attention matmuls).

    Token-wise layers count once per token; adaLN modulation and the timestep MLP once per sample, which is
    why adaLN holds a third of DiT-XL/2's parameters but almost none of its compute.
    """
    T = model.x_embedder.num_patches
    macs = T * model.x_embedder.proj.weight[0].numel() * model.x_embedder.proj.weight.shape[0]
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            per_sample = "adaLN_modulation" in name or name.startswith("t_embedder")
            macs += mod.in_features * mod.out_features * (1 if per_sample else T)
        elif isinstance(mod, Attention):
            macs += 2 * T * T * mod.attn_dim  # q k^T and attn v
    return int(macs)


def _linear_params(n_in, n_out):
    return n_in * n_out + n_out


def block_params(hidden, heads, head_dim, mlp_hidden):
    """Parameters of one (possibly width-pruned) DiT block: adaLN + qkv + proj + fc1 + fc2."""
    inner = heads * head_dim
    return (_linear_params(hidden, 6 * hidden) + _linear_params(hidden, 3 * inner) + _linear_params(inner, hidden)
            + _linear_params(hidden, mlp_hidden) + _linear_params(mlp_hidden, hidden))


def _shape(config):
    hidden, heads = config["hidden_size"], config["num_heads"]
    return hidden, heads, hidden // heads, int(hidden * config.get("mlp_ratio", 4.0))


def _fixed_params(config):
    """Parameters outside the blocks (embedders, pos_embed, final layer)."""
    with torch.device("meta"):
        shell = DiT(**{**config, "depth": 0})
    return count_params(shell)


def model_params(config, depth=None, heads=None, mlp_hidden=None):
    """Parameter count of a DiT of ``config`` with ``depth`` blocks of ``heads`` heads / ``mlp_hidden`` channels."""
    hidden, h0, hd, m0 = _shape(config)
    depth = config["depth"] if depth is None else depth
    return _fixed_params(config) + depth * block_params(hidden, heads or h0, hd, mlp_hidden or m0)


def width_for_params(model_or_config, target_params):
    """The uniform width (heads, MLP channels) whose parameter count is closest to ``target_params``.

    Every head count 1..H is tried; for each, the MLP width that matches the target exactly is solved for, and
    the pair whose two keep ratios are closest to each other (the most uniform removal) wins. adaLN
    modulation (6 * hidden^2 per block, a third of DiT-XL/2) cannot be width-pruned, so a target below the
    size at one head is unreachable: then the narrowest uniform model (1 head, ``mlp/H`` channels) is returned
    with ``matched=False``.

    Returns dict(heads, mlp_hidden, head_keep, mlp_keep, params, target_params, matched).
    """
    config, _ = _config(model_or_config)
    hidden, H, hd, M = _shape(config)
    depth, fixed = config["depth"], _fixed_params(config)
    per_block = (target_params - fixed) / depth
    best = None
    for h in range(1, H + 1):
        rest = per_block - block_params(hidden, h, hd, 0)  # what the MLP may use (its 2nd bias is counted)
        m = round(rest / (2 * hidden + 1))
        if not 1 <= m <= M:
            continue
        gap = abs(h / H - m / M)
        if best is None or gap < best[0]:
            best = (gap, h, m)
    matched = best is not None
    _, h, m = best if matched else (None, 1, max(1, round(M / H)))
    params = model_params(config, heads=h, mlp_hidden=m)
    return dict(heads=h, mlp_hidden=m, head_keep=h / H, mlp_keep=m / M, params=params,
                target_params=int(target_params), matched=matched)


def _top(scores, k):
    return torch.sort(torch.topk(scores, k).indices).values


@torch.no_grad()
def _slice_block(block, heads, mlp_hidden, hd):
    """A WidthPrunedBlock holding the ``heads`` heads and ``mlp_hidden`` channels of largest weight norm."""
    hidden = block.norm1.normalized_shape[0]
    H = block.attn.num_heads
    new = WidthPrunedBlock(hidden, heads, hd, mlp_hidden).to(block.adaLN_modulation[1].weight)
    new.adaLN_modulation.load_state_dict(block.adaLN_modulation.state_dict())
    qkv_w = block.attn.qkv.weight.view(3, H, hd, hidden)
    qkv_b = block.attn.qkv.bias.view(3, H, hd)
    proj_w = block.attn.proj.weight.view(hidden, H, hd)
    head_score = qkv_w.pow(2).sum((0, 2, 3)) + proj_w.pow(2).sum((0, 2))
    keep_h = _top(head_score, heads)
    new.attn.qkv.weight.copy_(qkv_w[:, keep_h].reshape(-1, hidden))
    new.attn.qkv.bias.copy_(qkv_b[:, keep_h].reshape(-1))
    new.attn.proj.weight.copy_(proj_w[:, keep_h].reshape(hidden, -1))
    new.attn.proj.bias.copy_(block.attn.proj.bias)
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    ch_score = fc1.weight.pow(2).sum(1) + fc2.weight.pow(2).sum(0)
    keep_c = _top(ch_score, mlp_hidden)
    new.mlp.fc1.weight.copy_(fc1.weight[keep_c])
    new.mlp.fc1.bias.copy_(fc1.bias[keep_c])
    new.mlp.fc2.weight.copy_(fc2.weight[:, keep_c])
    new.mlp.fc2.bias.copy_(fc2.bias)
    return new


def _shell(config, model=None, device=None):
    """A DiT with no blocks: the embedders and final layer (copied from ``model`` when given)."""
    shell = DiT(**{**config, "depth": 0})
    if model is not None:
        own = shell.state_dict()
        shell.load_state_dict({k: v for k, v in model.state_dict().items() if k in own}, strict=True)
        device = next(model.parameters()).device
    return shell.to(device) if device is not None else shell


def width_pruned(model_or_config, keep_ratio=None, *, heads=None, mlp_hidden=None):
    """A DiT whose every block keeps ``keep_ratio`` of its attention heads and MLP hidden channels.

    ``head_dim`` is unchanged, so the attention inner width shrinks with the head count (at least one head is
    kept). ``heads`` / ``mlp_hidden`` give the kept counts directly instead (see ``width_for_params`` for
    the widths that match a depth-pruned model's parameter count). From a DiT, each block keeps its heads and
    channels of largest weight norm (a real, magnitude-based structured pruning); from a config or a name, the
    weights are random (for speed measurements). The result has ``.width = dict(heads=, mlp_hidden=)``; its
    ``config`` is the original one (``load_dit`` cannot rebuild it).
    """
    config, model = _config(model_or_config)
    hidden, H, hd, M = _shape(config)
    if heads is None or mlp_hidden is None:
        if keep_ratio is None:
            raise ValueError("width_pruned needs keep_ratio, or both heads= and mlp_hidden=")
        if not 0 < keep_ratio <= 1:
            raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
        heads = heads or max(1, round(keep_ratio * H))
        mlp_hidden = mlp_hidden or max(1, round(keep_ratio * M))
    if not (1 <= heads <= H and 1 <= mlp_hidden <= M):
        raise ValueError(f"cannot keep {heads} of {H} heads and {mlp_hidden} of {M} MLP channels")
    if model is None:
        small = random_dit(config, depth=0)
        small.config["depth"] = config["depth"]
        with torch.device("meta"):
            blocks = nn.ModuleList([WidthPrunedBlock(hidden, heads, hd, mlp_hidden) for _ in range(config["depth"])])
        small.blocks = blocks.to_empty(device=next(small.parameters()).device)
        _randomise(small.blocks)
    else:
        small = _shell(config, model)
        small.blocks = nn.ModuleList([_slice_block(b, heads, mlp_hidden, hd) for b in model.blocks])
        small.train(model.training)
    small.width = dict(heads=heads, mlp_hidden=mlp_hidden, head_keep=heads / H, mlp_keep=mlp_hidden / M)
    return small


def uniform_kept(depth, keep):
    """``keep`` evenly spaced block indices out of ``depth``, first and last included (the Oracle pattern)."""
    from tinyfusion.pruning.indices import oracle_indices
    return oracle_indices(depth, keep)


def depth_pruned(model, keep):
    """A DiT keeping ``keep`` evenly spaced blocks of ``model`` (copies; the input model is untouched).

    Same weights and output as ``tinyfusion.pruning.indices.prune(model, uniform_kept(depth, keep))``, but
    without building and initialising a full-size model first (cheap for DiT-XL/2).
    """
    config, model = _config(model)
    if model is None:
        raise TypeError("depth_pruned needs a DiT instance (build one with random_dit(config) for speed tests)")
    kept = uniform_kept(len(model.blocks), keep)
    small = _shell(config, model)
    small.blocks = nn.ModuleList([copy.deepcopy(model.blocks[i]) for i in kept])
    small.config["depth"] = len(kept)
    small.pruned_from = kept
    small.train(model.training)
    return small


def _randomise(module, std=0.02):
    """Uniform random weights of standard deviation ``std`` (faster than ``normal_`` on big models)."""
    a = std * 3 ** 0.5
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.endswith("pos_embed"):
                p.uniform_(-a, a)


def random_dit(model_or_config, device="cpu", **overrides):
    """A DiT with random weights of std 0.02 (no zero adaLN init), built fast without xavier init (DiT-XL/2: ~1 s).

    For speed measurements only: the timings of a trained model are the same.
    """
    config, _ = _config(model_or_config)
    config.update(overrides)
    with torch.device("meta"):
        model = DiT(**config)
    model = model.to_empty(device=device)
    _randomise(model)
    from tinyfusion.models.dit import get_2d_sincos_pos_embed
    grid = int(model.x_embedder.num_patches ** 0.5)
    pos = torch.from_numpy(get_2d_sincos_pos_embed(model.pos_embed.shape[-1], grid)).float()
    model.pos_embed.data.copy_(pos.unsqueeze(0))
    return model


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
    done); on a GPU only the wall-clock figure means anything.
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
                    runs=[round(steps / w, 4) for w, _ in v]) for k, v in times.items()}


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
    plots), compute_ideal (= 1/mac_ratio), runs.
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
        d = depth_pruned(base, keep)
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
        rows.append(dict(meta[k], params=p, param_ratio=round(p / P, 4), macs=f, mac_ratio=round(f / F, 4),
                         it_s=round(res[k]["it_s"], 4), speedup=round(res[k]["it_s"] / res["base"]["it_s"], 4),
                         it_s_cpu=round(res[k]["it_s_cpu"], 4),
                         speedup_cpu=round(res[k]["it_s_cpu"] / res["base"]["it_s_cpu"], 4),
                         ideal=round(1 / (1 - meta[k]["ratio"]), 4), compute_ideal=round(F / f, 4),
                         runs=res[k]["runs"]))
    return rows
