"""``python -m lib plan``: what executing the book would read and what it would train.

Before anything trains, each chapter's runs are listed with whether the cache has
them for the data at hand (the data fingerprint is part of every key). A missing
run's training time is estimated from the runs already in ``runs/``:

1. the same config cached for *another* copy of the data (e.g. the committed runs,
   made on the offline JPEG copy, when you rebuild on the pristine data): its
   measured ``train_time_s``;
2. otherwise a cost model fitted to every cached PyTorch run on the same kind of
   device: seconds = images x epochs x MACs per image / rate, the rate being the
   median over those runs of (images x epochs x MACs / measured seconds);
3. on a device unlike the one the runs were made on (a GPU), both are scaled by the
   ratio of the chapter-3 CNN's images/s measured here for a few steps to the
   images/s recorded in its cached runs (``--measure``, on by default off the CPU).

The estimate covers training; cached analyses (chapter 2's neighbours and
embeddings, a few minutes) and chapter execution itself are not in it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .models import macs
from .runs import read_run, run_key, runs_root
from .train import Config, config_dict, make_config


@dataclass
class Item:
    chapter: str
    what: str
    group: str
    config: Config | None
    cached: bool
    estimate_s: float
    framework: str = "torch"
    how: str = ""
    book_trains: bool = True  # False: the chapter shows it once cached, never trains it


def _images(c: Config) -> int:
    n = c.n_train if c.n_train is not None else 50_000 - c.holdout
    return min(n, 50_000 - c.holdout)


class CostModel:
    """Training seconds of a config, from the runs in the cache (see the module doc)."""

    def __init__(self, runs_dir=None):
        self.by_config: dict[str, float] = {}
        rates: dict[str, list] = {}
        root = runs_root(runs_dir)
        for p in root.glob("**/summary.json"):
            if ".tmp" in p.parts:
                continue
            try:
                s = json.loads(p.read_text())
                r = read_run(p.parent)
            except Exception:  # noqa: BLE001 - an unreadable folder: not a reference
                continue
            fw = s.get("framework", "torch")
            blob = json.dumps([config_dict(r.config), fw], sort_keys=True)
            t = float(s.get("train_time_s", 0))
            if t > 0:
                self.by_config[blob] = t
            if fw == "torch" and t > 0 and s.get("epochs_run"):
                work = s.get("train_images", 0) * s["epochs_run"] * macs(r.config.model)
                rates.setdefault(s.get("device", "cpu"), []).append(work / t)
        self.rate = {d: float(np.median(v)) for d, v in rates.items() if v}
        self.scale = 1.0  # measured device speed / the cached runs' speed

    def estimate(self, c: Config, framework: str = "torch", device: str = "cpu") -> tuple:
        blob = json.dumps([config_dict(c), framework], sort_keys=True)
        if blob in self.by_config:
            return self.by_config[blob] / self.scale, "measured (same config, other data)"
        rate = self.rate.get(device) or self.rate.get("cpu")
        if not rate:
            return float("nan"), "no cached run to estimate from"
        sec = _images(c) * c.epochs * macs(c.model) / rate / self.scale
        return sec * (1.5 if framework == "keras" else 1.0), "cost model"


def _run(chapter, what, group, c, fp, root, cost, framework="torch", device="cpu") -> Item:
    key = run_key(c, fp, framework)
    cached = (root / group / key / "summary.json").is_file()
    est, how = (0.0, "cached") if cached else cost.estimate(c, framework, device)
    return Item(chapter, what, group, c, cached, est, framework, how)


def items(budget: str, fingerprint: str, runs_dir=None, device: str = "cpu",
          cost: CostModel | None = None) -> list[Item]:
    """Every training run the chapters ask for at ``budget`` on data ``fingerprint``."""
    from . import book, recipe, studies

    root = runs_root(runs_dir)
    cost = cost or CostModel(runs_dir)
    out: list[Item] = []

    def add(chapter, what, group, c, framework="torch"):
        out.append(_run(chapter, what, group, c, fingerprint, root, cost, framework, device))

    add("01 filters", "the small CNN", "ch01", book.ch01_config(budget))
    for name, cs in book.ch03_configs(budget).items():
        for c in cs:
            add("03 MLP vs CNN", f"{name}, seed {c.seed}", "ch03", c)
    for c in book.ch03_mlp_tuning_configs(budget):
        add("03 MLP vs CNN", f"MLP lr {c.lr:g}, augment {c.augment} (validation)", "ch03", c)
    for c in book.ch03_mlp_tuned_configs(budget, *_mlp_choice(budget, fingerprint, root)):
        add("03 MLP vs CNN", f"MLP, chosen lr {c.lr:g}, seed {c.seed}", "ch03", c)
    add("04 monitoring", "the tracked run", "ch04", book.ch04_config(budget))
    for c in book.wd_experiment_configs(budget):
        add("07 analysis", f"weight decay {c.weight_decay:g}, seed {c.seed}", "ch03", c)
    for group, name, c in recipe.plan(budget):
        add("05 recipe", name, group, c)
        if group == "recipe-ablation" and budget != "smoke":  # `python -m lib recipe`
            out[-1].book_trains = False
    for spec in studies.studies(budget).values():
        out.append(_study_item(spec, fingerprint, runs_dir, cost, device))
        if spec.name.startswith("recipe-"):  # `python -m lib sweep --study <name>`
            out[-1].book_trains = False
    for label, fid, c in studies.fidelity_configs(budget):
        add("06 search", f"fidelity study: {label} at {fid}", "search/fidelity", c)
        out[-1].book_trains = False  # `python -m lib sweep --study fidelity`
    out += _retrain_items(budget, fingerprint, root, cost, runs_dir, device)
    for c in book.ch07_configs(budget):
        add("08 Keras", f"Keras, seed {c.seed}", "ch07", c, framework="keras")
    return out


def _mlp_choice(budget: str, fingerprint: str, root: Path) -> tuple[float, bool]:
    """Chapter 3's choice of the MLP's learning rate and augmentation from its cached
    validation runs (:func:`lib.book.ch03_mlp_choice`); before they all exist, the CNN's
    (an estimate of the same cost)."""
    from . import book

    scored = []
    for c in book.ch03_mlp_tuning_configs(budget):
        p = root / "ch03" / run_key(c, fingerprint) / "summary.json"
        if not p.is_file():
            return book.ch03_configs(budget)["mlp"][0].lr, True
        scored.append((c, json.loads(p.read_text())["val_acc"]))
    return book.ch03_mlp_choice(scored)


def _study_item(spec, fp, runs_dir, cost, device) -> Item:
    """A study: its missing trials, each estimated at the base config's cost (trials
    that the pruner stops early cost less, so this is an upper bound)."""
    from . import search

    url = search.default_storage(spec.name, runs_dir)
    done = 0
    if Path(url[len("sqlite:///"):]).is_file():
        try:
            done = search.n_trained(search.optuna_load(spec.name, url))
        except search.SearchError:
            done = 0
    missing = max(0, spec.n_trials - done)
    per, how = cost.estimate(spec.base, "torch", device)
    return Item("06 search", f"study {spec.name}: {missing} of {spec.n_trials} trials to "
                f"train", f"search/{spec.name}", None, missing == 0, missing * per, how=how)


def _retrain_items(budget, fp, root, cost, runs_dir, device) -> list[Item]:
    """Chapter 6's re-training runs of the studies' first choices (where the studies
    exist; else nothing can be listed yet) and chapter 7's seed runs."""
    from . import search, studies

    out = []
    plan = [("main", 3, search.RETRAIN_EPOCHS[budget], None),
            ("main", 1, search.RETRAIN_LONG_EPOCHS[budget], search.RETRAIN_LONG_SEEDS[budget]),
            ("wide", 1, search.RETRAIN_EPOCHS[budget], None),
            ("wide", 1, search.RETRAIN_LONG_EPOCHS[budget], None),
            ("wide", 1, search.RETRAIN_LONGER_EPOCHS[budget], None)]
    for name, k, epochs, seeds in plan:
        try:
            study = search.load_study(name, runs_dir)
        except search.SearchError:
            continue
        spec = search.study_spec(study)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        for rank, t in enumerate(search.top_trials(study, k).itertuples(), 1):
            for c in search.retrain_configs(spec, trials[t.number].params, budget, epochs,
                                            seeds):
                out.append(_run("06 search", f"{name} rank {rank} at {epochs} epochs, seed "
                                f"{c.seed}", "search-best", c, fp, root, cost, "torch", device))
    try:  # the search around the recipe: its top distinct architectures, full budget
        study = search.load_study("recipe-main", runs_dir)
        for rank, number, _, c in studies.retrain_plan(study, budget):
            group = "recipe" if (root / "recipe" / run_key(c, fp) / "summary.json"
                                 ).is_file() else "search-best"
            out.append(_run("06 search", f"recipe-main rank {rank} (trial {number}), seed "
                            f"{c.seed}", group, c, fp, root, cost, "torch", device))
            out[-1].book_trains = False  # `python -m lib sweep --study recipe-main --retrain`
    except search.SearchError:
        pass
    try:
        study = search.load_study("main", runs_dir)
        spec = search.study_spec(study)
        picks = search.seed_picks(search.trained_frame(study))
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        for what, number in picks.items():
            base = search.trial_config(spec, trials[int(number)].params)
            for s in (1, 2):  # as lib.search.seed_runs makes them (chapter 7)
                c = make_config(base, seed=s, save_weights=what == "best")
                out.append(_run("07 analysis", f"{what} trial, seed {s}", "search-seeds", c,
                                fp, root, cost, "torch", device))
    except (search.SearchError, KeyError, ValueError, TypeError):
        pass
    return out


def cached_cnn_speed(runs_dir=None) -> float | None:
    """Median images/s of the chapter-3 CNN's cached CPU runs (None without any): what a
    device's measured speed is compared with."""
    recorded = []
    for p in runs_root(runs_dir).glob("ch03/*/summary.json"):
        s = json.loads(p.read_text())
        if s.get("n_params", 0) > 100_000 and s.get("device") == "cpu":
            recorded.append(s["images_per_s"])
    return float(np.median(recorded)) if recorded else None


def measure_scale(cost: CostModel, device: str, runs_dir=None) -> float:
    """The chapter-3 CNN's images/s here, for a few steps, over its cached runs'."""
    from . import bench, book
    from .data import synthetic
    from .train import resolve_device

    cached = cached_cnn_speed(runs_dir)
    if cached is None:
        return 1.0
    ds = synthetic(n_train=128 * 12, n_test=200)
    here = bench.ours_throughput(ds, book.ch03_cnn_model(), 128, 10, 2, resolve_device(device))
    return here / cached


def table(budget: str, fingerprint: str, runs_dir=None, device: str = "cpu",
          measure: bool = False):
    """The plan as a DataFrame, one row per item, and the cost model it used."""
    import pandas as pd

    cost = CostModel(runs_dir)
    if measure:
        cost.scale = measure_scale(cost, device, runs_dir)
    rows = [dict(chapter=i.chapter, what=i.what, group=i.group, cached=i.cached,
                 minutes=i.estimate_s / 60, estimate=i.how, book_trains=i.book_trains)
            for i in
            items(budget, fingerprint, runs_dir, "cuda" if device.startswith("cuda")
                  else device, cost)]
    return pd.DataFrame(rows), cost

