"""The book's figures: one function per figure kind (seaborn/matplotlib).

Every function returns the matplotlib Figure, sized for the book's text width.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

WIDTH = 8.0  # inches: the book's text column at 100 dpi


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
            ax.set_title(str(titles[i]), fontsize=8)
    fig.tight_layout()
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
