"""Analyses behind the book's figures: the data (chapter 2) and trained models (chapter 3).

Everything here is computed from a :class:`lib.data.Dataset` or from cached
runs; expensive results (embeddings, nearest neighbours) are cached with
:func:`lib.runs.cached` so that executing a chapter stays fast.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .data import CLASSES, Dataset
from .filters import grey

#: The first five training labels of the official archive (data_batch_1) and
#: of the official test batch: how we tell whether a copy keeps the official order.
OFFICIAL_FIRST_TRAIN = [6, 9, 9, 4, 1]
OFFICIAL_FIRST_TEST = [3, 8, 8, 0, 6]
BATCH_SIZE = 10_000  # images per official training batch file
#: Pixel correlation from which chapter 2 calls a test/train pair a near-duplicate,
#: chosen by looking at the pairs around it (chapter 2, section 2.6).
NEAR_DUPLICATE_THRESHOLD = 0.93


# --------------------------------------------------------------------------
# chapter 2: the data
# --------------------------------------------------------------------------
def keeps_official_order(ds: Dataset) -> dict:
    """Whether each split starts with the official archive's first labels (chapter 2)."""
    return {"train": ds.y_train[:5].tolist() == OFFICIAL_FIRST_TRAIN,
            "test": ds.y_test[:5].tolist() == OFFICIAL_FIRST_TEST}


def explained_by_class(values, classes) -> float:
    """The share of the variance of ``values`` that the class explains (eta squared:
    the between-class sum of squares over the total; chapter 2)."""
    v = pd.Series(np.asarray(values, dtype=float))
    g = pd.Series(np.asarray(classes)).astype(str)
    total = float(((v - v.mean()) ** 2).sum())
    if total == 0:
        return 0.0
    means = v.groupby(g).transform("mean")
    return float(((means - v.mean()) ** 2).sum() / total)


def class_counts(ds: Dataset) -> pd.DataFrame:
    """Images per class and split (rows: classes)."""
    return pd.DataFrame({split: np.bincount(y, minlength=len(CLASSES))
                         for split, y in (("train", ds.y_train), ("test", ds.y_test))},
                        index=pd.Index(CLASSES, name="class"))


def count_range(counts) -> str:
    """Counts per class in words, for the prose: "exactly 5,000" when all are equal,
    else "4,990 to 5,010" (chapter 2)."""
    lo, hi = int(np.min(counts)), int(np.max(counts))
    return f"exactly {lo:,}" if lo == hi else f"{lo:,} to {hi:,}"


def batch_counts(ds: Dataset) -> pd.DataFrame:
    """Images per class in each 10,000-image block of the training set (rows: classes).

    Meaningful only when the training set keeps the official order, where block
    ``i`` is the official ``data_batch_{i+1}``.
    """
    n = len(ds.y_train) // BATCH_SIZE
    cols = {f"batch {i + 1}": np.bincount(ds.y_train[i * BATCH_SIZE:(i + 1) * BATCH_SIZE],
                                          minlength=len(CLASSES)) for i in range(n)}
    return pd.DataFrame(cols, index=pd.Index(CLASSES, name="class"))


def image_stats(x: np.ndarray, y: np.ndarray, chunk: int = 5000) -> pd.DataFrame:
    """Per image: class, mean R/G/B, brightness (mean luma) and contrast (std of luma)."""
    rows = []
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        rgb = xb.reshape(len(xb), -1, 3).mean(1) / 255.0
        g = grey(xb).reshape(len(xb), -1)
        rows.append(pd.DataFrame({"red": rgb[:, 0], "green": rgb[:, 1], "blue": rgb[:, 2],
                                  "brightness": g.mean(1), "contrast": g.std(1)}))
    df = pd.concat(rows, ignore_index=True)
    df.insert(0, "class", pd.Categorical.from_codes(y, CLASSES))
    return df


def mean_images(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The average image of each class, (10, 32, 32, 3) float in [0, 1]."""
    return np.stack([x[y == c].mean(0) / 255.0 for c in range(len(CLASSES))])


def channel_histograms(x: np.ndarray) -> pd.DataFrame:
    """Counts of each pixel value 0..255 per colour channel (rows: values)."""
    return pd.DataFrame({c: np.bincount(x[..., i].ravel(), minlength=256)
                         for i, c in enumerate(("red", "green", "blue"))})


def flat_normalised(x: np.ndarray) -> np.ndarray:
    """Each image as a unit vector after removing its own mean (float32, N x 3072).

    The dot product of two rows is the Pearson correlation of their pixels:
    invariant to brightness and contrast changes, 1 for identical images.
    """
    f = x.reshape(len(x), -1).astype(np.float32)
    f -= f.mean(1, keepdims=True)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-6)
    return f


def nearest_train(x_test: np.ndarray, x_train: np.ndarray, chunk: int = 1000) -> pd.DataFrame:
    """For each test image: its most correlated training image and the correlation.

    Brute force over all pairs (10,000 x 50,000 dot products of 3,072-vectors),
    in chunks to bound memory.
    """
    tr = flat_normalised(x_train)
    idx = np.empty(len(x_test), np.int64)
    sim = np.empty(len(x_test), np.float32)
    for i in range(0, len(x_test), chunk):
        s = flat_normalised(x_test[i:i + chunk]) @ tr.T
        idx[i:i + chunk] = s.argmax(1)
        sim[i:i + chunk] = s[np.arange(len(s)), idx[i:i + chunk]]
    return pd.DataFrame({"test": np.arange(len(x_test)), "train": idx, "similarity": sim})


def embed(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D embedding of images (chapter 2): "pca", or "tsne" on 50 principal components."""
    from sklearn.decomposition import PCA

    f = x.reshape(len(x), -1).astype(np.float32) / 255.0
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(f)
    if method == "tsne":
        from sklearn.manifold import TSNE

        z = PCA(n_components=50, random_state=seed).fit_transform(f)
        return TSNE(n_components=2, init="pca", perplexity=30, random_state=seed).fit_transform(z)
    raise ValueError(f"embedding method {method!r} is unknown; use 'pca' or 'tsne'")


def pca_explained(x: np.ndarray, n: int = 100, seed: int = 0) -> np.ndarray:
    """Cumulative fraction of pixel variance explained by the first ``n`` components."""
    from sklearn.decomposition import PCA

    f = x.reshape(len(x), -1).astype(np.float32) / 255.0
    return np.cumsum(PCA(n_components=n, random_state=seed).fit(f).explained_variance_ratio_)


# --------------------------------------------------------------------------
# chapter 3: trained models
# --------------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, normalise: bool = True) -> pd.DataFrame:
    """Confusion matrix (rows: true class, columns: predicted), row-normalised by default."""
    from sklearn.metrics import confusion_matrix

    m = confusion_matrix(y_true, y_pred, labels=range(len(CLASSES)),
                         normalize="true" if normalise else None)
    return pd.DataFrame(m, index=pd.Index(CLASSES, name="true"),
                        columns=pd.Index(CLASSES, name="predicted"))


def accuracy_on(y_pred: np.ndarray, y_true: np.ndarray, mask: np.ndarray) -> float:
    """Accuracy on the images selected by ``mask`` (NaN when it selects none)."""
    return float((y_pred == y_true)[mask].mean()) if mask.any() else float("nan")


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> pd.Series:
    """Recall of each class: the fraction of its test images classified correctly
    (NaN for a class without test images)."""
    acc = [accuracy_on(y_pred, y_true, y_true == c) for c in range(len(CLASSES))]
    return pd.Series(acc, index=pd.Index(CLASSES, name="class"), name="accuracy")


def confused_pairs(cm: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """The most confused unordered class pairs: rate(a->b) + rate(b->a), largest first."""
    rows = []
    for i, a in enumerate(cm.index):
        for j, b in enumerate(cm.columns):
            if j > i:
                rows.append(dict(pair=f"{a} / {b}", a_as_b=cm.iloc[i, j], b_as_a=cm.iloc[j, i],
                                 total=cm.iloc[i, j] + cm.iloc[j, i]))
    return pd.DataFrame(rows).sort_values("total", ascending=False).head(top).reset_index(drop=True)


def confident_mistakes(logits: np.ndarray, y_true: np.ndarray, top: int = 16) -> pd.DataFrame:
    """Misclassified test images with the highest predicted probability."""
    p = softmax(logits)
    pred = p.argmax(1)
    wrong = np.flatnonzero(pred != y_true)
    order = wrong[np.argsort(-p[wrong, pred[wrong]])][:top]
    return pd.DataFrame({"index": order, "true": [CLASSES[c] for c in y_true[order]],
                         "predicted": [CLASSES[c] for c in pred[order]],
                         "confidence": p[order, pred[order]]})


def knn_accuracy(ds: Dataset, n_train: int = 12_000, n_test: int = 2_000, k: int = 5,
                 seed: int = 0) -> pd.DataFrame:
    """Test accuracy of a k-nearest-neighbour classifier on raw pixels (chapter 2).

    Images are centred and scaled to unit length (:func:`flat_normalised`), so
    Euclidean neighbours are the most correlated images. Stratified slices.
    """
    from sklearn.neighbors import KNeighborsClassifier

    from .data import subset

    sl = subset(ds, n_train, n_test, seed=seed)
    clf = KNeighborsClassifier(n_neighbors=k).fit(flat_normalised(sl.x_train), sl.y_train)
    acc = float((clf.predict(flat_normalised(sl.x_test)) == sl.y_test).mean())
    return pd.DataFrame([dict(k=k, n_train=len(sl.y_train), n_test=len(sl.y_test),
                              accuracy=acc)])


# --------------------------------------------------------------------------
# chapter 7: what the search tells us
# --------------------------------------------------------------------------
IMPORTANCE_METHODS = ("fanova", "ped-anova")


def _evaluator(method: str, seed: int):
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    if method == "fanova":
        return FanovaImportanceEvaluator(seed=seed)
    if method == "ped-anova":
        return PedAnovaImportanceEvaluator()
    raise ValueError(f"importance method {method!r}: use one of {IMPORTANCE_METHODS}")


def importance(trials: list, method: str, n_boot: int = 100, seed: int = 0) -> pd.DataFrame:
    """Hyperparameter importance of finished trials by ``method`` ("fanova": Hutter et
    al.'s functional ANOVA on a random forest; "ped-anova": Watanabe et al.'s
    Pearson-divergence ANOVA of the top 10 %), each normalised to sum to one, with a
    bootstrap over trials: the point estimate on all trials and the 5th-95th
    percentile interval over ``n_boot`` resamples (chapter 7)."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(seed)

    def one(sample, s):
        st = optuna.create_study(direction="maximize")
        st.add_trials(sample)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                st, evaluator=_evaluator(method, s), normalize=True)
        return imp

    def safe(sample, s):  # a resample with a single distinct value has no variance
        try:
            return one(sample, s)
        except (RuntimeError, ValueError, ZeroDivisionError):
            return None

    point = safe(trials, seed)
    if point is None:
        raise ValueError(f"{method}: the {len(trials)} trials do not vary enough to "
                         "estimate importances; run more trials")
    boots = [safe([trials[i] for i in rng.integers(len(trials), size=len(trials))], seed + b)
             for b in range(n_boot)]
    boots = [b for b in boots if b is not None]
    rows = []
    for p, v in point.items():
        vals = np.array([b.get(p, 0.0) for b in boots]) if boots else np.array([v])
        rows.append(dict(param=p, method=method, importance=v,
                         lo=np.percentile(vals, 5), hi=np.percentile(vals, 95),
                         n_boot=len(boots),
                         # every resample's value, in resample order: the pairs of
                         # supported_rankings compare two parameters within a resample
                         boot=" ".join(f"{x:.6g}" for x in vals)))
    return pd.DataFrame(rows).sort_values("importance", ascending=False)


def level_counts(trials: list, params: list[str]) -> pd.DataFrame:
    """How many of ``trials`` (Optuna FrozenTrials) sit at each level of each categorical
    hyperparameter: an importance that rests on four trials at one level says less than
    one that rests on forty (chapter 7)."""
    rows = []
    for p in params:
        vals = [t.params[p] for t in trials if p in t.params]
        if not vals or isinstance(vals[0], float):
            continue
        for v, n in pd.Series(vals).astype(str).value_counts(sort=False).sort_index().items():
            rows.append(dict(hyperparameter=p.removeprefix("model."), level=v, trials=int(n)))
    return pd.DataFrame(rows)


def supported_rankings(imp: pd.DataFrame, share: float = 0.95) -> list[tuple[str, str, str]]:
    """(method, higher, lower) for each pair of hyperparameters that the paired bootstrap
    of :func:`importance` ranks: the higher one scores above the lower one in at least
    ``share`` of the resamples, both measured on the same resample (the shares of one
    resample sum to one, so they are not independent, and comparing two separate
    intervals would be no test). Frames without the resamples (``boot``) fall back on
    intervals that do not overlap (chapter 7)."""
    out = []
    for m, d in imp.groupby("method", sort=False):
        d = d.sort_values("importance", ascending=False)
        boots = ({r.param: np.array(str(r.boot).split(), float) for r in d.itertuples()}
                 if "boot" in d else None)
        for a in d.itertuples():
            for b in d.itertuples():
                if a.param == b.param:
                    continue
                if boots is not None and len(boots[a.param]) == len(boots[b.param]) > 1:
                    above = float(np.mean(boots[a.param] > boots[b.param])) >= share
                else:
                    above = a.lo > b.hi
                if above:
                    out.append((m, a.param, b.param))
    return out


def leads(imp: pd.DataFrame, method: str, top: str) -> bool:
    """Whether the bootstrap intervals of ``method`` put ``top`` above every other
    hyperparameter (:func:`supported_rankings`): a first place the data establish."""
    above = {b for m, a, b in supported_rankings(imp) if m == method and a == top}
    return above >= set(imp[imp.method == method].param) - {top}


def _position(v: float, leaf: dict) -> float:
    lo, hi = leaf["low"], leaf["high"]
    if leaf.get("log"):
        return float((np.log(v) - np.log(lo)) / (np.log(hi) - np.log(lo)))
    return float((v - lo) / (hi - lo))


def trials_at_epoch(trials: list, epoch: int, space: dict) -> list:
    """Every finished trial of ``trials`` (complete or pruned) that reported ``epoch``, as
    a COMPLETE Optuna trial whose value is its validation accuracy at that epoch: with
    the pruner's first rung as ``epoch``, every trained trial, pruned or not, is compared
    at the same point of training (chapter 7).

    A conditional hyperparameter with a range in every case (the learning rate and the
    weight decay, each with its own range per optimiser) becomes the *position* of the
    trial's value in its own case's range: 0 at the low end, 1 at the high end, on a log
    scale where the range is one. An SGD and an AdamW learning rate, in different units,
    then compare as "low or high for its optimiser", and the optimiser stays a
    hyperparameter of its own (merged into one raw column, the learning rate would
    mostly stand for the optimiser). One fixed in some case (AdamW's momentum) is left
    out, since importance estimators read only what every trial has."""
    import optuna
    from optuna.distributions import FloatDistribution

    from .search import SEP

    ranged = {n for n, sp in space.items() if isinstance(sp, dict) and "given" in sp
              and all(isinstance(v, dict) for v in sp["cases"].values())}
    rows = []
    for t in trials:  # finished trials only: a running one's epochs are not yet final
        if epoch not in t.intermediate_values or t.state.name not in ("COMPLETE", "PRUNED"):
            continue
        params, dists = {}, {}
        for k, v in t.params.items():
            base, _, case = k.partition(SEP)
            if not case:
                params[k], dists[k] = v, t.distributions[k]
            elif base in ranged:
                params[base] = _position(float(v), space[base]["cases"][case])
        rows.append((params, dists, float(t.intermediate_values[epoch])))
    for base in ranged:  # one distribution per position, wide enough for every trial
        pos = [p[base] for p, _, _ in rows if base in p]
        for _, d, _ in rows:
            d[base] = FloatDistribution(min([0.0, *pos]), max([1.0, *pos]))
    return [optuna.trial.create_trial(params=p, distributions={k: d[k] for k in p}, value=v)
            for p, d, v in rows]


def with_steps(rows: pd.DataFrame, n_train: int) -> pd.DataFrame:
    """Per-epoch rows of a study (:func:`lib.search.per_epoch_frame`) with the optimiser
    steps taken by the end of each epoch (``n_train // batch_size`` a epoch, the last
    partial batch dropped, as :func:`lib.train.train` does) and the log of the batch
    size, so that the batch size can be set beside the number of steps it buys
    (chapter 7)."""
    steps = rows.epoch * np.maximum(1, n_train // rows.batch_size)
    return rows.assign(steps=steps, log_bs=np.log10(rows.batch_size))


def group_rho(df: pd.DataFrame, by: str, x: str, y: str = "value") -> pd.DataFrame:
    """Per level of ``by``: the number of trials, Spearman's rho of ``x`` and ``y`` with
    its 95 % interval (:func:`lib.stats.spearman_ci`), and the range of ``x`` among the
    trials within 5 points of the level's best (chapter 7)."""
    from .stats import spearman_ci

    rows = []
    for level, d in df.groupby(by, sort=True):
        ci = spearman_ci(d[x], d[y])
        good = d[d[y] >= d[y].max() - 0.05][x]
        rows.append({by: level, "trials": len(d), "rho": ci["rho"], "lo": ci["lo"],
                     "hi": ci["hi"], "good_lo": float(good.min()),
                     "good_hi": float(good.max()), "n_good": len(good)})
    return pd.DataFrame(rows).set_index(by)


def rankings_sentence(imp: pd.DataFrame, counts: pd.DataFrame, n_trials: int,
                      few: int = 5) -> str:
    """What the paired bootstrap of :func:`importance` supports, in words
    (:func:`supported_rankings`): per method, each hyperparameter ranked above others
    (or that none is),
    and the levels of categorical hyperparameters (:func:`level_counts`) held by fewer
    than ``few`` of the ``n_trials`` trials (chapter 7)."""
    def name(p):
        return p.removeprefix("model.")

    support = supported_rankings(imp)
    txt = []
    for m in imp.method.unique():
        score = imp[imp.method == m].set_index("param").importance
        tops = sorted({a for mm, a, _ in support if mm == m}, key=lambda p: -float(score[p]))
        txt.append(f"{m}: " + (
            "no hyperparameter scores above another in 95 % of the resamples, so the "
            "bootstrap supports no ranking" if not tops else "; ".join(
                f"{name(a)} above " + ", ".join(name(b) for mm, aa, b in support
                                                 if mm == m and aa == a) for a in tops)))
    thin = counts[counts.trials < few] if len(counts) else counts
    how = ("one hyperparameter's share above the other's in at least 95 % of the "
           "resamples, the two compared within each resample" if "boot" in imp else
           "an interval wholly above another's")
    return (f"Rankings the bootstrap supports ({how}), per method: " + ". ".join(txt) + ". "
            + (f"Some levels rest on very few of the {n_trials} trials: "
               + ", ".join(f"{r.hyperparameter} = {r.level} ({r.trials})"
                           for r in thin.itertuples())
               + "; an importance driven by such a level is a statement about those few "
                 "trials." if len(thin) else ""))


def _widths(v) -> list[int]:
    return [int(x) for x in (v.split("/") if isinstance(v, str) else v)]


def feature_frame(df: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    """Trial parameters as numbers for a surrogate: learning rate, batch size and weight
    decay as log10, booleans and the optimiser as 0/1 (Adam or AdamW: 1), block widths
    ("64/128/128") as the number of blocks and log2 of the first width (chapter 7). A
    conditional parameter must be merged first (:func:`lib.search.merge_cases`)."""
    out = pd.DataFrame(index=df.index)
    for p in params:
        v = df[p]
        name = p.removeprefix("model.")
        if p in ("lr", "batch_size", "weight_decay"):
            out[f"log10_{name}"] = np.log10(v.astype(float))
        elif p == "optimizer":
            out["adam"] = v.astype(str).str.startswith("adam").astype(float)
        elif p == "model.block_widths":
            w = v.map(_widths)
            out["blocks"] = w.map(len).astype(float)
            out["log2_width"] = np.log2(w.map(lambda x: x[0]).astype(float))
        else:
            out[name] = v.astype(float)
    return out


def surrogate(X: pd.DataFrame, y: np.ndarray, seed: int = 0):
    """A random forest fitted to trial results: the model partial dependence reads."""
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=300, min_samples_leaf=2, random_state=seed,
                                 n_jobs=1).fit(X, y)


def partial_dependence_2d(model, X: pd.DataFrame, a: str, b: str, n: int = 12) -> dict:
    """2-D partial dependence of ``model`` on features ``a`` and ``b`` over the data ``X``,
    with Friedman's H-statistic of their interaction: the share of the joint effect's
    variance not explained by the two one-dimensional effects (0: additive)."""
    from sklearn.inspection import partial_dependence

    def grid(col):
        vals = np.unique(X[col])
        return vals if len(vals) <= n else np.linspace(vals.min(), vals.max(), n)

    ga, gb = grid(a), grid(b)
    pd2 = partial_dependence(model, X, [a, b], custom_values={a: ga, b: gb},
                             kind="average")["average"][0]
    pa = partial_dependence(model, X, [a], custom_values={a: ga}, kind="average")["average"][0]
    pb = partial_dependence(model, X, [b], custom_values={b: gb}, kind="average")["average"][0]
    joint = pd2 - pd2.mean()
    add = (pa - pa.mean())[:, None] + (pb - pb.mean())[None, :]
    h2 = float(((joint - add) ** 2).sum() / max((joint**2).sum(), 1e-12))
    return dict(a=a, b=b, grid_a=ga, grid_b=gb, pd=pd2, h2=h2)


def additive_fit(df: pd.DataFrame, x1: str, x2: str, y: str = "value", n_knots: int = 4,
                 loo: bool = False) -> float:
    """R^2 of the best *additive* smooth model y ~ f(x1) + g(x2) (splines, ridge): how
    much of y two knobs explain without any interaction between them (chapter 7). With
    ``loo``, each point is predicted by the model fitted without it (leave-one-out), an
    R^2 the fit cannot inflate by following the noise of the points it scores."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import SplineTransformer

    X = df[[x1, x2]].to_numpy(float)
    ct = ColumnTransformer([(c, SplineTransformer(n_knots=n_knots, degree=2), [i])
                            for i, c in enumerate((x1, x2))])
    m = make_pipeline(ct, RidgeCV(alphas=np.logspace(-4, 1, 12)))
    if loo:
        return float(r2_score(df[y], cross_val_predict(m, X, df[y], cv=LeaveOneOut())))
    return float(m.fit(X, df[y]).score(X, df[y]))


def interaction_check(df: pd.DataFrame, knob: str, other: str, decoupled: str,
                      y: str = "value") -> dict:
    """Does an interaction between ``knob`` and ``other`` survive a reparametrisation?
    Compares the additive fit in the given coordinates (knob, other) with the one in
    (decoupled, other), in-sample (``r2_*``) and leave-one-out (``loo_*``): if the
    decoupled additive model explains much more, the interaction was an artefact of how
    the knobs are defined (chapter 7)."""
    fits = {f"{kind}_{name}": additive_fit(df, a, other, y, loo=kind == "loo")
            for kind in ("r2", "loo") for name, a in (("coupled", knob),
                                                      ("decoupled", decoupled))}
    return dict(coupled=(knob, other), decoupled=(decoupled, other), **fits)


def interaction_verdict(ic: dict, margin: float = 0.05) -> str:
    """One sentence on what :func:`interaction_check` found (chapter 7), read on the
    leave-one-out R^2 where it is there (a margin of ``margin`` either way, a rule of
    thumb)."""
    loo = "loo_coupled" in ic
    c, d = (ic["loo_coupled"], ic["loo_decoupled"]) if loo else (ic["r2_coupled"],
                                                                  ic["r2_decoupled"])
    r2 = "leave-one-out R²" if loo else "R²"
    if d > c + margin:
        return (f"Decoupled, the additive model explains more ({r2} {d:.2f} against "
                f"{c:.2f}): the interaction is largely an artefact of how the knobs are "
                "defined, and in the decoupled coordinates they act nearly independently.")
    if c > d + margin:
        return (f"Decoupling makes the additive model worse ({r2} {d:.2f} against {c:.2f}): "
                "the coordinates we searched in are already the more independent ones.")
    return (f"Both parametrisations fit about equally well ({r2} {c:.2f} and {d:.2f}): "
            "this data cannot tell whether the interaction is real or an artefact.")


def line_summary(line: pd.DataFrame) -> dict:
    """Loss along a straight line in weight space (:func:`interpolate`): the barrier
    (highest loss above the worse end), accuracy halfway and at the ends, the steps
    along which the loss falls (``falls`` of ``steps``; ``monotone`` is their share, 1 for
    a strict descent) and the largest rise from one step to the next (``max_rise``, 0
    when it never rises)."""
    ends = max(line.loss.iloc[0], line.loss.iloc[-1])
    d = np.diff(line.loss.to_numpy())
    return dict(barrier=float(line.loss.max() - ends),
                mid_acc=float(line.acc.iloc[len(line) // 2]),
                end_acc=float((line.acc.iloc[0] + line.acc.iloc[-1]) / 2),
                falls=int((d < 0).sum()), steps=int(len(d)), monotone=float((d < 0).mean()),
                max_rise=float(max(d.max(), 0.0)))


def dead_share(act: pd.DataFrame) -> pd.DataFrame:
    """Per trial (``number``, with its ``kind``), the share of all its ReLU units that are
    dead at the last recorded epoch: dead units summed over its layers over its units
    (:func:`lib.train.activation_stats` rows with ``units`` and ``dead_frac``), so a wide
    layer weighs as many units as it has."""
    a = act.assign(dead=act.dead_frac * act.units)
    g = a.groupby(["number", "kind"])[["dead", "units"]].sum().reset_index()
    return g.assign(share=g.dead / g.units)[["number", "kind", "share"]]


def spread_growth(weights: pd.DataFrame) -> pd.Series:
    """Per layer, the interquartile range of its weights at the last epoch divided by
    the one at initialisation (epoch 0): how much training widened (> 1) or narrowed
    (< 1) each layer's weight distribution (chapter 7)."""
    iqr = weights.assign(iqr=weights.q75 - weights.q25)
    first = iqr[iqr.epoch == iqr.epoch.min()].set_index("layer").iqr
    last = iqr[iqr.epoch == iqr.epoch.max()].set_index("layer").iqr
    return (last / first).reindex(first.index).rename("iqr growth")


#: A trial the pruner stopped while its learning rate was still warming up.
WARMUP = "stopped in warm-up"


def trial_kind(df: pd.DataFrame, chance: float = 0.2, warmup_epochs: int = 0) -> pd.Series:
    """"diverged" (non-finite loss), :data:`WARMUP` (stopped, not diverged, after at most
    ``warmup_epochs`` epochs: judged while its learning rate was still rising, a slow
    starter rather than a stuck run), "stuck" (validation accuracy below ``chance`` at
    the epoch the trial stopped: no better than a few points above guessing) or
    "learned"."""
    kind = np.where(df.status == "diverged", "diverged",
                    np.where(df.epochs_run <= warmup_epochs, WARMUP,
                             np.where(df.value < chance, "stuck", "learned")))
    return pd.Series(kind, index=df.index, name="kind")


def final_weights(weights: pd.DataFrame) -> pd.Series:
    """Per-run summary of the last epoch's weights: total L2 norm over layers, the first
    and last layer's norms, and the root mean square of a single weight (the norm per
    weight: ``rms`` over all layers, ``layer_rms`` the mean of the layers' own), which
    compares networks of different sizes."""
    last = weights[weights.epoch == weights.epoch.max()]
    sq = float((last.norm**2).sum())
    return pd.Series(dict(total_norm=float(np.sqrt(sq)),
                          first_norm=float(last.norm.iloc[0]),
                          last_norm=float(last.norm.iloc[-1]),
                          rms=float(np.sqrt(sq / last.numel.sum())),
                          layer_rms=float((last.norm / np.sqrt(last.numel)).mean())))


def layer_rms(weights: pd.DataFrame) -> pd.DataFrame:
    """weights.csv with each layer's RMS per weight (``rms`` = norm / sqrt(numel))."""
    return weights.assign(rms=weights.norm / np.sqrt(weights.numel))


def wd_summary(runs_by_wd: dict) -> pd.DataFrame:
    """Chapter 7's weight-decay experiment, one row per weight decay: test and training
    accuracy and their gap over the seeds, and the final RMS per weight (over layers)."""
    rows = []
    for wd, rs in runs_by_wd.items():
        for r in rs:
            fw = final_weights(r.weights)
            rows.append(dict(weight_decay=wd, seed=r.config.seed,
                             test_acc=r.summary["test_acc"], train_acc=r.summary["train_acc"],
                             gap=r.summary["train_acc"] - r.summary["test_acc"],
                             rms=fw.rms))
    return pd.DataFrame(rows)


def _blend(sd_a: dict, sd_b: dict, alpha: float) -> dict:
    return {k: (1 - alpha) * v + alpha * sd_b[k] if v.is_floating_point() else v
            for k, v in sd_a.items()}


ALPHAS = tuple(float(a) for a in np.linspace(0, 1, 21))


def interpolate(model, sd_a: dict, sd_b: dict, x_train, x_eval, y_eval,
                alphas=ALPHAS, batch: int = 500) -> pd.DataFrame:
    """Loss and accuracy of the weights (1 - alpha) * a + alpha * b on the straight line
    between two solutions (chapter 7). Batch-norm statistics are re-estimated on
    ``x_train`` at every point, since averaged weights do not fit averaged statistics.

    ``x_*`` are normalised float tensors (``lib.train.to_input``); ``model`` is a
    module of the right architecture (its weights are overwritten)."""
    import torch
    import torch.nn.functional as F

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    rows = []
    for a in alphas:
        model.load_state_dict(_blend(sd_a, sd_b, float(a)))
        with torch.no_grad():
            if bns:
                for m in bns:
                    m.reset_running_stats()
                    m.momentum = None  # cumulative average over the batches below
                model.train()
                for i in range(0, len(x_train), batch):
                    model(x_train[i:i + batch])
            model.eval()
            out = torch.cat([model(x_eval[i:i + batch]) for i in range(0, len(x_eval), batch)])
            y = torch.as_tensor(y_eval).long()
            rows.append(dict(alpha=float(a), loss=F.cross_entropy(out, y).item(),
                             acc=(out.argmax(1) == y).float().mean().item()))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------
# chapter 6: test-time augmentation of the re-trained models
# --------------------------------------------------------------------------
def flip_tta(run, ds: Dataset, batch_size: int = 500) -> dict:
    """A re-trained run's test accuracy without and with flip test-time augmentation:
    the logits of each test image and of its mirror image, averaged (chapter 6). Both
    are computed here in fp32, so the difference is the augmentation's alone."""
    import torch

    from .data import channel_stats
    from .fast import tta_views
    from .runs import CacheError
    from .train import to_input

    c = run.config
    if c.holdout or c.n_test is not None:
        raise ValueError(f"{run.path}: flip_tta scores runs evaluated on the whole test set")
    try:
        model = run.model()
    except CacheError:
        raise CacheError(f"{run.path}: no model.pt to score with flips (re-trained weights "
                         "are not committed); re-train it (python -m lib sweep --study "
                         "<study> --retrain K) or restore the cached result") from None
    plain = tta = 0
    stats = channel_stats(ds.x_train)
    with torch.no_grad():
        for i in range(0, len(ds.y_test), batch_size):
            x = to_input(ds, ds.x_test[i:i + batch_size], stats)
            y = torch.as_tensor(ds.y_test[i:i + batch_size]).long()
            # the mirror views of lib.fast.tta_views (level 1), the first being the image
            outs = [(w, model(v)) for w, v in tta_views(x, 1)]
            plain += int((outs[0][1].argmax(1) == y).sum())
            tta += int((sum(w * o for w, o in outs).argmax(1) == y).sum())
    n = len(ds.y_test)
    return {"test_acc_fp32": plain / n, "test_acc_flip_tta": tta / n}


def flip_tta_table(run_list, ds: Dataset, runs_dir=None) -> pd.DataFrame:
    """:func:`flip_tta` of each run, cached in ``runs/ch05/`` (one small csv per run, so
    the chapter needs no weights once they are computed)."""
    from .runs import cached

    rows = []
    for r in run_list:
        one = cached("ch05", "flip-tta", ds, lambda r=r: pd.DataFrame([flip_tta(r, ds)]),
                     runs_dir, params={"run": r.key})
        rows.append(dict(key=r.key, **one.iloc[0].to_dict()))
    return pd.DataFrame(rows)


def shift_accuracy(model, ds: Dataset, shifts=(0, 1, 2, 4, 8), batch_size: int = 1000):
    """Test accuracy of ``model`` on the test images shifted right and down by each of
    ``shifts`` pixels, the uncovered border filled with black (zeros on the raw uint8
    pixels, before normalisation), as chapter 3's training crops fill theirs
    (:func:`lib.train.augment_batch`); in fp32 (chapter 3: how far each model's accuracy
    survives a shift)."""
    import torch

    from .data import channel_stats
    from .train import to_input

    stats = channel_stats(ds.x_train)
    rows = []
    model.eval()
    with torch.no_grad():
        for sh in shifts:
            right = 0
            for i in range(0, len(ds.y_test), batch_size):
                xb = ds.x_test[i:i + batch_size]  # NHWC uint8
                if sh:
                    xb = np.pad(xb, ((0, 0), (sh, 0), (sh, 0), (0, 0)))[:, :32, :32]
                y = torch.as_tensor(ds.y_test[i:i + batch_size]).long()
                right += int((model(to_input(ds, xb, stats)).argmax(1) == y).sum())
            rows.append(dict(shift=sh, test_acc=right / len(ds.y_test)))
    return pd.DataFrame(rows)
