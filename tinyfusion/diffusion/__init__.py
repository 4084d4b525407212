"""The one door to the training objective, as DiT's ``create_diffusion`` is for its code.

Everything that trains, scores or samples a model (pre-training, fine-tuning and distillation, learnable
pruning, calibration losses, the metric-based baselines, the random-prune study, activation capture, sampling)
goes through an *objective* object with this interface and calls nothing else of it:

* ``sample_t(n, generator)``: training times for ``n`` samples; ``clean_t(n, generator)``: times near the data end
  (the first quarter of the noise schedule);
* ``noised(x0, t, noise)``: the model's input at time ``t``; ``model_time(t)``: the time the network sees;
* ``training_losses(model, x0, t, model_kwargs, noise)``: per-sample loss terms (``loss`` is the one trained);
* ``loss_from_output(out, x0, x_t, t, noise)``: the same terms from an output already computed;
* ``distillation_loss(out, teacher_out, x_t, t)``: per-sample output distillation of a student towards a teacher;
* ``sample(model, labels, sampler, steps, cfg_scale, generator, progress)``: images in [-1, 1];
* ``name`` and ``config``: what defines it (stored with results); ``SAMPLERS`` and ``default_sampler``, its
  samplers and the one a caller gets by default (with ``default_steps``).

A new objective (flow matching for SiT, MAR's masked autoregression) is one module implementing these plus one line in ``OBJECTIVES``.
"""
from tinyfusion.diffusion.flow import FlowMatching
from tinyfusion.diffusion.gaussian import create_diffusion
from tinyfusion.diffusion.masked_autoregressive import MaskedAutoregressive


def _ddpm(learn_sigma=True, diffusion_steps=1000):
    return create_diffusion("", learn_sigma=learn_sigma, diffusion_steps=diffusion_steps)


OBJECTIVES = {
    "ddpm": _ddpm,          # DiT: 1000-step linear-beta diffusion, epsilon + learned variance
    "flow": FlowMatching,   # SiT: linear interpolant, velocity prediction, ODE/SDE sampling
    "mar": MaskedAutoregressive,  # MAR: the model's own masked-token loss and masked-autoregressive sampler
}


def check_objective(name):
    """``name`` if it is a registered objective, else a clear error listing them."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; registered: {', '.join(OBJECTIVES)}")
    return name


def create_objective(name="ddpm", **kwargs):
    """The training objective registered as ``name`` (``kwargs`` are its settings, e.g. ``learn_sigma``)."""
    return OBJECTIVES[check_objective(name)](**kwargs)


def objective_for(model, name=None):
    """The objective a network is trained and sampled with: ``name``, else the one its config names
    (``DiT(objective=...)``, stored in every checkpoint; DDPM for the official DiT layout). Its output channels
    decide ``learn_sigma``."""
    from tinyfusion.training import unwrap
    net = unwrap(model)
    return create_objective(name or getattr(net, "objective", "ddpm"), learn_sigma=getattr(net, "learn_sigma", True))
