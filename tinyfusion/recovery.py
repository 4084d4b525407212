"""Recovery of a pruned (shallow) model: plain fine-tuning and (masked) knowledge distillation (paper section 4.4).

The loss is ``L = a_KD * L_KD + a_Diff * L_Diff + beta * L_Rep`` (Eq. 8):

* ``L_Diff``: the student's ordinary training loss through its objective (DDPM: hybrid ``MSE(eps) + L_vb``, as in
  pre-training; flow: ``MSE(velocity)``);
* ``L_KD``: the objective's output distillation (``distillation_loss``; DDPM, as the official code: MSE of the
  predicted noise plus the KL between the teacher's and the student's predicted Gaussians; flow: MSE of the velocity);
* ``L_Rep``: MSE between each student layer's hidden state and the hidden state after the teacher layer it
  is matched to (:func:`layer_map`), **averaged** over the student's layers (as the official code). **Masked**
  RepKD ignores positions where ``|x - mean| >= k * std`` (per sample), in the teacher and the student each by its
  own statistics, because both carry massive activations that make the unmasked loss explode.

Modes of :func:`finetune`: ``"finetune"`` (``L_Diff`` only, no teacher), ``"kd"`` (logits KD),
``"repkd"`` (+ unmasked ``L_Rep``), ``"masked_kd"`` (+ ``L_Rep`` masked at ``k_sigma``).
Settings of the paper's Table 6 are the defaults: AdamW lr 2e-4, wd 0, cosine to 1e-4; a_KD 0.9, a_Diff 0.1;
beta falls linearly from 1e-2 to 0 (SiT: from 2e-4, the profile's ``kd_beta``); grad clip 1.0.

Label dropout (for classifier-free guidance) is drawn here, per step from the global batch's seed, and the
models run with their own dropout switched off: so teacher and student see the same (possibly null) label,
and 2 processes see exactly what 1 process sees.

Any prunable model (``tinyfusion.models.prunable``) loads through ``registry.load_model``; plain fine-tuning trains
on its own loss through the seam (``prunable.loss_terms``: a DiT/SiT's objective loss, exactly the call the
distillation modes make, or the loss a model computes itself). Such a model (``prunable.computes_loss``) also draws
its own label dropout (``prunable.loop_label_dropout`` is 0 for it) and has no output a teacher's can be matched
to, so the distillation modes refuse it in one line.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from tinyfusion import dist
from tinyfusion.diffusion import objective_for
from tinyfusion.models import prunable
from tinyfusion.models.gates import parse_groups
from tinyfusion.training import LoopConfig, cosine_lr, make_ema, train, unwrap

MODES = ("finetune", "kd", "repkd", "masked_kd")
TEACHER_MODES = ("kd", "repkd", "masked_kd")
REP_MODES = ("repkd", "masked_kd")
# what the distillation losses are (enters the config of every run with a teacher, so a changed definition recomputes)
KD_LOSSES = {"kd": "objective.distillation_loss (DDPM: noise MSE + KL of the predicted Gaussians)",
             "rep": "averaged over layers"}


# --------------------------------------------------------------------------- layer matching
def layer_map(kept, groups, teacher_depth, parent_map=None):
    """For each student layer, the teacher layer whose OUTPUT it is matched to in RepKD.

    ``kept``: sorted indices of the layers the student kept, in the model it was pruned from (depth
    ``teacher_depth``, or ``len(parent_map)`` when ``parent_map`` is given). ``groups``: the local blocks of the
    pruning ("1:2", "2:4", "7:14", [[2, 4], [3, 4], ...] or its JSON string; ``gates.parse_groups``); None
    means one block of the whole depth, which suits prunes without block structure (ShortGPT, ...). A block of layers [s, e] keeping N layers is cut
    into N consecutive sub-spans of (nearly) equal size (ends at ``s + ceil((n + 1) * M / N) - 1``); its n-th
    kept layer is matched to the end of the n-th sub-span. For 1:2 that is the block's end: student j <-> 2j+1.

    ``parent_map``: when the model pruned from is itself pruned (D14 -> D7) and the teacher is the original,
    ``parent_map[i]`` is the teacher layer matched to layer i of the intermediate model (its own
    ``layer_map``); the result is composed through it. None: the teacher is the model pruned from.
    """
    kept = [int(k) for k in kept]
    if parent_map is not None:
        parent_map = [int(p) for p in parent_map]
        if any(not 0 <= p < teacher_depth for p in parent_map):
            raise ValueError(f"parent_map {parent_map} has indices outside the teacher's {teacher_depth} layers")
        if any(b <= a for a, b in zip(parent_map, parent_map[1:])):
            raise ValueError(f"parent_map {parent_map} must be strictly increasing")
    depth = len(parent_map) if parent_map is not None else int(teacher_depth)
    if not kept:
        raise ValueError("kept is empty: a student needs at least one layer")
    if any(b <= a for a, b in zip(kept, kept[1:])):
        raise ValueError(f"kept {kept} must be strictly increasing (sorted, no repeats)")
    if kept[0] < 0 or kept[-1] >= depth:
        raise ValueError(f"kept {kept} has indices outside 0..{depth - 1} (the model pruned from has {depth} "
                         f"layers{'; it is the parent_map length' if parent_map is not None else ''})")
    pairs = parse_groups(groups, depth) if groups is not None else [(len(kept), depth)]
    out, start = [], 0
    for n, m in pairs:
        inside = [k for k in kept if start <= k < start + m]
        if len(inside) != n:
            raise ValueError(
                f"block of layers {start}..{start + m - 1} (groups {groups!r}) should keep {n} layer(s) but kept "
                f"{inside}; pass the groups the student was pruned with, or groups=None (or "
                f"'{len(kept)}:{depth}') for a prune without block structure")
        out += [start + math.ceil((i + 1) * m / n) - 1 for i in range(n)]
        start += m
    return [parent_map[i] for i in out] if parent_map is not None else out


# --------------------------------------------------------------------------- losses
def sigma_mask(h, k_sigma):
    """True where ``|h - mean| < k * std``; mean and std per sample over all tokens and channels."""
    flat = h.detach().flatten(1)
    mean = flat.mean(1).view(-1, *([1] * (h.dim() - 1)))
    std = flat.std(1, correction=0).view(-1, *([1] * (h.dim() - 1)))
    return (h.detach() - mean).abs() < k_sigma * std


def masked_rep_loss(student_hidden, teacher_hidden, k_sigma=None):
    """Hidden-state distillation loss, **averaged over matched layers** (as the official TinyFusion code).

    ``student_hidden``/``teacher_hidden``: one (B, T, D) tensor each, or equal-length lists (layer j of the
    student against its matched teacher hidden state). Per layer: the squared error averaged over a sample's
    kept positions, then over samples (so a batch split across ranks averages to the whole batch's loss).
    With ``k_sigma``, a position is kept only if it lies within ``k_sigma`` std of the mean in the teacher
    AND in the student (each by its own per-sample statistics); without it every position is kept. A sample
    with no kept position contributes 0.
    """
    if torch.is_tensor(student_hidden):
        student_hidden, teacher_hidden = [student_hidden], [teacher_hidden]
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"{len(student_hidden)} student hidden states but {len(teacher_hidden)} teacher ones")
    if k_sigma is not None and k_sigma <= 0:
        raise ValueError(f"k_sigma must be > 0 (or None for no mask), got {k_sigma}")
    total = 0.0
    for s, t in zip(student_hidden, teacher_hidden):
        if s.shape != t.shape:
            raise ValueError(f"student hidden {tuple(s.shape)} vs teacher hidden {tuple(t.shape)}: widths and "
                             f"token counts must match (RepKD uses no projection)")
        err = (s - t.detach()).pow(2).flatten(1)
        if k_sigma is None:
            total = total + err.mean(1).mean()
            continue
        keep = (sigma_mask(s, k_sigma) & sigma_mask(t, k_sigma)).flatten(1).to(err.dtype)
        per_sample = (err * keep).sum(1) / keep.sum(1).clamp(min=1)
        total = total + per_sample.mean()
    return total / len(student_hidden)


@contextmanager
def labels_as_given(model):
    """Run a DiT with its internal label dropout off (the labels passed in already carry the dropout). A model that
    draws its own label dropout (``prunable.computes_loss``; the loop drops none for it) is left as it is."""
    m = unwrap(model)
    if prunable.computes_loss(m):
        yield
        return
    was = m.training
    m.training = False  # only DiT.embed reads the top-level flag; submodules keep their mode
    try:
        yield
    finally:
        m.training = was


def kd_losses(student, teacher, x_t, t, y, mode="kd", layer_map=None, k_sigma=None, *, x0=None, noise=None,
              objective=None):
    """The loss components of one batch: ``diff`` (student's diffusion loss; needs ``x0`` and ``noise``),
    ``kd`` (the objective's ``distillation_loss`` of the student's output towards the teacher's) and ``rep`` (hidden-state loss, see
    :func:`masked_rep_loss`; masked when ``k_sigma``), as scalar tensors, as far as ``mode`` needs them.

    ``x_t``, ``t``, ``y``: noised input, timesteps and labels (label dropout already applied: the models run
    with their own dropout off). The teacher runs without gradient. ``layer_map[j]``: the teacher layer whose
    output student layer j is matched to.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    need_teacher, need_rep = mode in TEACHER_MODES, mode in REP_MODES
    if need_teacher and teacher is None:
        raise ValueError(f"mode {mode!r} distils from a teacher: pass teacher=")
    if need_rep and layer_map is None:
        raise ValueError(f"mode {mode!r} needs layer_map (student layer -> teacher layer); build it with "
                         f"recovery.layer_map(kept, groups, teacher_depth)")
    objective = objective or objective_for(student)
    t_model = objective.model_time(t)
    with labels_as_given(student):
        out = student(x_t, t_model, y, return_hidden=need_rep)
    hidden = None
    if need_rep:
        out, hidden = out
    terms = {}
    if x0 is not None and noise is not None:
        d = objective.loss_from_output(out, x0, x_t, t, noise)
        terms.update(diff=d["loss"].mean(), mse=d["mse"].mean(), vb=d["vb"].mean())
    if need_teacher:
        with torch.no_grad(), labels_as_given(teacher):
            t_out = teacher(x_t, t_model, y, return_hidden=need_rep)
        t_hidden = None
        if need_rep:
            t_out, t_hidden = t_out
        terms["kd"] = objective.distillation_loss(out, t_out, x_t, t).mean()
        if need_rep:
            if len(layer_map) != len(hidden):
                raise ValueError(f"layer_map has {len(layer_map)} entries but the student has {len(hidden)} layers")
            if max(layer_map) >= len(t_hidden) or min(layer_map) < 0:
                raise ValueError(f"layer_map {list(layer_map)} points outside the teacher's {len(t_hidden)} layers")
            terms["rep"] = masked_rep_loss(hidden, [t_hidden[i] for i in layer_map],
                                           k_sigma if mode == "masked_kd" else None)
    return terms


def total_loss(terms, mode, a_kd=0.9, a_diff=0.1, beta=0.0):
    """Eq. 8 for a mode: ``finetune``: L_Diff; ``kd``: a_KD L_KD + a_Diff L_Diff; rep modes: + beta L_Rep."""
    if mode == "finetune":
        return terms["diff"]
    loss = a_kd * terms["kd"] + a_diff * terms["diff"]
    return loss + beta * terms["rep"] if mode in REP_MODES else loss


def beta_at(step, steps, beta):
    """Linear schedule from ``beta[0]`` at step 0 to ``beta[1]`` at the last step (a float: constant)."""
    if isinstance(beta, (int, float)):
        return float(beta)
    b0, b1 = beta
    return b0 + (b1 - b0) * step / max(steps - 1, 1)


def refuse_kd(mode, model, label="the student"):
    """Refuse, in one line, a distillation ``mode`` for a model that computes its own loss (decided by the seam)."""
    if mode in TEACHER_MODES and prunable.computes_loss(model):
        net = prunable.base_model(model)
        raise ValueError(f"--mode {mode} needs a model whose output the teacher's can be matched to; {label} "
                         f"({type(net).__name__}, {prunable.depth(net)} layers) computes its own loss (its paper and "
                         f"code give no KD recipe): use --mode finetune")


# --------------------------------------------------------------------------- training loop
def _check_teacher(student, teacher):
    s, t = unwrap(student).config, teacher.config
    keys = ("input_size", "patch_size", "in_channels", "hidden_size", "num_classes", "learn_sigma", "objective")
    bad = {k: (s.get(k), t.get(k)) for k in keys if s.get(k) != t.get(k)}
    if bad:
        raise ValueError(f"student and teacher configs differ in {bad} (student, teacher); distillation needs the "
                         f"same widths, patches, classes and objective: use the teacher the student was pruned from")


def finetune(student, images, labels, mode="finetune", teacher=None, layer_map=None, *, steps, batch_size,
             lr=2e-4, min_lr=1e-4, a_kd=0.9, a_diff=0.1, beta=(1e-2, 0.0), k_sigma=None, ema_decay=0.999,
             ema_warmup=10, grad_clip=1.0, seed=0, log_every=1, state_path=None, ckpt_every=0, stop_after=0,
             max_skipped=None, progress=True, inject_nan_at=None, identity=None, lr_steps=None, snapshots=(),
             on_snapshot=None):
    """Fine-tune or distil ``student`` (in place) on ``images``/``labels`` for ``steps`` steps of global batch
    ``batch_size``; see the module docstring for the modes and the loss.

    Batches, noise, timesteps and label dropout of step s come from ``(seed, s)`` (``training.global_batch``), so
    a resumed run and a run on N processes (DDP when a process group is up) see the same data. ``state_path``:
    resumable state (model, EMA, optimiser, step, RNG, log), loaded if present and written every ``ckpt_every``
    steps, when ``stop_after`` steps have run in this call (the run then returns early with ``stopped_at``),
    and at the end. A step whose loss is not finite is skipped (``training.NonFiniteGuard``; more than
    ``max_skipped`` raise); ``inject_nan_at``: steps whose loss is replaced by NaN (tests). ``identity``: what a
    saved state must have been written for to be resumed (default: these settings; ``run_recovery`` passes the
    fingerprint of its resolved config, which includes the student's, teacher's and data's identities).
    ``lr_steps``: the length of the cosine schedule (default ``steps``; a recovery curve's runs share the longest
    run's, so a shorter run is the longer one's prefix). ``on_snapshot(done, ema)`` runs after every step count in
    ``snapshots`` (recovery curves score those EMA copies).

    Returns dict(model, ema, log (one dict per logged step, step 0 always: step, lr, beta, loss, components,
    skipped), skipped_steps, samples_per_s, first_step_components (step 0's entry, the "initial loss" of the
    paper's Table 5; after a resume read from the saved log), steps_run, stopped_at (None if the run finished),
    wall_s, segments: threads and world size of each call, see ``training.train``). ``model`` is the trained student
    itself (unwrapped from DDP), ``ema`` its EMA copy.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "finetune" and teacher is not None:
        teacher = None  # plain fine-tuning never runs the teacher
    if mode in TEACHER_MODES and teacher is None:
        raise ValueError(f"mode {mode!r} distils from a teacher: pass teacher= (the model pruned from, or the "
                         f"original for a twice-pruned student)")
    refuse_kd(mode, student)
    if teacher is not None:
        refuse_kd(mode, teacher, "the teacher")
    if mode == "masked_kd" and not k_sigma:
        raise ValueError("mode 'masked_kd' needs k_sigma > 0 (the paper uses 2 or 4)")
    if mode != "masked_kd" and k_sigma:
        raise ValueError(f"k_sigma={k_sigma} only applies to mode 'masked_kd' (repkd is the unmasked loss)")
    dev = dist.device()
    student = student.to(dev)
    depth = prunable.depth(student)
    if mode in REP_MODES:
        if layer_map is None:
            raise ValueError(f"mode {mode!r} needs layer_map; build it with recovery.layer_map(kept, groups, "
                             f"teacher_depth)")
        layer_map = [int(i) for i in layer_map]
        if len(layer_map) != depth or min(layer_map) < 0 or max(layer_map) >= teacher.depth:
            raise ValueError(f"layer_map {layer_map} must give one teacher layer in 0..{teacher.depth - 1} for each "
                             f"of the student's {depth} layers")
    if teacher is not None:
        _check_teacher(student, teacher)
        teacher = teacher.to(dev).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    beta = [float(b) for b in beta] if isinstance(beta, (list, tuple)) else float(beta)
    run_cfg = dict(mode=mode, steps=int(steps), batch_size=int(batch_size), lr=lr, min_lr=min_lr, a_kd=a_kd,
                   a_diff=a_diff, beta=beta, k_sigma=k_sigma, seed=seed, ema_decay=ema_decay, ema_warmup=ema_warmup,
                   layer_map=layer_map if mode in REP_MODES else None, grad_clip=grad_clip,
                   lr_steps=int(lr_steps or steps), snapshots=sorted(int(v) for v in snapshots))
    m = unwrap(student)
    drop_p = prunable.loop_label_dropout(m)  # 0 for a model that drops its labels itself
    loop = LoopConfig(steps=int(steps), batch_size=int(batch_size), seed=seed, grad_clip=grad_clip,
                      ema_decay=ema_decay, ema_warmup=ema_warmup, label_dropout=drop_p, log_every=log_every,
                      ckpt_every=ckpt_every, stop_after=stop_after, max_skipped=max_skipped,
                      inject_nan_at=tuple(inject_nan_at or ()), snapshots=tuple(snapshots))
    objective = objective_for(student)
    ema = make_ema(m)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0)

    def loss_fn(net, batch, step):
        x0, y, noise, t = batch
        if mode == "finetune":  # the student's own training loss, through the seam
            with labels_as_given(net):
                d = prunable.loss_terms(net, objective, dict(x0=x0, y=y, t=t, noise=noise), keys=("loss", "mse", "vb"))
            terms = {"diff": d["loss"].mean(), **{k: v.mean() for k, v in d.items() if k != "loss"}}
            return {"loss": total_loss(terms, mode), **terms}
        x_t = objective.noised(x0, t, noise)
        terms = kd_losses(net, teacher, x_t, t, y, mode, layer_map, k_sigma, x0=x0, noise=noise, objective=objective)
        return {"loss": total_loss(terms, mode, a_kd, a_diff, beta_at(step, steps, beta)), **terms}

    def on_log(step, entry):
        entry["beta"] = beta_at(step, steps, beta) if mode in REP_MODES else 0.0

    schedule = int(lr_steps or steps)
    res = train(student, loss_fn, opt, images, labels, objective, loop,
                lr_at=lambda s: cosine_lr(s, schedule, lr, min_lr), ema=ema, on_log=on_log,
                on_snapshot=(lambda done: on_snapshot(done, ema)) if on_snapshot else None, state={"model": m, "ema": ema, "opt": opt}, state_path=state_path,
                identity=identity or run_cfg, desc=f"recovery:{mode}", progress=progress)
    return dict(model=m, ema=ema, log=res["log"], skipped_steps=res["skipped_steps"],
                first_step_components=res["first"], samples_per_s=res["samples_per_s"], steps_run=res["steps_run"],
                stopped_at=res["stopped_at"], wall_s=res["wall_s"], segments=res["segments"])


# --------------------------------------------------------------------------- one recovery run: config and artefacts
def recovery_config(profile=None, *, student, mode="finetune", teacher=None, k_sigma=0.0, kept=None, groups="1:2",
                    parent_map=None, steps=0, batch_size=0, lr=0.0, min_lr=0.0, a_kd=0.9, a_diff=0.1,
                    beta=None, ema_decay=0.999, ema_warmup=10, grad_clip=1.0, seed=0, inject_nan_at=None,
                    objective="", lr_steps=0, snapshots=(), model=""):
    """The resolved settings of one recovery run: every value :func:`run_recovery` reads, profile defaults filled
    in (0 / None / "" mean "the profile's"), input files as ``Path`` (the cache hashes them), the layer map derived.

    ``kept`` (default: the ``kept`` stored in the student checkpoint), ``groups`` ("none": one block) and
    ``parent_map`` give the RepKD layer map (see :func:`layer_map`); the teacher defaults to the profile's;
    ``beta`` (L_Rep's weight, a float or its (start, end), either end None) to the profile's ``kd_beta``; ``objective`` to the one the
    student's checkpoint names (a name given here replaces it and enters the config). ``lr_steps``: the cosine's
    length (default: ``steps``); ``snapshots``: step counts below ``steps`` at which the EMA is also saved
    (``ema_<step>.pt``, for recovery curves). ``model``: the registered config (e.g. "DiT-XL/2") that builds a raw
    state dict (the official DiT-XL-2-256x256.pt, TinyDiT-D14/D7) given as student or teacher, its depth read from its
    keys (default: the profile's model; recorded only when a raw state dict is involved).
    """
    from pathlib import Path

    from tinyfusion.data import data_identity
    from tinyfusion.models.registry import model_name_for
    from tinyfusion.io import checkpoint_skeleton
    from tinyfusion.models.dit import depth_of_state_dict, dit_weights
    from tinyfusion.diffusion import check_objective
    from tinyfusion.profiles import check_budget, get_profile

    from tinyfusion import validate

    validate.settings(k_sigma=k_sigma, lr=lr, min_lr=min_lr, a_kd=a_kd, a_diff=a_diff, beta=beta, grad_clip=grad_clip,
                      ema_decay=ema_decay, ema_warmup=ema_warmup, seed=seed)
    kept = None if kept is None else validate.index_list("kept", kept)
    parent_map = None if parent_map is None else validate.index_list("parent_map", parent_map)
    groups = validate.groups("groups", groups)
    prof = get_profile(profile)
    if mode not in MODES:
        raise ValueError(f"--mode {mode!r} is unknown; choose one of {', '.join(MODES)}")
    if not student:
        raise ValueError("--student is required: the pruned checkpoint to recover")
    student = Path(student)
    steps = check_budget("steps", steps or prof.finetune_steps)
    lr_steps = check_budget("lr_steps", lr_steps or steps)
    snapshots = sorted({check_budget("snapshot", v) for v in snapshots or ()})
    if snapshots and snapshots[-1] > steps:
        raise ValueError(f"snapshots {snapshots} go beyond the run's {steps} steps")
    batch_size = check_budget("batch_size", batch_size or prof.finetune_batch)
    lr = float(lr or prof.finetune_lr)
    beta = (None, None) if beta is None else beta if isinstance(beta, (list, tuple)) else (beta, beta)
    beta = tuple(float(d if b is None else b) for b, d in zip(beta, prof.kd_beta))  # None: the profile's
    teacher_path = None
    if mode in TEACHER_MODES:
        teacher_path = Path(teacher) if teacher else prof.path(prof.teacher)
        if not teacher_path.exists():
            raise FileNotFoundError(f"teacher {teacher_path} does not exist; train it (tinyfusion.cli.pretrain) or "
                                    f"pass --teacher")
    if mode in TEACHER_MODES:  # a model that computes its own loss has no output to distil (decided by the seam)
        from tinyfusion.models.registry import load_model
        refuse_kd(mode, load_model(student, name=model or None, default_name=prof.model), f"--student {student}")
    if kept is None:
        ckpt = checkpoint_skeleton(student)
        kept = ckpt.get("kept") if isinstance(ckpt, dict) else None
    groups = None if str(groups).lower() in ("none", "") else groups
    lmap = None
    if mode in REP_MODES:
        if kept is None:
            raise ValueError(f"mode {mode!r} matches student layers to teacher layers: pass --kept (JSON list of the "
                             f"student's kept layer indices); {student} stores none")
        teacher_depth = depth_of_state_dict(dit_weights(checkpoint_skeleton(teacher_path),
                                                        f"--teacher {teacher_path}"))
        lmap = layer_map(kept, groups, teacher_depth, parent_map)
    model = model_name_for((student, teacher_path), model, prof.model)
    return dict(profile=prof.name, data=data_identity(prof), student=student, teacher=teacher_path, mode=mode,
                k_sigma=float(k_sigma) if k_sigma else None, kept=None if kept is None else [int(k) for k in kept],
                layer_map=lmap, steps=steps, batch_size=batch_size, lr=lr, min_lr=float(min_lr or lr / 2),
                a_kd=float(a_kd), a_diff=float(a_diff), beta=[float(b) for b in beta], ema_decay=float(ema_decay),
                ema_warmup=int(ema_warmup), grad_clip=float(grad_clip), seed=int(seed),
                inject_nan_at=list(inject_nan_at) if inject_nan_at else None,
                **({"lr_steps": lr_steps} if lr_steps != steps else {}),
                **({"losses": KD_LOSSES} if mode in TEACHER_MODES else {}),
                **({"snapshots": [v for v in snapshots if v < steps]} if snapshots else {}),
                **({"objective": check_objective(objective)} if objective else {}),
                **({"model": model} if model else {}))


def run_recovery(config, out, *, log_every=1, ckpt_every=100, stop_after=0, max_skipped=None, progress=True):
    """Run the recovery of a :func:`recovery_config` into ``out``: ``state.pt`` (resumable), ``model.pt``
    (``{"ema", "config", "kept", "recovery"}``, loads with ``registry.load_model``) and ``log.json``; returns the result
    dict (paths, losses, throughput), or ``{"stopped_at", ...}`` when ``stop_after`` ended it early."""
    from pathlib import Path

    from tinyfusion import cache
    from tinyfusion.data import load_data
    from tinyfusion.io import save_checkpoint, save_json
    from tinyfusion.models.registry import load_model

    c, out = config, Path(out)
    snaps = {int(v): out / f"ema_{int(v):07d}.pt" for v in c.get("snapshots") or ()}

    def save_snapshot(done, ema):
        if dist.is_main():
            save_checkpoint({"ema": ema.state_dict(), "config": ema.config, "kept": c["kept"], "step": done},
                            snaps[done])

    student = load_model(c["student"], name=c.get("model"), objective=c.get("objective"))
    teacher = load_model(c["teacher"], name=c.get("model"), objective=c.get("objective")) if c["teacher"] else None
    images, labels = load_data(c["data"]).tensors()
    dist.print0(f"recovery {c['mode']}: student {prunable.depth(student)} layers from {c['student']}"
                + (f", teacher {prunable.depth(teacher)} layers, layer_map {c['layer_map']}" if teacher is not None else "")
                + f"; {c['steps']} steps of batch {c['batch_size']} on {dist.world_size()} process(es)")
    res = finetune(student, images, labels, c["mode"], teacher, c["layer_map"], steps=c["steps"],
                   batch_size=c["batch_size"], lr=c["lr"], min_lr=c["min_lr"], a_kd=c["a_kd"], a_diff=c["a_diff"],
                   beta=tuple(c["beta"]), k_sigma=c["k_sigma"], ema_decay=c["ema_decay"], ema_warmup=c["ema_warmup"],
                   grad_clip=c["grad_clip"], seed=c["seed"], log_every=log_every, state_path=out / "state.pt",
                   ckpt_every=ckpt_every, stop_after=stop_after, max_skipped=max_skipped, progress=progress,
                   inject_nan_at=c["inject_nan_at"], identity=cache.fingerprint(c), lr_steps=c.get("lr_steps"),
                   snapshots=tuple(snaps), on_snapshot=save_snapshot)
    if res["stopped_at"] is not None:
        return {"stopped_at": res["stopped_at"], "out": str(out), "state": str(out / "state.pt")}
    log = res["log"]
    result = dict(out=str(out), model=str(out / "model.pt"), state=str(out / "state.pt"), log=str(out / "log.json"),
                  mode=c["mode"], steps=c["steps"], batch_size=c["batch_size"], world_size=dist.world_size(),
                  backend=dist.backend(), skipped_steps=res["skipped_steps"], segments=res["segments"],
                  samples_per_s=round(res["samples_per_s"], 1),
                  wall_s=round(res["wall_s"], 1), first_step=res["first_step_components"],
                  final_loss=log[-1]["loss"] if log else None, layer_map=c["layer_map"], kept=c["kept"],
                  student=str(c["student"]), teacher=str(c["teacher"]) if c["teacher"] else None,
                  snapshots={**{str(k): str(v) for k, v in snaps.items()}, str(c["steps"]): str(out / "model.pt")})
    if dist.is_main():
        save_checkpoint({"ema": res["ema"].state_dict(), "config": res["model"].config, "kept": c["kept"],
                         "recovery": result}, out / "model.pt")
        save_json(log, out / "log.json")
    dist.barrier()
    return result
