"""A finished study in the trackers' own views (chapter 6): every trained trial replayed
from its cached run into TensorBoard (per-epoch scalars, and its sampled hyperparameters
with its final metrics for the HParams dashboard) and, where W&B is installed, into one
W&B offline workspace (one offline run per trial, browsed with ``wandb leet``).

Nothing is trained: each trial's ``metrics.csv`` and ``summary.json`` are read from
``runs/search/<study>/`` and written through :class:`lib.track.Tracker`, the same code
that logs a run while it trains (chapter 4).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import runs, search, track


def trial_hparams(trial: dict, space) -> dict:
    """The hyperparameters a trial sampled (a row of :func:`lib.search.trained_frame`;
    short names, ``model.`` dropped), plus how it ended: the columns of a study's
    parallel-coordinates view."""
    hp = {}
    for name in space:
        v = trial.get(name)
        if v is None or v != v:  # not sampled (a conditional branch) or missing
            continue
        hp[name.removeprefix("model.")] = v.item() if hasattr(v, "item") else v
    hp["state"] = str(trial["state"])
    return hp


def log_study(spec: search.StudySpec, out: Path, runs_dir=None, wandb: bool = False,
              log=print) -> Path:
    """Write every trained trial of ``spec``'s study under ``out/<study>/``: one
    TensorBoard run per trial (``trial-NNN``) and, with ``wandb``, one W&B offline run
    per trial in ``out/<study>/wandb/``. Returns that folder; an earlier export is
    replaced."""
    study = search.load_study(spec.name, runs_dir)
    trained = search.merge_cases(search.trained_frame(study), spec.space)  # lr, not lr|sgd
    if trained.empty:
        raise search.SearchError(f"study {spec.name} has no trained trial to log; run "
                                 f"`python -m lib sweep --study {spec.name}` first")
    folder = Path(out) / spec.name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    root = runs.runs_root(runs_dir) / "search" / spec.name
    for trial in trained.to_dict("records"):
        run = runs.read_run(root / trial["key"])
        t = track.Tracker(folder / f"trial-{trial['number']:03d}", histograms=False,
                          wandb=wandb, run_name=f"trial {trial['number']}")
        for r in run.metrics.to_dict("records"):
            t.epoch(int(r["epoch"]), r, model=None)
        t.finish(trial_hparams(trial, spec.space), run.summary)
    log(f"study {spec.name}: {len(trained)} trials logged to {folder}")
    return folder
