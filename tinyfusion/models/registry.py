"""Models by architecture: one place that maps a registered name or a checkpoint to the class that builds it.

Two architectures are registered: DiT (``models.dit``: the DiT and SiT names of ``DiT_models``) and MAR
(``models.mar``: ``MAR_models``). A checkpoint of ours stores its config; MAR's carries ``"arch": "mar"`` and a config
without an ``arch`` is a DiT's, so every DiT checkpoint and cache key written before stays as it was. A raw state dict
(the official files) tells its architecture by its keys (MAR: ``encoder_blocks.*``) and needs a registered name.

* :func:`arch_of_name`, :func:`build`: a registered name to its architecture, or to a freshly initialised model;
* :func:`arch_of_checkpoint`: "dit" or "mar" for a loaded checkpoint;
* :func:`load_model`: a checkpoint (path or loaded dict) of either architecture, built by the right class;
* :func:`input_shape`: ``(in_channels, input_size)`` of a checkpoint of either architecture.

The DiT-only entry points (sampling, export, width pruning) keep ``load_dit``, which refuses a MAR checkpoint in one
line naming the file; recovery (``tinyfusion.recovery``) loads through :func:`load_model` (a MAR: plain fine-tuning
only, its distillation modes refuse it in one line).
"""
from __future__ import annotations

ARCHS = ("dit", "mar")


def _tables():
    from tinyfusion.models.dit import DiT_models
    from tinyfusion.models.mar import MAR_models
    return {"dit": DiT_models, "mar": MAR_models}


def registered_names():
    """Every registered model name, DiT/SiT names first."""
    return [n for table in _tables().values() for n in table]


def arch_of_name(name, flag="--model"):
    """"dit" or "mar" for a registered name; any other name is refused naming ``flag`` and the choices."""
    for arch, table in _tables().items():
        if name in table:
            return arch
    raise ValueError(f"{flag} {name!r} is not a registered config; choose one of {', '.join(registered_names())}")


def build(name, objective=None, **overrides):
    """A freshly initialised model of the registered ``name`` (``overrides`` replace config fields). ``objective``
    (DiT/SiT only: "ddpm" or "flow") is refused for a model that computes its own loss (MAR)."""
    from tinyfusion.models.dit import build_model
    from tinyfusion.models.mar import build_mar

    arch = arch_of_name(name)
    if arch == "mar":
        if objective:
            raise ValueError(f"{name} computes its own training loss (its per-token diffusion head); --objective "
                             f"{objective} applies to DiT/SiT models only")
        return build_mar(name, **overrides)
    return build_model(name, **({"objective": objective} if objective else {}), **overrides)


def _stored_config(ckpt, state):
    return ckpt.get("config") if isinstance(ckpt, dict) and state is not ckpt and isinstance(ckpt.get("config"),
                                                                                             dict) else None


def arch_of_checkpoint(ckpt):
    """"mar" for a loaded MAR checkpoint (a stored config with ``arch: mar``, or encoder/decoder block keys), else
    "dit" (what is not a DiT either is left to ``load_dit``, which names what it holds)."""
    from tinyfusion.models.mar import mar_weights

    state = mar_weights(ckpt)
    config = _stored_config(ckpt, state)
    if config is not None and config.get("arch"):
        if config["arch"] not in ARCHS:
            raise ValueError(f"checkpoint config names arch {config['arch']!r}; known: {', '.join(ARCHS)}")
        return config["arch"]
    if isinstance(state, dict) and any(isinstance(k, str) and k.startswith(("encoder_blocks.", "decoder_blocks."))
                                       for k in state):
        return "mar"
    return "dit"


_NAMES = {"dit": "DiT/SiT", "mar": "MAR"}


def _check_arch(label, arch, name):
    want = arch_of_name(name)
    if want != arch:
        raise ValueError(f"{label} is a {_NAMES[arch]} checkpoint, but --model {name} is a {_NAMES[want]} config; "
                         f"pass a {_NAMES[arch]} name or leave --model out (our checkpoints store their config)")


def check_name_fits(path, name, label=None):
    """Refuse, in one line naming both, a registered ``name`` of another architecture than the checkpoint at
    ``path`` (before any work; :func:`load_model` checks the same)."""
    from tinyfusion.io import checkpoint_skeleton
    _check_arch(label or str(path), arch_of_checkpoint(checkpoint_skeleton(path)), name)


def load_model(path_or_state, name=None, config=None, strict=True, objective=None, default_name=None, label=None):
    """The model of a checkpoint, built by the class of its architecture (:func:`arch_of_checkpoint`).

    ``path_or_state``: a ``.pt`` path or a loaded checkpoint/state dict. The model is built from ``config``, else the
    checkpoint's stored config, else the registered ``name`` (for a raw state dict; depths are read from its keys).
    ``name`` of another architecture than the checkpoint's is refused in one line naming both. ``default_name`` (a
    profile's model) builds a raw state dict when ``name`` is not given and is ignored when it names another
    architecture. ``objective`` replaces a DiT's objective; it is refused for a MAR (which computes its own loss).
    """
    from tinyfusion.io import load_checkpoint
    from tinyfusion.models.dit import load_dit
    from tinyfusion.models.mar import load_mar

    label = label or (str(path_or_state) if not isinstance(path_or_state, dict) else "<state dict>")
    ckpt = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state, weights_only=True)
    arch = arch_of_checkpoint(ckpt)
    if name:
        _check_arch(label, arch, name)
    elif default_name and arch_of_name(default_name) == arch:
        name = default_name
    if arch == "mar":
        if objective:
            raise ValueError(f"{label} is a MAR checkpoint, which computes its own training loss; --objective "
                             f"{objective} applies to DiT/SiT checkpoints only")
        try:
            return load_mar(ckpt, name=name, config=config, strict=strict)
        except ValueError as e:
            raise ValueError(f"{label}: {e}") from None
    return load_dit(ckpt, name=name, config=config, strict=strict, objective=objective, label=label)


def model_name_for(paths, name, default):
    """``models.dit.model_name_for`` for every architecture: ``name`` when it is registered (DiT, SiT or MAR; else one
    line listing them), else the profile's ``default`` when one of ``paths`` is a raw state dict, else None."""
    from tinyfusion.models.dit import model_name_for as dit_model_name_for
    if name:
        arch_of_name(name)
        return name
    return dit_model_name_for(paths, None, default)


def objective_of(path, name=None):
    """The objective a checkpoint's model samples and trains with, read without building it: "mar" for a MAR
    checkpoint or a MAR ``name`` (its own, ``diffusion.masked_autoregressive``), else ``models.dit.objective_of``."""
    from tinyfusion.io import checkpoint_skeleton
    from tinyfusion.models.dit import objective_of as dit_objective_of
    if name and arch_of_name(name) == "mar":
        return "mar"
    if arch_of_checkpoint(checkpoint_skeleton(path)) == "mar":
        return "mar"
    return dit_objective_of(path, name)


def input_shape(path, label=None):
    """``(in_channels, input_size)`` of the checkpoint at ``path`` (either architecture; ``(None, None)`` when a raw
    DiT state dict does not tell)."""
    from tinyfusion.io import checkpoint_skeleton
    from tinyfusion.models import dit
    from tinyfusion.models.mar import mar_weights

    ckpt = checkpoint_skeleton(path)
    if arch_of_checkpoint(ckpt) == "mar":
        config = _stored_config(ckpt, mar_weights(ckpt)) or {}
        return config.get("in_channels"), config.get("input_size")
    return dit.input_shape(path, label)
