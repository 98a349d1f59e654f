"""Experiment tracking behind one small interface (chapter 4).

Every run writes TensorBoard event files into its own folder: per-epoch
scalars, per-layer weight and gradient histograms, and the hyperparameters
with the final metrics (the HParams dashboard); on request also the model
graph and a grid of sample images titled with their predictions. With
``wandb=True`` the same run is also logged to Weights & Biases in offline mode
(no account, no network): its files go to ``<run>/wandb/`` and ``wandb sync``
uploads them later. W&B is an optional extra; without it installed, asking
for it raises a clear error and everything else works.

Chapters redraw curves with matplotlib from these files, since an embedded
TensorBoard does not survive into static HTML.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch


class TrackingError(RuntimeError):
    """A tracking backend that was asked for is not available."""


def flat_hparams(config: dict, prefix: str = "") -> dict:
    """Flatten a nested config into TensorBoard-friendly scalars/strings."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, f"{key}."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def wandb_available() -> bool:
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


class Tracker:
    """TensorBoard (and optionally W&B offline) logging for one run (chapter 4).

    ``histograms`` logs weight and gradient histograms every ``hist_every``
    epochs with ``bins`` fixed bins (their cost is measured in chapter 4);
    ``graph`` logs the model graph; ``predictions`` > 0 logs that many probe
    images titled with prediction and label each epoch; ``wandb`` mirrors all
    of it to a W&B offline run in ``log_dir``'s parent.
    """

    def __init__(self, log_dir: str | Path, histograms: bool = True, hist_every: int = 1,
                 bins: int = 64, graph: bool = False, predictions: int = 0,
                 wandb: bool = False, run_name: str | None = None):
        from . import import_tensorflow_quietly

        import_tensorflow_quietly()  # TensorBoard imports it where installed; keep it quiet
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))
        self.histograms = histograms
        self.hist_every = max(1, hist_every)
        self.bins = bins  # 64 fixed bins: ~1 KB per histogram (TensorFlow's default ~10x more)
        self.graph = graph
        self.predictions = predictions
        self.probe = None
        self.wb = None
        if wandb:
            self.wb = _wandb_run(self.log_dir.parent, run_name or self.log_dir.parent.name)

    # -- called by lib.train.fit ------------------------------------------
    def start(self, model: torch.nn.Module, x: torch.Tensor, images: np.ndarray,
              labels: np.ndarray, classes) -> None:
        """Before training: the probe batch (normalised ``x``, the uint8 NHWC ``images``
        it came from, their ``labels``) and, if asked, the model graph."""
        n = self.predictions
        self.probe = (x[:n], images[:n], labels[:n], list(classes)) if n else None
        if self.graph:
            was = model.training
            model.eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings
                self.writer.add_graph(model, x[:2].float().contiguous())
            model.train(was)

    def epoch(self, epoch: int, row: dict, model: torch.nn.Module) -> None:
        w = self.writer
        scalars = {}
        for split in ("train", "val", "test"):
            if f"{split}_loss" not in row:
                continue
            scalars[f"loss/{split}"] = row[f"{split}_loss"]
            scalars[f"accuracy/{split}"] = row[f"{split}_acc"]
        scalars["lr"] = row["lr"]
        for tag, v in scalars.items():
            w.add_scalar(tag, v, epoch)
        hist = self.histograms and epoch % self.hist_every == 0
        if hist:
            self.log_histograms(epoch, model)
        fig = self._prediction_figure(model) if self.probe is not None else None
        if fig is not None:
            w.add_figure("predictions", fig, epoch, close=False)
        if self.wb is not None:
            self._wandb_epoch(epoch, scalars, model if hist else None, fig)
        if fig is not None:
            import matplotlib.pyplot as plt

            plt.close(fig)

    @torch.no_grad()
    def log_histograms(self, epoch: int, model: torch.nn.Module) -> None:
        for name, p in model.named_parameters():
            if p.ndim <= 1:
                continue
            self._hist(f"weights/{name}", p, epoch)
            if p.grad is not None:
                self._hist(f"grads/{name}", p.grad, epoch)

    def _hist(self, tag: str, t: torch.Tensor, epoch: int) -> None:
        v = _finite(t)
        if v.size:
            self.writer.add_histogram(tag, v, epoch, bins=self.bins)

    @torch.no_grad()
    def _prediction_figure(self, model):
        import matplotlib.pyplot as plt

        x, images, labels, classes = self.probe
        was = model.training
        model.eval()
        pred = model(x).float().argmax(1).cpu().numpy()
        model.train(was)
        n = len(images)
        cols = min(8, n)
        rows = int(np.ceil(n / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.45), squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, img, p, y in zip(axes.flat, images, pred, labels):
            ax.imshow(img)
            ax.set_title(f"{classes[p]}\n({classes[y]})", fontsize=7,
                         color="green" if p == y else "red")
        fig.tight_layout()
        return fig

    def finish(self, config: dict, summary: dict) -> None:
        metrics = {f"final/{k}": float(summary[k]) for k in
                   ("test_acc", "test_loss", "val_acc", "val_loss", "train_acc",
                    "train_loss") if k in summary}
        self.writer.add_hparams(flat_hparams(config), metrics, run_name=".")
        if self.wb is not None:
            self.wb.config.update(flat_hparams(config), allow_val_change=True)
            self.wb.summary.update({k: v for k, v in summary.items()
                                    if isinstance(v, (int, float, str, bool))})
        self.close()

    def flush(self) -> None:
        """Write what is queued to the event files (before a checkpoint copies them)."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
        if self.wb is not None:
            self.wb.finish()
            self.wb = None
            drop_outside_links(self.log_dir.parent / "wandb")

    # -- W&B -------------------------------------------------------------
    def _wandb_epoch(self, epoch, scalars, model, fig) -> None:
        import wandb

        data = dict(scalars)
        if model is not None:
            for name, p in model.named_parameters():
                if p.ndim > 1:
                    v = _finite(p)
                    if v.size:
                        data[f"weights/{name}"] = wandb.Histogram(
                            np_histogram=np.histogram(v, bins=self.bins))
        if fig is not None:
            data["predictions"] = wandb.Image(fig)
        self.wb.log(data, step=epoch)


def drop_outside_links(folder: Path) -> list[Path]:
    """Remove symbolic links under ``folder`` that point outside it (W&B links its core
    log from the user's cache, which no other machine has); return what was removed."""
    root = Path(folder).resolve()
    gone = []
    for f in sorted(Path(folder).rglob("*")) if Path(folder).is_dir() else []:
        if f.is_symlink():
            target = (f.parent / Path(f.readlink())).resolve()
            if root not in target.parents and target != root:
                f.unlink()
                gone.append(f)
    return gone

def _finite(t: torch.Tensor) -> np.ndarray:
    v = t.detach().float().cpu().flatten()
    return v[torch.isfinite(v)].numpy()  # a diverged run still logs what is left


def _wandb_run(run_dir: Path, name: str):
    """A W&B run in offline mode writing under ``run_dir/wandb``."""
    try:
        import wandb
    except ImportError:
        raise TrackingError("Weights & Biases is not installed: `pip install wandb` (an "
                            "optional extra of this book), or track with TensorBoard only"
                            ) from None
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(project="cifar-cnn-book", dir=str(run_dir), mode="offline",
                      name=name, reinit="finish_previous",
                      settings=wandb.Settings(console="off", save_code=False,
                                              x_disable_stats=True))


def read_scalars(log_dir: str | Path, warn=None):
    """All scalars of a run's event files as a long pandas DataFrame (run, tag, step,
    value); ``run`` is the event file's folder below ``log_dir`` ("." for files in it;
    Keras's callback writes "train" and "validation", chapter 8).

    A corrupt or truncated event file is skipped with a warning naming it (chapter 4).
    """
    import pandas as pd
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from . import import_tensorflow_quietly

    import_tensorflow_quietly()

    warn = warn or (lambda msg: warnings.warn(msg, stacklevel=2))
    rows = []
    for f in sorted(Path(log_dir).glob("**/events.out.tfevents.*")):
        bad = _record_problem(f)
        if bad:
            warn(f"skipped unreadable TensorBoard event file {f} ({bad})")
            continue
        got, sub = [], f.parent.relative_to(log_dir).as_posix()
        try:
            for ev in EventFileLoader(str(f)).Load():
                for v in ev.summary.value:
                    if v.HasField("simple_value"):
                        got.append(dict(run=sub, tag=v.tag, step=ev.step,
                                        value=v.simple_value))
                    elif v.HasField("tensor") and v.metadata.plugin_data.plugin_name == \
                            "scalars":
                        from tensorboard.util import tensor_util

                        got.append(dict(run=sub, tag=v.tag, step=ev.step,
                                        value=float(tensor_util.make_ndarray(v.tensor))))
        except Exception as e:  # noqa: BLE001 - corrupt files raise many kinds
            warn(f"skipped unreadable TensorBoard event file {f} ({type(e).__name__}: {e})")
            continue
        rows += got
    return pd.DataFrame(rows, columns=["run", "tag", "step", "value"])


def _record_problem(path: Path) -> str | None:
    """Why an event file is not a whole sequence of TFRecords (each: 8-byte length,
    4-byte CRC, data, 4-byte CRC), or None. Catches truncated and garbage files,
    which TensorBoard's loader reads silently as fewer (or no) events."""
    import struct

    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        if len(data) - pos < 12:
            return f"truncated record header at byte {pos}"
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        end = pos + 12 + length + 4
        if end > len(data):
            return f"record at byte {pos} runs past the end of the file (truncated or corrupt)"
        pos = end
    return None


def event_summary(log_dir: str | Path):
    """What a run's TensorBoard event files hold: tags and events per kind (chapter 4)."""
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from . import import_tensorflow_quietly

    import_tensorflow_quietly()

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0,
                                                        "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    rows = {}
    for kind, get in (("scalars", acc.Scalars), ("histograms", acc.Histograms),
                      ("images", acc.Images), ("tensors", acc.Tensors)):
        names = tags.get(kind, [])
        rows[kind] = dict(tags=len(names), events=sum(len(get(t)) for t in names))
    rows["graph"] = dict(tags=int(bool(tags.get("graph"))), events=int(bool(tags.get("graph"))))
    try:
        hp = acc.PluginTagToContent("hparams")
    except KeyError:
        hp = {}
    rows["hparams"] = dict(tags=len(hp), events=len(hp))
    return pd.DataFrame(rows).T.rename_axis("kind")


def wandb_run_dir(run_path: str | Path) -> Path | None:
    """The W&B offline run folder inside a run's folder, or None."""
    found = sorted(Path(run_path).glob("wandb/offline-run-*"))
    return found[-1] if found else None


def wandb_files(wb_dir: Path):
    """Files of a W&B offline run with their sizes (chapter 4)."""
    import pandas as pd

    rows = [dict(file=str(f.relative_to(wb_dir)), bytes=f.stat().st_size)
            for f in sorted(wb_dir.rglob("*")) if f.is_file()]
    return pd.DataFrame(rows, columns=["file", "bytes"])


def wandb_shares(files) -> dict:
    """Shares of the bytes of :func:`wandb_files`: prediction images (``images``), the
    transaction log ``run-*.wandb`` (``log``) and everything else (``other``)."""
    total = max(int(files.bytes.sum()), 1)
    images = files.file.str.endswith((".png", ".jpg", ".jpeg"))
    log = files.file.str.endswith(".wandb")
    return dict(images=files.bytes[images].sum() / total, log=files.bytes[log].sum() / total,
                other=files.bytes[~images & ~log].sum() / total)


def wandb_summary(wb_dir: Path) -> dict | None:
    """The run's summary as W&B itself reads it from the offline file
    (``wandb leet inspect --summary --json``); None if that command fails."""
    import json
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("wandb")
    try:
        out = subprocess.run([str(exe if exe.exists() else "wandb"), "leet", "inspect",
                              "--summary", "--json", str(wb_dir)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        data = json.loads(out)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return None
    return data.get("summary", data)


def integration_lines() -> dict:
    """Lines of this module that call each tracker's API (chapter 4's comparison)."""
    import inspect
    import sys

    src = inspect.getsource(sys.modules[__name__]).splitlines()
    code = [ln.strip() for ln in src if ln.strip() and not ln.strip().startswith("#")]
    tb = sum(("self.writer" in ln or "SummaryWriter" in ln or ln.startswith("w.add_"))
             for ln in code)
    wb = sum(("wandb." in ln or "self.wb." in ln) and "import" not in ln for ln in code)
    return {"tensorboard": tb, "wandb": wb}
