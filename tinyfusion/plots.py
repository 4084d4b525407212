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
    height = rows * scale  # inches of images: the title takes a fixed ~0.45 in above them, whatever the rows
    fig.subplots_adjust(wspace=0.05, hspace=0.05, top=1 - (0.45 / (height + 0.45) if title else 0.01), bottom=0.01,
                        left=0.02, right=0.99)
    if title:
        fig.set_figheight(height + 0.45)
        fig.suptitle(title, y=1 - 0.08 / (height + 0.45), va="top")
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
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    markers = "osD^vP*X<>"
    for i, (name, grp) in enumerate(pd.DataFrame(runs).groupby("method", sort=False)):
        ax.scatter(grp.calib_loss, grp.fid, label=name, s=45, marker=markers[i % len(markers)], color=f"C{i % 10}")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 0.1, 0.2, 0.5, 1: labels never collide
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
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


def keep_prob_history(history, ema=True):
    """(steps, per-layer keep probabilities) recorded during a learnable-pruning run.

    ``history``: the list of decision snapshots of the run (``history.json``'s ``"history"``), each a dict with
    ``step``, ``layer_probs`` and ``ema_layer_probs``. Returns a (T,) array of steps and a (T, depth) array of the
    EMA probabilities (the ones the decision is read from), or of the raw ones with ``ema=False``.
    """
    key = "ema_layer_probs" if ema and "ema_layer_probs" in history[0] else "layer_probs"
    return np.array([h["step"] for h in history]), np.array([h[key] for h in history])


def decision_dynamics(histories, depth):
    """One panel per scheme: the EMA probability that each layer is kept, over the training steps (Figures 6, 9-11).

    ``histories``: {scheme: the run's list of decision snapshots} (see ``keep_prob_history``).
    """
    fig, axes = plt.subplots(len(histories), 1, figsize=(9, 2.8 * len(histories)), sharex=False, squeeze=False,
                             layout="constrained")  # titles never run into the panel above
    axes = axes[:, 0]
    for ax, (g, history) in zip(axes, histories.items()):
        steps, P = keep_prob_history(history)
        im = ax.imshow(P.T, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower",
                       extent=[steps[0], steps[-1], -0.5, depth - 0.5])
        ax.grid(False)
        ax.set_ylabel("layer")
        ax.set_title(f"{g}: EMA probability that each layer is kept", fontsize=11)
    axes[-1].set_xlabel("training step")
    fig.colorbar(im, ax=axes, shrink=0.6)
    return fig


def massive_activations(stats, values, ratio_line=20, fontsize=11):
    """Figure 8 analogue: per-layer extremes, max |h| / std per layer, and the histogram of hidden-state values.

    ``stats``: {model: per-layer statistics (``activations.hidden_stats`` records or a DataFrame)};
    ``values``: {model: a sample of hidden-state values (``activations.value_sample``)}; ``ratio_line``: the declared
    'massive' ratio, drawn on the middle panel. Labels are ``fontsize`` (tick labels one point smaller, at least 10).
    """
    import pandas as pd
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colours = dict(zip(stats, sns.color_palette(n_colors=max(len(stats), 1))))
    for k, df in stats.items():
        df = pd.DataFrame(df)
        axes[0].plot(df.layer, df["max"], color=colours[k], label=f"{k} max")
        axes[0].plot(df.layer, df["min"], "--", color=colours[k], label=f"{k} min")
        axes[1].plot(df.layer, df["max_abs_over_std"], "o-", ms=3, color=colours[k], label=k)
        axes[2].hist(values[k], bins=200, histtype="stepfilled", alpha=0.5, color=colours[k], label=k, log=True)
    axes[1].axhline(ratio_line, color="gray", ls=":", label=f"declared 'massive' ({ratio_line:g})")
    titles = ("extremes per layer", "max |h| / std per layer", "hidden-state values")
    xlabels, ylabels = ("layer", "layer", "hidden-state value"), ("hidden-state value", "max |h| / std", "count (log)")
    for ax, title, xl, yl in zip(axes, titles, xlabels, ylabels):
        ax.set_title(title, fontsize=fontsize + 1)
        ax.set_xlabel(xl, fontsize=fontsize)
        ax.set_ylabel(yl, fontsize=fontsize)
        ax.tick_params(labelsize=max(10, fontsize - 1))
        ax.legend(fontsize=max(10, fontsize - 1))
    fig.tight_layout()
    return fig


def loss_curves(logs, smooth=0.02):
    """Total loss and the RepKD component per step, one line per run (a run that diverges shows it here).

    ``logs``: {label: the run's training log, as records with ``step``, ``loss`` and optionally ``rep``, or the
    path of its JSON file}. Lines are a running mean over ``smooth`` of the steps, each run with its own colour and
    dash pattern, so runs whose losses coincide (logits KD and Masked KD 0.1σ) stay visible on top of each other.
    """
    import pandas as pd
    from tinyfusion.io import load_json
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    dashes = ["-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1))]
    for i, (label, log) in enumerate(logs.items()):
        log = pd.DataFrame(load_json(log) if isinstance(log, str) else log)
        window = max(1, int(len(log) * smooth))
        style = dict(label=label, ls=dashes[i % len(dashes)], lw=1.8, color=f"C{i}")
        axes[0].plot(log.step, log["loss"].rolling(window, min_periods=1).mean(), **style)
        if "rep" in log and log.rep.abs().sum() > 0:
            axes[1].plot(log.step, log.rep.rolling(window, min_periods=1).mean(), **style)
    for ax, title in zip(axes, ("total loss", "RepKD component (before β)")):
        ax.set_yscale("log")
        ax.set_title(f"{title}, running mean", fontsize=11)
        ax.set_xlabel("step")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, -0.06))
    fig.tight_layout()
    return fig


def speedup(rows, title, fontsize=11):
    """Sampling speed-up against compression ratio, one line per pruning method, beside the linear ideal.

    ``rows``: the speed sweep (records with ``method``, ``ratio`` and ``speedup``; the ``"base"`` row is each
    line's start). Rows that carry ``speedup_mean`` and ``speedup_sd`` (the per-round speed-ups of
    ``speed.speed_sweep``) are drawn as mean with error bars of ±1 sd over the timing rounds.
    """
    import pandas as pd
    df = pd.DataFrame(rows)
    bars = {"speedup_mean", "speedup_sd"} <= set(df.columns)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    r = np.linspace(0, df.ratio.max(), 50)
    ax.plot(r, 1 / (1 - r), "k:", label="linear (ideal)")
    groups = list(df[df.method != "base"].groupby("method", sort=False))
    for i, (method, grp) in enumerate(groups):
        grp = pd.concat([df[df.method == "base"], grp]).sort_values("ratio")
        if bars:  # dodged sideways a little so that bars at one ratio do not hide each other
            dx = (i - (len(groups) - 1) / 2) * 0.012 * max(float(df.ratio.max()), 0.1)
            ax.errorbar(grp.ratio + dx, grp.speedup_mean, yerr=grp.speedup_sd.fillna(0), fmt="o-", capsize=4,
                        label=method)
        else:
            ax.plot(grp.ratio, grp.speedup, "o-", label=method)
    ax.set_xlabel("compression ratio", fontsize=fontsize)
    ax.set_ylabel("sampling speed-up (iterations/s vs unpruned)", fontsize=fontsize)
    ax.tick_params(labelsize=max(10, fontsize - 1))
    if bars:
        n = int(df["repeats"].max()) if "repeats" in df else None
        title += f"\nmean ± 1 sd over {n} timing rounds" if n else "\nmean ± 1 sd over the timing rounds"
    ax.legend(fontsize=max(10, fontsize - 1)); ax.set_title(title, fontsize=fontsize + 1)
    fig.tight_layout()
    return fig


def recovery_curves(curves, marks=None, highlight="learnable", dashed=()):
    """FID against fine-tuning steps (log-log), one line per method at the mean over its distinct runs with a band of
    ± one sd, and beside it each method's FID relative to ``highlight``'s at the same step, in percent (below 0:
    better than it; relative, so that the small late gaps stay as visible as the large early ones).

    ``curves``: rows with method, kept, seed, steps, fid (``Study.recovery_curves``); identical models (same kept
    and seed) count once. ``marks``: {label: steps} drawn as vertical lines (the paper's 100K and 500K points).
    ``dashed``: methods drawn dashed and on top, so a line that lies on another (e.g. learnable at two gate budgets)
    stays visible.
    """
    import pandas as pd
    df = pd.DataFrame(curves).drop_duplicates(["method", "kept", "seed", "steps"])
    methods = list(dict.fromkeys(df.method))
    palette = dict(zip(methods, sns.color_palette("tab10" if len(methods) <= 10 else "tab20", len(methods))))
    fig, (ax, dx) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [1.25, 1]})
    agg = df.groupby(["method", "steps"], sort=False).fid.agg(["mean", "std"]).reset_index()
    for m in methods:
        a = agg[agg.method == m].sort_values("steps")
        lw, z = (2.8, 5) if m == highlight else (1.5, 6 if m in dashed else 3)
        ax.plot(a.steps, a["mean"], marker="o", ms=4, lw=lw, color=palette[m], label=m, zorder=z,
                ls="--" if m in dashed else "-")
        ax.fill_between(a.steps, a["mean"] - a["std"].fillna(0), a["mean"] + a["std"].fillna(0), color=palette[m],
                        alpha=0.15, lw=0)
    ref = agg[agg.method == highlight].set_index("steps")["mean"]
    for m in methods:
        if m == highlight:
            continue
        a = agg[agg.method == m].set_index("steps")["mean"]
        common = a.index.intersection(ref.index)
        dx.plot(common, 100 * (a[common] / ref[common] - 1), marker="o", ms=4, lw=1.5, color=palette[m], label=m,
                ls="--" if m in dashed else "-", zorder=6 if m in dashed else 3)
    dx.axhline(0, color=palette.get(highlight, "k"), lw=2.8, label=highlight)
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter
    steps = sorted(df.steps.unique())
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}".lstrip("0.")[:1] in "235" else ""))
    ax.tick_params(axis="y", which="minor", labelsize=8)
    for axis in (ax, dx):
        axis.set_xscale("log")
        axis.set_xticks(steps)
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("fine-tuning steps (log scale)")
        for i, (label, step) in enumerate((marks or {}).items()):
            axis.axvline(step, ls="--", lw=1, color="0.35")
            # at the bottom of both panels: clear of the worst curve's start (FID) and of the zero line (gap)
            axis.annotate(label, (step, 0.0), xycoords=("data", "axes fraction"), xytext=(3, 4 + 12 * i),
                          textcoords="offset points", fontsize=9, color="0.25")
    ax.set_ylabel("FID (log scale; lower is better)")
    ax.set_title("Recovery curves: mean ± sd over runs")
    dx.set_ylabel(f"FID relative to {highlight} (%)")
    dx.set_title(f"Gap to {highlight} (above 0: {highlight} is better)")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    return fig


def sample_rows(samples, per_row=10, title=None, scale=0.8, class_names=None):
    """One row of samples per model, classes 0..per_row-1 left to right: ``samples`` is {label: ``.npz`` written by
    ``sampling.sample_to_npz``} (its first image of each class); ``class_names`` title the columns."""
    from tinyfusion.io import load_npz
    labels = list(samples)
    fig, axes = plt.subplots(len(labels), per_row, figsize=(per_row * scale + 2.2, len(labels) * scale),
                             squeeze=False)
    for r, label in enumerate(labels):
        data = load_npz(samples[label])
        images, classes = np.asarray(data["images"]), np.asarray(data["labels"])
        for c in range(per_row):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            idx = np.where(classes == c)[0]
            if len(idx):
                img = np.squeeze(images[idx[0]])  # (H, W) from (1, H, W) or (H, W, 1)
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            for side in ax.spines.values():
                side.set_visible(False)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    for c, name in enumerate((class_names or [])[:per_row]):
        axes[0, c].set_title(name, fontsize=8)
    fig.subplots_adjust(wspace=0.04, hspace=0.06, left=0.22, top=1 - 0.5 / (len(labels) * scale + 0.6))
    if title:
        fig.suptitle(title, fontsize=12, y=1.0)
    return fig


def confidence_history(histories, settled=None):
    """One panel per scheme: the EMA confidence of each block's decision (probability of its chosen candidate) over
    the training steps, the last 20% of the steps shaded (where ``gates.settled`` asks the decision to hold).
    ``settled``: {scheme: per-block booleans}; unsettled blocks are drawn solid and named in the legend."""
    fig, axes = plt.subplots(len(histories), 1, figsize=(9, 2.8 * len(histories)), squeeze=False)
    for ax, (g, history) in zip(axes[:, 0], histories.items()):
        steps = np.array([h["step"] for h in history])
        conf = np.array([h["confidence"] for h in history])
        flags = (settled or {}).get(g) or [True] * conf.shape[1]
        for b in range(conf.shape[1]):
            ok = flags[b]
            ax.plot(steps, conf[:, b], lw=1.0 if ok else 2.2, alpha=0.45 if ok else 1.0,
                    color="0.5" if ok else None, label=None if ok else f"block {b} (not settled)")
        ax.axvspan(steps[0] + 0.8 * (steps[-1] - steps[0]), steps[-1], color="tab:green", alpha=0.08, lw=0)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("EMA confidence")
        n_bad = sum(not f for f in flags)
        ax.set_title(f"{g}: {len(flags) - n_bad} of {len(flags)} blocks settled over the last 20% of the steps",
                     fontsize=11)
        if n_bad:
            ax.legend(fontsize=8, loc="lower right")
    axes[-1, 0].set_xlabel("training step")
    fig.tight_layout()
    return fig


def gate_costs(costs, residuals):
    """Where the gates go wrong: per block, the calibration-loss cost of the learned choice against the best other
    (above 0: another choice allows a lower loss; unsettled blocks hatched), and per layer the residual size
    ``||f(h) - h|| / ||h||`` with the layers the gates kept marked."""
    fig, (ax, rx) = plt.subplots(2, 1, figsize=(10, 6.5))
    colors = ["tab:red" if c > 0 else "tab:blue" for c in costs["cost"]]
    bars = ax.bar(costs["block"], costs["cost"], color=colors)
    for bar, ok in zip(bars, costs["settled"]):
        if ok is False:
            bar.set_hatch("//")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(costs["block"])
    ax.set_xticklabels([f"{b}\n({lay})" for b, lay in zip(costs["block"], costs["layers"])], fontsize=8)
    ax.set_xlabel("block (its layers)")
    ax.set_ylabel("best loss with this choice\n− best loss otherwise")
    ax.set_title("Calibration-loss cost of each learned block choice (red: another choice does better; hatched: not "
                 "settled)", fontsize=11)
    kept = {int(i) for k in costs["kept"] for i in str(k).split()}
    rx.bar(range(len(residuals)), residuals, color=["tab:green" if i in kept else "0.7" for i in range(len(residuals))])
    rx.set_xticks(range(len(residuals)))
    rx.set_xlabel("layer (green: kept by the gates)")
    rx.set_ylabel("||f(h) − h|| / ||h||")
    rx.set_title("Residual size of each teacher layer", fontsize=11)
    fig.tight_layout()
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


def layer_keep_history(histories, layers=(0, 1), dashed=(), title="EMA probability that a layer is kept, over each run"):
    """One panel per layer of ``layers``: the EMA keep probability of that layer over each learnable-pruning run of
    ``histories`` ({label: decision snapshots}), against the share of the run done (runs of different lengths on one
    axis), so when block 0 swaps layer 1 for layer 0 in a long run, and whether it ever does, shows at a glance.
    Runs whose label is in ``dashed`` (e.g. the shorter budget) are drawn dashed, each group in its own colours."""
    fig, axes = plt.subplots(1, len(layers), figsize=(5.2 * len(layers), 3.6), squeeze=False, sharey=True,
                             layout="constrained")
    groups = ([lab for lab in histories if lab not in dashed], [lab for lab in histories if lab in dashed])
    colour = {lab: plt.cm.tab10(i % 10) for g in groups for i, lab in enumerate(g)}
    for ax, layer in zip(axes[0], layers):
        for label, history in histories.items():
            steps, P = keep_prob_history(history)
            ax.plot(steps / max(steps[-1], 1), P[:, layer], color=colour[label], ls="--" if label in dashed else "-",
                    lw=1.4, label=label)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("share of the run")
        ax.set_title(f"layer {layer}", fontsize=11)
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("EMA keep probability")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title, fontsize=11)
    return fig


def per_layer(values, ylabel, title, line=None):
    """One line per model of ``values`` ({label: one number per layer}), layer index on x: per-layer diagnostics of
    several teachers side by side (residual ratio, max |h| / std). ``line``: (y, label) of a dashed reference line,
    e.g. a rule's declared threshold."""
    fig, ax = plt.subplots(figsize=(8, 3.2), layout="constrained")
    for label, v in values.items():
        v = np.asarray(v, dtype=float)
        ax.plot(np.arange(len(v)), v, marker="o", ms=3, lw=1.3, label=label)
    if line is not None:
        ax.axhline(line[0], color="grey", ls="--", lw=1, label=line[1])
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8)
    return fig


def scale_ladder(table, points=("100K", "500K")):
    """The scale figure (notebook 12): left, learnable's FID over the best baseline's per rung, one tick per rung
    labelled with its parameters and tokens (the rungs are separate one-change steps from today's teacher, not a
    sequence, so they are not placed on a size axis), the paper's DiT-XL/2 set apart at the right as a star (100K);
    one series per curve point with error bars of the t critical value the rule calls with (``verdicts.t_critical``
    at the ratio's df) times its standard error (1 = the baseline's FID); right, max |h| / std and the
    calibration-loss span per rung on log axes, beside the paper's values. ``table``: ``scale.scale_table``'s rows,
    the paper's last."""
    import pandas as pd

    from tinyfusion.verdicts import t_critical
    ours, paper = table[table.rung != "paper DiT-XL/2"], table[table.rung == "paper DiT-XL/2"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    at = np.arange(len(ours))
    for i, p in enumerate(points):
        half = [t_critical(d) * s if np.isfinite(s) and d else np.nan for s, d in zip(ours[f"se {p}"], ours[f"df {p}"])]
        ax.errorbar(at + 0.12 * (i - 0.5), ours[f"learnable/best {p}"], yerr=half, marker="o", ls="", capsize=3,
                    label=f"ours, {p}-equivalent point")
    ticks = [f"{r.rung}\n{r.params / 1e6:.1f}M, {r.tokens} tokens" for r in ours.itertuples()]
    if len(paper):
        ax.plot([len(ours) + 0.5], paper["learnable/best 100K"], "*", ms=12, color="k", label="paper DiT-XL/2, 100K")
        ax.axvline(len(ours) - 0.25, color="grey", lw=0.6)
        ticks.append(f"paper DiT-XL/2\n{paper.params.iloc[0] / 1e6:.0f}M, {paper.tokens.iloc[0]} tokens")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks([*at, *([len(ours) + 0.5] if len(paper) else [])], ticks, fontsize=7)
    ax.set_xlim(-0.5, len(ours) + (1.0 if len(paper) else -0.5))
    ax.set_ylabel("learnable FID / best baseline FID")
    ax.set_title("Learnable pruning against the best baseline (below 1: learnable better)", fontsize=10)
    ax.legend(fontsize=8)
    labels = list(ours.rung) + list(paper.rung)
    both = pd.concat([ours, paper])
    xs = np.arange(len(labels))
    bx.bar(xs - 0.2, both["max|h|/std"], 0.4, label="max |h| / std")
    bx.bar(xs + 0.2, both["calib loss span"], 0.4, label="calibration-loss span (max/min)")
    bx.axhline(20, color="C0", lw=0.8, ls=":", label="'massive' declared: 20")
    bx.set_yscale("log")
    bx.set_xticks(xs, labels, rotation=15, fontsize=8)
    bx.set_title("Per teacher: massive activations and calibration-loss span", fontsize=10)
    bx.legend(fontsize=8)
    return fig
