"""Width pruning of DiT blocks, and the parameter / MAC accounting of (depth- or width-) pruned DiTs.

Width pruning (uniform removal of attention heads and MLP channels in every block) keeps every layer, its
LayerNorms, adaLN modulation and residual stream at full width and only narrows the matmuls. ``width_pruned``
does it by weight magnitude (or with random weights, for speed measurements); ``width_for_params`` finds the
uniform width whose parameter count matches a depth-pruned model's; ``count_params`` / ``forward_macs`` measure a
model and ``model_params`` / ``block_params`` predict the parameter count of a shape.

    from tinyfusion.pruning.width import width_pruned, width_for_params, count_params, forward_macs
    w50 = width_pruned(model, 0.5)                    # half the heads and MLP channels of every block
    w = width_for_params(model, count_params(d14))    # the widths with D14's parameter count

Depth pruning (whole blocks) is ``tinyfusion.pruning.indices.prune``; ``tinyfusion.speed`` times both.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import Mlp
from timm.models.vision_transformer import Attention

from tinyfusion.models.dit import DiT, DiTBlock, build_model, get_2d_sincos_pos_embed


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


# --------------------------------------------------------------------------- random weights
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
    grid = int(model.x_embedder.num_patches ** 0.5)
    pos = torch.from_numpy(get_2d_sincos_pos_embed(model.pos_embed.shape[-1], grid)).float()
    model.pos_embed.data.copy_(pos.unsqueeze(0))
    return model
