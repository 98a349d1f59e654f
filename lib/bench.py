"""``python -m lib bench``: our training pipeline against the one a student writes.

Both train the chapter-3 CNN with the same batch size, optimiser and number of
steps, side by side in one process:

* ours: the dataset as one uint8 tensor on the device, index-slice batches,
  crop+flip on tensors, channels_last, bf16 autocast where the device has it
  (:func:`lib.train.fit`);
* baseline: a torchvision-``CIFAR10``-style dataset that makes a PIL image per
  sample, ``transforms`` (RandomCrop, RandomHorizontalFlip, ToTensor, Normalize),
  a ``DataLoader`` (shuffle, ``num_workers`` 0 and 2, as in the PyTorch CIFAR-10
  tutorial), fp32, default memory format.

The speedup is against the faster of the two baselines.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import Dataset, channel_stats, subset
from .models import build_model
from .train import fit, make_config, resolve_device


class PILDataset(torch.utils.data.Dataset):
    """What torchvision's ``CIFAR10`` does per sample: numpy -> PIL -> transforms."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def baseline_throughput(ds: Dataset, model_cfg, batch_size: int, steps: int, warmup: int,
                        num_workers: int, device: torch.device, lr: float = 0.05) -> float:
    """Images/s of the textbook pipeline over ``steps`` steps after ``warmup`` steps."""
    from torchvision import transforms as T

    mean, std = channel_stats(ds.x_train)
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(mean.tolist(), std.tolist())])
    loader = torch.utils.data.DataLoader(
        PILDataset(ds.x_train, ds.y_train, tf), batch_size=batch_size, shuffle=True,
        num_workers=num_workers, drop_last=True, persistent_workers=False)
    torch.manual_seed(0)
    model = build_model(model_cfg).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    model.train()
    it = iter(loader)
    t0 = None
    for s in range(warmup + steps):
        if s == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = next(it)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    del it, loader
    return steps * batch_size / dt


def ours_throughput(ds: Dataset, model_cfg, batch_size: int, steps: int, warmup: int,
                    device: torch.device, precision: str = "auto") -> float:
    """Images/s of :func:`lib.train.fit` over ``steps`` steps (a warm-up fit first)."""
    common = dict(model=model_cfg.__dict__, batch_size=batch_size, epochs=1, lr=0.05,
                  n_test=500, save_weights=False, precision=precision)
    fit(make_config(n_train=warmup * batch_size, **common), ds, device=device, progress=False)
    res = fit(make_config(n_train=steps * batch_size, **common), ds, device=device,
              progress=False)
    return res.summary["images_per_s"]


def precision_check(ds: Dataset, model_cfg, device, epochs: int = 4, n_train: int = 10_000,
                    seeds=(0, 1)) -> dict:
    """Test accuracy with bf16 autocast and with fp32, same configs and seeds."""
    out = {}
    for prec in ("fp32", "bf16"):
        accs = [fit(make_config(model=model_cfg.__dict__, epochs=epochs, n_train=n_train,
                                n_test=2000, precision=prec, seed=s, batch_size=128,
                                save_weights=False), ds, device=device,
                    progress=False).summary["test_acc"] for s in seeds]
        out[prec] = accs
    return out


def run(ds: Dataset, model_cfg, batch_size: int = 128, steps: int = 30, warmup: int = 3,
        device: str = "auto", check_precision: bool = False, echo=print) -> dict:
    """Measure and print; the last printed line is ``speedup: <ours/baseline>x``."""
    dev = resolve_device(device)
    full, ds = ds, subset(ds, n_train=max(steps, warmup) * batch_size * 2, n_test=1000)
    echo(f"device: {dev.type}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    echo(f"model: {model_cfg}")
    echo(f"batch size {batch_size}, {steps} timed steps after {warmup} warm-up steps")
    res = {}
    for nw in (0, 2):
        res[f"baseline_w{nw}"] = baseline_throughput(ds, model_cfg, batch_size, steps, warmup,
                                                     nw, dev)
        echo(f"baseline (PIL + transforms + DataLoader, num_workers={nw}, fp32): "
             f"{res[f'baseline_w{nw}']:8.1f} images/s")
    res["ours_fp32"] = ours_throughput(ds, model_cfg, batch_size, steps, warmup, dev, "fp32")
    echo(f"ours (tensor-resident, channels_last, fp32): {res['ours_fp32']:8.1f} images/s")
    res["ours"] = ours_throughput(ds, model_cfg, batch_size, steps, warmup, dev, "auto")
    echo(f"ours (tensor-resident, channels_last, autocast): {res['ours']:8.1f} images/s")
    if check_precision:
        acc = precision_check(full, model_cfg, dev, n_train=min(10_000, len(full.y_train)))
        for k, v in acc.items():
            echo(f"accuracy check {k}: test acc per seed {', '.join(f'{a:.4f}' for a in v)}")
        res["precision_check"] = acc
    base = max(res["baseline_w0"], res["baseline_w2"])
    res["speedup_fp32"] = res["ours_fp32"] / base
    res["speedup"] = res["ours"] / base
    echo(f"speedup fp32 only: {res['speedup_fp32']:.2f}x")
    echo(f"speedup: {res['speedup']:.2f}x")
    return res


# --------------------------------------------------------------------------
# chapter 4: what logging costs
# --------------------------------------------------------------------------
#: The logging variants timed by :func:`tracking_overhead`: Tracker options (None: no
#: tracker at all).
TRACKING_VARIANTS = {
    "no logging": None,
    "TensorBoard scalars": dict(histograms=False),
    "TensorBoard scalars + histograms": dict(histograms=True),
    "TensorBoard + W&B offline": dict(histograms=True, wandb=True),
}


def tracking_overhead(ds: Dataset, c, repeats: int = 2, device="auto",
                      variants: dict | None = None, log=print):
    """Wall-clock time of whole training runs of ``c`` with each logging variant, the
    variants interleaved ``repeats`` times so that drifts in machine load hit all of
    them alike (chapter 4). Returns one row per (variant, repeat)."""
    import tempfile

    import pandas as pd

    from .track import Tracker, wandb_available

    variants = dict(variants or TRACKING_VARIANTS)
    if not wandb_available():
        variants = {k: v for k, v in variants.items() if not (v or {}).get("wandb")}
    fit(make_config(c, epochs=1), ds, device=device, progress=False)  # warm-up, not timed
    rows = []
    for rep in range(repeats):
        for name, opts in variants.items():
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                tracker = None if opts is None else Tracker(Path(tmp) / "tb", **opts,
                                                            run_name=f"bench-{rep}")
                res = fit(c, ds, device=device, tracker=tracker, progress=False)
                seconds = time.perf_counter() - t0
            rows.append(dict(variant=name, repeat=rep, seconds=seconds,
                             load_avg_1min=os.getloadavg()[0], cpus=os.cpu_count(),
                             train_time_s=res.summary["train_time_s"],
                             epochs=res.summary["epochs_run"]))
            log(f"{name:34s} repeat {rep}: {seconds:6.1f} s")
    return pd.DataFrame(rows)


def overhead_ratios(df):
    """Median time of each variant divided by the median time without logging."""
    med = df.groupby("variant", sort=False).seconds.median()
    return med / med["no logging"]


def framework_speed(ds: Dataset, c, repeats: int = 3, log=print):
    """Training throughput of ``c`` in PyTorch (:func:`lib.train.fit`) and in Keras
    (:func:`lib.keras_cnn.fit`), alternated ``repeats`` times (chapter 8). Each run is
    a fresh Python process, so that neither framework runs beside the other's runtime
    (TensorFlow's thread pools and its own oneDNN stay loaded once it has run). Each
    run trains two epochs; images/s is taken from the
    second, leaving out Keras's tracing of its train step and PyTorch's first
    allocations. One row per (framework, repeat)."""
    import json
    import subprocess
    import sys
    import tempfile

    import pandas as pd

    from .data import REPO_ROOT, write_npz
    from .train import config_dict

    c = make_config(c, epochs=2, save_weights=False)
    small = subset(ds, c.n_train, min(len(ds.y_test), 1000), seed=0)
    c = make_config(c, n_train=None, n_test=None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "data.npz"
        write_npz(small, npz)
        for rep in range(repeats):
            for name in ("PyTorch", "Keras"):
                cfg = json.dumps(config_dict(make_config(c, seed=rep)))
                code = (f"import json; from lib.bench import _speed_child; "
                        f"print(json.dumps(_speed_child({str(npz)!r}, {cfg!r}, {name!r})))")
                env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
                out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                     text=True, env=env, cwd=tmp)
                if out.returncode != 0:
                    raise RuntimeError(f"{name} benchmark run failed: {out.stderr[-800:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(dict(framework=name, repeat=rep, **row,
                                 load_avg_1min=os.getloadavg()[0], cpus=os.cpu_count()))
                log(f"{name:8s} repeat {rep}: {row['images_per_s']:7.0f} images/s")
    return pd.DataFrame(rows)


def _speed_child(npz: str, config_json: str, framework: str) -> dict:
    """One run of :func:`framework_speed`, in its own process."""
    import json

    from .data import read_npz
    from .train import config_from_dict

    ds = read_npz(Path(npz), full=False)
    c = config_from_dict(json.loads(config_json))
    if framework == "Keras":
        from .keras_cnn import fit as keras_fit

        res = keras_fit(c, ds)
    else:
        res = fit(c, ds, progress=False)
    last = res.history[-1]
    n = res.summary["train_images"] // c.batch_size * c.batch_size
    return dict(images_per_s=n / last["train_s"], epoch_s=last["train_s"],
                precision=res.summary["amp_dtype"])


# --------------------------------------------------------------------------
# chapter 5: the fast recipe's speed, against this CPU's peak
# --------------------------------------------------------------------------
def cpu_peak_gflops(cores: int | None = None) -> dict:
    """This CPU's fp32 peak as we assume it: cores x clock x FLOPs per cycle, with two
    fused multiply-add pipes of the widest vector the flags name (AVX-512: 16 floats,
    AVX2: 8), 2 FLOPs per FMA. An upper bound: some CPUs (AMD Zen 4) run 512-bit
    instructions in two halves, and clocks drop under vector load."""
    from .train import cpu_flags, cpuinfo

    flags = cpu_flags().split()
    width = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    mhz = max((float(v) for v in cpuinfo("cpu MHz")), default=0.0)
    cores = cores or torch.get_num_threads()
    per_cycle = 2 * width * 2
    return dict(cores=cores, mhz=mhz, flops_per_cycle=per_cycle, flags=" ".join(flags),
                peak_gflops=cores * mhz * 1e-3 * per_cycle)


def training_flops(model_cfg) -> float:
    """FLOPs of one training step per image: 2 FLOPs per multiply-add of the forward
    pass (convolutions and linear layers, :func:`lib.models.macs`), times 3 for the
    forward pass and the two products of the backward pass."""
    from .models import macs

    return 3 * 2 * macs(model_cfg)


def op_profile(c, ds: Dataset, device, steps: int = 2):
    """Self CPU time per operator of ``steps`` training steps of ``c`` (torch.profiler):
    which layer type is slow in a precision."""
    import pandas as pd
    from torch.profiler import ProfilerActivity, profile

    from .train import fit

    c = make_config(c, epochs=1, n_train=c.batch_size * (steps + 1), n_test=100,
                    save_weights=False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fit(c, ds, device=device, progress=False)
    rows = [dict(op=e.key, self_cpu_ms=e.self_cpu_time_total / 1e3, calls=e.count)
            for e in prof.key_averages()]
    return pd.DataFrame(rows).sort_values("self_cpu_ms", ascending=False).head(12)


def recipe_speed(ds: Dataset, configs: dict, steps: int = 4, warmup: int = 1,
                 device: str = "auto", echo=print):
    """Training images/s and achieved GFLOP/s of each named config, in fp32 and with
    bf16 autocast, measured one after the other in this process (chapter 5)."""
    import pandas as pd

    dev = resolve_device(device)
    peak = cpu_peak_gflops()
    echo(f"CPU flags: {peak['flags']}; assumed fp32 peak {peak['peak_gflops']:.0f} GFLOP/s "
         f"({peak['cores']} cores x {peak['mhz']:.0f} MHz x {peak['flops_per_cycle']} "
         "FLOPs/cycle)")
    rows = []
    for name, c in configs.items():
        for prec in ("fp32", "bf16"):
            common = dict(epochs=1, n_test=200, save_weights=False, precision=prec, tta=0)
            fit(make_config(c, n_train=warmup * c.batch_size, **common), ds, device=dev,
                progress=False)
            res = fit(make_config(c, n_train=steps * c.batch_size, **common), ds, device=dev,
                      progress=False)
            ips = res.summary["images_per_s"]
            gf = ips * training_flops(c.model) / 1e9
            rows.append(dict(config=name, precision=prec, batch_size=c.batch_size,
                             images_per_s=ips, gflops=gf, peak_fraction=gf / peak["peak_gflops"]
                             if peak["peak_gflops"] else float("nan"),
                             minutes_per_epoch=50_000 / ips / 60))
            echo(f"{name:28s} {prec}: {ips:7.0f} images/s, {gf:6.1f} GFLOP/s "
                 f"({rows[-1]['peak_fraction']:.1%} of the assumed peak)")
    df = pd.DataFrame(rows)
    for name in configs:
        r = df[df.config == name].set_index("precision").images_per_s
        echo(f"{name}: bf16 / fp32 = {r['bf16'] / r['fp32']:.2f}x")
    return df
