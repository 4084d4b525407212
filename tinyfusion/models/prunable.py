"""The one interface through which depth pruning reaches a model's layers (issue 29, item 2).

Pruning (``tinyfusion.pruning``: calibration losses, the baselines, the random study, learnable gates, surgery)
calls these functions and never names a model's parts (``.blocks``, ``DiT(...)``). A *prunable model* exposes,
by duck typing (no ``isinstance`` checks anywhere):

* ``layers``: its prunable layers in order (DiT/SiT: ``blocks``; MAR: encoder blocks then decoder blocks);
* ``depth``: ``len(layers)``;
* ``pruned(kept)``: surgery, a new compact model of the same kind keeping the layers ``kept`` (copies of their
  weights, renumbered 0..D-1; the input model is untouched) whose output equals the full model's under the mask
  that keeps ``kept``;
* a forward that takes a per-sample layer mask, (depth,) or (B, depth), 1 runs a layer and 0 passes its input
  through (Eq. 1), and ``return_hidden=True`` for every layer's output; and its **loss**, either
  - through its objective (DiT/SiT): ``objective.training_losses(model, x0, t, {"y": y, "mask": m}, noise)`` with the
    model predicting the objective's target, or
  - inside the model (MAR, marked by ``computes_loss = True``): ``model(x0, y, layer_mask=m, generator=g)`` returns
    the per-sample training loss itself (its random order, mask ratio, times and noise come from ``g``).

``per_sample_loss`` / ``loss_terms`` hide that last difference: every calibration loss, the pre-training loss
(``cli.pretrain``) and the learnable-pruning loss (``pruning.learnable``) go through them. ``lora_targets`` names
the modules a LoRA update adapts (the model's own ``lora_targets``; None: every linear layer).

Some fast paths are specific to DiT's layout (one token sequence and one condition vector through every layer:
``embed``, ``final_layer``, ``unpatchify``): the prefix-sharing random study and the per-layer input/output statistics
of ShortGPT, Flux-Lite and residual sizes. The first two fall back to the seam for other models (the masked forward;
``layer_io``: every layer's input and output caught by hooks on the full model's forward); residual sizes call
``require_parts`` and refuse other models in one line.
"""
from __future__ import annotations

import torch


def base_model(model):
    """The model under DDP (``.module``) and peft (``get_base_model``) wrappers."""
    from tinyfusion.training import unwrap

    model = unwrap(model)
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    return model


def _require(model, name):
    net = base_model(model)
    if not hasattr(net, name):
        raise TypeError(f"{type(net).__name__} is not a prunable model: it has no .{name} "
                        f"(see tinyfusion.models.prunable: layers, depth, pruned(kept), a layer-masked forward)")
    return net


def layers(model):
    """The model's prunable layers, in order (a sequence of modules)."""
    return _require(model, "layers").layers


def depth(model):
    """How many prunable layers the model has."""
    return int(_require(model, "depth").depth)


def pruned(model, kept):
    """The model's own surgery: a compact model keeping the layers ``kept`` (sorted, checked by the caller)."""
    return _require(model, "pruned").pruned(kept)


def computes_loss(model):
    """True for a model whose forward returns its own per-sample training loss (MAR), False for one whose loss the
    objective computes from its prediction (DiT, SiT)."""
    return bool(getattr(base_model(model), "computes_loss", False))


def loss_terms(model, objective, batch, layer_mask=None, generator=None, keys=("loss", "mse")):
    """Per-sample training-loss terms of ``model`` on ``batch`` ({x0, y, t, noise}, on the model's device) under
    ``layer_mask`` ((depth,) or (B, depth), or None: every layer): ``{"loss": (B,)}``, plus ``"mse"`` (B,) for a
    model trained through its objective (``keys``: which of the objective's terms to return; ``"vb"`` as well for
    the recovery logs).

    A model that computes its loss gets ``x0``, ``y``, the mask and ``generator`` (its random draws, the global RNG
    when None; ``t`` and ``noise`` are not used); any other goes through ``objective.training_losses`` with the
    batch's times and noise. ``model`` may be wrapped (DDP): it is called as given, so DDP sees the forward.
    """
    if computes_loss(model):
        return {"loss": model(batch["x0"], batch["y"], layer_mask=layer_mask, generator=generator)}
    kw = {"y": batch["y"]}
    if layer_mask is not None:
        kw["mask"] = layer_mask
    terms = objective.training_losses(model, batch["x0"], batch["t"], kw, noise=batch["noise"])
    return {k: terms[k] for k in keys if k in terms}


def per_sample_loss(model, objective, batch, layer_mask=None, generator=None):
    """Per-sample training loss (B,): ``loss_terms(...)["loss"]``; every calibration loss goes through it."""
    return loss_terms(model, objective, batch, layer_mask, generator)["loss"]


@torch.no_grad()
def layer_io(model, objective, batch, generator=None):
    """Every prunable layer's input and output hidden states on one forward of the full model over ``batch`` (as
    :func:`loss_terms` runs it): a list of ``(input, output)`` per layer, (B, N, D) each, caught by forward hooks on
    :func:`layers` (a layer's first positional argument is its input). Works for any prunable model; a MAR's encoder
    layers see the buffer and the known tokens, its decoder layers the buffer and every position."""
    net = base_model(model)
    caught = [None] * depth(net)

    def hook(i):
        def fn(module, args, output):
            caught[i] = (args[0], output)
        return fn
    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers(net))]
    try:
        loss_terms(model, objective, batch, None, generator)
    finally:
        for h in handles:
            h.remove()
    missing = [i for i, c in enumerate(caught) if c is None]
    if missing:
        raise RuntimeError(f"{type(net).__name__}: layers {missing} did not run in the forward (layer_io hooks)")
    return caught


def loop_label_dropout(model):
    """The probability with which a training loop replaces the labels by the null class itself before the forward
    (running the model with its own label dropout off, so a teacher and a student see the same labels): a DiT/SiT's
    label embedder's ``dropout_prob`` when it has a null class, else 0. A model that computes its own loss draws its
    label dropout itself in training mode (MAR: ``label_drop_prob``), so the loop must not drop them again: 0."""
    if computes_loss(model):
        return 0.0
    net = base_model(model)
    emb = getattr(net, "y_embedder", None)
    if emb is None or emb.embedding_table.num_embeddings <= net.num_classes:
        return 0.0
    return emb.dropout_prob


def forward_masked(model, x, t, y, layer_mask):
    """The prediction of a model trained through its objective (DiT/SiT: ``model(x, t, y, mask=m)``) under
    ``layer_mask``; a model that computes its own loss has no such prediction and is refused."""
    if computes_loss(model):
        raise TypeError(f"{type(base_model(model)).__name__} computes its own loss and predicts nothing for an "
                        f"objective; call loss_terms/per_sample_loss with the layer mask")
    return model(x, t, y, mask=layer_mask)


def lora_targets(model):
    """Names of the modules a LoRA weight update adapts, as the model chooses them: its own ``lora_targets`` (a list of
    module names, or a method returning one), or None: every linear layer (the paper's choice)."""
    own = getattr(base_model(model), "lora_targets", None)
    if own is None:
        return None
    return list(own() if callable(own) else own)


def has_parts(model, *names):
    return all(hasattr(base_model(model), n) for n in names)


def require_parts(model, what, *names):
    """Refuse, in one line, a model without the parts ``names`` that the DiT-layout fast path ``what`` needs."""
    net = base_model(model)
    missing = [n for n in names if not hasattr(net, n)]
    if missing:
        raise TypeError(f"{what} needs a DiT-layout model (one token sequence through every layer: "
                        f"{', '.join(names)}); {type(net).__name__} has no {', '.join(missing)}")
    return net
