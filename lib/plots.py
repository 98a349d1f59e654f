"""The book's figures: one function per figure kind (seaborn/matplotlib).

Every function returns the matplotlib Figure, sized for the book's text width.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

WIDTH = 8.0  # inches: the book's text column at 100 dpi


def _plain_log(ax, axis: str = "y") -> None:
    """Plain numbers (20, not 2x10^1) on a log axis, labels on major ticks only."""
    a = ax.yaxis if axis == "y" else ax.xaxis
    a.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.set_minor_formatter(NullFormatter())


def _integer_epochs(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def style() -> None:
    """The book's plotting style (called by every chapter's setup cell)."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "figure.autolayout": False,
                         "axes.titlesize": 11})


def _grid(n: int, ncols: int, cell: float = 1.3, extra_h: float = 0.35):
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell, nrows * (cell + extra_h)),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes.flat


def image_grid(images: np.ndarray, titles=None, ncols: int = 8, cell: float = 1.0):
    """NHWC uint8 (or float in [0,1]) images in a grid with optional titles."""
    fig, axes = _grid(len(images), ncols, cell)
    for ax, i in zip(axes, range(len(images))):
        ax.imshow(images[i], interpolation="nearest")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
    fig.tight_layout(w_pad=1.2)  # room between neighbouring titles
    return fig


def annotated_matrix(ax, m: np.ndarray, title: str, fmt: str = ".0f", cmap="Greys",
                     highlight=None):
    """A small matrix drawn as a heatmap with its numbers written in the cells."""
    sns.heatmap(m, annot=True, fmt=fmt, cbar=False, cmap=cmap, ax=ax, square=True,
                linewidths=0.5, linecolor="white", annot_kws={"fontsize": 8})
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if highlight is not None:
        r, c, h, w = highlight
        ax.add_patch(plt.Rectangle((c, r), w, h, fill=False, edgecolor="tab:red", lw=2.5))


def padding_stride(n: int = 5, k: int = 3, cases=((0, 1), (1, 1), (1, 2))):
    """Chapter 1: where a k x k kernel lands on an n x n input for each (padding,
    stride) in ``cases``: the input in grey, its zero padding hatched, the first two
    windows of the first row outlined, and the output size the formula gives."""
    from matplotlib.patches import Rectangle

    from .filters import output_size

    fig, axes = plt.subplots(1, len(cases), figsize=(WIDTH, 2.9), layout="constrained")
    for ax, (p, st) in zip(np.atleast_1d(axes), cases):
        size = n + 2 * p
        for i in range(size):
            for j in range(size):
                inside = p <= i < p + n and p <= j < p + n
                ax.add_patch(Rectangle((j, size - 1 - i), 1, 1, fill=inside,
                                       facecolor="0.85", edgecolor="0.5", lw=0.6,
                                       hatch=None if inside else "///"))
        for w, col in enumerate(("tab:red", "tab:blue")):
            x0 = w * st
            ax.add_patch(Rectangle((x0 + 0.06, size - k + 0.06), k - 0.12, k - 0.12,
                                   fill=False, edgecolor=col, lw=2.2))
        m = output_size(n, k, st, p)
        ax.set_title(f"padding {p}, stride {st}: output {m} x {m}", fontsize=9)
        ax.set_xlim(-0.2, size + 0.2)
        ax.set_ylim(-0.2, size + 0.2)
        ax.set_aspect("equal")
        ax.axis("off")
    return fig


def receptive_field_boxes(image: np.ndarray, rf: pd.DataFrame):
    """Chapter 1: the part of a 32 x 32 image that one unit in the middle of each
    pooling layer's output sees (its receptive field, from ``rf``: layer and
    receptive_field), as nested squares; a square larger than the image is clipped."""
    from matplotlib.patches import Rectangle

    rows = rf[rf.layer.str.endswith("pool")]
    fig, ax = plt.subplots(figsize=(WIDTH * 0.6, 4.2), layout="constrained")
    ax.imshow(image, extent=(0, 32, 32, 0))
    colours = plt.cm.plasma(np.linspace(0, 0.85, len(rows)))
    for col, r in zip(colours, rows.itertuples()):
        f = r.receptive_field
        lo, hi = max(0.3, 16 - f / 2), min(31.7, 16 + f / 2)  # clipped to the image
        note = " (more than the image)" if f > 32 else ""
        ax.add_patch(Rectangle((lo, lo), hi - lo, hi - lo, fill=False, edgecolor=col, lw=2.5,
                               ls="--" if f > 32 else "-",
                               label=f"one unit after {r.layer.split('.')[0]}: "
                                     f"{f} x {f} px{note}"))
    ax.plot([16], [16], marker="+", color="white", ms=10, mew=2)
    ax.set_xlim(0, 32)
    ax.set_ylim(32, 0)
    ax.set_xticks([0, 8, 16, 24, 32])
    ax.set_yticks([0, 8, 16, 24, 32])
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=1)
    return fig


def conv_worked_example(x: np.ndarray, k: np.ndarray, y: np.ndarray, at=(0, 0)):
    """Input, kernel and output of a tiny convolution, one window highlighted."""
    fig, axes = plt.subplots(1, 3, figsize=(WIDTH, 3.2),
                             gridspec_kw={"width_ratios": [x.shape[1], k.shape[1] + 1, y.shape[1]]})
    i, j = at
    kh, kw = k.shape
    annotated_matrix(axes[0], x, "input x", highlight=(i, j, kh, kw))
    annotated_matrix(axes[1], k, "kernel w", cmap="coolwarm")
    annotated_matrix(axes[2], y, "output y = x * w", highlight=(i, j, 1, 1), cmap="Blues")
    fig.tight_layout()
    return fig


def kernel_gallery(images: np.ndarray, kernels: dict, apply):
    """Each grey image (rows) under each kernel (columns)."""
    names = list(kernels)
    fig, axes = plt.subplots(len(images), len(names), figsize=(WIDTH, 1.25 * len(images) + 0.4),
                             squeeze=False)
    for r, img in enumerate(images):
        for c, name in enumerate(names):
            ax = axes[r, c]
            out = apply(img, kernels[name])
            lim = np.abs(out).max() if name.startswith(("sobel", "laplacian")) else None
            if lim is not None:
                ax.imshow(out, cmap="RdBu_r", vmin=-lim, vmax=lim)
            else:
                ax.imshow(out, cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


def filters_rgb(w: np.ndarray, ncols: int = 8, title: str | None = None):
    """First-layer kernels (O, 3, k, k) shown as small RGB images, each scaled to [0, 1]."""
    w = w.transpose(0, 2, 3, 1)
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    hi = w.max(axis=(1, 2, 3), keepdims=True)
    w = (w - lo) / np.maximum(hi - lo, 1e-8)
    fig, axes = _grid(len(w), ncols, cell=0.9, extra_h=0.0)
    for ax, f in zip(axes, w):
        ax.imshow(f, interpolation="nearest")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def feature_maps(maps: np.ndarray, ncols: int = 8, title: str | None = None, image=None):
    """Activation maps (C, H, W), each with its own colour scale; optionally the input first."""
    n = len(maps) + (image is not None)
    fig, axes = _grid(n, ncols, cell=0.95, extra_h=0.35)
    axes = list(axes)
    if image is not None:
        axes[0].imshow(image)
        axes[0].set_title("input", fontsize=8)
        axes = axes[1:]
    for i, (ax, m) in enumerate(zip(axes, maps)):
        ax.imshow(m, cmap="viridis")
        ax.set_title(f"#{i}", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def curves(metrics: pd.DataFrame, label: str = ""):
    """Loss and accuracy per epoch, train and test, side by side."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(WIDTH, 3.0))
    for split, ls in (("train", "--"), ("test", "-")):
        a.plot(metrics.epoch, metrics[f"{split}_loss"], ls, marker="o", ms=3, label=split)
        b.plot(metrics.epoch, 100 * metrics[f"{split}_acc"], ls, marker="o", ms=3, label=split)
    a.set(xlabel="epoch", ylabel="cross-entropy loss (nats)", title=f"loss {label}".strip())
    b.set(xlabel="epoch", ylabel="accuracy (%)", title=f"accuracy {label}".strip())
    for ax in (a, b):
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def class_samples(x: np.ndarray, y: np.ndarray, classes, n: int = 8, seed: int = 0):
    """``n`` random images of each class, one row per class, labelled on the left."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(classes), n, figsize=(WIDTH, 0.95 * len(classes)),
                             squeeze=False)
    for c, name in enumerate(classes):
        idx = rng.choice(np.flatnonzero(y == c), n, replace=False)
        for j, i in enumerate(idx):
            ax = axes[c, j]
            ax.imshow(x[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
        axes[c, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    fig.subplots_adjust(left=0.14, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    return fig


def count_table(df: pd.DataFrame, title: str, fmt: str = "d"):
    """A count table (classes x columns) as an annotated heatmap."""
    fig, ax = plt.subplots(figsize=(min(WIDTH, 1.6 + 1.1 * df.shape[1]), 0.32 * len(df) + 1.2))
    sns.heatmap(df, annot=True, fmt=fmt, cmap="Blues", cbar=False, ax=ax, linewidths=0.5)
    ax.set_title(title)
    ax.set_ylabel("")
    ax.tick_params(axis="x", rotation=0)
    fig.tight_layout()
    return fig


def channel_histograms(h: pd.DataFrame):
    """Pixel-value histograms per colour channel (fractions of all pixels)."""
    fig, ax = plt.subplots(figsize=(WIDTH, 2.8))
    for c, colour in (("red", "tab:red"), ("green", "tab:green"), ("blue", "tab:blue")):
        ax.plot(h.index, 100 * h[c] / h[c].sum(), color=colour, label=c)
    ax.set(xlabel="pixel value (0-255)", ylabel="share of pixels (%)", xlim=(-4, 259))
    ax.grid(axis="x", visible=False)  # the spikes at 0 and 255 stay clear of any line
    ax.legend()
    fig.tight_layout()
    return fig


def per_class_box(stats: pd.DataFrame, columns=("brightness", "contrast")):
    """Box plots of per-image statistics by class, one panel per column."""
    fig, axes = plt.subplots(1, len(columns), figsize=(WIDTH, 3.4), squeeze=False)
    for ax, col in zip(axes[0], columns):
        sns.boxplot(data=stats, y="class", x=col, ax=ax, fliersize=1, color="tab:blue",
                    width=0.6)
        ax.set(xlabel=f"{col} (grey level, 0-1)", ylabel="")
    fig.tight_layout()
    return fig


def embedding(points: dict, labels: np.ndarray, classes):
    """2-D embeddings side by side (dict title -> (N, 2)), coloured by class."""
    fig, axes = plt.subplots(1, len(points), figsize=(WIDTH, 4.0), squeeze=False)
    palette = sns.color_palette("tab10", len(classes))
    for ax, (title, z) in zip(axes[0], points.items()):
        for c, name in enumerate(classes):
            m = labels == c
            ax.scatter(z[m, 0], z[m, 1], s=3, alpha=0.6, color=palette[c], label=name,
                       rasterized=True)
        ax.set(title=title, xticks=[], yticks=[])
    handles = [plt.Line2D([], [], marker="o", ls="", color=palette[c], label=n)
               for c, n in enumerate(classes)]
    fig.legend(handles=handles, loc="lower center", ncol=5, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def image_pairs(top: np.ndarray, bottom: np.ndarray, titles, row_labels=("test", "train")):
    """Pairs of images, one pair per column (e.g. a test image over its nearest train image)."""
    n = len(top)
    fig, axes = plt.subplots(2, n, figsize=(WIDTH, 2.8), squeeze=False)
    for j in range(n):
        for r, imgs in enumerate((top, bottom)):
            ax = axes[r, j]
            ax.imshow(imgs[j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(titles[j], fontsize=7.5)
    for r, lab in enumerate(row_labels):
        axes[r, 0].set_ylabel(lab, fontsize=9)
    fig.tight_layout()
    return fig


def similarity_histogram(sim: np.ndarray, threshold: float):
    """Histogram of nearest-neighbour similarities with the duplicate threshold marked."""
    fig, ax = plt.subplots(figsize=(WIDTH, 2.8))
    ax.hist(sim, bins=100, color="tab:blue")
    ax.axvline(threshold, color="tab:red", ls="--", label=f"threshold {threshold}")
    ax.set(xlabel="correlation with the nearest training image", ylabel="test images",
           yscale="log")
    ax.legend()
    fig.tight_layout()
    return fig


def curves_compare(histories: dict):
    """Mean (line) and min-max over seeds (band) of loss and accuracy per epoch.

    ``histories``: model name -> list of per-seed metrics DataFrames (chapter 3).
    """
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.3))
    palette = dict(zip(histories, sns.color_palette("tab10", len(histories))))
    for name, dfs in histories.items():
        long = pd.concat(dfs, keys=range(len(dfs)), names=["seed"]).reset_index(level=0)
        g = long.groupby("epoch")
        for split, ls in (("train", "--"), ("test", "-")):
            for ax, col, scale in ((axes[0], "loss", 1), (axes[1], "acc", 100)):
                m = g[f"{split}_{col}"].agg(["mean", "min", "max"]) * scale
                ax.plot(m.index, m["mean"], ls, color=palette[name], label=f"{name} {split}")
                ax.fill_between(m.index, m["min"], m["max"], color=palette[name], alpha=0.2)
    axes[0].set(xlabel="epoch", ylabel="cross-entropy loss (nats)", title="loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in axes:
        _integer_epochs(ax)
    axes[1].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def confusion_matrices(cms: dict):
    """Row-normalised confusion matrices side by side, in percent (chapter 3)."""
    fig, axes = plt.subplots(1, len(cms), figsize=(WIDTH, WIDTH / len(cms) + 0.6),
                             squeeze=False)
    for ax, (title, cm) in zip(axes[0], cms.items()):
        sns.heatmap(100 * cm, annot=True, fmt=".0f", cmap="Blues", cbar=False, ax=ax,
                    square=True, vmin=0, vmax=100, annot_kws={"fontsize": 6.5})
        ax.set(title=title, xlabel="predicted class", ylabel="true class")
        ax.tick_params(labelsize=7.5)
        ax.tick_params(axis="x", rotation=90)
    fig.tight_layout()
    return fig


def per_class_bars(acc: pd.DataFrame):
    """Per-class test accuracy of several models (columns), in percent."""
    long = (100 * acc).reset_index().melt(id_vars="class", var_name="model",
                                          value_name="accuracy (%)")
    fig, ax = plt.subplots(figsize=(WIDTH, 3.0))
    sns.barplot(data=long, x="class", y="accuracy (%)", hue="model", ax=ax)
    ax.set(xlabel="", ylim=(0, 100))
    ax.tick_params(axis="x", rotation=30)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 1.16), ncol=len(acc.columns),
              fontsize=8, frameon=False)  # above the bars, where it hides none
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# chapter 6: the search
# --------------------------------------------------------------------------
def _in_order(df: pd.DataFrame) -> pd.DataFrame:
    """Trained trials (``lib.search.trained_frame``) in order, with the epochs spent so far."""
    return df.sort_values("number").assign(epochs_spent=lambda x: x.epochs_run.cumsum())


def _best_so_far(d: pd.DataFrame) -> pd.Series:
    """The best full-budget value up to each trial (held through pruned trials)."""
    return d.value.where(d.state == "COMPLETE").cummax().ffill()


def search_history(df: pd.DataFrame, title: str = ""):
    """Validation accuracy of every trained trial (at the epoch it stopped) and the best
    full-budget trial so far, against trial number and against epochs spent."""
    d = _in_order(df)
    full = d.state == "COMPLETE"
    best = _best_so_far(d)
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.4), sharey=True)
    for ax, x, label in ((axes[0], "number", "trial"), (axes[1], "epochs_spent",
                                                         "epochs spent (cumulative)")):
        ax.scatter(d[x][full], d.value[full], s=22, label="ran all epochs", color="tab:blue")
        ax.scatter(d[x][~full], d.value[~full], s=22, marker="x", color="tab:orange",
                   label="pruned (value when stopped)")
        ax.plot(d[x], best, color="black", lw=1.5, drawstyle="steps-post", label="best so far")
        ax.set_xlabel(label)
    axes[0].set_ylabel("validation accuracy")
    # below the axes, where it cannot cover a trial
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def pruning_compare(frames: dict):
    """Best full-budget validation accuracy so far against epochs spent, one line per
    study (chapter 6's paired study: the same configs with and without pruning)."""
    fig, ax = plt.subplots(figsize=(WIDTH * 0.7, 3.2))
    for name, df in frames.items():
        d = _in_order(df)
        best = _best_so_far(d)
        ax.plot(d.epochs_spent, best, drawstyle="steps-post", lw=2, label=name, marker="o",
                ms=3)
    ax.set_xlabel("epochs spent (cumulative)")
    ax.set_ylabel("best validation accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def retrain_results(df: pd.DataFrame):
    """Test accuracy of each re-trained config (one dot per seed, the bar its mean) next
    to the validation accuracy its trial reached at the search's fidelity."""
    fig, ax = plt.subplots(figsize=(WIDTH * 0.7, 3.2))
    g = df.groupby("rank")
    labels = [f"#{r}\n(trial {t})" for r, t in g.trial.first().items()]
    x = np.arange(len(labels))
    ax.bar(x - 0.2, g.test_acc.mean(), width=0.4, color="tab:blue", alpha=0.6,
           label="test, full budget (mean)")
    for i, (_, grp) in enumerate(g):
        ax.scatter(np.full(len(grp), i - 0.2), grp.test_acc, color="tab:blue", s=14, zorder=3)
    ax.bar(x + 0.2, g.val_acc.first(), width=0.4, color="tab:gray", alpha=0.6,
           label="validation, search fidelity")
    lo = min(df.test_acc.min(), df.val_acc.min())
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_xticks(x, labels)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# chapter 7: what the search tells us
# --------------------------------------------------------------------------
LOG_PARAMS = ("lr", "batch_size", "weight_decay")


def importance_bars(imp: pd.DataFrame):
    """Importance per hyperparameter, one panel per method, with bootstrap intervals."""
    methods = list(dict.fromkeys(imp.method))
    order = imp.groupby("param").importance.mean().sort_values(ascending=False).index
    fig, axes = plt.subplots(1, len(methods), figsize=(WIDTH, 0.32 * len(order) + 1.2),
                             sharey=True, squeeze=False)
    for ax, m in zip(axes[0], methods):
        d = imp[imp.method == m].set_index("param").reindex(order)
        y = np.arange(len(order))
        ax.barh(y, d.importance, color="tab:blue", alpha=0.7)
        # a percentile interval need not contain the point estimate: draw it as a segment
        ax.hlines(y, d.lo, d.hi, color="black", lw=1.2, label="5-95 % bootstrap")
        ax.plot(d.lo, y, "|", color="black", ms=6)
        ax.plot(d.hi, y, "|", color="black", ms=6)
        ax.set_title(m)
        ax.set_xlabel("importance (share)")
        ax.set_xlim(0, max(1e-3, float(d.hi.max())) * 1.05)
    axes[0][0].set_yticks(np.arange(len(order)), [p.removeprefix("model.") for p in order])
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    return fig


def slices(df: pd.DataFrame, params: list[str], ncols: int = 4):
    """Validation accuracy against each hyperparameter (Optuna's slice plot), trials
    that ran all epochs in blue, pruned ones (at the epoch they stopped) in grey."""
    nrows = int(np.ceil(len(params) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH, 2.0 * nrows), sharey=True,
                             squeeze=False)
    rng = np.random.default_rng(0)
    for ax, p in zip(axes.flat, params):
        for state, color in (("PRUNED", "tab:gray"), ("COMPLETE", "tab:blue")):
            d = df[df.state == state]
            x = d[p]
            if x.dtype == object or x.dtype == bool:
                cats = sorted(df[p].astype(str).unique())
                x = x.astype(str).map({c: i for i, c in enumerate(cats)}) + \
                    rng.uniform(-0.15, 0.15, len(x))
                ax.set_xticks(range(len(cats)), cats)
            ax.scatter(x, d.value, s=10, color=color, alpha=0.7)
        if p.removeprefix("model.") in LOG_PARAMS:
            ax.set_xscale("log")
            vals = np.sort(df[p].dropna().unique())
            if len(vals) <= 6:  # a few powers of two (batch size): label each one
                ax.set_xticks(vals, [f"{v:g}" for v in vals])
                ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(p.removeprefix("model."), fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(params):]:
        ax.set_axis_off()
    for row in axes:
        row[0].set_ylabel("val. accuracy", fontsize=9)
    fig.tight_layout()
    return fig


def _tick_labels(vals, name):
    if name.startswith("log10_"):
        return [f"{10**v:.2g}" for v in vals]
    return [f"{v:g}" for v in vals]


def pd_heatmaps(pds: list[dict]):
    """2-D partial dependence maps of a surrogate, one per pair, titled with H^2."""
    fig, axes = plt.subplots(1, len(pds), figsize=(WIDTH, 3.4), squeeze=False,
                             layout="constrained")
    for ax, p in zip(axes[0], pds):
        im = ax.imshow(p["pd"].T, origin="lower", aspect="auto", cmap="viridis")
        ia = np.linspace(0, len(p["grid_a"]) - 1, min(3, len(p["grid_a"]))).round().astype(int)
        ib = np.linspace(0, len(p["grid_b"]) - 1, min(5, len(p["grid_b"]))).round().astype(int)
        ax.set_xticks(ia, _tick_labels(p["grid_a"][ia], p["a"]), fontsize=8)
        ax.set_yticks(ib, _tick_labels(p["grid_b"][ib], p["b"]), fontsize=8)
        ax.set_xlabel(p["a"].removeprefix("log10_"))
        ax.set_ylabel(p["b"].removeprefix("log10_"))
        ax.set_title(f"H² = {p['h2']:.2f}", fontsize=10)
        ax.grid(False)
        cb = fig.colorbar(im, ax=ax, shrink=0.8, format="{x:.2f}")
        cb.ax.tick_params(labelsize=8)
    fig.suptitle("the surrogate's predicted validation accuracy (partial dependence)",
                 fontsize=10)
    return fig


def grid_heatmaps(df: pd.DataFrame, y: str = "value"):
    """The grid study: accuracy over learning rate x batch size (left) and the same
    cells against the per-example step lr / batch size (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.4))
    m = df.pivot_table(index="batch_size", columns="lr", values=y)
    sns.heatmap(m, annot=True, fmt=".2f", cmap="viridis", ax=axes[0], cbar=False,
                annot_kws={"fontsize": 8})
    axes[0].set_xticklabels([f"{float(t.get_text()):g}" for t in axes[0].get_xticklabels()])
    axes[0].invert_yaxis()
    axes[0].set_title("as searched: lr x batch size")
    for bs, d in df.sort_values("lr").groupby("batch_size"):
        axes[1].plot(d.lr / d.batch_size, d[y], marker="o", label=f"batch {bs}")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("lr / batch size")
    axes[1].set_ylabel("val. accuracy")
    axes[1].set_title("decoupled: step per example")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def lr_by(df: pd.DataFrame, by: list[str], lr: str = "lr"):
    """Validation accuracy against the learning rate (log scale), one panel per column
    of ``by`` (e.g. the optimiser, batch norm on or off), colour by its value; trials
    that ran every epoch as dots, pruned ones (their value from an earlier epoch) as
    crosses (chapter 7)."""
    import seaborn as sns

    fig, axes = plt.subplots(1, len(by), figsize=(WIDTH, 3.0), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, col in zip(axes[0], by):
        d = df.assign(**{"trial": np.where(df.state == "COMPLETE", "complete", "pruned"),
                         col: df[col].astype(str)})
        sns.scatterplot(data=d, x=lr, y="value", hue=col, style="trial",
                        markers={"complete": "o", "pruned": "X"}, ax=ax, s=28)
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_title(f"by {col.removeprefix('model.')}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("validation accuracy")
    return fig


def lr_and_steps(df: pd.DataFrame, epoch: int):
    """The search around the recipe at one epoch every trial reached (chapter 7): for
    each optimiser, validation accuracy against its own learning rate (each optimiser
    has its own range and units, so one panel each); last panel, against the optimiser
    steps taken by then (log scale). Colour: batch size, shape: optimiser, one legend
    under the panels; ``df`` has one row per trial with ``optimizer``, ``lr``,
    ``batch_size``, ``steps`` and ``value`` (at ``epoch``)."""
    import seaborn as sns

    opts = sorted(df.optimizer.unique())
    sizes = sorted(df.batch_size.unique())
    palette = dict(zip(sizes, sns.color_palette("colorblind", len(sizes))))
    markers = dict(zip(opts, ["o", "X", "s", "^"]))
    fig, axes = plt.subplots(1, len(opts) + 1, figsize=(WIDTH, 3.3), sharey=True,
                             squeeze=False, layout="constrained")
    axes = axes[0]
    for ax, o in zip(axes, opts):
        d = df[df.optimizer == o]
        sns.scatterplot(data=d, x="lr", y="value", hue="batch_size", palette=palette,
                        hue_order=sizes, marker=markers[o], ax=ax, s=30, legend=False)
        ax.set_xlabel(f"peak learning rate ({o})", fontsize=9)
        ax.set_title(f"{o}: {len(d)} trials", fontsize=9)
    sns.scatterplot(data=df, x="steps", y="value", hue="batch_size", palette=palette,
                    hue_order=sizes, style="optimizer", style_order=opts, markers=markers,
                    ax=axes[-1], s=30)
    axes[-1].set_xlabel(f"optimiser steps by epoch {epoch}", fontsize=9)
    axes[-1].set_title("against steps taken", fontsize=9)
    handles, labels = axes[-1].get_legend_handles_labels()
    axes[-1].get_legend().remove()
    labels = [{"batch_size": "batch size:", "optimizer": "   optimiser:"}.get(x, x)
              for x in labels]
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8,
               frameon=False, handletextpad=0.2, columnspacing=0.8)
    axes[0].set_ylabel(f"val. accuracy at epoch {epoch}", fontsize=9)
    for ax in axes:
        ax.set_xscale("log")
        _plain_log(ax, "x")
        ax.tick_params(labelsize=8)
    return fig


def incumbents(df: pd.DataFrame):
    """TPE against random search (chapter 6): the best validation accuracy so far against
    the number of trials, the mean over repeats as a line and the range from the worst
    to the best repeat as a band, one colour per sampler."""
    fig, ax = plt.subplots(figsize=(WIDTH * 0.7, 3.2), layout="constrained")
    for (sampler, g), col in zip(df.groupby("sampler"), ("tab:blue", "tab:orange")):
        w = g.pivot_table(index="index", columns="repeat", values="incumbent")
        ax.plot(w.index, w.mean(axis=1), color=col,
                label=f"{sampler} ({w.shape[1]} repeat{'s' * (w.shape[1] > 1)})")
        ax.fill_between(w.index, w.min(axis=1), w.max(axis=1), color=col, alpha=0.2)
    ax.set_xlabel("trials")
    ax.set_ylabel("best validation accuracy so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    return fig


def kind_curves(curves: dict, y: str = "val_acc"):
    """Validation-accuracy curves of trials grouped by kind (learned, stuck, diverged)."""
    colors = {"learned": "tab:blue", "stuck": "tab:red", "diverged": "black",
              "stopped in warm-up": "tab:orange"}
    fig, ax = plt.subplots(figsize=(WIDTH * 0.7, 3.2))
    for kind, frames in curves.items():
        for i, m in enumerate(frames):
            ax.plot(m.epoch, m[y], color=colors.get(kind, "gray"), alpha=0.5, lw=1,
                    label=kind if i == 0 else None)
    ax.axhline(0.1, ls=":", color="gray", lw=1)
    ax.text(1.0, 0.11, "chance", fontsize=8, color="gray", ha="right",
            transform=ax.get_yaxis_transform())
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def dead_units(act: pd.DataFrame):
    """Fraction of dead units (never positive on the probe images) per activation
    layer at the end of training, by kind of trial."""
    fig, ax = plt.subplots(figsize=(WIDTH * 0.7, 3.0))
    sns.boxplot(act, x="depth_index", y="dead_frac", hue="kind", ax=ax, fliersize=2)
    ax.set_xlabel("activation layer (input side first)")
    ax.set_ylabel("dead fraction")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def norms_over_training(weights: dict):
    """Per-layer weight norm against epoch, one panel per run (e.g. a good and a
    stuck trial)."""
    fig, axes = plt.subplots(1, len(weights), figsize=(WIDTH, 3.0), squeeze=False,
                             sharey=True)
    for ax, (title, w) in zip(axes[0], weights.items()):
        for i, (layer, d) in enumerate(w.groupby("layer", sort=False)):
            ax.plot(d.epoch, d.norm, color=plt.cm.viridis(i / max(1, w.layer.nunique() - 1)),
                    label=layer if i in (0, w.layer.nunique() - 1) else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        _plain_log(ax)
        _integer_epochs(ax)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("weight norm (L2)")
    fig.tight_layout()
    return fig


def weight_quantiles(w: pd.DataFrame, layers: list[str], title: str = ""):
    """Distribution of each layer's weights over training: median and the 1-99 and
    25-75 percentile bands, from the per-epoch quantiles in weights.csv."""
    fig, axes = plt.subplots(1, len(layers), figsize=(WIDTH, 2.6), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        d = w[w.layer == layer]
        ax.fill_between(d.epoch, d.q01, d.q99, alpha=0.2, color="tab:blue", label="1-99 %")
        ax.fill_between(d.epoch, d.q25, d.q75, alpha=0.4, color="tab:blue", label="25-75 %")
        ax.plot(d.epoch, d.q50, color="tab:blue", lw=1)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
    axes[0][0].set_ylabel("weight value")
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def norm_scatter(df: pd.DataFrame):
    """Final RMS per weight against validation accuracy and against the generalisation
    gap (train minus validation accuracy), coloured by weight decay."""
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.3), sharex=True, layout="constrained")
    c = np.log10(df.weight_decay)
    for ax, y, label in ((axes[0], "value", "validation accuracy"),
                         (axes[1], "gap", "train - validation accuracy")):
        sc = ax.scatter(df.rms, df[y], c=c, cmap="coolwarm", s=18)
        ax.set_xscale("log")
        ax.set_xlabel("RMS of a weight (final)")
        ax.set_ylabel(label)
    fig.colorbar(sc, ax=axes, shrink=0.8, label="log10 weight decay")
    return fig


def wd_rms(runs_by_wd: dict, layers: list[str]):
    """Chapter 7's weight-decay experiment: the RMS of a weight per epoch for a few
    layers, one line per weight decay (mean over its seeds, band from min to max)."""
    from .analysis import layer_rms

    fig, axes = plt.subplots(1, len(layers), figsize=(WIDTH, 2.8), squeeze=False,
                             sharey=False, layout="constrained")
    colours = plt.cm.coolwarm(np.linspace(0, 1, len(runs_by_wd)))
    for ax, layer in zip(axes[0], layers):
        for col, (wd, rs) in zip(colours, runs_by_wd.items()):
            d = pd.concat([w.loc[w.layer == layer, ["epoch", "rms"]]
                           for w in (layer_rms(r.weights) for r in rs)])
            g = d.groupby("epoch").rms
            ax.plot(g.mean().index, g.mean(), color=col, label=f"weight decay {wd:g}")
            ax.fill_between(g.min().index, g.min(), g.max(), color=col, alpha=0.2)
        ax.set_title(layer.removesuffix(".weight"), fontsize=9)
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
    axes[0][0].set_ylabel("RMS of a weight")
    axes[0][0].legend(fontsize=7)
    return fig


def wd_distributions(runs_by_wd: dict, layer: str):
    """Chapter 7's weight-decay experiment: one layer's weight distribution over
    training, one panel per weight decay (the first seed): mean, mean +- one standard
    deviation, and minimum to maximum."""
    fig, axes = plt.subplots(1, len(runs_by_wd), figsize=(WIDTH, 2.6), squeeze=False,
                             sharey=True, layout="constrained")
    for ax, (wd, rs) in zip(axes[0], runs_by_wd.items()):
        w = rs[0].weights
        d = w[w.layer == layer]
        ax.fill_between(d.epoch, d["min"], d["max"], alpha=0.15, color="tab:blue",
                        label="min to max")
        ax.fill_between(d.epoch, d["mean"] - d["std"], d["mean"] + d["std"], alpha=0.45,
                        color="tab:blue", label="mean +- SD")
        ax.plot(d.epoch, d["mean"], color="tab:blue", lw=1)
        ax.set_title(f"weight decay {wd:g}", fontsize=9)
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
    axes[0][0].set_ylabel(f"{layer.removesuffix('.weight')} weights")
    axes[0][0].legend(fontsize=7)
    return fig


def interpolation(lines: dict):
    """Loss and accuracy along straight lines in weight space (alpha 0 -> 1)."""
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.0))
    for name, d in lines.items():
        axes[0].plot(d.alpha, d.loss, marker="o", ms=3, label=name)
        axes[1].plot(d.alpha, d.acc, marker="o", ms=3, label=name)
    axes[0].set_ylabel("validation loss")
    axes[1].set_ylabel("validation accuracy")
    for ax in axes:
        ax.set_xlabel("alpha")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def recipe_curves(metrics: list, label: str = "test"):
    """Per-epoch accuracy of several seeds of one recipe (chapter 5): each seed's
    training-batch and evaluation accuracy."""
    fig, ax = plt.subplots(figsize=(WIDTH * 0.7, 3.2))
    col = f"{label}_acc"
    for i, m in enumerate(metrics):
        ax.plot(m.epoch, m.train_acc, color="C0", ls="--", alpha=0.7,
                label="training batches (augmented)" if i == 0 else None)
        ax.plot(m.epoch, m[col], color="C1", marker="o", ms=3,
                label=f"{label} set" if i == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
    _integer_epochs(ax)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def ablation(df: pd.DataFrame, per_seed: pd.DataFrame):
    """The ladder (each step adds one technique) and leave-one-out (each row removes
    one from the full recipe), plain and TTA test accuracy: the mean over seeds as a
    large marker, each seed as a dot, one accuracy axis shared by both panels (markers,
    not bars, since the axis does not start at zero) (chapter 5)."""
    kinds = [k for k in ("ladder", "leave one out") if k in set(df.kind)]
    heights = [max(1, (df.kind == k).sum()) for k in kinds]
    fig, axes = plt.subplots(len(kinds), 1, figsize=(WIDTH, 0.42 * sum(heights) + 1.2),
                             gridspec_kw=dict(height_ratios=heights), squeeze=False,
                             sharex=True)
    for ax, k in zip(axes[:, 0], kinds):
        d = df[df.kind == k].sort_values("step")
        y = np.arange(len(d))
        ps = per_seed[per_seed.kind == k]
        for col, seed_col, dy, color, label in (
                ("test_acc", "test_acc", -0.15, "C0", "plain"),
                ("tta_acc", "test_acc_tta", 0.15, "C1", "with TTA")):
            ax.plot(d[col], y + dy, "D", color=color, ms=6, label=label)
            for yi, step in zip(y, d.step):
                sd = ps[ps.step == step][seed_col]
                ax.plot(sd, np.full(len(sd), yi + dy), ".", color="k", ms=3)
        ax.set_yticks(y, [("+ " if k == "ladder" and i else "") + n
                          for i, n in enumerate(d.name)], fontsize=8)
        ax.set_ylim(len(d) - 0.5, -0.5)
        ax.grid(axis="x", alpha=0.4)
        ax.set_title("each step adds one technique" if k == "ladder"
                     else "the full recipe with one technique taken out", fontsize=10)
    axes[0, 0].xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("test accuracy (diamonds: mean over seeds; dots: seeds)")
    fig.tight_layout()
    return fig


#: Short marks of the fidelity study's named configurations (random ones show their number).
FIDELITY_MARKS = {"recipe defaults": "D", "chapter 3's CNN in the recipe": "C3"}


def fidelity_scatter(df: pd.DataFrame, table: pd.DataFrame, picked: str | None = None):
    """The fidelity study (chapter 6): one panel per candidate fidelity, each
    configuration's validation accuracy there against the one at the reference, with
    the rank correlation in the panel's title; the picked fidelity's title in bold."""
    wide = df.pivot_table(index="config", columns="fidelity", values="val_acc")
    fids = list(table.fidelity)
    fig, axes = plt.subplots(1, max(1, len(fids)), figsize=(WIDTH, 3.0), squeeze=False,
                             layout="constrained")
    for ax, row in zip(axes[0], table.itertuples()):
        both = wide[[row.fidelity, "reference"]].dropna() if row.fidelity in wide else \
            pd.DataFrame(columns=[row.fidelity, "reference"])
        ax.scatter(both["reference"], both[row.fidelity], s=24, color="tab:blue")
        ax.set_title(f"{row.fidelity}: rho {row.spearman:.2f}, {row.minutes_per_run:.1f} min",
                     fontsize=9, fontweight="bold" if row.fidelity == picked else "normal")
        ax.margins(0.15)  # room for the marks at the edges
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
    fig.supxlabel("validation accuracy at the reference budget", fontsize=10)
    axes[0][0].set_ylabel("validation accuracy, candidate")
    fig.canvas.draw()  # lay the panels out first: the labels are placed in points
    for ax, row in zip(axes[0], table.itertuples()):
        if row.fidelity in wide:
            both = wide[[row.fidelity, "reference"]].dropna()
            label_points(ax, both["reference"], both[row.fidelity],
                         [FIDELITY_MARKS.get(n, str(n).removeprefix("random "))
                          for n in both.index])
    return fig


def label_points(ax, xs, ys, labels, fontsize: float = 7) -> None:
    """Write each label beside its point, on the first side (right, left, below right,
    below left) where it covers neither another label nor another point: close points
    keep readable labels without a layout library."""
    ax.autoscale_view()
    to_pt = ax.transData + ax.figure.dpi_scale_trans.inverted()  # data -> inches
    pts = [tuple(to_pt.transform((x, y)) * 72) for x, y in zip(xs, ys)]
    boxes = [(px - 3, py - 3, px + 3, py + 3) for px, py in pts]  # the points
    sides = [((3, 2), "left", "bottom"), ((-3, 2), "right", "bottom"),
             ((3, -2), "left", "top"), ((-3, -2), "right", "top")]
    for (px, py), text in sorted(zip(pts, labels)):
        w, h = 0.62 * fontsize * len(text), fontsize

        def box(side, px=px, py=py, w=w, h=h):
            (dx, dy), ha, va = side
            x0 = px + dx if ha == "left" else px + dx - w
            y0 = py + dy if va == "bottom" else py + dy - h
            return (x0, y0, x0 + w, y0 + h)

        def free(b, px=px, py=py):
            return not any(b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3]
                           for o in boxes if o != (px - 3, py - 3, px + 3, py + 3))

        side = next((sd for sd in sides if free(box(sd))), sides[0])
        boxes.append(box(side))
        (dx, dy), ha, va = side
        x, y = (to_pt.inverted().transform((px / 72, py / 72)))
        ax.annotate(text, (x, y), fontsize=fontsize, xytext=(dx, dy),
                    textcoords="offset points", ha=ha, va=va)


def jpeg_trend(table: pd.DataFrame, fits: dict):
    """What a lossier copy costs (chapter 5): each run's test accuracy against the mean
    absolute change of the pixels from the offline copy, plain and with TTA; each
    column's straight line (solid over the measured range, dashed where it is extended
    to the left) and its value there with the 95 % interval."""
    fig, ax = plt.subplots(figsize=(WIDTH * 0.7, 3.4), layout="constrained")
    for (col, fit), c in zip(fits.items(), ("C0", "C1")):
        label = {"test_acc": "plain", "test_acc_tta": "with TTA"}.get(col, col)
        ax.plot(table.change, table[col], "o", color=c, label=label, ms=5)
        if not np.isfinite(fit["slope"]):
            continue
        icpt = fit["value"] - fit["slope"] * fit["at"]
        xs = np.array([0.0, float(table.change.max())])
        ax.plot(xs, icpt + fit["slope"] * xs, color=c, lw=1.5)
        ax.plot([fit["at"], 0.0], [fit["value"], icpt], color=c, lw=1.5, ls="--")
        dx = 0.12 if col == "test_acc_tta" else -0.12  # the two bars side by side
        ax.errorbar([fit["at"] + dx], [fit["value"]], yerr=[[fit["value"] - fit["lo"]],
                                                            [fit["hi"] - fit["value"]]],
                    fmt="s", color=c, mfc="white", capsize=4)
    ax.axvline(0, color="gray", lw=0.8, ls=":")
    at = next(iter(fits.values()))["at"]
    if at < 0:
        y0 = ax.get_ylim()[0]
        ax.annotate("the originals\n(extrapolated)", (at, y0), fontsize=8, ha="left",
                    va="bottom", color="gray", xytext=(6, 3), textcoords="offset points")
        ax.annotate("the offline copy", (0, y0), fontsize=8, ha="left", va="bottom",
                    color="gray", xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("mean absolute change of a pixel from the offline copy (grey levels)")
    ax.set_ylabel("test accuracy")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.legend(fontsize=8, loc="upper right")
    return fig
