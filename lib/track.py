"""Experiment tracking behind one small interface (chapter 4).

Every run writes TensorBoard event files into its own folder: per-epoch
scalars, per-layer weight and gradient histograms, and the hyperparameters
with the final metrics (the HParams dashboard). Chapters redraw curves from
these files with matplotlib, since an embedded TensorBoard does not survive
into static HTML.
"""

from __future__ import annotations

from pathlib import Path

import torch


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


class Tracker:
    """TensorBoard logging for one run (chapter 4).

    ``histograms`` logs weight and gradient histograms every ``hist_every``
    epochs (and at the last one); they cost a little time per epoch, measured in
    chapter 4.
    """

    def __init__(self, log_dir: str | Path, histograms: bool = True, hist_every: int = 1,
                 bins: int = 64):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))
        self.histograms = histograms
        self.hist_every = max(1, hist_every)
        self.bins = bins  # 64 fixed bins: ~1 KB per histogram (TensorFlow's default ~10x more)

    def epoch(self, epoch: int, row: dict, model: torch.nn.Module) -> None:
        w = self.writer
        for split in ("train", "val", "test"):
            if f"{split}_loss" not in row:
                continue
            w.add_scalar(f"loss/{split}", row[f"{split}_loss"], epoch)
            w.add_scalar(f"accuracy/{split}", row[f"{split}_acc"], epoch)
        w.add_scalar("lr", row["lr"], epoch)
        if self.histograms and epoch % self.hist_every == 0:
            self.log_histograms(epoch, model)

    @torch.no_grad()
    def log_histograms(self, epoch: int, model: torch.nn.Module) -> None:
        for name, p in model.named_parameters():
            if p.ndim <= 1:
                continue
            self._hist(f"weights/{name}", p, epoch)
            if p.grad is not None:
                self._hist(f"grads/{name}", p.grad, epoch)

    def _hist(self, tag: str, t: torch.Tensor, epoch: int) -> None:
        v = t.detach().float().cpu().flatten()
        v = v[torch.isfinite(v)]  # a diverged run still logs what is left
        if v.numel():
            self.writer.add_histogram(tag, v, epoch, bins=self.bins)

    def finish(self, config: dict, summary: dict) -> None:
        metrics = {f"final/{k}": float(summary[k]) for k in
                   ("test_acc", "test_loss", "val_acc", "val_loss", "train_acc",
                    "train_loss") if k in summary}
        self.writer.add_hparams(flat_hparams(config), metrics, run_name=".")
        self.close()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def read_scalars(log_dir: str | Path):
    """All scalars of a run's event files as a long pandas DataFrame (tag, step, value)."""
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    rows = [dict(tag=t, step=e.step, value=e.value)
            for t in acc.Tags().get("scalars", []) for e in acc.Scalars(t)]
    return pd.DataFrame(rows, columns=["tag", "step", "value"])
