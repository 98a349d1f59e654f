"""The fast recipe's configurations (chapter 5, "What each technique buys").

Definitions only: the techniques themselves live in :mod:`lib.fast`, the loop in
:mod:`lib.train`. :func:`fast_config` is airbench94's network and training recipe
(Jordan 2024, arXiv:2404.00498), with this book's names for each knob.
"""

from __future__ import annotations

import numpy as np

from .train import Config, make_config, params_dict

#: airbench94's network: a frozen 2x2 whitening conv, three groups of two 3x3 convs
#: (pooling after the first), batch norm with frozen scales and fast statistics (airbench's
#: momentum 0.6 is 0.4 in PyTorch's convention: the weight of the new batch), GELU,
#: a global max pool and logits scaled by 1/9.
FAST_MODEL = dict(
    kind="cnn", depth=3, block_widths=(64, 256, 256), kernel_size=3, convs_per_block=2,
    early_pool=True, batch_norm=True, pool="max", activation="gelu", whiten=True,
    dirac_init=True, bn_frozen_scale=True, bn_momentum=0.4, global_pool="max",
    head_scale=1 / 9,
)

#: airbench94's training recipe, in the decoupled parametrisation (per 1,024 examples).
FAST_TRAIN = dict(
    epochs=10, batch_size=1024, optimizer="sgd", parametrisation="decoupled", lr=11.5,
    momentum=0.85, weight_decay=0.0153, bias_lr_scale=64.0, label_smoothing=0.2,
    whiten_bias_epochs=3, schedule="triangle", warmup=0.23, lookahead_every=5,
    lookahead_decay=0.95**5, augment=True, translate=2, pad_mode="reflect",
    flip="alternating", tta=2,
)

#: Epochs and widths of the recipe per budget: smoke is seconds on synthetic data.
RECIPE_BUDGETS = {
    "smoke": dict(epochs=2, batch_size=64, n_train=512, n_test=256,
                  model=dict(block_widths=(8, 16, 16))),
    "cpu": {},
    "gpu": {},
}


def fast_config(budget: str = "cpu", seed: int = 0, **overrides) -> Config:
    """The full recipe (the ``fast`` preset of ``python -m lib train``)."""
    from .models import ConfigError

    if budget not in RECIPE_BUDGETS:
        raise ConfigError(f"budget {budget!r}: use one of {sorted(RECIPE_BUDGETS)}")
    b = dict(RECIPE_BUDGETS[budget])
    model = {**FAST_MODEL, **b.pop("model", {}), **overrides.pop("model", {})}
    return make_config(Config(), model=model, seed=seed, **{**FAST_TRAIN, **b, **overrides})


# --------------------------------------------------------------------------
# the chapter's ablations: add one technique at a time, and leave one out
# --------------------------------------------------------------------------
#: The ladder's network width: airbench's narrower variant (64/128/128, published at
#: 93 % in about 11 epochs), so that both ablations fit about 6 CPU hours.
LADDER_WIDTHS = (64, 128, 128)
#: The ladder's fidelity: the recipe's 10 epochs on 45,000 images; 5,000 held out to
#: tell when a run first reaches 90 % (and 93 %), the test set scored once at the end.
LADDER_BUDGETS = {
    "smoke": dict(epochs=2, holdout=64, batch_size=64, n_train=None),
    "cpu": dict(epochs=10, holdout=5_000),
    "gpu": dict(epochs=10, holdout=5_000),
}
LADDER_SEEDS = {"smoke": 1, "cpu": 2, "gpu": 5}
RECIPE_SEEDS = {"smoke": 1, "cpu": 3, "gpu": 5}
#: Lower JPEG qualities the ablations' full recipe is also trained on (the data re-encoded
#: once more, in memory): how much a lossy copy costs this short schedule (chapter 5).
JPEG_QUALITIES = (50, 30)
JPEG_SEEDS = {"smoke": 1, "cpu": 2, "gpu": 3}

#: Each step adds what it names to the step before (chapter 3's CNN and recipe first).
LADDER = [
    ("chapter 3's CNN and recipe", {}),
    ("airbench's layout", dict(model=dict(
        depth=3, block_widths=LADDER_WIDTHS, convs_per_block=2, early_pool=True,
        activation="gelu", global_pool="max"))),
    ("whitening layer", dict(model=dict(whiten=True), whiten_bias_epochs=3)),
    ("Dirac init", dict(model=dict(dirac_init=True))),
    ("frozen BN scales, fast BN statistics", dict(model=dict(bn_frozen_scale=True,
                                                            bn_momentum=0.4))),
    ("airbench's optimiser", dict(
        batch_size=1024, parametrisation="decoupled", lr=11.5, momentum=0.85,
        weight_decay=0.0153, bias_lr_scale=64.0, schedule="triangle", warmup=0.23,
        label_smoothing=0.2, model=dict(head_scale=1 / 9))),
    ("translate 2 (reflect), alternating flip", dict(translate=2, pad_mode="reflect",
                                                     flip="alternating")),
    ("lookahead (EMA)", dict(lookahead_every=5)),
]

#: What each leave-one-out run puts back to the ladder's first value.
LEAVE_ONE_OUT = [
    ("no whitening layer", dict(model=dict(whiten=False), whiten_bias_epochs=None)),
    ("no Dirac init", dict(model=dict(dirac_init=False))),
    ("no BN tweaks", dict(model=dict(bn_frozen_scale=False, bn_momentum=0.1))),
    ("no BN-bias learning-rate scale", dict(bias_lr_scale=1.0)),
    ("no label smoothing", dict(label_smoothing=0.0)),
    ("random flip instead of alternating", dict(flip="random")),
    ("crop 4 with zero padding instead of translate 2", dict(translate=4,
                                                             pad_mode="zeros")),
    ("no lookahead", dict(lookahead_every=0)),
    ("ReLU instead of GELU", dict(model=dict(activation="relu"))),
]


def _merge(base: dict, over: dict) -> dict:
    out = {**base, **{k: v for k, v in over.items() if k != "model"}}
    out["model"] = {**base.get("model", {}), **over.get("model", {})}
    return out


def ladder_configs(budget: str = "cpu", seed: int = 0) -> list[tuple[str, Config]]:
    """(name, config) of every ladder step, each adding one technique (chapter 5)."""
    from .book import ch03_cnn_config
    from .train import config_dict

    start = config_dict(make_config(ch03_cnn_config("cpu", seed), tta=2, final_test=True,
                                    **LADDER_BUDGETS[budget]))
    if budget == "smoke":
        start["model"]["width"] = 8
    out, cur = [], start
    for name, over in LADDER:
        if budget == "smoke" and "block_widths" in over.get("model", {}):
            over = _merge(over, dict(model=dict(block_widths=(8, 16, 16))))
        cur = _merge(cur, over)
        out.append((name, make_config(Config(), **cur)))
    return out


def leave_one_out_configs(budget: str = "cpu", seed: int = 0) -> list[tuple[str, Config]]:
    """(name, config): the ladder's last step with one technique taken out (chapter 5)."""
    from .train import config_dict

    full = config_dict(ladder_configs(budget, seed)[-1][1])
    return [(name, make_config(Config(), **_merge(full, over)))
            for name, over in LEAVE_ONE_OUT]


def jpeg_runs(ds, budget: str = "cpu", runs_dir=None, train: bool = False) -> list[dict]:
    """The ablations' full recipe on ``ds`` re-encoded at each of :data:`JPEG_QUALITIES`
    (cached ones only unless ``train``): one dict per (quality, seed) with the run and
    the mean absolute change of the test images' pixels (grey levels) re-encoding made."""
    from . import runs as R
    from .data import reencode_jpeg

    out = []
    for q in JPEG_QUALITIES:
        dq = reencode_jpeg(ds, q)  # its fingerprint is part of every run's key
        change = float(np.abs(dq.x_test.astype(np.int16) - ds.x_test).mean())
        for s in range(JPEG_SEEDS[budget]):
            c = ladder_configs(budget, s)[-1][1]
            run = R.get(c, dq, "recipe-jpeg", runs_dir) if train else \
                R.find(c, dq, "recipe-jpeg", runs_dir)
            out.append(dict(quality=q, change=change, seed=s, run=run))
    return out


#: How far the offline copy's pixels are from the original images: about 6 grey levels of
#: mean absolute difference (measured by the copy's provider on 4,000 training images
#: against a lossless copy; ../shared/data/README.md). Chapter 5's extrapolation uses it.
COPY_DISTANCE = 6.0


def jpeg_table(ds, budget: str = "cpu", runs_dir=None, train: bool = False):
    """What a lossier copy costs the ablations' full recipe (chapter 5): one row per
    cached run at the offline copy's own quality (75: the ladder's last step, change 0)
    and at each of :data:`JPEG_QUALITIES` (:func:`jpeg_runs`), with its plain and TTA
    test accuracy. Missing runs are left out unless ``train``."""
    import pandas as pd

    from . import runs as R

    rows = []
    for s in range(JPEG_SEEDS[budget]):
        c = ladder_configs(budget, s)[-1][1]
        run = R.get(c, ds, "recipe-ablation", runs_dir) if train else \
            R.find(c, ds, "recipe-ablation", runs_dir)
        rows.append(dict(quality=75, change=0.0, seed=s, run=run))
    rows += jpeg_runs(ds, budget, runs_dir, train)
    return pd.DataFrame([{**r, "test_acc": r["run"].summary["test_acc"],
                          "test_acc_tta": r["run"].summary["test_acc_tta"]}
                         for r in rows if r["run"] is not None],
                        columns=["quality", "change", "seed", "run", "test_acc",
                                 "test_acc_tta"])


def jpeg_trend(table, column: str = "test_acc_tta", at: float = -COPY_DISTANCE,
               level: float = 0.95) -> dict:
    """A straight line through ``column`` against the pixel change (every run a point,
    numpy.polyfit with its covariance): the slope (accuracy per grey level of change),
    the line's value at ``at`` with a t interval (n - 2 degrees of freedom; it assumes
    the line is the right shape), and the runs' scatter about the line (residual SD). At
    the default ``at`` the line is extended as far below the offline copy as the copy is
    from the originals: an extrapolation, which the chapter says."""
    import pandas as pd
    from scipy import stats

    x, y = table.change.to_numpy(float), table[column].to_numpy(float)
    if len(x) < 3 or len(set(x)) < 2:
        return dict(slope=float("nan"), at=at, value=float("nan"), lo=float("nan"),
                    hi=float("nan"), n=len(x), resid_sd=float("nan"))
    (slope, icpt), cov = np.polyfit(x, y, 1, cov=True)
    v = np.array([at, 1.0])
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 2)) * float(np.sqrt(v @ cov @ v))
    value = float(slope * at + icpt)
    resid = y - (slope * x + icpt)
    # lack of fit: the line's residuals against the scatter of the seeds about their
    # own change's mean (pure error); F = (lack-of-fit SS / (g - 2)) / (pure SS / (n - g))
    groups = pd.Series(y).groupby(x)
    g, pure = groups.ngroups, float(((y - groups.transform("mean").to_numpy()) ** 2).sum())
    lof = float((resid ** 2).sum()) - pure
    f = p = float("nan")
    if g > 2 and len(x) > g and pure > 0:
        f = (lof / (g - 2)) / (pure / (len(x) - g))
        p = float(stats.f.sf(f, g - 2, len(x) - g))
    return dict(slope=float(slope), at=at, value=value, lo=value - half, hi=value + half,
                n=len(x), resid_sd=float(np.sqrt((resid ** 2).sum() / (len(x) - 2))),
                lof_f=f, lof_df=(g - 2, len(x) - g), lof_p=p)


def jpeg_first_step(table, column: str = "test_acc_tta", at: float = -COPY_DISTANCE,
                    level: float = 0.95) -> dict:
    """The other end of the copy's estimated cost (chapter 5): the slope between the
    copy and the first re-encoding alone, carried ``at`` grey levels of change, as the
    accuracy gained over the copy (positive: the originals would score higher), with a
    t interval from the seed-to-seed SD pooled over every change (n - g degrees of
    freedom)."""
    from scipy import stats

    groups = table.groupby("change")[column]
    means, counts = groups.mean().sort_index(), groups.count().sort_index()
    df = int((counts - 1).sum())
    if len(means) < 2 or df < 1:
        return dict(value=float("nan"), lo=float("nan"), hi=float("nan"), df=df)
    sd = float(np.sqrt(((counts - 1) * groups.var().sort_index()).sum() / df))
    (c0, c1), (n0, n1) = means.index[:2], counts.iloc[:2]
    scale = -at / (c1 - c0)  # grey levels carried per grey level between the two
    value = float(means.iloc[0] - means.iloc[1]) * scale
    half = float(stats.t.ppf(0.5 + level / 2, df)) * sd * np.sqrt(1 / n0 + 1 / n1) * scale
    return dict(value=value, lo=value - half, hi=value + half, df=df)


def recipe_configs(budget: str = "cpu") -> list[Config]:
    """The full recipe at full fidelity, one config per seed (chapter 5)."""
    return [fast_config(budget, seed=s) for s in range(RECIPE_SEEDS[budget])]


def plan(budget: str = "cpu") -> list[tuple[str, str, Config]]:
    """Every run of the recipe chapter as (group, name, config), in the order
    ``python -m lib recipe`` trains them: the full recipe's seeds, then the first seed
    of both ablations, then the other seeds."""
    out = [("recipe", f"full recipe, seed {c.seed}", c) for c in recipe_configs(budget)]
    for s in range(LADDER_SEEDS[budget]):
        both = ladder_configs(budget, s) + leave_one_out_configs(budget, s)
        out += [("recipe-ablation", f"{n}, seed {s}", c) for n, c in both]
    return out


def previous_best_config(budget: str = "cpu", runs_dir=None) -> Config:
    """Chapter 6's best re-trained configuration before this recipe: the second study's
    first choice at three times the epochs (45 at ``cpu``), seed 0; what the recipe's
    speed and accuracy are compared with."""
    from . import search

    study = search.load_study("wide", runs_dir)
    spec = search.study_spec(study)
    t = search.top_trials(study, 1).iloc[0]
    params = {tr.number: tr for tr in study.get_trials(deepcopy=False)}[int(t.number)].params
    return search.retrain_configs(spec, params, budget,
                                  search.RETRAIN_LONGER_EPOCHS[budget], 1)[0]


def speed_configs(budget: str = "cpu", runs_dir=None) -> dict[str, Config]:
    """What ``python -m lib bench --recipe`` times: the recipe, the ablations' narrower
    network, and the previous best (chapter 5)."""
    out = {"recipe (64/256/256)": fast_config(budget),
           "ablations (64/128/128)": ladder_configs(budget)[-1][1]}
    try:
        out["previous best (wide, 45 ep.)"] = previous_best_config(budget, runs_dir)
    except Exception:  # noqa: BLE001 - no study in this runs folder (tests, smoke)
        pass
    return out


def speed_table(ds, budget: str = "cpu", runs_dir=None, steps: int = 4, device="auto"):
    """:func:`lib.bench.recipe_speed` of :func:`speed_configs`, measured once and cached
    in ``runs/recipe/`` (``python -m lib bench --recipe`` fills it on a quiet machine;
    the chapter reads it). Each row names the CPU flags it was measured with."""
    from .bench import cpu_peak_gflops, recipe_speed
    from .runs import cached

    cfgs = speed_configs(budget, runs_dir)

    def measure():
        df = recipe_speed(ds, cfgs, steps=steps, device=device)
        peak = cpu_peak_gflops()
        return df.assign(cpu_flags=peak["flags"], assumed_peak_gflops=peak["peak_gflops"],
                         cpu_mhz=peak["mhz"], threads=peak["cores"])

    return cached("recipe", "speed", ds, measure, runs_dir,
                  params=dict(configs={k: params_dict(c) for k, c in cfgs.items()},
                              steps=steps))


# --------------------------------------------------------------------------
# what the chapter reads back
# --------------------------------------------------------------------------
#: Published figures for the pristine data (cited in the chapter, not re-run here).
PUBLISHED = [
    dict(source="airbench94 (Jordan 2024)", network="64/256/256, whitening",
         epochs=9.9, accuracy=0.9401, hardware="NVIDIA A100, 3.83 s (3.29 s compiled)"),
    dict(source="ResNet-9 (Page 2018)", network="residual, 9 layers", epochs=10,
         accuracy=0.94, hardware="NVIDIA V100, 26 s"),
]


def run_row(run) -> dict:
    """One run of the chapter as a table row: test accuracy plain and with TTA, minutes
    of training as recorded, and the minutes its fastest epoch's pace gives for all its
    epochs (a run that shared the machine with other work for a while has slower epochs;
    the fastest is the usual estimate of an undisturbed one)."""
    s, m = run.summary, run.metrics
    quiet = (float(m.train_s.min()) * len(m) / 60 if "train_s" in m
             else s["train_time_s"] / 60)
    return dict(seed=run.config.seed, test_acc=s["test_acc"],
                test_acc_tta=s.get("test_acc_tta", float("nan")),
                minutes=s["train_time_s"] / 60, quiet_minutes=quiet,
                cpu_flags=s.get("cpu_flags", "not recorded"), threads=s.get("threads"),
                key=run.key)


def ablation_runs(ds, budget: str, runs_dir=None, train: bool = False) -> list[dict]:
    """Every ladder and leave-one-out run, cached ones only unless ``train``: one dict
    per (kind, step, seed) with the run (None where it is not cached yet)."""
    from . import runs as R

    out = []
    for s in range(LADDER_SEEDS[budget]):
        for kind, pairs in (("ladder", ladder_configs(budget, s)),
                            ("leave one out", leave_one_out_configs(budget, s))):
            for i, (name, c) in enumerate(pairs):
                if budget == "smoke" and i not in (0, len(pairs) - 1):
                    continue  # smoke: the first and last step of each series (seconds)
                run = (R.get(c, ds, "recipe-ablation", runs_dir) if train
                       else R.find(c, ds, "recipe-ablation", runs_dir))
                out.append(dict(kind=kind, step=i, name=name, seed=s, run=run))
    return out


def ablation_table(rows: list[dict]):
    """Mean over seeds per step: accuracy plain and with TTA (and their SDs), minutes per
    run (the fastest seed's, at its fastest epoch's pace: see :func:`run_row`), how many
    seeds are in each mean, and the runs' keys (a leave-one-out row can be a ladder step
    under another name: the same runs)."""
    import pandas as pd

    recs = [dict(kind=r["kind"], step=r["step"], name=r["name"], **run_row(r["run"]))
            for r in rows if r["run"] is not None]
    if not recs:
        return pd.DataFrame()
    df = pd.DataFrame(recs)
    g = df.groupby(["kind", "step", "name"], sort=True)
    return g.agg(seeds=("seed", "nunique"), test_acc=("test_acc", "mean"),
                 test_acc_sd=("test_acc", "std"), tta_acc=("test_acc_tta", "mean"),
                 tta_acc_sd=("test_acc_tta", "std"), minutes=("quiet_minutes", "min"),
                 keys=("key", lambda k: tuple(sorted(k)))).reset_index()


def previous_best_runs(ds, budget: str = "cpu", runs_dir=None) -> list:
    """The cached seeds of :func:`previous_best_config` (empty if the study or the runs
    are not in this runs folder)."""
    from . import runs as R

    try:
        c = previous_best_config(budget, runs_dir)
    except Exception:  # noqa: BLE001 - no search study here (smoke, a fresh clone)
        return []
    found = [R.find(make_config(c, seed=k), ds, "search-best", runs_dir) for k in range(3)]
    return found if all(r is not None for r in found) else []


def comparison(full: list, ch3: list, prev: list):
    """The chapter's side-by-side table: the published figures (cited, pristine data),
    the full recipe, chapter 3's CNN and the search's best (each over its seeds)."""
    import pandas as pd

    from .stats import fmt

    def minutes(rs):
        threads = sorted({r.summary.get("threads") for r in rs}, key=str)
        where = "runs on " if len(threads) > 1 else ""
        plural = "" if threads == [1] else "s"
        return (f"2-core CPU, {where}{' or '.join(map(str, threads))} thread{plural}, "
                f"{np.mean([r.summary['train_time_s'] for r in rs]) / 60:.0f} min")

    rows = [dict(source=p["source"], data="pristine (published)", epochs=f"{p['epochs']:g}",
                 accuracy=f"{p['accuracy']:.2%}", hardware=p["hardware"]) for p in PUBLISHED]
    plain = [r.summary["test_acc"] for r in full]
    tta = [r.summary["test_acc_tta"] for r in full]
    rows.append(dict(source="this chapter's full recipe", data="JPEG copy",
                     epochs=str(full[0].config.epochs),
                     accuracy=f"{fmt(tta)} with TTA; {fmt(plain)} plain",
                     hardware=minutes(full)))
    for name, rs in (("chapter 3's CNN", ch3), ("the search's best (chapter 6)", prev)):
        if rs:
            rows.append(dict(source=name, data="JPEG copy", epochs=str(rs[0].config.epochs),
                             accuracy=fmt([r.summary["test_acc"] for r in rs]) + " plain",
                             hardware=minutes(rs)))
    return pd.DataFrame(rows).set_index("source")


def contributions(ab, n_test: int = 10_000) -> str:
    """What each technique bought, in words, from :func:`ablation_table`: the gain of
    each ladder step over the step before, and the loss when it is left out of the
    ablations' full recipe (or replaced by its usual form), in test accuracy with TTA and
    plain, largest TTA change first, with the seeds behind each, the chance bound of a
    difference for each metric (:func:`seed_noise`), the changes beyond it on one metric
    only, and what the test set's sampling error (``n_test`` images) means here."""
    from .stats import binomial_se

    if ab is None or not len(ab):
        return "No ablation run is cached yet."
    noise = {c: seed_noise(ab, c) for c in ("tta_acc", "test_acc")}

    def change(r, col):
        return float(getattr(r, col)) * 100

    def item(r):
        return (f"{r.name} {change(r, 'd_tta'):+.2f} with TTA, {change(r, 'd_test'):+.2f} "
                f"plain ({r.seeds} seed{'s' * (r.seeds > 1)})")

    parts, changes = [], []
    lad = ab[ab.kind == "ladder"].sort_values("step")
    if len(lad) > 1:
        d = lad.assign(d_tta=lad.tta_acc.diff(), d_test=lad.test_acc.diff(),
                       pair=_pairs(lad, lad.shift(1))).iloc[1:]
        d = d[lad.step.diff().iloc[1:] == 1]  # only steps whose previous step is cached
        d = d.sort_values("d_tta", ascending=False)
        changes.append(d)
        parts.append("Adding one technique or bundle at a time (change in test accuracy "
                     "from the step before, in points): "
                     + "; ".join(item(r) for r in d.itertuples()) + ".")
    loo = ab[ab.kind == "leave one out"]
    full = lad[lad.step == lad.step.max()] if len(lad) else lad
    if len(loo) and len(full) and int(full.step.iloc[0]) == len(LADDER) - 1:
        d = loo.assign(d_tta=float(full.tta_acc.iloc[0]) - loo.tta_acc,
                       d_test=float(full.test_acc.iloc[0]) - loo.test_acc,
                       pair=_pairs(loo, full.loc[full.index.repeat(len(loo))]
                                   .set_axis(loo.index))
                       ).sort_values("d_tta", ascending=False)
        changes.append(d)
        parts.append("Taking one technique out of the ablations' full recipe (the ladder's "
                     "last step; or replacing it by its usual form) costs, in points: "
                     + "; ".join(item(r) for r in d.itertuples()) + ".")
    if not parts:
        return "Too few ablation runs are cached to compare steps yet."
    lo, hi = int(ab.seeds.min()), int(ab.seeds.max())
    seeds = f"{lo}" if lo == hi else f"{lo} to {hi}"
    text = " ".join(parts) + f" Each step has {seeds} seed{'s' * (hi > 1)}."
    nt, np_ = noise["tta_acc"], noise["test_acc"]
    if nt["df"] > 0:
        text += (f" The seed-to-seed standard deviation, pooled over the distinct steps, "
                 f"is {nt['sd'] * 100:.2f} points with TTA and {np_['sd'] * 100:.2f} plain "
                 f"({nt['df']} degrees of freedom), so two steps' means of {lo} seeds "
                 f"differ by up to ±{nt['half'] * 100:.2f} points with TTA and "
                 f"±{np_['half'] * 100:.2f} plain by chance alone (95 %): smaller "
                 "differences do not rank the techniques, and a change whose sign differs "
                 "between the ladder and leave-one-out is one they do not settle.")
        one, seen = [], set()
        for d in changes:
            for r in d.itertuples():
                if (abs(r.d_tta) > nt["half"]) != (abs(r.d_test) > np_["half"]) and \
                        r.pair not in seen:
                    seen.add(r.pair)  # the same two sets of runs under two names: once
                    one.append(r)
        if one:
            text += (" Beyond that bound on one of the two scores only: "
                     + "; ".join(f"{r.name} ({change(r, 'd_tta'):+.2f} with TTA, "
                                 f"{change(r, 'd_test'):+.2f} plain)" for r in one)
                     + ". Where the plain change is the larger, test-time augmentation, "
                     "added on top, makes up part of what the technique buys (a reading "
                     "of these numbers, not a tested mechanism): which score a claim "
                     "rests on matters.")
    se = binomial_se(float(ab.tta_acc.mean()), n_test) * 100
    return text + (f" The test set's sampling error ({se:.2f} points on {n_test:,} images) "
                   "is the uncertainty of each step's accuracy as an estimate of its "
                   "accuracy on new images; it matters much less for the differences "
                   "between steps, since all are scored on the same images: the part "
                   "they share cancels, and the part that varies from run to run is in "
                   "the seed-to-seed SD above.")


def _pairs(rows, other) -> list:
    """For each row of an ablation table, the runs it is compared with ``other``'s row
    of the same index: one comparison, whatever the rows are called (the names when the
    table carries no keys)."""
    col = "keys" if "keys" in rows else "name"
    return [frozenset([a, b]) for a, b in zip(rows[col], other[col])]


def seed_noise(ab, col: str = "tta_acc", level: float = 0.95) -> dict:
    """The seed-to-seed SD of ``col`` (``tta_acc`` or ``test_acc``) pooled over the
    distinct steps of :func:`ablation_table` (each step's variance weighted by its seeds
    minus one; a row that shows the same runs as another under a second name counts
    once), its degrees of freedom, and the half-width of a ``level`` t interval for the
    difference of two steps' means with the smallest number of seeds."""
    from scipy import stats

    ok = ab[ab.seeds > 1]
    if "keys" in ok:
        ok = ok.drop_duplicates("keys")
    df = int((ok.seeds - 1).sum())
    if df == 0:
        return dict(sd=float("nan"), df=0, half=float("nan"))
    sd = float(np.sqrt(((ok.seeds - 1) * ok[f"{col}_sd"] ** 2).sum() / df))
    k = int(ok.seeds.min())
    half = float(stats.t.ppf(0.5 + level / 2, df)) * sd * np.sqrt(2 / k)
    return dict(sd=sd, df=df, half=half)
