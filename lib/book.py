"""What the chapters share: budgets, parameter checks, the chapter configs, provenance.

Every chapter's ``parameters`` cell declares ``budget``, ``device``,
``data_dir``, ``runs_dir`` and ``seed``; its next cell calls :func:`setup`,
which validates them and returns the data and the settings the chapter uses.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

import numpy as np

from . import __version__
from .data import Dataset, load_cifar10, synthetic
from .models import ConfigError, model_config
from .train import Config, make_config, resolve_device

#: smoke: synthetic data, seconds (tests); cpu: what 2 CPU cores finish in a few
#: hours for the whole book; gpu: full fidelity on one GPU.
BUDGETS = ("smoke", "cpu", "gpu")


class ParameterError(ValueError):
    """A papermill parameter has a value the chapter cannot use."""


@dataclass
class Setup:
    """The validated parameters of one chapter execution, and its data."""

    chapter: str
    budget: str
    device: str
    seed: int
    data: Dataset
    runs_dir: str | None
    run_keys: list = field(default_factory=list)

    def note_run(self, run) -> None:
        """Remember a run this chapter read, for the execution report."""
        if run.key not in self.run_keys:
            self.run_keys.append(run.key)


def setup(chapter: str, budget: str = "cpu", device: str = "auto", data_dir: str | None = None,
          runs_dir: str | None = None, seed: int = 0) -> Setup:
    """Validate a chapter's papermill parameters and load its data.

    ``budget="smoke"`` uses a small synthetic CIFAR-shaped dataset (no download);
    the other budgets load CIFAR-10 through :func:`lib.data.load_cifar10`.
    """
    if budget not in BUDGETS:
        raise ParameterError(f"budget={budget!r} is not a budget; use one of {BUDGETS}")
    try:
        dev = resolve_device(device)
    except ConfigError as e:
        raise ParameterError(f"device={device!r}: {e}") from e
    if not isinstance(seed, int) or seed < 0:
        raise ParameterError(f"seed={seed!r} must be a non-negative integer")
    _latex_tables()
    import pandas as pd

    # tables are shown whole: no cell cut to "..." (the book's CSS wraps long cells)
    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.max_columns", 50)
    if budget == "smoke":
        data = synthetic(n_train=600, n_test=300, seed=seed)
    else:
        data = load_cifar10(data_dir or None)
    return Setup(chapter=chapter, budget=budget, device=str(dev), seed=seed, data=data,
                 runs_dir=runs_dir)


def _latex_tables() -> None:
    """Give styled tables a plain-text form, which is what the PDF handout
    (``make pdf``) prints for them (pandas leaves a Styler's text form as its repr)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return
    from pandas.io.formats.style import Styler

    ip.display_formatter.formatters["text/plain"].for_type(
        Styler, lambda st, p, cycle: p.text(st.data.to_string()))


# --------------------------------------------------------------------------
# chapter configs, one function per chapter, sized by budget
# --------------------------------------------------------------------------
def ch01_config(budget: str, seed: int = 0) -> Config:
    """Chapter 1's small CNN: 5x5 kernels so the learned filters are easy to see."""
    model = model_config(kind="cnn", depth=3, width=32, growth=2.0, kernel_size=5,
                         batch_norm=True)
    epochs = {"smoke": 2, "cpu": 10, "gpu": 20}[budget]
    return make_config(model=model.__dict__, epochs=epochs, batch_size=128, lr=0.05,
                       optimizer="sgd", schedule="onecycle", seed=seed)


def ch03_cnn_model():
    """The chapter-3 CNN (also what ``python -m lib bench`` times)."""
    return model_config(kind="cnn", depth=3, width=32, growth=2.0, kernel_size=3,
                        convs_per_block=2, batch_norm=True)


def ch03_mlp_model():
    """The chapter-3 MLP: the earlier exercise's fully connected model class."""
    return model_config(kind="mlp", hidden=(512, 256))


def ch03_configs(budget: str) -> dict[str, list[Config]]:
    """Chapter 3's runs: the MLP and the CNN with the same optimiser, schedule,
    augmentation and epoch budget, several seeds each."""
    epochs = {"smoke": 2, "cpu": 20, "gpu": 40}[budget]
    n_seeds = {"smoke": 2, "cpu": 3, "gpu": 5}[budget]
    common = dict(epochs=epochs, batch_size=128, lr=0.05, optimizer="sgd",
                  schedule="onecycle", weight_decay=5e-4)
    return {name: [make_config(model=m.__dict__, seed=s, **common) for s in range(n_seeds)]
            for name, m in (("mlp", ch03_mlp_model()), ("cnn", ch03_cnn_model()))}


#: Chapter 3's fair chance for the MLP: its own learning rate, with and without the
#: augmentation, chosen on a validation split (5,000 training images held out).
MLP_LRS = {"smoke": (0.01, 0.05), "cpu": (0.002, 0.005, 0.01, 0.02, 0.05),
           "gpu": (0.002, 0.005, 0.01, 0.02, 0.05)}
MLP_HOLDOUT = {"smoke": 100, "cpu": 5_000, "gpu": 5_000}


def ch03_mlp_tuning_configs(budget: str) -> list[Config]:
    """The MLP of chapter 3 at each of :data:`MLP_LRS`, with and without augmentation,
    scored on a validation split (one seed each): its learning rate is chosen here, not
    borrowed from the CNN."""
    base = ch03_configs(budget)["mlp"][0]
    return [make_config(base, lr=lr, augment=aug, holdout=MLP_HOLDOUT[budget])
            for aug in (True, False) for lr in MLP_LRS[budget]]


def ch03_mlp_tuned_configs(budget: str, lr: float, augment: bool) -> list[Config]:
    """The MLP with the chosen learning rate and augmentation, trained on the whole
    training set and scored on the test set, with chapter 3's seeds."""
    return [make_config(c, lr=lr, augment=augment) for c in ch03_configs(budget)["mlp"]]


def ch03_mlp_choice(scored) -> tuple[float, bool]:
    """The (lr, augment) of the best validation accuracy among ``scored``, pairs of a
    :func:`ch03_mlp_tuning_configs` config and its accuracy (the first best on a tie)."""
    c, _ = max(scored, key=lambda ca: ca[1])
    return float(c.lr), bool(c.augment)


def ch03_mlp_fair_chance(data: Dataset, budget: str, runs_dir=None, device="auto",
                         train: bool = True):
    """Chapter 3's MLP search: (table of the validation accuracy per learning rate and
    augmentation, the chosen (lr, augment), the chosen setting's test runs). The choice is
    the best validation accuracy; the test set is scored only for the chosen setting."""
    import pandas as pd

    from . import runs as R

    rows, scored = [], []
    for c in ch03_mlp_tuning_configs(budget):
        r = R.get(c, data, "ch03", runs_dir, device=device, train=train)
        rows.append(dict(lr=c.lr, augment=c.augment, val_acc=r.summary["val_acc"],
                         train_acc=r.summary["train_acc"], key=r.key))
        scored.append((c, r.summary["val_acc"]))
    table = pd.DataFrame(rows)
    choice = ch03_mlp_choice(scored)
    tuned = [R.get(c, data, "ch03", runs_dir, device=device, train=train)
             for c in ch03_mlp_tuned_configs(budget, *choice)]
    return table, choice, tuned


#: Chapter 7's controlled weight-decay experiment: chapter 3's CNN and recipe with only
#: the weight decay changed (5e-4 is chapter 3's own value, whose runs are reused).
WD_VALUES = (0.0, 5e-4, 5e-3)
WD_SEEDS = {"smoke": 1, "cpu": 2, "gpu": 3}


def wd_experiment_configs(budget: str) -> list[Config]:
    """Chapter 3's CNN at each of :data:`WD_VALUES`, :data:`WD_SEEDS` seeds each."""
    cs = ch03_configs(budget)["cnn"][:WD_SEEDS[budget]]
    return [make_config(c, weight_decay=wd) for wd in WD_VALUES for c in cs]


def ch04_track() -> dict:
    """What chapter 4's run logs besides scalars and histograms: the model graph,
    prediction images, and a W&B offline run where W&B is installed."""
    from .track import wandb_available

    return dict(graph=True, predictions=16, wandb=wandb_available())


def ch04_config(budget: str, seed: int = 0) -> Config:
    """Chapter 4's run, logged to TensorBoard and W&B: the chapter-3 CNN, fewer epochs."""
    return make_config(ch03_cnn_config(budget, seed),
                       epochs={"smoke": 2, "cpu": 8, "gpu": 20}[budget])


def ch04_overhead_config(budget: str) -> Config:
    """What chapter 4's logging benchmark trains, once per logging variant."""
    return make_config(ch03_cnn_config(budget), epochs={"smoke": 2, "cpu": 3, "gpu": 5}[budget],
                       n_train={"smoke": None, "cpu": 10_000, "gpu": None}[budget])


def ch07_configs(budget: str) -> list[Config]:
    """Chapter 8's Keras runs: exactly chapter 3's CNN runs (same seeds), which chapter 8
    trains a second time with ``lib.keras_cnn`` (``runs.get(..., framework="keras")``)."""
    return ch03_configs(budget)["cnn"]


def ch07_speed_config(budget: str) -> Config:
    """What chapter 8's throughput benchmark trains in each framework (two epochs)."""
    return make_config(ch03_cnn_config(budget),
                       n_train={"smoke": None, "cpu": 5_000, "gpu": 20_000}[budget])


def ch07_speed(data: Dataset, budget: str, runs_dir=None, repeats: int | None = None):
    """Chapter 8's throughput benchmark (:func:`lib.bench.framework_speed`), computed
    once per config and data and cached in ``runs/ch07/``."""
    from .bench import framework_speed
    from .runs import cached
    from .train import params_dict

    c = ch07_speed_config(budget)
    repeats = repeats or {"smoke": 1, "cpu": 3, "gpu": 3}[budget]
    return cached("ch07", "framework-speed", data,
                  lambda: framework_speed(data, c, repeats=repeats, log=lambda m: None),
                  runs_dir,
                  params=dict(config=params_dict(c), repeats=repeats))


def ch03_cnn_config(budget: str, seed: int = 0) -> Config:
    """One chapter-3 CNN run (the ``ch03-cnn`` preset of ``python -m lib train``)."""
    return make_config(ch03_configs(budget)["cnn"][0], seed=seed)


def points(d: float) -> str:
    """An accuracy difference in words: 0.0123 -> "1.23 percentage points" (a difference
    of two percentages is not a percentage of either)."""
    return f"{abs(d) * 100:.2f} percentage points"


def versus_ch3(ch3_acc: float, ch3_epochs: int, found: dict) -> str:
    """Chapter 6's verdict on the search against chapter 3's hand-picked CNN, worded by
    the numbers: ``found`` maps epochs -> the re-trained config's mean test accuracy."""
    parts = []
    for e, acc in sorted(found.items()):
        d = acc - ch3_acc
        verdict = (f"beats it by {points(d)}" if d > 0 else f"falls short of it by {points(d)}"
                   if d < 0 else "ties it")
        cmp = ("fewer than" if e < ch3_epochs else "more than" if e > ch3_epochs
               else "as many as")
        parts.append(f"at {e} epochs ({cmp} its {ch3_epochs}) the search's choice "
                     f"{verdict}")
    return (f"Chapter 3's hand-picked CNN scored {ch3_acc:.2%} on the same test set with "
            f"{ch3_epochs} epochs; " + "; ".join(parts) + ".")


def epoch_returns(found: dict) -> str:
    """What each further block of epochs bought, worded by the numbers (chapter 6):
    ``found`` maps epochs -> one configuration's mean test accuracy at that budget."""
    es = sorted(found)
    if len(es) < 2:
        raise ValueError("epoch_returns needs the accuracy at two budgets at least")
    steps = [(a, b, found[b] - found[a]) for a, b in zip(es, es[1:])]
    parts = [f"from {a} to {b} epochs it " + (
        f"{'gains' if d > 0 else 'loses'} {points(d)} ({abs(d) * 100 / (b - a):.3f} points "
        "per extra epoch)" if d else "keeps its accuracy") for a, b, d in steps]
    rates = [d / (b - a) for a, b, d in steps]
    if len(rates) == 1:
        verdict = ""
    elif rates[-1] < 0:
        verdict = "The last extra epochs cost accuracy: more epochs no longer pay."
    elif rates[-1] == 0:
        verdict = "The last extra epochs bought nothing: more epochs no longer pay."
    elif rates[-1] < rates[0]:
        verdict = ("Each further epoch buys less than the ones before it: diminishing "
                   "returns, yet still a gain.")
    else:
        verdict = "The later epochs buy as much as the earlier ones: far from saturated."
    text = "; ".join(parts)
    return f"{text[0].upper()}{text[1:]}. {verdict}".rstrip()


def versus_seeds(name_a: str, accs_a, name_b: str, accs_b, alpha: float = 0.05) -> str:
    """Two configs' test accuracies over seeds, compared in words (chapter 6): the means,
    the difference, and whether Welch's t-test over the seeds separates them."""
    from .stats import welch_ci

    a, b = np.asarray(accs_a, float), np.asarray(accs_b, float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("versus_seeds needs at least two seeds per config")
    d = b.mean() - a.mean()
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread on either side: no t-test
        p = 0.0 if d else 1.0
    else:
        p = welch_ci(a, b)["p"]
    lead = (f"{name_b} scores {b.mean():.2%} against {a.mean():.2%} for {name_a} "
            f"({len(b)} and {len(a)} seeds), ")
    if d == 0:
        return lead + "the same."
    way = f"{points(d)} {'higher' if d > 0 else 'lower'}"
    if p < alpha:
        return lead + (f"{way}; Welch's t-test over the seeds gives p = {p:.2g}, so the "
                       "difference is larger than the spread between seeds.")
    return lead + (f"{way}; Welch's t-test over the seeds gives p = {p:.2g}, so these seeds "
                   "cannot tell the two apart.")


def code_lines(*objs) -> int:
    """Lines of code in functions/classes: blank lines, comments and docstrings not
    counted (chapter 8 compares the two frameworks' code with it)."""
    import ast
    import inspect
    import textwrap

    total = 0
    for o in objs:
        src = textwrap.dedent(inspect.getsource(o))
        doc = set()
        for node in ast.walk(ast.parse(src)):
            body = getattr(node, "body", None)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and \
                    body and isinstance(body[0], ast.Expr) and \
                    isinstance(getattr(body[0], "value", None), ast.Constant) and \
                    isinstance(body[0].value.value, str):
                doc.update(range(body[0].lineno, body[0].end_lineno + 1))
        total += sum(1 for i, ln in enumerate(src.splitlines(), 1)
                     if ln.strip() and not ln.strip().startswith("#") and i not in doc)
    return total


# --------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------
def _machines(runs: list) -> dict:
    """Each distinct device, thread count and framework version (torch, or TensorFlow
    and Keras) of ``runs``, in words, with its number of runs."""
    from collections import Counter

    def kind(m: dict) -> str:
        th = m.get("threads", "?")
        lib = (f"TensorFlow {m.get('tensorflow', '?')}, Keras {m.get('keras', '?')}"
               if m.get("framework") == "keras" else f"torch {m.get('torch', '?')}")
        return (f"{m.get('device', '?')} ({m.get('device_name', '?')}, {th} "
                f"thread{'' if th == 1 else 's'}), {lib}")

    return Counter(kind(r.summary) for r in runs)


def trained_on(runs: list) -> str:
    """Where ``runs`` were trained, in words: each distinct device, thread count and torch
    version, with its number of runs when they differ."""
    kinds = _machines(runs)
    if len(kinds) <= 1:
        return next(iter(kinds), "no training run")
    return "; ".join(f"{k}: {n} run{'s' * (n > 1)}" for k, n in kinds.items())


def timing_note(runs: list) -> str:
    """A sentence for a table of minutes per run whose ``runs`` were not all trained
    alike (device, threads, torch); empty when they were."""
    if len(_machines(runs)) <= 1:
        return ""
    return f" Minutes per run compare only between runs trained alike: {trained_on(runs)}."


def execution_report(s: Setup, runs: list) -> object:
    """A small table for the end of a chapter: what made its numbers (each run once,
    however many of the chapter's tables showed it)."""
    import json

    import pandas as pd
    from myst_nb import glue

    from .runs import READ, _git_commit

    runs = list({r.key: r for r in runs}.values())

    glue("inputs_read", json.dumps(READ), display=False)  # read by `python -m lib book`

    rows = {
        "budget": s.budget,
        "executed": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git commit": _git_commit(),
        "lib version": __version__,
        "data": s.data.source,
        "data fingerprint": s.data.fingerprint,
        "trained on": trained_on(runs),
        "runs read": ", ".join(r.key for r in runs) or "none",
    }
    return pd.DataFrame({"value": rows})
