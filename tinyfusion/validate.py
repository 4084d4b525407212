"""One validation layer for numeric and list arguments, shared by the entry points and the library.

The entry points (``tinyfusion.cli.*``) and the library's resolvers (``recovery.recovery_config``,
``pruning.learnable.learnable_config``, ``sampling.score_config``) and the training loop call these, so a value
that would make garbage (NaN, a negative weight, an EMA decay above 1, a repeated layer index, an explicit 0
where 0 means "the profile's") is refused before any work starts, with a message naming the parameter, the
value and what is allowed. Nothing here imports the rest of the package.
"""
from __future__ import annotations

import json
import math


def check_budget(name, value, allow_zero=False):
    """A step count or sample budget: a non-negative (or positive) integer, else a clear error."""
    try:
        v = int(value)
        if float(value) != v:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {v}")
    return v


def given_count(name, value):
    """A count where None means "not given" (returned as 0, the library's "the profile's") and an explicit 0 or a
    negative number is refused instead of silently becoming the default."""
    return 0 if value is None else check_budget(name, value)


def given_rate(name, value):
    """A learning rate where None means "not given" (0.0, the library's "the profile's"); else finite and > 0."""
    return 0.0 if value is None else number(name, value, 0.0, lo_open=True)


def number(name, value, lo=None, hi=None, *, lo_open=False, hi_open=False, why=""):
    """``value`` as a finite float within [lo, hi] (``lo_open``/``hi_open``: that end excluded), else an error."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if below or above:
        left = "any" if lo is None else f"{'(' if lo_open else '['}{lo:g}"
        right = "" if hi is None else f"{hi:g}{')' if hi_open else ']'}"
        allowed = f"in {left}, {right}" if hi is not None and lo is not None else (
            f"{'>' if lo_open else '>='} {lo:g}" if lo is not None else f"{'<' if hi_open else '<='} {hi:g}")
        raise ValueError(f"{name} must be {allowed}, got {value!r}{'; ' + why if why else ''}")
    return v


def ema_decay(name, value):
    """An EMA decay in [0, 1): 1 would freeze the average, above 1 it diverges."""
    return number(name, value, 0.0, 1.0, hi_open=True, why="the EMA keeps decay * old + (1 - decay) * new")


def json_value(name, value):
    """``value`` parsed as JSON when it is a string that looks like a JSON list or object, else as is."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} is not valid JSON ({e.msg} at character {e.pos}): {value!r}") from None
    return value


def index_list(name, value, upper=None, length=None):
    """A strictly increasing list of non-negative layer indices (below ``upper``; ``length`` of them)."""
    value = json_value(name, value)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of layer indices, got {value!r}")
    try:
        out = [check_budget(f"{name}[{i}]", v, allow_zero=True) for i, v in enumerate(value)]
    except ValueError as e:
        raise ValueError(f"{e} (in {name} = {list(value)})") from None
    if any(b <= a for a, b in zip(out, out[1:])):
        dup = sorted({v for v in out if out.count(v) > 1})
        raise ValueError(f"{name} {out} must be strictly increasing"
                         + (f"; {dup} repeat" if dup else "") + " (each layer once, in order)")
    if upper is not None and out and out[-1] >= upper:
        raise ValueError(f"{name} {out} has indices outside 0..{upper - 1}")
    if length is not None and len(out) != length:
        raise ValueError(f"{name} has {len(out)} entries but must have {length} (one per layer of the model)")
    return out


def groups(name, value):
    """Pruning groups: "N:M", "none", or a list of [N, M] pairs (a JSON string is parsed, naming the flag)."""
    value = json_value(name, value)
    if isinstance(value, (list, tuple)) and not value:
        raise ValueError(f"{name} is an empty list; give 'N:M' or a list of [N, M] blocks")
    return value


def _positive(name, v):
    return number(name, v, 0.0, lo_open=True)


def _non_negative(name, v):
    return number(name, v, 0.0)


def _each(check):
    def run(name, v):
        items = json_value(name, v)
        items = items if isinstance(items, (list, tuple)) else [items]
        return [check(f"{name}[{i}]", x) for i, x in enumerate(items) if x is not None]
    return run


# the rule of every numeric setting a resolver or entry point takes, by its name (None values are "not given")
RULES = {
    "lr": _non_negative, "min_lr": _non_negative,           # 0: the profile's
    "a_kd": _non_negative, "a_diff": _non_negative, "beta": _each(_non_negative),
    "k_sigma": _non_negative,                               # 0: no mask
    "ema_decay": ema_decay, "ema_warmup": lambda n, v: check_budget(n, v, allow_zero=True),
    "grad_clip": _positive, "label_dropout": lambda n, v: number(n, v, 0.0, 1.0, hi_open=True),
    "tau": _each(lambda n, v: number(n, v, 0.0, lo_open=True, why="the Gumbel-softmax temperature divides the "
                                                                   "logits")),
    "logit_lr_mult": _positive, "lora_rank": check_budget, "lora_alpha": _positive,
    "cfg_scale": lambda n, v: number(n, v, 0.0, why="1 means no guidance"),
    "min_lr_frac": lambda n, v: number(n, v, 0.0, 1.0), "warmup": lambda n, v: check_budget(n, v, allow_zero=True),
    "steps": check_budget, "batch_size": check_budget, "seed": lambda n, v: check_budget(n, v, allow_zero=True),
}


def settings(**values):
    """Check each named setting against its rule in :data:`RULES` (None: not given, skipped); raises on the
    first bad one, naming it. Returns nothing: callers keep converting as they did."""
    for name, v in values.items():
        if v is not None:
            RULES[name](name, v)


def sampling(objective, sampler, steps, cfg_scale=None):
    """(sampler, steps, cfg_scale) checked for ``objective``: a sampler it has, at least its ``MIN_STEPS`` steps,
    a finite guidance scale >= 0 (1: no guidance)."""
    if sampler not in objective.SAMPLERS:
        raise ValueError(f"sampler {sampler!r} does not fit the {objective.config.get('name', '')} objective; "
                         f"choose one of {', '.join(objective.SAMPLERS)}")
    steps = check_budget("steps", steps)
    least = getattr(objective, "MIN_STEPS", 1)
    if steps < least:
        raise ValueError(f"steps must be >= {least} for the {sampler} sampler, got {steps}")
    if cfg_scale is not None:
        cfg_scale = number("cfg_scale", cfg_scale, 0.0, why="1 means no guidance, 1.5 is the paper's")
    return sampler, steps, cfg_scale
