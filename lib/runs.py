"""The runs cache: every training run the book shows lives in ``runs/<group>/<key>/``.

Introduced in chapter 1. A run's key hashes everything that determines it: the
full config, the data fingerprint and :data:`CACHE_VERSION`. A present folder is
a cache hit; notebooks never retrain what is cached. Runs are written into
``runs/.tmp/`` and renamed into place when complete, so a run killed at any
moment leaves no half folder behind. A run that can be resumed (one with no callbacks
and no W&B mirror) also saves its training state after each epoch in
``runs/.tmp/resume/`` (:class:`Resume`); the same call after a kill continues it.

A folder holds ``config.json``, ``summary.json``, ``metrics.csv`` (one row per
epoch), ``weights.csv`` (per-layer weight statistics per epoch),
``test_logits.npy`` (float16), ``model.pt`` (state dict, if the config keeps
weights) and ``tb/`` (TensorBoard event files).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .data import REPO_ROOT, Dataset
from .train import Config, config_dict, config_from_dict, fit, key_dict

# Bump when training semantics change: every key changes and old runs are ignored.
CACHE_VERSION = 1
RUNS_ENV = "LIB_RUNS_DIR"
TMP = ".tmp"


#: Every run folder and cached analysis file read in this process, relative to its
#: runs root, and every run folder looked for and not found (a chapter that shows only
#: what is cached must become stale when that run arrives); a chapter's execution
#: report records it so that ``python -m lib book`` can tell when its inputs changed.
READ: list[str] = []


def _note_read(path: Path, root: Path) -> None:
    rel = Path(path).relative_to(root).as_posix()
    if rel not in READ:
        READ.append(rel)


class CacheError(RuntimeError):
    """A cached run is inconsistent with its key, or missing where training is not allowed."""


def runs_root(runs_dir: str | os.PathLike | None = None) -> Path:
    """``runs_dir``, else $LIB_RUNS_DIR, else ``runs/`` at the repository root."""
    return Path(runs_dir or os.environ.get(RUNS_ENV) or REPO_ROOT / "runs")


#: Frameworks a run can be trained with; the key of a non-default one includes its name.
FRAMEWORKS = ("torch", "keras")


def run_key(c: Config, data_fingerprint: str, framework: str = "torch") -> str:
    """12 hex digits of sha256(config, data fingerprint, cache version) (chapter 1);
    a Keras run (chapter 8) also hashes the framework's name."""
    if framework not in FRAMEWORKS:
        raise CacheError(f"framework {framework!r}: use one of {FRAMEWORKS}")
    d = key_dict(c)
    fields = dict(config=d, data=data_fingerprint, version=CACHE_VERSION)
    if framework != "torch":
        fields["framework"] = framework
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class Run:
    """A finished run read back from its folder (chapter 1)."""

    path: Path
    key: str
    config: Config
    summary: dict

    @property
    def metrics(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "metrics.csv")

    @property
    def weights(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "weights.csv")

    @property
    def activations(self) -> pd.DataFrame:
        """Per-epoch dead/zero fractions of each activation layer (runs since chapter 6)."""
        f = self.path / "activations.csv"
        if not f.is_file():
            raise CacheError(f"{self.path}: no activations.csv (a run older than chapter 6)")
        return pd.read_csv(f)

    def test_logits(self) -> np.ndarray:
        """Logits on the evaluation split (the validation split for holdout runs)."""
        name = "val_logits.npy" if self.config.holdout else "test_logits.npy"
        return np.load(self.path / name).astype(np.float32)

    def state_dict(self) -> dict:
        import torch

        f = self.path / "model.pt"
        if not f.is_file():
            raise CacheError(f"{self.path}: no model.pt (the config has save_weights=False)")
        return torch.load(f, map_location="cpu", weights_only=True)

    def model(self):
        """The trained model on the CPU, in eval mode."""
        from .models import build_model

        m = build_model(self.config.model)
        m.load_state_dict(self.state_dict())
        return m.eval()

    @property
    def tb_dir(self) -> Path:
        return self.path / "tb"


def _git_commit() -> str:
    """The checkout's commit, with "-dirty" when the working tree has uncommitted changes
    (the code that ran is then not exactly that commit's)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_run(path: Path) -> Run:
    path = Path(path)
    try:
        cfg = json.loads((path / "config.json").read_text())
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CacheError(f"{path}: unreadable run folder ({e}); delete it to retrain") from e
    return Run(path=path, key=path.name, config=config_from_dict(cfg), summary=summary)


def find(c: Config, ds: Dataset | str, group: str, runs_dir=None,
         framework: str = "torch") -> Run | None:
    """The cached run of ``c`` on ``ds`` (a Dataset or its fingerprint), or None.

    A folder whose stored config, data or version does not match its key is
    reported with CacheError, never silently used.
    """
    fp = ds if isinstance(ds, str) else ds.fingerprint
    key = run_key(c, fp, framework)
    path = runs_root(runs_dir) / group / key
    if not path.is_dir():
        _note_read(path, runs_root(runs_dir))  # its arrival makes the chapter stale
        return None
    run = read_run(path)
    stored = (run_key(run.config, run.summary.get("data_fingerprint", ""),
                      run.summary.get("framework", "torch")),
              run.summary.get("cache_version"))
    if stored != (key, CACHE_VERSION):
        raise CacheError(
            f"{path}: its config/data/version no longer match its key {key} "
            f"(stored version {stored[1]}, current {CACHE_VERSION}). Delete the "
            "folder to retrain it, or restore the code that made it."
        )
    _note_read(path, runs_root(runs_dir))
    return run


def get(c: Config, ds: Dataset, group: str, runs_dir=None, *, device: str = "auto",
        train: bool = True, progress: bool | None = None, histograms: bool = True,
        callbacks=(), track: dict | None = None, framework: str = "torch") -> Run:
    """Load-or-train (chapter 1): the cached run of ``c``, trained first on a miss.

    With ``train=False`` a miss raises CacheError naming the command that fills it.
    """
    found = find(c, ds, group, runs_dir, framework)
    if found is not None:
        return found
    if not train:
        raise CacheError(
            f"run {run_key(c, ds.fingerprint, framework)} of group {group!r} is not in "
            f"{runs_root(runs_dir)} and training is off; execute the chapter with "
            "`python -m lib book` to fill the cache."
        )
    return train_into_cache(c, ds, group, runs_dir, device=device, progress=progress,
                            histograms=histograms, callbacks=callbacks, track=track,
                            framework=framework)


def train_into_cache(c: Config, ds: Dataset, group: str, runs_dir=None, *, device="auto",
                     progress=None, histograms=True, callbacks=(), track=None,
                     framework: str = "torch") -> Run:
    """Train ``c`` and write its folder atomically; return it as a :class:`Run`.

    ``track`` holds extra :class:`lib.track.Tracker` options (chapter 4: the model
    graph, prediction images, a W&B offline run in the folder's ``wandb/``).
    ``framework="keras"`` trains with :func:`lib.keras_cnn.fit` instead (chapter 8;
    Keras writes its own TensorBoard logs, ``device`` and ``track`` do not apply)."""
    import torch

    from .track import Tracker

    root = runs_root(runs_dir)
    key = run_key(c, ds.fingerprint, framework)
    final = root / group / key
    clean_stale_tmp(root)
    tmp = root / TMP / tmp_name(group, key)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    resume = None
    if framework == "torch" and not callbacks and not (track or {}).get("wandb"):
        resume = Resume(root / TMP / "resume" / f"{group.replace('/', '__')}-{key}.pt",
                        tmp / "tb")
        resume.restore_logs()
    try:
        if framework == "keras":
            from .keras_cnn import fit as keras_fit

            res = keras_fit(c, ds, log_dir=tmp / "tb", progress=bool(progress))
        else:
            tracker = Tracker(tmp / "tb", histograms=histograms, run_name=key,
                              **(track or {}))
            res = fit(c, ds, device=device, tracker=tracker, callbacks=callbacks,
                      progress=progress, checkpoint=resume)
        summary = dict(res.summary, key=key, group=group, cache_version=CACHE_VERSION,
                       lib_version=__version__, git_commit=_git_commit(),
                       created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        (tmp / "config.json").write_text(json.dumps(config_dict(c), indent=1))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        pd.DataFrame(res.history).to_csv(tmp / "metrics.csv", index=False)
        pd.DataFrame(res.weights).to_csv(tmp / "weights.csv", index=False)
        if res.activations:
            pd.DataFrame(res.activations).to_csv(tmp / "activations.csv", index=False)
        logits = "val_logits.npy" if c.holdout else "test_logits.npy"
        np.save(tmp / logits, np.clip(res.test_logits, -65504, 65504).astype(np.float16))
        if res.tta_logits is not None:  # test-time augmentation (chapter 5)
            np.save(tmp / logits.replace("_logits", "_logits_tta"),
                    np.clip(res.tta_logits, -65504, 65504).astype(np.float16))
        for name, arr in res.final_logits.items():  # final_test: the test set, once
            np.save(tmp / f"{name.replace('test', 'test_logits')}.npy",
                    np.clip(arr, -65504, 65504).astype(np.float16))
        if c.save_weights and framework == "keras":
            res.model.save_weights(tmp / "model.weights.h5")
        elif c.save_weights:
            state = {k: v.detach().cpu().contiguous() for k, v in res.model.state_dict().items()}
            torch.save(state, tmp / "model.pt")
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a concurrent twin: a real error
                raise
        if resume is not None:
            resume.path.unlink(missing_ok=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return find(c, ds, group, runs_dir, framework)


class Resume:
    """The training state of an unfinished run (:func:`lib.train.fit`'s ``checkpoint``),
    one file per run, replaced atomically after every epoch: the model, optimiser,
    schedule, moving average, random generators, per-epoch records, and the bytes of the
    run's TensorBoard files up to that epoch (put back into the new temporary folder
    before training goes on, so the run's logs hold every epoch once)."""

    def __init__(self, path: Path, tb_dir: Path):
        self.path, self.tb_dir = Path(path), Path(tb_dir)
        self._saved = None  # the state found at the start, read once

    def load(self) -> dict | None:
        import torch

        if self._saved is None and self.path.is_file():
            self._saved = torch.load(self.path, map_location="cpu", weights_only=False)
        return self._saved

    def restore_logs(self) -> None:
        saved = self.load()
        if saved is None:
            return
        self.tb_dir.mkdir(parents=True, exist_ok=True)
        for name, data in saved.get("logs", {}).items():
            (self.tb_dir / name).write_bytes(data)

    def save(self, state: dict) -> None:
        import torch

        logs = {}
        if self.tb_dir.is_dir():
            for f in sorted(self.tb_dir.iterdir()):
                if f.is_file():
                    logs[f.name] = f.read_bytes()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save(dict(state, logs=logs), tmp)
        os.replace(tmp, self.path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host() -> str:
    import socket

    return socket.gethostname().replace("@", "_") or "unknown-host"


def tmp_name(group: str, key: str) -> str:
    """``<group>-<key>@<host>@<pid>``: the writer of a temporary run folder, so that a
    runs folder shared by several machines is cleaned by each for its own dead runs."""
    return f"{group.replace('/', '__')}-{key}@{_host()}@{os.getpid()}"


def clean_stale_tmp(root: Path) -> list[Path]:
    """Remove temporary run folders written on this host by a process that is gone (a
    killed run). Folders of other hosts, or of unknown writers, are never touched."""
    removed = []
    tmp_root = Path(root) / TMP
    if not tmp_root.is_dir():
        return removed
    for d in tmp_root.iterdir():
        parts = d.name.split("@")
        if len(parts) != 3 or parts[1] != _host() or not parts[2].isdigit():
            continue
        if not _pid_alive(int(parts[2])):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def list_runs(group: str, runs_dir=None) -> list[Run]:
    """Every finished run of a group (temporary folders are never listed)."""
    g = runs_root(runs_dir) / group
    if not g.is_dir():
        return []
    return [read_run(p) for p in sorted(g.iterdir()) if (p / "summary.json").is_file()]


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_results(group: str, runs_dir=None) -> pd.DataFrame:
    """One row per run of ``group``: flattened config and summary (chapter 3)."""
    rows = [{**flat(config_dict(r.config)), **r.summary, "key": r.key}
            for r in list_runs(group, runs_dir)]
    return pd.DataFrame(rows)


def cached(group: str, name: str, ds: Dataset, fn, runs_dir=None, params: dict | None = None):
    """Compute-once cache for an analysis result (chapter 2): ``fn()``.

    The result (a DataFrame or an ndarray) is stored as
    ``runs/<group>/<name>-<key>.csv`` or ``.npy``, the key hashing the name,
    ``params`` (everything ``fn`` depends on besides the data), the data
    fingerprint and CACHE_VERSION; written atomically.
    """
    blob = json.dumps(dict(name=name, params=params or {}, data=ds.fingerprint,
                           version=CACHE_VERSION), sort_keys=True, default=str)
    key = hashlib.sha256(blob.encode()).hexdigest()[:12]
    base = runs_root(runs_dir) / group / f"{name}-{key}"
    for suffix in (".csv", ".npy"):
        if base.with_suffix(suffix).is_file():
            _note_read(base.with_suffix(suffix), runs_root(runs_dir))
            return load_cached(base.with_suffix(suffix))
    out = fn()
    suffix = ".csv" if isinstance(out, pd.DataFrame) else ".npy"
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = base.parent / f".{base.name}.{os.getpid()}.tmp{suffix}"
    try:
        if suffix == ".csv":
            out.to_csv(tmp, index=False)
        else:
            np.save(tmp, np.asarray(out))
        os.replace(tmp, base.with_suffix(suffix))
    finally:
        if tmp.exists():
            tmp.unlink()
    _note_read(base.with_suffix(suffix), runs_root(runs_dir))
    return load_cached(base.with_suffix(suffix))


def load_cached(path: Path):
    return pd.read_csv(path) if path.suffix == ".csv" else np.load(path)
