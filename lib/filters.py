"""Convolution by hand, classic kernels and the arithmetic of sizes (chapter 1).

:func:`conv2d` is written out with plain loops over the output positions on
purpose: it is the lesson. The chapter checks it against
``torch.nn.functional.conv2d``.
"""

from __future__ import annotations

import numpy as np


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
           stride: int = 1, padding: int = 0) -> np.ndarray:
    """2-D convolution as deep-learning libraries define it (chapter 1).

    x: (C_in, H, W) image; w: (C_out, C_in, kh, kw) kernels.
    Returns (C_out, H_out, W_out). Like PyTorch, this is a
    cross-correlation: the kernel is not flipped.
    """
    if x.ndim != 3 or w.ndim != 4 or w.shape[1] != x.shape[0]:
        raise ValueError(f"shapes x{x.shape}, w{w.shape}: "
                         "need (C,H,W) and (O,C,kh,kw)")
    c_out, _, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    h_out = (x.shape[1] - kh) // stride + 1
    w_out = (x.shape[2] - kw) // stride + 1
    out = np.zeros((c_out, h_out, w_out), np.result_type(x, w, np.float32))
    for o in range(c_out):
        for i in range(h_out):
            for j in range(w_out):
                r, c = i * stride, j * stride
                patch = x[:, r:r + kh, c:c + kw]   # all channels
                out[o, i, j] = np.sum(patch * w[o])
        if b is not None:
            out[o] += b[o]
    return out


def output_size(n: int, k: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """floor((n + 2p - d(k - 1) - 1) / s) + 1, the formula in PyTorch's Conv2d docs."""
    return (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _gauss(k: int = 5, sigma: float = 1.0) -> np.ndarray:
    ax = np.arange(k) - k // 2
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


#: Classic hand-designed kernels, each a 2-D array applied to a grey image.
KERNELS = {
    "identity": np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32),
    "box blur": np.full((3, 3), 1 / 9, dtype=np.float32),
    "gaussian blur": _gauss().astype(np.float32),
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float32),
    "sobel x": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32),
    "sobel y": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float32),
    "laplacian": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float32),
}


def grey(images: np.ndarray) -> np.ndarray:
    """NHWC uint8 -> NHW float in [0, 1] with the ITU-R 601 luma weights."""
    return (images.astype(np.float32) / 255.0) @ np.array([0.299, 0.587, 0.114], np.float32)


def apply_kernel(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """A grey (H, W) image filtered by one 2-D kernel, same size (zero padding)."""
    k = kernel.shape[0]
    return conv2d(img[None], kernel[None, None], padding=k // 2)[0]


def filter_structure(w: np.ndarray) -> object:
    """Per-filter structure statistics of first-layer kernels (chapter 1).

    ``w``: (O, 3, k, k). ``neighbour_corr``: correlation between horizontally
    and vertically adjacent weights (0 for independent noise, near 1 for smooth
    patterns); ``channel_corr``: mean correlation between the three colour
    channels of a filter (near 1: a brightness pattern; negative: a colour
    contrast); ``norm``: the filter's L2 norm. Returns a DataFrame, one row per filter.
    """
    import pandas as pd

    def corr(a, b):
        a = a - a.mean(axis=1, keepdims=True)
        b = b - b.mean(axis=1, keepdims=True)
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-24)

    n = len(w)
    horiz = corr(w[..., :-1].reshape(n, -1), w[..., 1:].reshape(n, -1))
    vert = corr(w[..., :-1, :].reshape(n, -1), w[..., 1:, :].reshape(n, -1))
    flat = w.reshape(n, 3, -1)
    chan = np.mean([corr(flat[:, i], flat[:, j]) for i, j in ((0, 1), (0, 2), (1, 2))], axis=0)
    return pd.DataFrame(dict(neighbour_corr=(horiz + vert) / 2, channel_corr=chan,
                             norm=np.linalg.norm(w.reshape(n, -1), axis=1)))


def written_out(window: np.ndarray, kernel: np.ndarray) -> str:
    """The sum of one output cell written out, e.g. "(-1)(0) + (0)(1) + ... = 8"
    (chapter 1's worked example)."""
    terms = [f"({w:g})({x:g})" for w, x in zip(kernel.ravel(), window.ravel())]
    return " + ".join(terms) + f" = {float((window * kernel).sum()):g}"


def time_against_torch(x: np.ndarray, w: np.ndarray, repeats: int = 5) -> dict:
    """Seconds of :func:`conv2d` and of ``torch.nn.functional.conv2d`` on the same input
    (best of ``repeats``, after one untimed call each: PyTorch's first call sets up its
    kernels and threads, which would otherwise be timed as the convolution), and their
    ratio (chapter 1)."""
    import time

    import torch
    import torch.nn.functional as F

    def best(fn):
        fn()  # warm-up, not timed
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return min(out)

    xt, wt = torch.from_numpy(x)[None], torch.from_numpy(w)
    loops = best(lambda: conv2d(x, w, padding=w.shape[-1] // 2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core each, like the loops (and no waiting on a busy one)
    try:
        with torch.no_grad():
            lib = best(lambda: F.conv2d(xt, wt, padding=w.shape[-1] // 2))
    finally:
        torch.set_num_threads(threads)
    return {"loops_s": loops, "torch_s": lib, "ratio": loops / lib}
