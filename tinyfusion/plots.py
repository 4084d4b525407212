"""Figures shared by the notebooks (seaborn style, one function per kind of picture)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

sns.set_theme(style="whitegrid", context="notebook")


def to_uint8(images):
    """Images in [-1, 1] or uint8 (tensor or array, (N,1,H,W) or (N,H,W)) -> uint8 numpy (N,H,W) for imshow."""
    from tinyfusion.metrics import to_uint8 as as_uint8  # the one conversion the metrics use too
    return as_uint8(images)[:, 0].numpy()


def image_grid(images, nrow=10, row_labels=None, title=None, scale=0.9):
    """A grid of grayscale images, ``nrow`` per row; ``row_labels`` names each row (e.g. the classes)."""
    x = to_uint8(images)
    n = len(x)
    rows = int(np.ceil(n / nrow))
    fig, axes = plt.subplots(rows, nrow, figsize=(nrow * scale, rows * scale), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(x[i], cmap="gray", vmin=0, vmax=255)
    if row_labels is not None:
        for r, lab in enumerate(row_labels[:rows]):
            axes[r, 0].text(-3, x.shape[1] / 2, lab, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def keep_matrix(kept_by_method: dict, depth: int, title="Kept layers"):
    """Heatmap: one row per method, one column per layer, dark where the layer is kept."""
    names = list(kept_by_method)
    m = np.zeros((len(names), depth))
    for i, k in enumerate(names):
        m[i, list(kept_by_method[k])] = 1
    fig, ax = plt.subplots(figsize=(max(6, depth * 0.32), 0.45 * len(names) + 1))
    sns.heatmap(m, ax=ax, cbar=False, cmap="Blues", linewidths=0.5, linecolor="white",
                yticklabels=names, xticklabels=list(range(depth)))
    ax.set_xlabel("layer")
    ax.set_title(title)
    return fig


def per_class_indices(labels, per_class=10, classes=10):
    """Indices of the first ``per_class`` examples of each class 0..classes-1, class by class (for ``image_grid``)."""
    labels = np.asarray(labels)
    return np.concatenate([np.where(labels == c)[0][:per_class] for c in range(classes)])


def calibration_histogram(losses, n_samples=""):
    """Figure 5: histogram of the calibration losses of random prunes (log-spaced bins)."""
    losses = np.asarray(losses)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.logspace(np.log10(losses.min()), np.log10(losses.max()), 60)
    ax.hist(losses, bins=bins, color="tab:blue", alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"calibration loss (log; {n_samples} calibration samples per candidate)")
    ax.set_ylabel("candidates")
    ax.set_title("Calibration loss of random 28→14 prunes")
    return fig


def calib_vs_fid(runs):
    """Scatter of FID after fine-tuning against calibration loss right after pruning, one colour per method.

    ``runs``: records (or a DataFrame) with ``method``, ``calib_loss`` and ``fid``, one per fine-tuning run.
    """
    import pandas as pd
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, grp in pd.DataFrame(runs).groupby("method", sort=False):
        ax.scatter(grp.calib_loss, grp.fid, label=name, s=40)
    ax.set_xscale("log")
    ax.set_xlabel("calibration loss right after pruning (log)")
    ax.set_ylabel("FID after fine-tuning")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return fig


def fid_by_method(runs, title="FID after recovery", reference=None):
    """FID per method: a bar at the mean over seeds with every seed's run as a dot; ``reference``
    ({label: FID}) draws dashed lines (e.g. the teacher). Diverged runs (NaN) are listed under the axis."""
    import pandas as pd
    runs = pd.DataFrame(runs)
    order = list(dict.fromkeys(runs.method))
    finite = runs[np.isfinite(runs.fid.astype(float))]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(order)), 4))
    sns.barplot(data=finite, x="method", y="fid", order=order, errorbar=None, color="#9ecae1", ax=ax)
    sns.stripplot(data=finite, x="method", y="fid", order=order, color="#08519c", size=6, jitter=0.15, ax=ax)
    for i, (label, v) in enumerate((reference or {}).items()):
        ax.axhline(v, ls="--", lw=1, color=f"C{i + 1}", label=f"{label}: {v:.2f}")
    if reference:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=True)  # beside the axes
    nan = sorted(set(runs.method) - set(finite.method))
    ax.set_xlabel("" if not nan else f"no finite FID: {', '.join(nan)}")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=30)
    for lab in ax.get_xticklabels():
        lab.set_ha("right")
    fig.tight_layout()
    return fig


def keep_prob_history(history):
    """(steps, per-layer keep probabilities) recorded during a learnable-pruning run.

    ``history``: the list of decision snapshots of the run (``history.json``'s ``"history"``), each a dict with
    ``step`` and ``layer_probs``. Returns a (T,) array of steps and a (T, depth) array of probabilities.
    """
    return np.array([h["step"] for h in history]), np.array([h["layer_probs"] for h in history])


def decision_dynamics(histories, depth):
    """One panel per scheme: the probability that each layer is kept, over the training steps (Figures 6, 9-11).

    ``histories``: {scheme: the run's list of decision snapshots} (see ``keep_prob_history``).
    """
    fig, axes = plt.subplots(len(histories), 1, figsize=(9, 2.6 * len(histories)), sharex=False, squeeze=False)
    axes = axes[:, 0]
    for ax, (g, history) in zip(axes, histories.items()):
        steps, P = keep_prob_history(history)
        im = ax.imshow(P.T, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower",
                       extent=[steps[0], steps[-1], -0.5, depth - 0.5])
        ax.set_ylabel("layer")
        ax.set_title(f"{g}: probability that each layer is kept")
    axes[-1].set_xlabel("training step")
    fig.colorbar(im, ax=axes, shrink=0.6)
    return fig


def massive_activations(stats, values, ratio_line=20):
    """Figure 8 analogue: per-layer extremes, max |h| / std per layer, and the histogram of hidden-state values.

    ``stats``: {model: per-layer statistics (``activations.hidden_stats`` records or a DataFrame)};
    ``values``: {model: a sample of hidden-state values (``activations.value_sample``)}.
    """
    import pandas as pd
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for k, df in stats.items():
        df = pd.DataFrame(df)
        axes[0].plot(df.layer, df["max"], label=f"{k} max")
        axes[0].plot(df.layer, df["min"], "--", label=f"{k} min")
        axes[1].plot(df.layer, df["max_abs_over_std"], label=k)
        axes[2].hist(values[k], bins=200, alpha=0.6, label=k, log=True)
    axes[0].set_title("extremes per layer"); axes[0].set_xlabel("layer"); axes[0].legend(fontsize=7)
    axes[1].set_title("max |h| / std per layer"); axes[1].set_xlabel("layer")
    axes[1].axhline(ratio_line, color="gray", ls=":"); axes[1].legend()
    axes[2].set_title("hidden-state values (log count)"); axes[2].legend()
    return fig


def loss_curves(logs):
    """Total loss and the RepKD component per step, one line per run (a run that diverges shows it here).

    ``logs``: {label: the run's training log, as records with ``step``, ``loss`` and optionally ``rep``, or the
    path of its JSON file}.
    """
    import pandas as pd
    from tinyfusion.io import load_json
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    for label, log in logs.items():
        log = pd.DataFrame(load_json(log) if isinstance(log, str) else log)
        axes[0].plot(log.step, log["loss"], label=label)
        if "rep" in log and log.rep.abs().sum() > 0:
            axes[1].plot(log.step, log.rep, label=label)
    axes[0].set_yscale("log"); axes[0].set_title("total loss"); axes[0].set_xlabel("step"); axes[0].legend(fontsize=7)
    axes[1].set_yscale("log"); axes[1].set_title("RepKD component (before β)"); axes[1].set_xlabel("step")
    axes[1].legend(fontsize=7)
    return fig


def speedup(rows, title):
    """Sampling speed-up against compression ratio, one line per pruning method, beside the linear ideal.

    ``rows``: the speed sweep (records with ``method``, ``ratio`` and ``speedup``; the ``"base"`` row is each
    line's start).
    """
    import pandas as pd
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    r = np.linspace(0, df.ratio.max(), 50)
    ax.plot(r, 1 / (1 - r), "k:", label="linear (ideal)")
    for method, grp in df[df.method != "base"].groupby("method", sort=False):
        grp = pd.concat([df[df.method == "base"], grp]).sort_values("ratio")
        ax.plot(grp.ratio, grp.speedup, "o-", label=method)
    ax.set_xlabel("compression ratio"); ax.set_ylabel("sampling speed-up (iterations/s vs unpruned)")
    ax.legend(fontsize=8); ax.set_title(title)
    return fig


def table4_fid(runs, by="scheme", title="Table 4"):
    """Table 4 as point ranges, ours beside the paper: one line per row of ``Study.table4`` (learnable cells, the 1:2
    references, the rank-8 ablation), the mean FID over fine-tune seeds with a ± sd bar and every seed as a dot;
    the paper's FID for the nine cells in the right panel. ``by``: "scheme" (notebook 03) or "update" (notebook 04)
    groups the learnable cells. Rows that are the same model as an earlier row say so beside their point. No
    legend: the labels name every row, colours mark the update."""
    import pandas as pd
    runs = pd.DataFrame(runs).fillna({"same_as": ""})
    first = runs.groupby("method", sort=False).first().reset_index()
    learn = first[first.kind == "learnable"]
    groups = list(dict.fromkeys(learn[by]))
    learn = learn.sort_values(by, key=lambda c: c.map(groups.index), kind="stable")
    rows = pd.concat([learn, first[first.kind == "reference"], first[~first.kind.isin(["learnable", "reference"])]])
    group = [getattr(r, by) if r.kind == "learnable" else ("1:2 references" if r.kind == "reference" else "ablation")
             for r in rows.itertuples()]
    y, pos = [], 0.0
    for i, g in enumerate(group):  # a gap between groups
        pos += 1.0 + (0.6 if i and g != group[i - 1] else 0.0)
        y.append(pos)
    colour = {"lora": "C0", "full": "C1", "frozen": "C2"}
    fid = runs.groupby("method", sort=False).fid
    mean, sd = fid.mean(), fid.std()
    fig, (ax, axp) = plt.subplots(1, 2, figsize=(11, 0.42 * len(rows) + 1.6), sharey=True,
                                  gridspec_kw={"width_ratios": [3, 2]})
    for yi, r in zip(y, rows.itertuples()):
        c = "0.45" if r.kind == "reference" else colour.get(r.update, "C4")
        m, s = mean[r.method], sd[r.method]
        ax.errorbar(m, yi, xerr=s if np.isfinite(s) else None, fmt="o", color=c, ms=7, capsize=4, lw=1.5)
        seeds = runs[runs.method == r.method].fid
        ax.scatter(seeds, [yi + 0.22] * len(seeds), s=14, color=c, alpha=0.6, marker="|")
        if r.same_as:
            ax.annotate(f"same model as {r.same_as}", (m + (s if np.isfinite(s) else 0.0), yi), xytext=(10, 0),
                        textcoords="offset points", fontsize=8, style="italic", color="0.3", va="center")
        if np.isfinite(r.paper_FID):
            axp.plot(r.paper_FID, yi, "s", color=c, ms=7)
        else:
            axp.text(0.02, yi, "not in the paper", transform=axp.get_yaxis_transform(), fontsize=8, color="0.5",
                     va="center")
    ax.set_yticks(y, list(rows.method))
    ax.invert_yaxis()
    lo, hi = np.nanmin(runs.fid), np.nanmax(runs.fid)
    pad = 0.15 * (hi - lo if hi > lo else 1.0)
    ax.set_xlim(lo - pad, hi + 3 * pad)  # room for the "same model" notes
    ax.set_xlabel("FID, ours (mean ± sd over fine-tune seeds; ticks: each seed)")
    axp.set_xlabel("FID, paper (10K steps, 10K samples)")
    ax.set_title(f"{title}: ours (lower is better)")
    axp.set_title("paper")
    fig.tight_layout()
    return fig
