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


def class_counts(ds: Dataset) -> pd.DataFrame:
    """Images per class and split (rows: classes)."""
    return pd.DataFrame({split: np.bincount(y, minlength=len(CLASSES))
                         for split, y in (("train", ds.y_train), ("test", ds.y_test))},
                        index=pd.Index(CLASSES, name="class"))


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
