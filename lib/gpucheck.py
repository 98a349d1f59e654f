"""``python -m lib gpu-check``: a short, bounded check of a maintainer's GPU (appendix).

It measures, on the device at hand (a GPU, or the CPU when there is none, and then it
says so): chapter 3's CNN for a few hundred steps, the recipe's network (chapter 5),
and N worker processes training at once on the same device (what ``--n-workers N``
does for a sweep), with the GPU's utilisation where ``nvidia-smi`` can tell. From the
chapter-3 CNN's speed against its cached CPU runs it projects the time of the whole
``gpu``-budget book (:mod:`lib.plan`). ``--tiny`` shrinks everything to seconds (the
test suite runs it on the CPU).
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import subprocess
import threading
import time

import torch

from .data import synthetic
from .train import fit, make_config, resolve_device


def _images_per_s(c, ds, dev) -> float:
    fit(make_config(c, epochs=1, n_train=2 * c.batch_size), ds, device=dev, progress=False)
    return fit(c, ds, device=dev, progress=False).summary["images_per_s"]


def _worker(c_json: str, n: int, device: str, threads: int, q) -> None:
    import json

    from .train import config_from_dict

    if threads:
        torch.set_num_threads(threads)
    c = config_from_dict(json.loads(c_json))
    ds = synthetic(n_train=n, n_test=100)
    q.put(_images_per_s(c, ds, resolve_device(device)))


def concurrent(c, n_images: int, device: str, n_workers: int) -> list[float]:
    """Images/s of each of ``n_workers`` processes training ``c`` at once on ``device``
    (on the CPU each gets its share of the cores)."""
    import json
    import os

    from .train import config_dict

    threads = max(1, (os.cpu_count() or 1) // n_workers) if device == "cpu" else 0
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(json.dumps(config_dict(c)), n_images, device,
                                               threads, q)) for _ in range(n_workers)]
    for p in procs:
        p.start()
    out = [q.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    return out


class Utilisation:
    """The GPU's utilisation, sampled by nvidia-smi every half second while in use."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self.ok = shutil.which("nvidia-smi") is not None

    def _poll(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=5).stdout.split()
                self.samples += [float(v) for v in out[:1]]
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            time.sleep(0.5)

    def __enter__(self):
        if self.ok:
            self._t = threading.Thread(target=self._poll, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        return False

    def text(self) -> str:
        if not self.ok:
            return "utilisation: nvidia-smi not available"
        if not self.samples:
            return "utilisation: no sample"
        return f"utilisation: mean {sum(self.samples) / len(self.samples):.0f} %, max " \
               f"{max(self.samples):.0f} % ({len(self.samples)} samples)"


def run(device: str = "auto", tiny: bool = False, workers=(1, 2, 4), runs_dir=None,
        echo=print) -> dict:
    """Measure and print; returns the figures (images/s, ratios, projected hours)."""
    from . import book, recipe

    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    echo(f"device: {dev} ({name})" + ("" if dev.type == "cuda" else
                                      ": no GPU here, every figure below is the CPU's"))
    out = {"device": str(dev), "device_name": name}
    steps = 4 if tiny else 200
    cnn = make_config(book.ch03_cnn_config("cpu"), epochs=1, n_test=200, save_weights=False)
    fast = make_config(recipe.fast_config("cpu"), epochs=1, n_test=200, save_weights=False,
                       tta=0)
    if tiny:
        cnn = make_config(cnn, batch_size=32, model=dict(width=8))
        fast = make_config(fast, batch_size=32, model=dict(block_widths=(8, 16, 16)))
    n_cnn, n_fast = steps * cnn.batch_size, max(4, steps // 8) * fast.batch_size
    ds = synthetic(n_train=max(n_cnn, n_fast), n_test=200)
    with Utilisation() as u:
        out["cnn_images_per_s"] = _images_per_s(make_config(cnn, n_train=n_cnn), ds, dev)
    echo(f"chapter 3's CNN: {out['cnn_images_per_s']:,.0f} images/s; {u.text()}")
    with Utilisation() as u:
        out["recipe_images_per_s"] = _images_per_s(make_config(fast, n_train=n_fast), ds, dev)
    echo(f"the recipe's network: {out['recipe_images_per_s']:,.0f} images/s; {u.text()}")
    base = None
    for n in workers:
        with Utilisation() as u:
            per = concurrent(make_config(cnn, n_train=n_cnn), n_cnn, str(dev), n)
        total = sum(per)
        base = base or total
        out[f"workers_{n}"] = dict(per_worker=per, total=total, ratio=total / base)
        echo(f"{n} worker(s) at once: {', '.join(f'{v:,.0f}' for v in per)} images/s each, "
             f"{total:,.0f} in all ({total / base:.2f}x one worker); {u.text()}")
    if tiny:
        echo("tiny models: a dry run of the check, not a measurement; no projection")
    else:
        out["projected_gpu_book_hours"] = projected_hours(out["cnn_images_per_s"], runs_dir,
                                                          echo)
    return out


def projected_hours(cnn_images_per_s: float, runs_dir=None, echo=print) -> float:
    """The gpu-budget book's training time, from :mod:`lib.plan`'s cost model scaled by
    the chapter-3 CNN's speed here against its cached runs'."""
    import numpy as np

    from . import plan

    cached = plan.cached_cnn_speed(runs_dir)
    cost = plan.CostModel(runs_dir)
    if cached is None or not cost.rate:
        echo("projected gpu-budget book: no cached chapter-3 runs to scale from")
        return float("nan")
    cost.scale = cnn_images_per_s / cached
    items = plan.items("gpu", "a-fresh-copy", runs_dir, "cpu", cost)
    hours = sum(i.estimate_s for i in items if np.isfinite(i.estimate_s)) / 3600
    echo(f"projected gpu-budget book: about {hours:.1f} hours of training for {len(items)} "
         f"items (the cached runs' cost model, x{cost.scale:.2f} for this device; trials "
         "counted at full length, an upper bound)")
    return hours
