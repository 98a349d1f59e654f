"""The hyperparameter search (chapters 6 and 7): Optuna studies over :class:`Config`.

The objective (a config -> its validation accuracy after training, a normal
cached run in ``runs/search/<study>/<key>/``) is kept apart from the searcher
(Optuna's sampler and pruner). A study's trials live in an Optuna RDB storage,
SQLite at ``runs/search/<study>.db`` by default; any SQLAlchemy URL (e.g.
PostgreSQL) lets many workers on many machines share one study.

Resuming: run the same command again. Finished trials stay; a trial whose worker
died (same host: its process is gone; other hosts: its heartbeat stopped) is
marked FAIL and its parameters are queued again, so nothing is counted twice.
A study never runs more than its ``n_trials`` trained trials in total.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import socket
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import pandas as pd

from . import runs
from .data import Dataset
from .models import ConfigError, ModelConfig, macs
from .runs import _note_read, _pid_alive, get, runs_root
from .train import Config, config_from_dict, make_config, params_dict

# Optuna imports tqdm.auto, which warns inside Jupyter when ipywidgets is absent;
# we never show its progress bars.
warnings.filterwarnings("ignore", message="IProgress not found")

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("hyperband", "sha", "none")
OBJECTIVE = "val_acc"


class SearchError(RuntimeError):
    """A bad search space, storage or study; the message says what to do."""


# --------------------------------------------------------------------------
# the search space
# --------------------------------------------------------------------------
def known_params() -> list[str]:
    """Every name a search space may use: Config fields and ``model.<field>``."""
    top = [f.name for f in fields(Config) if f.name != "model"]
    return sorted(top + [f"model.{f.name}" for f in fields(ModelConfig)])


#: A search space maps a name (a Config field or ``model.<field>``) to one of:
#:
#: - a list: categorical choices (a tuple field's value written "64/256/256");
#: - ``{"low", "high", "log"?, "step"?}``: a range (ints give an int range);
#: - ``{"choices": [...], "implies": {choice: {field: value}}}``: categorical, a choice
#:   also setting other fields (AdamW: the coupled parametrisation);
#: - ``{"given": name, "cases": {value: spec}}``: a different list or range for each
#:   value of an earlier name (the learning rate's range per optimiser). Optuna sees
#:   it as the parameter ``name|value``, so that each range has its own history.
SEP = "|"


def _is_tuple_field(name: str) -> bool:
    obj, attr = (ModelConfig, name[6:]) if name.startswith("model.") else (Config, name)
    f = {f.name: f for f in fields(obj)}.get(attr)
    return f is not None and str(f.type).startswith("tuple")


def decode_value(name: str, v):
    """A space value as the config takes it ("64/256/256" -> (64, 256, 256))."""
    if isinstance(v, str) and _is_tuple_field(name):
        try:
            return tuple(int(x) for x in v.split("/"))
        except ValueError:
            raise SearchError(f"{name}={v!r}: write a tuple as numbers joined by '/', "
                              "e.g. '64/256/256'") from None
    return v


def _choices(spec):
    return list(spec["choices"] if isinstance(spec, dict) and "choices" in spec else spec)


def _optuna_name(name: str, spec, params: dict) -> str:
    """The name Optuna knows ``name`` by: ``name|case`` for a conditional one, the case
    being the value ``params`` holds for the parameter it depends on."""
    if isinstance(spec, dict) and "given" in spec:
        return f"{name}{SEP}{params.get(spec['given'])}"
    return name


def _walk(space: dict, pick) -> dict:
    """Optuna's values of every parameter that applies, in space order (a conditional
    one after the parameter it depends on): ``pick(optuna_name, leaf_spec)`` gives each."""
    params: dict = {}
    for name, spec in space.items():
        oname = _optuna_name(name, spec, params)
        leaf = spec["cases"][params[spec["given"]]] if oname != name else spec
        params[oname] = pick(oname, leaf)
    return params


def _depth_follows_widths(over: dict, depth_given: bool) -> dict:
    """``model.depth`` set to the number of ``model.block_widths`` unless given."""
    if "model.block_widths" in over and not depth_given:
        over["model.depth"] = len(over["model.block_widths"])
    return over


def decode(space: dict, params: dict) -> dict:
    """Optuna's parameter values -> config overrides: conditional names lose their
    ``|case``, tuples are parsed, implied settings added, and ``model.depth`` follows
    ``model.block_widths`` when the space sets the widths but not the depth."""
    out = {}
    for name, spec in space.items():
        if isinstance(spec, dict) and "implies" in spec and params.get(name) in spec["implies"]:
            out.update(spec["implies"][params[name]])
    for name, spec in space.items():
        oname = _optuna_name(name, spec, params)
        if oname in params:
            out[name] = decode_value(name, params[oname])
    return _depth_follows_widths(out, "model.depth" in space)


def encode(space: dict, overrides: dict) -> dict:
    """Config overrides (e.g. the recipe's defaults) -> Optuna's parameter values, to
    enqueue them as a trial; a tuple is written "a/b/c"."""
    out = {}
    for name, spec in space.items():
        if name not in overrides:
            raise SearchError(f"enqueued trial: no value for {name!r} of the space")
        v = overrides[name]
        if isinstance(v, (tuple, list)):
            v = "/".join(str(int(x)) for x in v)
        if isinstance(spec, dict) and "given" in spec:
            out[f"{name}{SEP}{overrides[spec['given']]}"] = v
        else:
            out[name] = v
    return out


def check_space(space: dict, base: Config) -> None:
    """Raise SearchError (one line) for an unknown name, an impossible range or a value
    no config accepts (see :data:`SEP` for the forms a space takes)."""
    if not space:
        raise SearchError("the search space is empty; give at least one parameter")
    known = known_params()
    seen: list[str] = []
    for name, spec in space.items():
        if name not in known:
            raise SearchError(f"unknown hyperparameter {name!r} in the search space; "
                              f"known: {', '.join(known)}")
        if isinstance(spec, dict) and "given" in spec:
            given = spec["given"]
            if given not in seen or not isinstance(space[given], (list, tuple, dict)) \
                    or (isinstance(space[given], dict) and "low" in space[given]):
                raise SearchError(f"{name}: 'given' must name a categorical parameter "
                                  f"listed before it, not {given!r}")
            cases = spec.get("cases") or {}
            missing = [c for c in _choices(space[given]) if c not in cases]
            if missing:
                raise SearchError(f"{name}: no case for {given}={missing[0]!r}; give one "
                                  f"per choice of {given}")
            implied = space[given].get("implies", {}) if isinstance(space[given], dict) else {}
            for case, leaf in cases.items():
                _check_leaf(f"{name}{SEP}{case}", name, leaf, base,
                            {given: case, **implied.get(case, {})})
        elif isinstance(spec, dict) and "choices" in spec:
            extra = set(spec) - {"choices", "implies"}
            if extra:
                raise SearchError(f"{name}: unknown keys {sorted(extra)} (choices, implies)")
            for choice, sets in (spec.get("implies") or {}).items():
                if choice not in spec["choices"]:
                    raise SearchError(f"{name}: implies for {choice!r}, not a choice")
                for k in sets:
                    if k not in known:
                        raise SearchError(f"{name}={choice!r} implies unknown {k!r}")
            for c in _choices(spec):
                _check_leaf(name, name, [c], base, (spec.get("implies") or {}).get(c, {}))
        else:
            _check_leaf(name, name, spec, base, {})
        seen.append(name)


def _check_leaf(oname: str, name: str, spec, base: Config, context: dict) -> None:
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise SearchError(f"{oname}: no choices given")
        values = list(spec)
    elif isinstance(spec, dict):
        extra = set(spec) - {"low", "high", "log", "step"}
        if extra or not {"low", "high"} <= set(spec):
            raise SearchError(f"{oname}: a range needs low and high (and optionally "
                              f"log, step); got {sorted(spec)}")
        lo, hi = spec["low"], spec["high"]
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float))) \
                or not lo < hi:
            raise SearchError(f"{oname}: impossible range low={lo!r} high={hi!r} "
                              "(need numbers with low < high)")
        if spec.get("log") and lo <= 0:
            raise SearchError(f"{oname}: a log range needs low > 0, got low={lo!r}")
        values = [lo, hi]
    else:
        raise SearchError(f"{oname}: give a list of choices or a dict with low/high, "
                          f"not {spec!r}")
    for v in values:
        over = {k: decode_value(k, x) for k, x in {**context, name: v}.items()}
        _depth_follows_widths(over, "model.depth" in over)
        try:
            make_config(base, **over)
        except (ConfigError, TypeError, ValueError) as e:
            raise SearchError(f"{oname}={v!r} is not a valid value: {e}") from None


def suggest(trial, name: str, spec):
    """One value of ``name`` from the trial (Optuna's suggest_* API)."""
    if isinstance(spec, (list, tuple)) or (isinstance(spec, dict) and "choices" in spec):
        return trial.suggest_categorical(name, _choices(spec))
    lo, hi = spec["low"], spec["high"]
    if isinstance(lo, int) and isinstance(hi, int):
        return trial.suggest_int(name, lo, hi, log=bool(spec.get("log")),
                                 step=spec.get("step") or 1)
    return trial.suggest_float(name, float(lo), float(hi), log=bool(spec.get("log")),
                               step=spec.get("step"))


def suggest_all(trial, space: dict) -> dict:
    """Optuna's values of every parameter that applies to this trial, in space order
    (a conditional one after the parameter it depends on)."""
    return _walk(space, lambda oname, leaf: suggest(trial, oname, leaf))


def is_conditional(space: dict) -> bool:
    return any(isinstance(s, dict) and "given" in s for s in space.values())


# --------------------------------------------------------------------------
# studies
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class StudySpec:
    """A study: what to search, how, and on which budget (chapter 6).

    Every trial trains ``base`` with the sampled fields replaced; ``base.epochs``
    is the maximum fidelity (the pruner stops trials earlier) and ``base.holdout``
    the validation split that scores them.
    """

    name: str
    space: dict
    base: Config
    sampler: str = "tpe"          # "tpe", "random" or "grid" (all-categorical spaces)
    pruner: str = "hyperband"     # "hyperband", "sha" (successive halving) or "none"
    n_trials: int = 60            # trained trials (complete or pruned) in total
    min_epochs: int = 1           # the pruner's smallest budget
    reduction_factor: int = 3     # keep the best 1/eta at each rung
    seed: int = 0                 # the sampler's seed
    max_macs: float | None = None  # skip (do not train) models above this compute
    n_startup_trials: int = 16    # TPE: random trials before the model kicks in
    about: str = ""
    enqueue: tuple = ()           # config overrides tried first (e.g. the recipe's defaults)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise SearchError(f"sampler {self.sampler!r}: use one of {SAMPLERS}")
        if self.pruner not in PRUNERS:
            raise SearchError(f"pruner {self.pruner!r}: use one of {PRUNERS}")
        if self.base.holdout <= 0:
            raise SearchError("a study must score on a validation split: set base holdout > 0")
        if self.n_trials < 1:
            raise SearchError(f"n_trials={self.n_trials}: need at least 1")
        check_space(self.space, self.base)
        if self.sampler == "grid" and any(isinstance(v, dict) for v in self.space.values()):
            raise SearchError("a grid study needs a list of values for every parameter")
        object.__setattr__(self, "enqueue", tuple(dict(e) for e in self.enqueue))
        for e in self.enqueue:  # each must be a point of the space
            try:
                make_config(self.base, **decode(self.space, encode(self.space, e)))
            except (ConfigError, TypeError, ValueError) as err:
                raise SearchError(f"enqueued trial {e}: {err}") from None

    def to_json(self) -> str:
        d = asdict(self)
        d["base"] = params_dict(self.base)
        return json.dumps(d, sort_keys=True)

    @property
    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.space.values())


# --------------------------------------------------------------------------
# storage
# --------------------------------------------------------------------------
def default_storage(study: str, runs_dir=None) -> str:
    """The study's SQLite file in ``runs/search/`` (the folder is made if missing: it is
    the runs cache's own; a ``--storage`` the user types must exist already)."""
    url = f"sqlite:///{(runs_root(runs_dir) / 'search' / f'{study}.db').resolve()}"
    check_storage_url(url, create_dir=True)
    return url


#: The optional extra that installs each database's driver (pyproject.toml).
DRIVER_EXTRAS = {"postgresql": "pip install 'cifar-cnn-book[postgres]' (psycopg 3; write "
                 "the URL as postgresql+psycopg://...)",
                 "mysql": "pip install pymysql (write the URL as mysql+pymysql://...)"}


def check_storage_url(url: str, create_dir: bool = False) -> None:
    """SearchError (one line) for a SQLite path whose folder is missing or not a folder;
    ``create_dir`` (the default storage under runs/) makes it instead."""
    if not url.startswith("sqlite:///"):
        return
    folder = Path(url[len("sqlite:///"):]).parent
    if create_dir:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SearchError(f"cannot create the study folder {folder}: {e.strerror}") from None
    elif not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise SearchError(f"--storage {url!r}: the folder {folder} {what}; create it first "
                          "or give another path")


def open_storage(url: str, heartbeat: bool = True, create_dir: bool = False):
    """An Optuna RDB storage for ``url``; SearchError (one line) if it cannot be opened.

    Several processes may open a new SQLite storage at once: its schema is created
    under a file lock (Optuna would otherwise race on its ``alembic_version`` table).
    """
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    check_storage_url(url, create_dir)
    kw = {}
    if heartbeat:
        kw = dict(heartbeat_interval=30, grace_period=120)
    try:
        with warnings.catch_warnings(), _storage_lock(url):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat:
                kw["heartbeat_stale_trial_callback"] = RetryHeartbeatStaleTrialCallback(3)
            return RDBStorage(url, **kw)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many kinds
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        dialect = url.split(":", 1)[0].split("+", 1)[0]
        if isinstance(e, ImportError) or "Failed to import DB access module" in first:
            hint = DRIVER_EXTRAS.get(dialect, "install the database driver SQLAlchemy names")
            raise SearchError(f"cannot open the study storage {url!r}: its database driver "
                              f"is not installed; {hint}") from None
        raise SearchError(f"cannot open the study storage {url!r}: {first}") from None


class _storage_lock:
    """An exclusive lock on ``<db>.lock`` beside a SQLite file (no-op for servers)."""

    def __init__(self, url: str):
        self.path = Path(url[len("sqlite:///"):] + ".lock") \
            if url.startswith("sqlite:///") else None
        self.f = None

    def __enter__(self):
        if self.path is not None:
            import fcntl

            self.f = open(self.path, "a")  # noqa: SIM115 - closed in __exit__
            fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()  # releases the lock
        return False


def make_sampler(spec: StudySpec, offset: int = 0):
    """The study's sampler. ``offset`` (trials so far, worker index) shifts the seed: a
    seeded sampler restarted on a resumed study would otherwise propose its first
    configs all over again."""
    import optuna

    seed = spec.seed + 7919 * offset
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler({k: list(v) for k, v in spec.space.items()},
                                           seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                          group=is_conditional(spec.space),
                                          constant_liar=True,
                                          n_startup_trials=spec.n_startup_trials)


def make_pruner(spec: StudySpec):
    import optuna

    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_epochs,
                                              max_resource=spec.base.epochs,
                                              reduction_factor=spec.reduction_factor)
    if spec.pruner == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.min_epochs,
                                                      reduction_factor=spec.reduction_factor)
    return optuna.pruners.NopPruner()


def _comparable(spec_json: str) -> dict:
    from dataclasses import MISSING

    d = json.loads(spec_json)
    for f in fields(StudySpec):  # a field added later, at its default, is no change
        if f.name not in d and f.default is not MISSING:
            d[f.name] = json.loads(json.dumps(f.default))
    d["base"] = params_dict(d["base"])  # a field added later, at its default, is no change
    d.pop("n_trials")  # growing a study is resuming it
    d.pop("about")
    return d


def sample_params(space: dict, rng) -> dict:
    """One random point of ``space`` (numpy ``rng``), as Optuna's parameter values: the
    queued configs of a random study."""
    def draw(s):
        if isinstance(s, (list, tuple)) or "choices" in s:
            ch = _choices(s)
            return ch[int(rng.integers(len(ch)))]
        lo, hi = s["low"], s["high"]
        v = math.exp(rng.uniform(math.log(lo), math.log(hi))) if s.get("log") \
            else rng.uniform(lo, hi)
        return int(round(v)) if isinstance(lo, int) and isinstance(hi, int) else v

    return _walk(space, lambda oname, leaf: draw(leaf))


def create_study(spec: StudySpec, storage, worker: int = 0):
    """Create or load the study; refuse one made with a different spec.

    A new random study queues its configs up front from ``spec.seed``, so that two
    random studies with one seed (e.g. with and without pruning) train the same
    configs in the same order, interrupted or not.
    """
    import numpy as np
    import optuna

    try:
        n_before = len(optuna.load_study(study_name=spec.name, storage=storage).trials)
    except KeyError:
        n_before = 0
    study = optuna.create_study(study_name=spec.name, storage=storage, direction="maximize",
                                sampler=make_sampler(spec, n_before + worker),
                                pruner=make_pruner(spec), load_if_exists=True)
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", spec.to_json())
        for e in spec.enqueue:  # e.g. the recipe's defaults: the first trials
            study.enqueue_trial(encode(spec.space, e))
        if spec.sampler == "random":
            rng = np.random.default_rng(spec.seed)
            for _ in range(3 * spec.n_trials):
                study.enqueue_trial(sample_params(spec.space, rng))
    elif _comparable(stored) != _comparable(spec.to_json()):
        raise SearchError(
            f"study {spec.name!r} in this storage was created with a different space, "
            "budget or settings; pick another --study name or delete its .db file "
            "and runs/search/<study>/ to start over")
    return study


# --------------------------------------------------------------------------
# the objective and the workers
# --------------------------------------------------------------------------
def _trained(t) -> bool:
    """A trial that trained at least one epoch (not skipped for compute, not failed, not
    a config the sampler had already proposed)."""
    from optuna.trial import TrialState

    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) and \
        t.user_attrs.get("epochs_run", 0) > 0 and "duplicate_of" not in t.user_attrs


def startup_makeup(study, n_startup: int) -> dict:
    """What TPE's random start-up was made of. Optuna's TPESampler samples at random
    while fewer than ``n_startup`` trials of the study are complete or pruned, and it
    counts every such trial: the enqueued ones and those skipped for compute (pruned
    without training) too. Returns how many of those first ``n_startup`` trials were
    random proposals that trained, enqueued trials, and trials that trained nothing
    (with one worker the trials finish in order, so this is exact)."""
    from optuna.trial import TrialState

    out, seen = dict(random_trained=0, enqueued=0, untrained=0), 0
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if seen == n_startup:
            break
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        seen += 1
        kind = ("untrained" if not _trained(t) else "enqueued"
                if "fixed_params" in t.system_attrs else "random_trained")
        out[kind] += 1
    return out


def n_trained(study) -> int:
    return sum(_trained(t) for t in study.get_trials(deepcopy=False))


def trial_config(spec: StudySpec, params: dict) -> Config:
    """The config a trial trains, from Optuna's parameter values (see :func:`decode`)."""
    return make_config(spec.base, **decode(spec.space, params))


def objective(spec: StudySpec, ds: Dataset, runs_dir=None, device="auto", progress=None,
              threads: int = 0):
    """config -> validation accuracy, as a function of an Optuna trial (chapter 6).

    ``threads`` > 0 (a CPU worker beside others) pins each trial's thread count, which
    its key then covers: a CPU run's numbers depend on it."""
    import optuna

    group = f"search/{spec.name}"

    def f(trial):
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        if n_trained(trial.study) + n_running_elsewhere(trial.study, trial.number) \
                >= spec.n_trials:  # another worker took the last trial meanwhile
            trial.set_user_attr("skipped", "the study has enough trials")
            trial.set_user_attr("epochs_run", 0)
            raise optuna.TrialPruned()
        c = trial_config(spec, suggest_all(trial, spec.space))
        if threads:
            c = replace(c, threads=threads)
        cost = macs(c.model)
        trial.set_user_attr("macs", cost)
        if spec.max_macs and cost > spec.max_macs:
            trial.set_user_attr("skipped", f"{cost / 1e6:.0f}M MACs > cap "
                                           f"{spec.max_macs / 1e6:.0f}M")
            trial.set_user_attr("epochs_run", 0)
            raise optuna.TrialPruned()
        reported = set()

        def report(epoch, row, _model):
            trial.report(row[OBJECTIVE], epoch)
            reported.add(epoch)
            return spec.pruner != "none" and epoch < spec.base.epochs and \
                trial.should_prune()

        run = get(c, ds, group, runs_dir, device=device, callbacks=[report],
                  progress=progress)
        for row in run.metrics.itertuples():  # a cache hit: tell the pruner the history
            if row.epoch not in reported:
                trial.report(getattr(row, OBJECTIVE), row.epoch)
        s = run.summary
        for k in ("status", "epochs_run", "train_time_s", "n_params", "images_per_s"):
            trial.set_user_attr(k, s[k])
        trial.set_user_attr("key", run.key)
        twin = [t.number for t in trial.study.get_trials(deepcopy=False)
                if t.user_attrs.get("key") == run.key and t.number != trial.number
                and _trained(t) and "duplicate_of" not in t.user_attrs]
        if twin:  # the sampler proposed a config already trained: not a new trial
            trial.set_user_attr("duplicate_of", twin[0])
        trial.set_user_attr("final_train_acc", s["train_acc"])
        if s["status"] == "stopped" and s["epochs_run"] < spec.base.epochs:
            raise optuna.TrialPruned()
        return s[OBJECTIVE]

    return f


def recover(study, spec: StudySpec) -> list[int]:
    """Mark trials left RUNNING by a dead worker on this host as FAIL and queue their
    parameters again (other hosts' dead workers are caught by Optuna's heartbeat).

    The retry goes to the front of the queue: a random study queues its configs up
    front, and a retry queued behind them would never run once the study is full (and
    an interrupted paired study would then train other configs than its twin)."""
    from optuna.trial import TrialState

    host, failed = socket.gethostname(), []
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or pid is None or _pid_alive(pid):
            continue
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        failed.append(t)
    retries = [t for t in failed if spec.sampler != "grid" and t.params]  # grid re-runs cells
    waiting = sorted(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)),
                     key=lambda w: w.number)
    displaced = []
    for t, slot in zip(retries, waiting):  # take the first places in the queue
        displaced.append((slot.system_attrs.get("fixed_params"), dict(slot.user_attrs)))
        storage.set_trial_system_attr(slot._trial_id, "fixed_params", t.params)
        storage.set_trial_user_attr(slot._trial_id, "retry_of", t.number)
    for t in retries[len(waiting):]:
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    for params, attrs in displaced:  # what was in those places goes next, in order
        if params:
            study.enqueue_trial(params, user_attrs=attrs)
    return [t.number for t in failed]


def die_with_parent() -> None:
    """A worker process ends when the process that started it ends, even by SIGKILL:
    Linux's parent-death signal where available, else a thread watching the parent."""
    import signal
    import threading
    import time

    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.prctl(1, signal.SIGKILL) == 0:  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before the call
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def n_running_elsewhere(study, before: int | None = None) -> int:
    """Trials other workers are training now (RUNNING); with ``before``, only those
    started before trial ``before``, so that of several trials started at once the
    earliest ones go ahead and the ones beyond ``n_trials`` step aside."""
    from optuna.trial import TrialState

    return sum((before is None or t.number < before) and "skipped" not in t.user_attrs
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _worker(spec: StudySpec, storage_url: str, data_dir, runs_dir, device, threads,
            synthetic: bool, progress, worker: int = 0, ds: Dataset | None = None,
            child: bool = False) -> None:
    import torch

    from .data import load_cifar10
    from .data import synthetic as synth

    if child:
        die_with_parent()
    from .train import resolve_device

    cpu_threads = threads if threads and resolve_device(device).type == "cpu" else 0
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    if ds is None:
        ds = synth(512, 256) if synthetic else load_cifar10(data_dir)
    study = create_study(spec, open_storage(storage_url), worker)

    def enough(study, _trial):
        if n_trained(study) >= spec.n_trials:
            study.stop()

    idle = 0  # trials in a row that trained nothing (duplicates, over the cap)
    # rechecked before every trial: trials other workers are training count too
    while n_trained(study) + n_running_elsewhere(study) < spec.n_trials:
        if spec.sampler == "grid" and _grid_done(study, spec):
            break
        if idle > 200:
            raise SearchError(f"study {spec.name}: the last {idle} proposals were all "
                              "duplicates or over the compute cap; widen the space or "
                              "raise the cap")
        before = n_trained(study)
        study.optimize(objective(spec, ds, runs_dir, device, progress, cpu_threads),
                       n_trials=1,
                       callbacks=[enough], gc_after_trial=True)
        idle = 0 if n_trained(study) > before else idle + 1


def _grid_done(study, spec: StudySpec) -> bool:
    from optuna.trial import TrialState

    done = {tuple(sorted(t.params.items())) for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))}
    return len(done) >= spec.grid_size


def run_study(spec: StudySpec, storage: str | None = None, n_workers: int = 1,
              data_dir=None, runs_dir=None, device="auto", synthetic=False,
              progress=None, log=print, data: Dataset | None = None) -> dict:
    """Run (or resume) a study until it has ``spec.n_trials`` trained trials (chapter 6).

    With ``n_workers`` > 1, that many processes share the study through its storage
    (one per GPU, or the CPU cores split between them); each loads the data itself.
    With one worker, ``data`` (a Dataset) may be passed in.
    """
    url = storage or default_storage(spec.name, runs_dir)
    st = open_storage(url, create_dir=storage is None)
    study = create_study(spec, st)
    failed = recover(study, spec)
    if failed:
        log(f"study {spec.name}: trial(s) {failed} were interrupted; marked failed and "
            "queued again")
    done = n_trained(study)
    log(f"study {spec.name}: {done}/{spec.n_trials} trials trained; storage {url}")
    if done >= spec.n_trials:
        return summarize(study)
    if n_workers <= 1:
        _worker(spec, url, data_dir, runs_dir, str(device).split(",")[0], None, synthetic,
                progress, 0, data)
    else:
        threads = max(1, (os.cpu_count() or 1) // n_workers)
        # --device cuda:0,cuda:1: worker i trains on the (i mod n)-th device; one device:
        # every worker shares it (several small CNNs keep one GPU busier than one)
        devices = [d.strip() for d in str(device).split(",")] if device else ["auto"]
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker,
                             args=(spec, url, data_dir, runs_dir, devices[i % len(devices)],
                                   threads, synthetic, False, i),
                             kwargs=dict(child=True), daemon=False)
                 for i in range(n_workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode]
        if bad:
            raise SearchError(f"{len(bad)} worker(s) of study {spec.name} failed "
                              f"(exit codes {bad}); run the same command to resume")
    return summarize(optuna_load(spec.name, url))


def optuna_load(name: str, url: str):
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
    except KeyError:
        raise SearchError(f"no study {name!r} in {url}; run `python -m lib sweep "
                          f"--study {name}` first") from None


def summarize(study) -> dict:
    from optuna.trial import TrialState

    trained = [t for t in study.get_trials(deepcopy=False) if _trained(t)]
    complete = [t for t in trained if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    return dict(study=study.study_name, trained=len(trained), complete=len(complete),
                pruned=len(trained) - len(complete),
                epochs=sum(t.user_attrs.get("epochs_run", 0) for t in trained),
                best_value=best.value if best else None,
                best_params=best.params if best else None)


# --------------------------------------------------------------------------
# reading a study back (chapters 6 and 7)
# --------------------------------------------------------------------------
def load_study(name: str, runs_dir=None, storage: str | None = None):
    """The Optuna study ``name`` (read it; never optimise from a chapter)."""
    url = storage or default_storage(name, runs_dir)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not path.is_file():
            raise SearchError(f"study {name!r} has no storage file {path}; run "
                              f"`python -m lib sweep --study {name}` first")
        _note_read(path, runs_root(runs_dir))
    study = optuna_load(name, url)
    if not any(_trained(t) for t in study.get_trials(deepcopy=False)):
        raise SearchError(f"study {name!r} has no trained trials yet; run "
                          f"`python -m lib sweep --study {name}`")
    return study


def trials_frame(study) -> pd.DataFrame:
    """One row per trial: number, state, value (validation accuracy), params (as
    Config field names), user attributes (status, epochs_run, macs, key, ...)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(dict(number=t.number, state=t.state.name, value=t.value,
                         duration_s=t.duration.total_seconds() if t.duration else None,
                         **t.params, **t.user_attrs))
    return pd.DataFrame(rows)


def study_spec(study) -> StudySpec:
    """The StudySpec a study was created with (stored in the study)."""
    d = json.loads(study.user_attrs["spec"])
    d["base"] = config_from_dict(d["base"])
    # stored with sorted keys: a conditional parameter goes back after the one it depends on
    plain = {k: v for k, v in d["space"].items() if not (isinstance(v, dict) and "given" in v)}
    d["space"] = {**plain, **{k: v for k, v in d["space"].items() if k not in plain}}
    return StudySpec(**d)


# --------------------------------------------------------------------------
# using a study: ensure it exists, the best trials, their re-training
# --------------------------------------------------------------------------
def ensure(spec: StudySpec, data: Dataset, runs_dir=None, device="auto", train=True):
    """Load-or-run for chapters: the study, run (or finished) first if it has fewer than
    ``spec.n_trials`` trained trials and ``train`` allows it (chapter 6)."""
    url = default_storage(spec.name, runs_dir)
    path = Path(url[len("sqlite:///"):])
    if path.is_file():
        study = optuna_load(spec.name, url)
        if n_trained(study) >= spec.n_trials or \
                (spec.sampler == "grid" and _grid_done(study, spec)):
            return load_study(spec.name, runs_dir)
    if not train:
        raise SearchError(f"study {spec.name!r} is not complete in {path.parent}; run "
                          f"`python -m lib sweep --study {spec.name}`")
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no per-trial lines in a chapter
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_study(spec, url, 1, runs_dir=runs_dir, device=device, data=data,
                      log=lambda *a: None)
    finally:
        optuna.logging.set_verbosity(level)
    return load_study(spec.name, runs_dir)


#: Epochs of a re-training on the whole training set, per budget (chapter 6).
RETRAIN_EPOCHS = {"smoke": 2, "cpu": 15, "gpu": 30}
RETRAIN_SEEDS = {"smoke": 2, "cpu": 3, "gpu": 5}
#: Chapter 6's second look at the winner: the best config at twice the epochs.
RETRAIN_LONG_EPOCHS = {k: 2 * v for k, v in RETRAIN_EPOCHS.items()}
#: ... with its first seeds only (each run costs twice as much).
RETRAIN_LONG_SEEDS = {"smoke": 2, "cpu": 2, "gpu": 3}
#: The second study's first choice also at three times the epochs (all seeds): how far
#: more epochs still go, and the chapter's candidate for its best result.
RETRAIN_LONGER_EPOCHS = {k: 3 * v for k, v in RETRAIN_EPOCHS.items()}


def top_trials(study, k: int = 3) -> pd.DataFrame:
    """The ``k`` best trials that ran the full trial budget, one per distinct config."""
    df = trials_frame(study)
    df = df[(df.state == "COMPLETE") & df.get("duplicate_of", pd.Series(index=df.index)).isna()]
    return df.sort_values("value", ascending=False).drop_duplicates("key").head(k)


def retrain_configs(spec: StudySpec, params: dict, budget: str,
                    epochs: int | None = None, seeds: int | None = None) -> list[Config]:
    """A trial's config on the whole training set, scored on the test set, with the
    full epoch budget (or ``epochs``) and the budget's seeds (or the first ``seeds``),
    weights kept."""
    if budget not in RETRAIN_EPOCHS:
        raise SearchError(f"budget {budget!r}: use one of {sorted(RETRAIN_EPOCHS)}")
    if epochs is not None and epochs < 1:
        raise SearchError(f"epochs={epochs}: give a positive number of epochs")
    if seeds is not None and seeds < 1:
        raise SearchError(f"seeds={seeds}: give a positive number of seeds")
    c = make_config(trial_config(spec, params), n_train=None, holdout=0,
                    epochs=epochs or RETRAIN_EPOCHS[budget], save_weights=True)
    return [make_config(c, seed=s) for s in range(seeds or RETRAIN_SEEDS[budget])]


def retrain(study_name: str, budget: str, data: Dataset, k: int = 3, runs_dir=None,
            device="auto", train=True, log=print, epochs: int | None = None,
            seeds: int | None = None) -> pd.DataFrame:
    """Re-train the study's top ``k`` configs (load-or-train into ``runs/search-best``)
    for the budget's epochs and seeds (or ``epochs``, ``seeds``); one row per run with
    the trial it came from (chapter 6)."""
    from .runs import get as get_run

    study = load_study(study_name, runs_dir)
    spec = study_spec(study)
    rows = []
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for rank, t in enumerate(top_trials(study, k).itertuples(), 1):
        params = trials[t.number].params  # Optuna's own values, not pandas' numpy types
        for c in retrain_configs(spec, params, budget, epochs, seeds):
            log(f"rank {rank} (trial {t.number}), seed {c.seed}")
            run = get_run(c, data, "search-best", runs_dir, device=device, train=train)
            rows.append(dict(rank=rank, trial=t.number, val_acc=t.value, seed=c.seed,
                             key=run.key, test_acc=run.summary["test_acc"],
                             epochs=run.summary["epochs_run"],
                             train_time_s=run.summary["train_time_s"],
                             n_params=run.summary["n_params"], run=run))
    return pd.DataFrame(rows)


def retrain_summary(rt: pd.DataFrame, by=("rank",), scores=("test_acc",)) -> pd.DataFrame:
    """One row per re-trained configuration (``by``: the columns that name one, e.g.
    ``rank``, or ``study``, ``rank`` and ``epochs``) of :func:`retrain` rows: the trial
    it came from, its epochs, seeds and cost, and each score's mean and standard
    deviation over the seeds (``{score}_mean``, ``{score}_std``), best first."""
    by = list(by)
    missing = sorted({*by, *scores, "trial", "seed"} - set(rt.columns))
    if missing:
        raise SearchError(f"retrain_summary: no column(s) {missing} in the re-training rows")
    if rt.empty:
        raise SearchError("retrain_summary: no re-trained runs to summarise")
    agg = {c: (c, "first") for c in ("trial", "val_acc", "epochs", "n_params")
           if c in rt.columns and c not in by}
    agg["seeds"] = ("seed", "count")
    if "train_time_s" in rt.columns:
        agg["minutes_per_run"] = ("train_time_s", lambda t: t.mean() / 60)
    for s in scores:
        agg[f"{s}_mean"] = (s, "mean")
        agg[f"{s}_std"] = (s, "std")
    out = rt.groupby(by).agg(**agg)
    return out.sort_values(f"{scores[0]}_mean", ascending=False)


def summary_view(summary: pd.DataFrame, drop=()) -> pd.DataFrame:
    """:func:`retrain_summary` as the book prints it: short column names (``test_acc_mean``
    -> ``test acc``, ``test_acc_std`` -> ``test acc std``), minutes to one decimal,
    other fractions to four; ``drop``: columns left out."""
    out = summary.drop(columns=list(drop))
    digits = {c: 1 if c == "minutes_per_run" else 4
              for c in out.columns if out[c].dtype.kind == "f"}
    short = {"n_params": "params", "minutes_per_run": "min/run"}

    def name(c: str) -> str:
        if c in short:
            return short[c]
        c = c[:-5] if c.endswith("_mean") else c[:-4] + " std" if c.endswith("_std") else c
        return c.replace("_", " ")

    return out.round(digits).rename(columns=name)


def trained_frame(study) -> pd.DataFrame:
    """:func:`trials_frame` restricted to trained trials (no skips, duplicates, failures)."""
    keep = {t.number for t in study.get_trials(deepcopy=False) if _trained(t)}
    df = trials_frame(study)
    return df[df.number.isin(keep)].reset_index(drop=True)


def merge_cases(df: pd.DataFrame, space: dict) -> pd.DataFrame:
    """A trials frame with one column per conditional hyperparameter of ``space`` (``lr``
    from ``lr|sgd`` and ``lr|adamw``: each trial has the value of its own case), put
    where the first case column was; the case columns are dropped."""
    out = df.copy()
    for name, spec in space.items():
        if not (isinstance(spec, dict) and "given" in spec):
            continue
        cases = [f"{name}{SEP}{c}" for c in spec["cases"] if f"{name}{SEP}{c}" in out]
        if not cases:
            continue
        merged = out[cases].bfill(axis=1).iloc[:, 0]
        at = out.columns.get_loc(cases[0])
        out = out.drop(columns=cases)
        out.insert(min(at, len(out.columns)), name, merged)
    return out


def merged_trials(trials: list, space: dict) -> list:
    """Optuna trials with each conditional hyperparameter of ``space`` under its own name
    (``lr`` for ``lr|sgd`` and ``lr|adamw``), its distribution spanning every case's
    range (log if any case is), so that importance estimators, which only read the
    parameters all trials share, see it. A case with one fixed value merges as that
    value. The other fields of each trial are kept."""
    import optuna
    from optuna.distributions import FloatDistribution

    merged = {}
    for name, spec in space.items():
        if isinstance(spec, dict) and "given" in spec:
            leaves = [v for v in spec["cases"].values() if isinstance(v, dict)]
            fixed = [x for v in spec["cases"].values() if not isinstance(v, dict) for x in v]
            lo = min([v["low"] for v in leaves] + fixed)
            hi = max([v["high"] for v in leaves] + fixed)
            merged[name] = FloatDistribution(lo, hi, log=any(v.get("log") for v in leaves))
    out = []
    for t in trials:
        params, dists = {}, {}
        for k, v in t.params.items():
            base = k.split(SEP)[0]
            if base in merged:
                params[base], dists[base] = float(v), merged[base]
            else:
                params[k], dists[k] = v, t.distributions[k]
        for base, d in merged.items():  # a fixed case has no Optuna parameter
            if base not in params:
                case = t.params.get(space[base]["given"])
                leaf = space[base]["cases"].get(case)
                if leaf is not None and not isinstance(leaf, dict):
                    params[base], dists[base] = float(leaf[0]), d
        out.append(optuna.trial.create_trial(
            params=params, distributions=dists, value=t.value, state=t.state,
            intermediate_values=t.intermediate_values, user_attrs=t.user_attrs))
    return out


def per_epoch_frame(spec: StudySpec, trained: pd.DataFrame, runs_dir=None) -> pd.DataFrame:
    """One row per trial and epoch: the epoch's validation accuracy with the trial's
    columns of ``trained`` (:func:`trained_frame`); chapter 7 fits its surrogate on
    every epoch, not only the last."""
    out = []
    for r in trained.itertuples():
        m = runs.read_run(runs.runs_root(runs_dir) / "search" / spec.name / r.key).metrics
        out.append(m[["epoch", "val_acc"]].assign(number=r.number))
    return pd.concat(out, ignore_index=True).merge(trained, on="number")


def study_overview(spec: StudySpec, trained: pd.DataFrame) -> dict:
    """What a study cost and at which fidelity (chapter 6 sets two studies side by side);
    ``trained``: :func:`trained_frame`."""
    b = spec.base
    return {"sampler / pruner": f"{spec.sampler} / {spec.pruner}",
            "training images per trial": b.n_train or "all but the split",
            "maximum epochs per trial": b.epochs,
            "trials trained": len(trained),
            "of which pruned": int((trained.state == "PRUNED").sum()),
            "epochs spent": int(trained.epochs_run.sum()),
            "training hours": round(float(trained.train_time_s.sum()) / 3600, 2)}


def pruning_summary(pruned: pd.DataFrame, full: pd.DataFrame) -> dict:
    """Chapter 6's paired study: best full-budget validation accuracy and epochs spent
    with pruning and without, over the same configs."""
    def best(d):
        return float(d[d.state == "COMPLETE"].value.max())

    e_p, e_f = int(pruned.epochs_run.sum()), int(full.epochs_run.sum())
    return dict(best_pruned=best(pruned), best_full=best(full), epochs_pruned=e_p,
                epochs_full=e_f, epoch_ratio=e_p / e_f, trials=len(full),
                same_configs=bool(_configs(pruned) == _configs(full)))


def pruning_audit(pruned: pd.DataFrame, full: pd.DataFrame, k: int = 6) -> dict:
    """What a pruner did to the best configurations (chapter 6): of the ``k`` best by
    their value without pruning (``full``, the same configs trained to the end), how
    many the pruned study stopped early, and which (matched by run key)."""
    top = full[full.state == "COMPLETE"].sort_values("value", ascending=False).head(k)
    state = pruned.set_index("key").state
    killed = [int(r.number) for r in top.itertuples() if state.get(r.key) == "PRUNED"]
    return dict(k=len(top), killed=len(killed), killed_trials=killed,
                best_kept=bool(len(top)) and state.get(top.key.iloc[0]) == "COMPLETE")


def rung_correlation(spec: StudySpec, full: pd.DataFrame, epochs, runs_dir=None) -> pd.Series:
    """Spearman rank correlation, over the trials trained to the end, between the
    validation accuracy at each of ``epochs`` and the final one: how well a pruner
    deciding at that epoch can rank the configurations (chapter 6)."""
    from scipy.stats import spearmanr

    done = full[full.state == "COMPLETE"]
    per = per_epoch_frame(spec, done, runs_dir).pivot_table(index="number", columns="epoch",
                                                             values="val_acc")
    last = per.columns.max()
    return pd.Series({e: float(spearmanr(per[e], per[last], nan_policy="omit").statistic)
                      for e in epochs if e in per.columns and e != last},
                     name=f"Spearman with epoch {last}")


def _configs(df: pd.DataFrame) -> list:
    return sorted(df.key.tolist())


def _leaf_row(name: str, s) -> dict:
    if isinstance(s, dict) and "low" in s:
        scale = "log" if s.get("log") else "linear"
        return dict(hyperparameter=name, kind=f"continuous ({scale})",
                    values=f"{s['low']:g} to {s['high']:g}")
    choices = _choices(s)
    return dict(hyperparameter=name, kind="fixed" if len(choices) == 1 else "categorical",
                values=", ".join(map(str, choices)))


def space_table(spec: StudySpec) -> pd.DataFrame:
    """The search space as a table: name, kind, values or range (chapter 6). A
    conditional hyperparameter has one row per case (``lr | sgd``); the settings a
    choice implies are listed with it."""
    rows = []
    for name, s in spec.space.items():
        if isinstance(s, dict) and "given" in s:
            rows += [_leaf_row(f"{name} | {case}", leaf) for case, leaf in s["cases"].items()]
            continue
        row = _leaf_row(name, s)
        implies = s.get("implies", {}) if isinstance(s, dict) else {}
        if implies:
            row["values"] += " (" + "; ".join(
                f"{c} sets " + ", ".join(f"{k} {v}" for k, v in over.items())
                for c, over in implies.items()) + ")"
        rows.append(row)
    return pd.DataFrame(rows).set_index("hyperparameter")


def seed_picks(df: pd.DataFrame) -> dict:
    """Chapter 7's three trials to re-run with other seeds: the best, the median and the
    worst of the trials that ran every epoch (``df``: :func:`trained_frame`)."""
    full = df[df.state == "COMPLETE"].sort_values("value")
    return {"best": int(full.number.iloc[-1]), "median": int(full.number.iloc[len(full) // 2]),
            "worst": int(full.number.iloc[0])}


def seed_runs(study, picks: dict, seeds=(1, 2), runs_dir=None, data: Dataset | None = None,
              device="auto", train=True, keep_weights=()) -> pd.DataFrame:
    """The same trial configs trained again with other seeds, at the study's fidelity
    and without pruning (chapter 7: the spread over seeds, and weights to interpolate).

    ``picks`` maps a label to a trial number (a trial that ran all epochs); its own run
    is seed 0. Labels in ``keep_weights`` keep their new runs' weights.
    """
    spec = study_spec(study)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    rows = []
    for label, number in picks.items():
        t = trials[number]
        c = trial_config(spec, t.params)
        own = runs.read_run(runs.runs_root(runs_dir) / "search" / spec.name /
                            t.user_attrs["key"])
        rows.append(dict(label=label, trial=number, seed=0, run=own))
        for s in seeds:
            cs = make_config(c, seed=s, save_weights=label in keep_weights)
            rows.append(dict(label=label, trial=number, seed=s,
                             run=get(cs, data, "search-seeds", runs_dir, device=device,
                                     train=train)))
    df = pd.DataFrame(rows)
    df["value"] = [r.summary["val_acc"] for r in df.run]
    df["status"] = [r.summary["status"] for r in df.run]
    return df
