"""The book's studies (chapters 6 and 7): what is searched, at which fidelity, how.

Definitions only; the engine that runs them is :mod:`lib.search`. Two generations:

- the first round's studies over chapter 3's kind of CNN (``main``, the learning-rate x
  batch-size grid, the paired pruning studies, ``wide``), kept for chapter 7's analyses
  and as the line of comparison "what a naive space found";
- the search around chapter 5's recipe: a fidelity study that picks the trials'
  fidelity, TPE against random search repeated at a cheap fidelity, and the main study
  ``recipe-main`` at the picked fidelity, with the recipe's defaults and chapter 3's
  architecture and hyperparameters enqueued as its first trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .data import Dataset
from .models import macs
from .search import SearchError, StudySpec, decode, sample_params
from .train import Config, make_config

#: The space of the book's main study (chapter 6 explains each choice).
MAIN_SPACE = {
    "batch_size": [64, 128, 256, 512],
    "lr": {"low": 1e-4, "high": 1.0, "log": True},
    "optimizer": ["sgd", "adam"],
    "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True},
    "model.depth": [2, 3, 4],
    "model.width": [16, 32, 48, 64],
    "model.growth": [1.0, 1.5, 2.0],
    "model.kernel_size": [3, 5, 7],
    "model.convs_per_block": [1, 2],
    "model.batch_norm": [True, False],
    "model.early_pool": [False, True],
}

#: The space of chapter 6's second study: airbench's layout (two 3x3 convs per block,
#: the pooling right after the first, batch norm, SGD), searched at a higher fidelity,
#: with the training knobs the main study left out (label smoothing).
WIDE_SPACE = {
    "batch_size": [128, 256, 512],
    "lr": {"low": 0.01, "high": 1.0, "log": True},
    "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True},
    "label_smoothing": [0.0, 0.1, 0.2],
    "model.depth": [3, 4],
    "model.width": [48, 64],
}
WIDE_MODEL = dict(kernel_size=3, convs_per_block=2, early_pool=True, batch_norm=True,
                  growth=2.0)

#: Fidelity of a trial per budget: training images, max epochs, validation split.
TRIAL_BUDGETS = {
    "smoke": dict(n_train=None, epochs=3, holdout=64, batch_size=32),
    "cpu": dict(n_train=10_000, epochs=9, holdout=5_000),
    "gpu": dict(n_train=None, epochs=27, holdout=5_000),
}


def base_config(budget: str) -> Config:
    """The fixed part of every trial at ``budget`` (chapter 6)."""
    if budget not in TRIAL_BUDGETS:
        raise SearchError(f"budget {budget!r}: use one of {sorted(TRIAL_BUDGETS)}")
    return make_config(schedule="onecycle", save_weights=False, **TRIAL_BUDGETS[budget])


def studies(budget: str = "cpu") -> dict[str, StudySpec]:
    """The first round's studies at ``budget`` (chapters 6 and 7 read them), and the
    search around the recipe (:func:`recipe_studies`)."""
    base = base_config(budget)
    small = {"smoke": 1, "cpu": 1, "gpu": 1}[budget]
    n = {"smoke": 10, "cpu": 60, "gpu": 200}[budget]
    cap = {"smoke": 20e6, "cpu": 160e6, "gpu": None}[budget]
    grid_base = make_config(base, epochs={"smoke": 2, "cpu": 4, "gpu": 10}[budget],
                            model=dict(depth=3, width=32, convs_per_block=2)
                            if budget != "smoke" else dict(depth=2, width=8))
    pair_base = make_config(base, n_train={"smoke": None, "cpu": 5_000, "gpu": 20_000}[budget])
    pair_n = {"smoke": 4, "cpu": 16, "gpu": 40}[budget]
    lr_grid = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0] if budget != "smoke" else [0.01, 0.1, 1.0]
    bs_grid = [64, 128, 256, 512] if budget != "smoke" else [32, 64]
    wide_base = make_config(base, optimizer="sgd", model=WIDE_MODEL,
                            **{"smoke": {}, "cpu": dict(n_train=20_000, epochs=6),
                               "gpu": {}}[budget])
    specs = [
        StudySpec("main", MAIN_SPACE, base, "tpe", "hyperband", n, small, max_macs=cap,
                  about="TPE over 11 hyperparameters with Hyperband on epochs"),
        StudySpec("grid-lr-bs", {"lr": lr_grid, "batch_size": bs_grid},
                  grid_base, "grid", "none", len(lr_grid) * len(bs_grid),
                  about="every learning rate x batch size pair, the chapter-3 CNN"),
        StudySpec("pair-pruned", MAIN_SPACE, pair_base, "random", "hyperband", pair_n, small,
                  seed=1, max_macs=cap, about="random configs, Hyperband"),
        StudySpec("pair-sha", MAIN_SPACE, pair_base, "random", "sha", pair_n, small,
                  seed=1, max_macs=cap, about="the same random configs, successive halving"),
        StudySpec("pair-full", MAIN_SPACE, pair_base, "random", "none", pair_n, small,
                  seed=1, max_macs=cap, about="the same random configs, no pruning"),
        StudySpec("wide", WIDE_SPACE, wide_base, "tpe", "sha",
                  {"smoke": 3, "cpu": 12, "gpu": 40}[budget],
                  {"smoke": 1, "cpu": 2, "gpu": 3}[budget],
                  n_startup_trials={"smoke": 2, "cpu": 6, "gpu": 12}[budget],
                  about="airbench's layout, twice the images per trial, SHA on epochs"),
    ]
    return {**{s.name: s for s in specs}, **recipe_studies(budget)}


# --------------------------------------------------------------------------
# the search around chapter 5's recipe
# --------------------------------------------------------------------------
#: The space around the recipe: the exercise's hyperparameters (batch size, learning
#: rate, number and size of the conv layers, kernel size) and the recipe's other knobs.
#: The learning rate, momentum and weight decay have one range per optimiser: SGD's in
#: the decoupled parametrisation (per 1,024 examples; the recipe's 11.5 and 0.0153 sit
#: inside, and so do chapter 3's 0.05 and 5e-4 converted, 4.4 and 0.0022), AdamW's in
#: PyTorch's own units (its weight decay is decoupled by construction of AdamW).
RECIPE_SPACE = {
    "optimizer": {"choices": ["sgd", "adamw"],
                  "implies": {"adamw": {"parametrisation": "coupled", "bias_lr_scale": 1.0}}},
    "lr": {"given": "optimizer", "cases": {
        "sgd": {"low": 2.0, "high": 60.0, "log": True},
        "adamw": {"low": 3e-4, "high": 1e-2, "log": True}}},
    "momentum": {"given": "optimizer", "cases": {
        "sgd": {"low": 0.6, "high": 0.95}, "adamw": [0.9]}},
    "weight_decay": {"given": "optimizer", "cases": {
        "sgd": {"low": 1e-3, "high": 0.1, "log": True},
        "adamw": {"low": 1e-3, "high": 0.5, "log": True}}},
    "batch_size": [128, 256, 512, 1024, 2048],
    "label_smoothing": [0.0, 0.1, 0.2, 0.3],
    "lookahead_every": [0, 5],
    "model.block_widths": ["64/128", "32/64/128", "64/128/128", "64/256/256",
                           "32/64/128/256", "64/128/256/512"],
    "model.convs_per_block": [1, 2, 3],
    "model.kernel_size": [3, 5],
}

#: Trials above this compute are skipped, not trained (1.7 times the recipe's network).
RECIPE_MAX_MACS = 200e6


def recipe_defaults() -> dict:
    """The recipe's own values of :data:`RECIPE_SPACE` (the main study's first trial)."""
    from .recipe import FAST_MODEL, FAST_TRAIN

    return {"optimizer": "sgd", **{k: FAST_TRAIN[k] for k in (
        "lr", "momentum", "weight_decay", "batch_size", "label_smoothing",
        "lookahead_every")},
        **{f"model.{k}": FAST_MODEL[k] for k in ("block_widths", "convs_per_block",
                                                 "kernel_size")}}


def ch03_in_recipe() -> dict:
    """Chapter 3's CNN (widths 32/64/128, two 3x3 convs a block) and its optimiser
    settings (batch 128, lr 0.05, momentum 0.9, weight decay 5e-4 on a mean loss),
    converted to the decoupled parametrisation, with no label smoothing and no
    lookahead: a point of :data:`RECIPE_SPACE`. The recipe's other techniques
    (whitening, Dirac init, batch-norm tweaks, GELU, schedule, augmentation) stay on."""
    from .book import ch03_configs
    from .fast import coupled_to_decoupled

    c = ch03_configs("cpu")["cnn"][0]
    lr, wd = coupled_to_decoupled(c.lr, c.momentum, c.weight_decay, c.batch_size)
    return {"optimizer": "sgd", "lr": round(lr, 6), "momentum": c.momentum,
            "weight_decay": round(wd, 6), "batch_size": c.batch_size,
            "label_smoothing": c.label_smoothing, "lookahead_every": 0,
            "model.block_widths": tuple(c.model.widths()),
            "model.convs_per_block": c.model.convs_per_block,
            "model.kernel_size": c.model.kernel_size}


#: The candidate fidelities of a trial (training images, epochs) and the reference close
#: to the full budget (all 45,000 images outside the validation split, the recipe's 10
#: epochs). Every fidelity scores the same 5,000 held-out images.
FIDELITIES = {
    "smoke": {"tiny": (None, 1), "small": (None, 2), "reference": (None, 3)},
    "cpu": {"5k x 5": (5_000, 5), "10k x 5": (10_000, 5), "10k x 10": (10_000, 10),
            "reference": (None, 10)},
    "gpu": {"10k x 10": (10_000, 10), "20k x 10": (20_000, 10), "45k x 5": (None, 5),
            "reference": (None, 10)},
}
#: Configurations in the fidelity study: the recipe's defaults, chapter 3's CNN in the
#: recipe, and random points of the space (below the compute cap), drawn with seed 0,
#: SGD and AdamW in turn so that both optimisers are in it.
FIDELITY_N_CONFIGS = {"smoke": 3, "cpu": 8, "gpu": 10}
#: The rule that picks the trials' fidelity: the cheapest whose Spearman rank
#: correlation with the reference is at least this (else the most correlated).
FIDELITY_MIN_SPEARMAN = 0.8
#: The fidelity the main study uses; `python -m lib sweep --study recipe-main` refuses
#: to start unless the fidelity study's rule picks the same one (chapter 6 shows both).
RECIPE_FIDELITY = {"smoke": "small", "cpu": "10k x 10", "gpu": "20k x 10"}
#: The cheap fidelity of the TPE-against-random repeats, and their size.
COMPARE_FIDELITY = {"smoke": "small", "cpu": "5k x 5", "gpu": "10k x 10"}
COMPARE_REPEATS = {"smoke": 2, "cpu": 3, "gpu": 5}
COMPARE_TRIALS = {"smoke": 4, "cpu": 20, "gpu": 40}
RECIPE_TRIALS = {"smoke": 6, "cpu": 60, "gpu": 200}


def recipe_base(budget: str, fidelity: str) -> Config:
    """Every trial of the recipe's search at ``fidelity``: the recipe (chapter 5) on a
    validation split, no test-time augmentation, no weights kept."""
    from .recipe import RECIPE_BUDGETS, fast_config

    if budget not in FIDELITIES:
        raise SearchError(f"budget {budget!r}: use one of {sorted(FIDELITIES)}")
    if fidelity not in FIDELITIES[budget]:
        raise SearchError(f"fidelity {fidelity!r}: use one of {sorted(FIDELITIES[budget])}")
    n_train, epochs = FIDELITIES[budget][fidelity]
    over = dict(epochs=epochs, n_train=n_train, holdout=5_000, tta=0, save_weights=False)
    if budget == "smoke":  # synthetic data, seconds
        over.update(holdout=64, batch_size=64, n_test=None,
                    model=RECIPE_BUDGETS["smoke"]["model"])
    return fast_config(budget, **over)


def _space(budget: str) -> dict:
    if budget != "smoke":
        return RECIPE_SPACE
    return {**RECIPE_SPACE, "batch_size": [32, 64],
            "model.block_widths": ["8/16", "8/16/16"]}


def _enqueued(budget: str) -> tuple:
    if budget == "smoke":
        return ({**recipe_defaults(), "batch_size": 64, "model.block_widths": (8, 16, 16)},)
    return (recipe_defaults(), ch03_in_recipe())


def min_epochs(base: Config) -> int:
    """The pruner's first rung: the first epoch after the learning-rate warm-up, so that
    no trial is judged while its learning rate is still rising."""
    return max(1, math.ceil(base.warmup * base.epochs))


def recipe_studies(budget: str = "cpu") -> dict[str, StudySpec]:
    """The search around the recipe: the main study at :data:`RECIPE_FIDELITY`, and
    TPE against random search, :data:`COMPARE_REPEATS` times each, at
    :data:`COMPARE_FIDELITY` without pruning."""
    space = _space(budget)
    cap = None if budget == "gpu" else RECIPE_MAX_MACS
    main_base = recipe_base(budget, RECIPE_FIDELITY[budget])
    specs = [StudySpec("recipe-main", space, main_base, "tpe", "hyperband",
                       RECIPE_TRIALS[budget], min_epochs(main_base),
                       max_macs=cap, n_startup_trials={"smoke": 2}.get(budget, 12),
                       enqueue=_enqueued(budget),
                       about="TPE around the recipe, Hyperband from the first epoch "
                             "after warm-up; the recipe's defaults first")]
    cmp_base = recipe_base(budget, COMPARE_FIDELITY[budget])
    for r in range(COMPARE_REPEATS[budget]):
        for sampler in ("tpe", "random"):
            specs.append(StudySpec(
                f"recipe-{sampler}-{r}", space, cmp_base, sampler, "none",
                COMPARE_TRIALS[budget], seed=r, max_macs=cap,
                n_startup_trials={"smoke": 2}.get(budget, 6),
                about=f"{sampler} search, repeat {r}, at the cheap fidelity, no pruning"))
    return {s.name: s for s in specs}


# --------------------------------------------------------------------------
# the fidelity study
# --------------------------------------------------------------------------
def fidelity_points(budget: str = "cpu") -> list[tuple[str, dict]]:
    """(label, Optuna parameter values) of the fidelity study's configurations."""
    from .search import encode

    space = _space(budget)
    out = [("recipe defaults", encode(space, _enqueued(budget)[0]))]
    if budget != "smoke":
        out.append(("chapter 3's CNN in the recipe", encode(space, ch03_in_recipe())))
    rng = np.random.default_rng(0)
    base = recipe_base(budget, "reference")
    while len(out) < FIDELITY_N_CONFIGS[budget]:
        p = sample_params(space, rng)
        c = make_config(base, **decode(space, p))
        if p["optimizer"] != ("sgd", "adamw")[len(out) % 2]:
            continue
        if budget == "gpu" or macs(c.model) <= RECIPE_MAX_MACS:
            out.append((f"random {len(out) - 1}", p))
    return out


def fidelity_configs(budget: str = "cpu") -> list[tuple[str, str, Config]]:
    """(config label, fidelity, config) of every fidelity-study run, in training order:
    each configuration at every candidate fidelity and at the reference."""
    space = _space(budget)
    out = []
    for label, p in fidelity_points(budget):
        for fid in FIDELITIES[budget]:
            out.append((label, fid, make_config(recipe_base(budget, fid),
                                                **decode(space, p))))
    return out


def _cached_or_trained(c: Config, ds: Dataset, groups: tuple, runs_dir, train: bool, device,
                       log, label: str):
    """The run of ``c`` from the first of ``groups`` that has it, else (with ``train``)
    trained into the last one, else None; ``log`` gets one line starting ``label``."""
    from . import runs as R

    run = next((r for g in groups if (r := R.find(c, ds, g, runs_dir)) is not None), None)
    if log:
        log(f"{label}: {'cached' if run else 'to train' if train else 'missing'}")
    if run is None and train:
        run = R.get(c, ds, groups[-1], runs_dir, device=device)
    return run


def fidelity_runs(ds: Dataset, budget: str = "cpu", runs_dir=None, train: bool = False,
                  device="auto", log=None) -> pd.DataFrame:
    """One row per fidelity-study run (cached ones only unless ``train``): config label,
    fidelity, final validation accuracy, minutes of training, images x epochs."""
    rows = []
    todo = fidelity_configs(budget)
    for i, (label, fid, c) in enumerate(todo, 1):
        run = _cached_or_trained(c, ds, ("search/fidelity",), runs_dir, train, device, log,
                                 f"[{i}/{len(todo)}] fidelity study: {label} at {fid}")
        if run is None:
            continue
        n = run.summary["train_images"]
        rows.append(dict(config=label, fidelity=fid, val_acc=run.summary["val_acc"],
                         status=run.summary["status"],
                         minutes=run.summary["train_time_s"] / 60,
                         image_epochs=n * run.summary["epochs_run"], key=run.key))
    return pd.DataFrame(rows)


def fidelity_table(df: pd.DataFrame, budget: str = "cpu") -> pd.DataFrame:
    """Per candidate fidelity: the Spearman rank correlation of its validation accuracy
    with the reference's over the configurations run at both (scipy.stats.spearmanr),
    how many, and the mean minutes of a run: what the rule of :func:`pick_fidelity`
    reads, with its approximate 95 % interval (:func:`lib.stats.spearman_ci`)."""
    from scipy.stats import spearmanr

    from .stats import spearman_ci

    wide = df.pivot_table(index="config", columns="fidelity", values="val_acc")
    mins = df.groupby("fidelity").minutes.mean()
    rows = []
    for fid in FIDELITIES[budget]:
        if fid == "reference" or fid not in wide or "reference" not in wide:
            continue
        both = wide[[fid, "reference"]].dropna()
        rho = spearmanr(both[fid], both["reference"]).statistic if len(both) > 2 \
            else float("nan")
        ci = spearman_ci(both[fid], both["reference"])
        rows.append(dict(fidelity=fid, spearman=float(rho), rho_lo=ci["lo"], rho_hi=ci["hi"],
                         configs=len(both),
                         minutes_per_run=float(mins[fid]),
                         cost_vs_reference=float(mins[fid] / mins["reference"])))
    return pd.DataFrame(rows)


def pick_fidelity(table: pd.DataFrame, min_rho: float = FIDELITY_MIN_SPEARMAN) -> str:
    """The cheapest fidelity whose rank correlation with the reference reaches
    ``min_rho``; if none does, the most correlated one."""
    if table.empty:
        raise SearchError("no fidelity has runs at both it and the reference yet; run "
                          "`python -m lib sweep --study fidelity`")
    ok = table[table.spearman >= min_rho]
    if len(ok):
        return str(ok.sort_values("minutes_per_run").fidelity.iloc[0])
    return str(table.sort_values("spearman", ascending=False).fidelity.iloc[0])


def check_recipe_fidelity(ds: Dataset, budget: str = "cpu", runs_dir=None) -> str:
    """Refuse (SearchError, one line) to start the main study before the fidelity study
    is complete, or when its rule picks another fidelity than :data:`RECIPE_FIDELITY`."""
    df = fidelity_runs(ds, budget, runs_dir)
    need = len(fidelity_configs(budget))
    if len(df) < need:
        raise SearchError(f"the fidelity study has {len(df)} of its {need} runs; run "
                          "`python -m lib sweep --study fidelity` first (it picks the "
                          "main study's fidelity)")
    picked = pick_fidelity(fidelity_table(df, budget))
    if picked != RECIPE_FIDELITY[budget]:
        raise SearchError(f"the fidelity study picks {picked!r} but "
                          f"lib.studies.RECIPE_FIDELITY[{budget!r}] is "
                          f"{RECIPE_FIDELITY[budget]!r}; set it to {picked!r} first")
    return picked


def sweep_order(budget: str = "cpu") -> list[str]:
    """Every study `make sweep` runs, in order: the first round's, the fidelity study
    (it picks the main study's fidelity), TPE against random, the main study."""
    names = list(studies(budget))
    recipe = [n for n in names if n.startswith("recipe-") and n != "recipe-main"]
    first = [n for n in names if not n.startswith("recipe-")]
    return [*first, "fidelity", *recipe, "recipe-main"]


# --------------------------------------------------------------------------
# reading the search around the recipe back (chapter 6)
# --------------------------------------------------------------------------
def compare_frame(budget: str = "cpu", runs_dir=None) -> pd.DataFrame:
    """TPE against random search: one row per trained trial of every cached repeat, in
    the order it ran (``index`` 1, 2, ...), with its validation accuracy and the best so
    far (the incumbent). Repeats not in the cache are left out."""
    from . import search

    rows = []
    for name, spec in recipe_studies(budget).items():
        if name == "recipe-main":
            continue
        try:
            df = search.trained_frame(search.load_study(name, runs_dir))
        except SearchError:
            continue
        df = df.sort_values("number").reset_index(drop=True)
        best = df.value.fillna(-np.inf).cummax()
        rows.append(pd.DataFrame(dict(sampler=spec.sampler, repeat=spec.seed,
                                      index=np.arange(1, len(df) + 1), value=df.value,
                                      incumbent=best.replace(-np.inf, np.nan))))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["sampler", "repeat", "index", "value", "incumbent"])


#: What makes two configurations of the recipe's space different architectures.
ARCHITECTURE = ("model.block_widths", "model.convs_per_block", "model.kernel_size")


def top_distinct(study, k: int = 3, by=ARCHITECTURE) -> pd.DataFrame:
    """The ``k`` best complete trials (by validation accuracy) with distinct
    architectures: the first trial of each architecture in the ranking (chapter 6
    re-trains these)."""
    from .search import top_trials

    ranked = top_trials(study, k=10**6)
    cols = [c for c in by if c in ranked.columns]
    return ranked.drop_duplicates(cols).head(k)


# --------------------------------------------------------------------------
# re-training the search's choices at the recipe's full budget (chapter 6)
# --------------------------------------------------------------------------
#: How many distinct architectures of the main study are re-trained.
RECIPE_RETRAIN_K = {"smoke": 2, "cpu": 3, "gpu": 3}


def retrain_configs(params: dict, budget: str = "cpu") -> list[Config]:
    """A trial of the search around the recipe (Optuna's parameter values) at the
    recipe's full budget, one config per seed of :data:`lib.recipe.RECIPE_SEEDS`: every
    training image, the recipe's epochs, TTA scored beside the plain accuracy, exactly
    chapter 5's runs but for the searched values (so the recipe's defaults *are*
    chapter 5's runs, and come from its cache)."""
    from .recipe import RECIPE_SEEDS, fast_config

    over = decode(_space(budget), params)
    return [make_config(fast_config(budget, seed=s), **over)
            for s in range(RECIPE_SEEDS[budget])]


def retrain_plan(study, budget: str = "cpu", k: int | None = None) -> list[tuple]:
    """(rank, trial number, validation accuracy, config) of every re-training run: the
    ``k`` best distinct architectures of the main study (:func:`top_distinct`), chosen
    by validation accuracy, each at every seed."""
    k = RECIPE_RETRAIN_K[budget] if k is None else k
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    out = []
    for rank, t in enumerate(top_distinct(study, k).itertuples(), 1):
        for c in retrain_configs(trials[t.number].params, budget):
            out.append((rank, t.number, t.value, c))
    return out


def unfinished(study, budget: str = "cpu") -> str | None:
    """Why a study's choice is not final yet (it has fewer trained trials than its
    definition asks for), or None when it is; studies outside the book's definitions
    are taken as they are."""
    from .search import n_trained

    spec = recipe_studies(budget).get(study.study_name)
    if spec is None or n_trained(study) >= spec.n_trials:
        return None
    return (f"{study.study_name} has {n_trained(study)} of its {spec.n_trials} trials, so "
            "its choice is not final")


def retrain(ds: Dataset, budget: str = "cpu", k: int | None = None, runs_dir=None,
            device="auto", train: bool = False, log=None, study_name="recipe-main"
            ) -> pd.DataFrame:
    """The main study's top distinct architectures at the recipe's full budget: one row
    per run (rank, trial, validation accuracy in the search, seed, plain and TTA test
    accuracy, minutes) with the run itself. A configuration equal to the recipe's
    defaults is read from chapter 5's runs (``runs/recipe``); the others live in
    ``runs/search-best``. Without ``train`` only cached runs are returned."""
    from .recipe import fast_config
    from .search import load_study

    study = load_study(study_name, runs_dir)
    if train and (short := unfinished(study, budget)):
        raise SearchError(f"{short}: finish it first "
                          f"(`python -m lib sweep --study {study_name}`)")
    rows = []
    todo = retrain_plan(study, budget, k)
    for i, (rank, number, value, c) in enumerate(todo, 1):
        run = _cached_or_trained(c, ds, ("recipe", "search-best"), runs_dir, train, device,
                                 log, f"[{i}/{len(todo)}] rank {rank} (trial {number}), "
                                 f"seed {c.seed}")
        if run is None:
            continue
        s = run.summary
        rows.append(dict(rank=rank, trial=number, val_acc=value, seed=c.seed, key=run.key,
                         test_acc=s["test_acc"], test_acc_tta=s.get("test_acc_tta"),
                         epochs=s["epochs_run"], minutes=s["train_time_s"] / 60,
                         n_params=s["n_params"], is_default=c == fast_config(budget, seed=c.seed),
                         run=run))
    return pd.DataFrame(rows)


def compare_summary(df: pd.DataFrame) -> pd.DataFrame:
    """TPE against random search (:func:`compare_frame`): per sampler, the best
    validation accuracy each repeat reached (the final incumbent) with its mean, SD
    and 95 % t interval over the repeats, and the mean number of trials a repeat took to
    come within 0.5 points of its own final best."""
    from .stats import mean_ci

    rows = []
    for sampler, g in df.groupby("sampler"):
        finals, reach = [], []
        for _, r in g.groupby("repeat"):
            r = r.sort_values("index")
            best = float(r.incumbent.iloc[-1])
            finals.append(best)
            reach.append(int(r["index"][r.incumbent >= best - 0.005].iloc[0]))
        s = mean_ci(finals)
        rows.append(dict(sampler=sampler, repeats=s["n"], trials=int(g["index"].max()),
                         best_mean=s["mean"], best_sd=s["sd"], best_lo=s["lo"],
                         best_hi=s["hi"], best_min=min(finals), best_max=max(finals),
                         trials_to_best=float(np.mean(reach)), finals=finals))
    return pd.DataFrame(rows).set_index("sampler")


def retrain_table(rt: pd.DataFrame) -> pd.DataFrame:
    """One row per re-trained configuration (:func:`retrain`), in the search's order
    (rank by validation accuracy): trial, validation accuracy in the search, plain and
    TTA test accuracy (mean, SD, 95 % t interval over the seeds), minutes per run, and
    whether it is the recipe's default."""
    from .stats import mean_ci

    rows = []
    for rank, g in rt.groupby("rank", sort=True):
        plain, tta = mean_ci(g.test_acc), mean_ci(g.test_acc_tta.astype(float))
        rows.append(dict(rank=int(rank), trial=int(g.trial.iloc[0]),
                         val_acc=float(g.val_acc.iloc[0]), seeds=len(g),
                         test_mean=plain["mean"], test_sd=plain["sd"], test_lo=plain["lo"],
                         test_hi=plain["hi"], tta_mean=tta["mean"], tta_sd=tta["sd"],
                         tta_lo=tta["lo"], tta_hi=tta["hi"], minutes=float(g.minutes.mean()),
                         params=int(g.n_params.iloc[0]),
                         is_default=bool(g.is_default.iloc[0])))
    return pd.DataFrame(rows).set_index("rank")


# --------------------------------------------------------------------------
# what chapter 6 reads of the search around the recipe
# --------------------------------------------------------------------------
def recipe_study(name: str, ds: Dataset, budget: str = "cpu", runs_dir=None,
                 device="auto"):
    """A study of the search around the recipe as a chapter reads it: at the smoke budget
    run (or finished) first, since a smoke run is seconds on synthetic data; at the other
    budgets as it stands in the cache (`make sweep` trains it, and chapter 6 says how far
    it got), or None when it is not there."""
    from . import search

    spec = recipe_studies(budget)[name]
    if budget == "smoke":
        return search.ensure(spec, ds, runs_dir, device)
    try:
        return search.load_study(name, runs_dir)
    except SearchError:
        return None


def compare_verdict(summary: pd.DataFrame, n_val: int) -> dict:
    """TPE against random search (:func:`compare_summary`): TPE's mean best minus random
    search's with Welch's 95 % interval over the repeats, and the yardstick of one
    validation score, its binomial standard error on the ``n_val`` validation images at
    the accuracy reached (the standard error of a difference of two is sqrt 2 times it)."""
    from .stats import binomial_se, welch_ci

    w = welch_ci(summary.loc["random", "finals"], summary.loc["tpe", "finals"])
    se = binomial_se(float(summary.best_mean.mean()), n_val)
    return dict(**w, se=se, se_diff=math.sqrt(2) * se,
                below_se=abs(w["d"]) < math.sqrt(2) * se)


#: Short names of hyperparameters in a trials table's setting column (empty: the value
#: alone says what it is, as "adamw" or "64/256/256" do).
SHORT_NAMES = {"optimizer": "", "momentum": "mom", "weight_decay": "wd",
               "batch_size": "batch", "label_smoothing": "LS", "lookahead_every": "LA",
               "model.block_widths": "", "model.convs_per_block": "convs",
               "model.kernel_size": "k"}


def trials_table(trained: pd.DataFrame, space: dict) -> pd.DataFrame:
    """A study's trained trials as chapter 6 prints them: the complete ones best first,
    then the pruned ones best first (a pruned trial's value is from an earlier epoch, not
    comparable); number, state, value, epochs, the hyperparameters in one column (so that
    the table fits the page), compute (millions of multiply-accumulates per image) and
    wall-clock minutes of training."""
    from .search import merge_cases

    t = merge_cases(trained, space)
    t = t.assign(_pruned=t.state != "COMPLETE").sort_values(["_pruned", "value"],
                                                            ascending=[True, False])
    hp = [n for n in space if n in t]

    def setting(r) -> str:
        def one(n, v):
            short = SHORT_NAMES.get(n, n.removeprefix("model."))
            v = f"{v:.3g}" if isinstance(v, float) else v
            return f"{short} {v}" if short else str(v)

        return ", ".join(one(n, v) for n, v in r.items() if v == v and v is not None)

    return pd.DataFrame({"trial": t.number, "state": t.state, "value": t.value,
                         "epochs": t.epochs_run.astype(int), "setting": t[hp].apply(
                             setting, axis=1), "MMACs": (t.macs / 1e6).round().astype(int),
                         "minutes": t.train_time_s / 60}).reset_index(drop=True)


#: autocast dtype recorded in a run's summary -> the Config.precision that forces it
_PRECISION_OF = {"float32": "fp32", "bfloat16": "bf16"}


def matched_default(ds: Dataset, budget: str = "cpu", runs_dir=None, device="auto",
                    train: bool = False, log=None, first=None, defaults=None):
    """The recipe's defaults (seed 0) re-trained at the precision the validation choice's
    re-training ran in, when chapter 5's runs of the defaults used another one (they were
    trained with bfloat16 autocast on a CPU that has it; the re-training ran in float32
    on one without): a yardstick on the re-training's own terms, kept in
    ``runs/search-best``. None when the precisions already agree or nothing is cached to
    compare; without ``train`` only a cached run is returned. ``first`` (the choice's
    re-training rows, :func:`retrain`) and ``defaults`` (:func:`default_runs`) are read
    from the cache unless the caller already holds them."""
    from .recipe import fast_config

    if first is None:
        first = retrain(ds, budget, k=1, runs_dir=runs_dir)
    if defaults is None:
        defaults = default_runs(ds, budget, runs_dir)
    if not len(first) or not defaults:
        return None
    want = {r.summary.get("amp_dtype") for r in first.run}
    have = {r.summary.get("amp_dtype") for r in defaults}
    if want == have or len(want) != 1 or not want <= set(_PRECISION_OF):
        return None
    dtype = want.pop()
    c = fast_config(budget, seed=0, precision=_PRECISION_OF[dtype])
    return _cached_or_trained(c, ds, ("search-best",), runs_dir, train, device, log,
                              f"the recipe's defaults in {dtype}, seed 0")


def default_runs(ds: Dataset, budget: str = "cpu", runs_dir=None) -> list:
    """Chapter 5's runs of the recipe's defaults (every seed found in ``runs/recipe``):
    what the search's choice is measured against, at the same budget."""
    from . import runs as R
    from .recipe import recipe_configs

    found = [R.find(c, ds, "recipe", runs_dir) for c in recipe_configs(budget)]
    return [r for r in found if r is not None]


def retrain_status(study, budget: str, rt: pd.DataFrame) -> pd.DataFrame:
    """Per configuration the re-training needs (:func:`retrain_plan`): its rank, trial,
    validation accuracy in the search, architecture and optimiser, how many trained
    trials the search spent on that architecture (its best is a best of that many), and
    how many of its seeds are cached in ``rt`` (:func:`retrain`) out of how many
    wanted."""
    from .search import trained_frame

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    per_arch = trained_frame(study).groupby(list(ARCHITECTURE)).size()
    rows = {}
    for rank, number, value, c in retrain_plan(study, budget):
        p = trials[number].params
        convs = p["model.convs_per_block"]
        r = rows.setdefault(rank, dict(
            rank=rank, trial=number, val_acc=value,
            architecture=f"{p['model.block_widths']}, {convs} conv{'s' * (convs > 1)} per "
                         f"block, {p['model.kernel_size']}x{p['model.kernel_size']}",
            optimizer=p["optimizer"],
            trials=int(per_arch.get(tuple(p[a] for a in ARCHITECTURE), 0)),
            wanted=0, cached=0))
        r["wanted"] += 1
        r["cached"] += int(len(rt) > 0 and ((rt["rank"] == rank) & (rt.seed == c.seed)).any())
    return pd.DataFrame(list(rows.values())).set_index("rank")


def twin_runs(trained: pd.DataFrame, runs_dir=None) -> pd.DataFrame:
    """Trials of the main study whose run (same cache key: same configuration, seed and
    data) the fidelity study also trained, in another session: both validation
    accuracies at the last epoch both reached (a trial the pruner stopped at epoch 9 is
    compared with the other run's epoch 9, not its epoch 10) and the machine of each (CPU
    flags, autocast dtype), a measure of how far the same run moves from one machine to
    another."""
    from . import runs as R

    root = R.runs_root(runs_dir) / "search"
    rows = []
    for t in trained.itertuples():
        if not (root / "fidelity" / t.key).is_dir():
            continue
        a, b = (R.read_run(root / g / t.key) for g in ("fidelity", "recipe-main"))
        epoch = int(min(a.metrics.epoch.max(), b.metrics.epoch.max()))
        va, vb = (float(r.metrics.set_index("epoch").val_acc[epoch]) for r in (a, b))
        rows.append(dict(trial=int(t.number), key=t.key, epoch=epoch, val_fidelity=va,
                         val_main=vb, machine_fidelity=machine(a.summary),
                         machine_main=machine(b.summary)))
    return pd.DataFrame(rows)


def machine(summary: dict) -> str:
    """A run's machine in a few words: its CPU's widest vector and bf16 features, and the
    dtype training autocast to."""
    flags = set(summary.get("cpu_flags", "").split())
    kind = ("AMX" if "amx_bf16" in flags else "AVX-512 bf16" if "avx512_bf16" in flags
            else "AVX-512" if "avx512f" in flags else "AVX2")
    if "cpu_flags" not in summary:  # runs from before the flags were recorded
        kind = f"{summary.get('device_name') or 'unknown CPU'}, CPU flags not recorded"
    return f"{summary.get('device', 'cpu')}, {kind}, {summary.get('amp_dtype') or 'float32'}"


@dataclass
class BestSetup:
    """What chapter 6 (section 6.7) and chapter 7's answer table read of the book's best
    setup (:func:`best_setup`)."""

    rt: pd.DataFrame  # the re-training runs in the cache (:func:`retrain`)
    status: pd.DataFrame | None  # per configuration, seeds cached of wanted
    defaults: list  # chapter 5's runs of the recipe's defaults, the yardstick
    reason: str | None  # why no best setup is named; None when it is
    matched: object = None  # the defaults at the re-training's precision (matched_default)

    @property
    def named(self) -> bool:
        return self.reason is None

    @property
    def first(self) -> pd.DataFrame:
        """The re-training runs of the validation choice (rank 1), one row per seed."""
        return self.rt[self.rt["rank"] == 1] if len(self.rt) else self.rt

    def verdict(self, col: str = "test_acc") -> str:
        """Whether the test set confirms the choice against the recipe's defaults, on
        ``col`` (``test_acc``, the book's primary score, or ``test_acc_tta``): "confirmed"
        when the whole 95 % Welch interval of best minus defaults is above zero and the
        difference is larger than the test set's sampling error of a difference
        (:func:`lib.stats.difference_se`), "not confirmed" when the same holds below
        zero, "not told apart" otherwise (with the interval's half-width: the smallest
        difference these seeds could have shown). Two candidates fixed beforehand are
        compared, which is what the test set is for (not a search among many)."""
        from .stats import difference_se, welch_ci

        if not self.named:
            return "not named yet"
        if bool(self.first.is_default.all()):
            return "the recipe's defaults themselves: the search re-found them"
        a = [r.summary[col] for r in self.defaults]
        b = self.first[col].astype(float)
        w = welch_ci(a, b)
        if not np.isfinite(w["lo"]):
            return "too few seeds to tell it from the recipe's defaults"
        n_test = int(self.first.run.iloc[0].summary["test_images"])
        se = difference_se((np.mean(a) + b.mean()) / 2, n_test)
        if w["lo"] > 0 and w["d"] > se:
            return "confirmed: it scores above the recipe's defaults"
        if w["hi"] < 0 and -w["d"] > se:
            return "not confirmed: it scores below the recipe's defaults"
        if w["lo"] > 0 or w["hi"] < 0:
            return (f"not told apart from the recipe's defaults (the seeds' interval "
                    f"excludes zero, but the difference, {w['d'] * 100:+.2f} points, is "
                    f"below the test set's sampling error of a difference, "
                    f"{se * 100:.2f} points)")
        return (f"not told apart from the recipe's defaults (with these seeds, a difference "
                f"smaller than about {(w['hi'] - w['lo']) / 2 * 100:.2f} points could not "
                "have been told from zero)")

    def machines(self) -> str:
        """Where each arm ran, in words: the machine and autocast dtype of the best
        setup's re-training and of chapter 5's runs of the defaults."""
        def kinds(summaries):
            return " and ".join(sorted({machine(s) for s in summaries}))

        return (f"the re-training ran on {kinds(r.summary for r in self.first.run)}; "
                f"chapter 5's runs of the defaults on "
                f"{kinds(r.summary for r in self.defaults)}")

    def precision_note(self) -> str:
        """Where the arms ran and, when their autocast dtypes differ, what the defaults
        score at the re-training's dtype (:func:`matched_default`): the same seed in both
        dtypes, and the best setup against the re-run; a sentence or two for 6.7."""
        from .stats import difference_se

        kinds = {machine(r.summary) for r in [*self.first.run, *self.defaults]}
        text = (f"Both arms ran on {kinds.pop()}." if len(kinds) == 1 else
                f"The arms did not all run on one kind of machine: {self.machines()}.")
        dtypes = {r.summary.get("amp_dtype") for r in [*self.first.run, *self.defaults]}
        if len(dtypes) < 2:
            return text
        m = self.matched
        if m is None:
            return (text + " The dtypes differ, so `make sweep` re-trains the defaults' "
                    "seed 0 in the re-training's dtype after the choice's seeds; that run "
                    "is not in the cache yet, and until it is, the gap above holds the "
                    "machine's share too.")
        same = next((r for r in self.defaults if r.config.seed == m.config.seed), None)
        ms, n_test = m.summary, int(m.summary["test_images"])
        d_best = float(self.first.test_acc.mean()) - ms["test_acc"]
        text += (f" The defaults' seed {m.config.seed} re-trained in {ms['amp_dtype']} "
                 f"({machine(ms)}) scores {ms['test_acc']:.2%} plain and "
                 f"{ms['test_acc_tta']:.2%} with test-time augmentation")
        if same is not None:
            shift = ms["test_acc"] - same.summary["test_acc"]
            se = difference_se((ms["test_acc"] + same.summary["test_acc"]) / 2, n_test)
            text += (f", against {same.summary['test_acc']:.2%} and "
                     f"{same.summary['test_acc_tta']:.2%} for the same seed in chapter 5: "
                     f"the machine and dtype moved it by {shift * 100:+.2f} points plain, "
                     + ("less than the test set's sampling error of a difference "
                        f"({se * 100:.2f} points)" if abs(shift) < se else
                        f"more than the test set's sampling error of a difference "
                        f"({se * 100:.2f} points)"))
        text += (f". The best setup's mean minus this run, both in {ms['amp_dtype']}: "
                 f"{d_best * 100:+.2f} points plain (one run on this side, so no interval).")
        return text

    @property
    def missing(self) -> int:
        """Re-training runs of the other choices still to train (their comparison with
        the best setup waits for them; the best setup itself does not)."""
        return 0 if self.status is None else int((self.status.wanted
                                                  - self.status.cached).sum())


def best_setup(ds: Dataset, budget: str = "cpu", runs_dir=None, device="auto",
               train: bool = False) -> BestSetup:
    """The book's best setup: the main study's best architecture by validation accuracy
    (rank 1 of :func:`retrain_plan`), re-trained at the recipe's full budget. It is named
    once the main study has all its trials (before that its choice is not final), every
    seed of rank 1 is cached and chapter 5's runs of the defaults are there to compare
    with. The other ranks only compare architectures; choosing among them by their test
    scores would select on the test set, so the name does not wait for them."""
    study = recipe_study("recipe-main", ds, budget, runs_dir, device)
    if study is None:
        return BestSetup(pd.DataFrame(), None, [], "the search around the recipe is not "
                         "in the cache")
    rt = retrain(ds, budget, runs_dir=runs_dir, device=device, train=train)
    status = retrain_status(study, budget, rt)
    defaults = default_runs(ds, budget, runs_dir)
    reason = unfinished(study, budget)
    if reason is None and status.loc[1].cached < status.loc[1].wanted:
        reason = (f"{int(status.loc[1].cached)} of the {int(status.loc[1].wanted)} "
                  "re-training runs of the main study's choice "
                  f"{'is' if status.loc[1].cached == 1 else 'are'} cached")
    if reason is None and not defaults:
        reason = "chapter 5's runs of the recipe's defaults, the yardstick, are not cached"
    b = BestSetup(rt, status, defaults, reason)
    if b.named:  # the choice's runs and the defaults are in hand: not read again
        b.matched = matched_default(ds, budget, runs_dir, first=b.first, defaults=defaults)
    return b


def best_setup_answer(ds: Dataset, budget: str = "cpu", runs_dir=None) -> tuple[str, str]:
    """The book's best setup (:func:`best_setup`) in two phrases, for the answer table of
    chapter 7: what it is and how it scores, and its uncertainty against the recipe's
    defaults; until it is named, says why instead."""
    from .stats import difference, fmt

    b = best_setup(ds, budget, runs_dir)
    if not b.named:
        return (f"not named yet: {b.reason}", "-")
    first, top = b.first, b.status.loc[1]
    n_test = int(first.run.iloc[0].summary["test_images"])  # the test images it scored
    dflt = [r.summary["test_acc"] for r in b.defaults]
    return (f"trial {int(top.trial)} of the search around the recipe ({top.architecture}, "
            f"{top.optimizer}): test {fmt(first.test_acc)}, with test-time augmentation "
            f"{fmt(first.test_acc_tta.astype(float))}; {b.verdict()}",
            difference(dflt, first.test_acc, n_test, "the recipe's defaults",
                       "the best setup"))
