"""CIFAR-10: find it, verify it, cache it as one npz file, hand it out as arrays.

Introduced in chapter 2 ("The data"); every chapter loads its data through
:func:`load_cifar10`.

Where the data comes from is one setting, the environment variable
``CIFAR10_DATA`` (or the ``data_dir`` argument / papermill parameter):

* a ready ``.npz`` file with ``x_train``, ``y_train``, ``x_test``, ``y_test``;
* a directory holding ``cifar10.npz`` (our cache), or the official archive
  ``cifar-10-python.tar.gz`` / its extracted ``cifar-10-batches-py/``;
* unset: the directory ``data/`` at the repository root, where the official
  archive is downloaded (torchvision, MD5-verified) on first use and
  converted to ``cifar10.npz``.

The official archive is a pickle; it is only unpickled after torchvision has
verified the MD5 checksum of every batch file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ENV_VAR = "CIFAR10_DATA"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO_ROOT / "data"
CACHE_NAME = "cifar10.npz"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
EXTRACTED_NAME = "cifar-10-batches-py"

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
N_CLASSES = len(CLASSES)
SHAPES = {"train": 50_000, "test": 10_000}
IMAGE_SHAPE = (32, 32, 3)



class DataError(RuntimeError):
    """The data is missing, corrupt or not CIFAR-10; the message says how to fix it."""


@dataclass
class Dataset:
    """CIFAR-10 (or a CIFAR-shaped stand-in) as NHWC uint8 arrays.

    Defined in chapter 2. ``source`` says which copy this is; ``fingerprint``
    is a sha256 over the arrays (first 16 hex digits) and goes into every run's key.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    fingerprint: str = ""
    classes: tuple = CLASSES
    path: str = ""
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.fingerprint:
            self.fingerprint = fingerprint_arrays(
                self.x_train, self.y_train, self.x_test, self.y_test
            )

    def __repr__(self):
        return (
            f"Dataset(train={len(self.y_train)}, test={len(self.y_test)}, "
            f"source={self.source!r}, fingerprint={self.fingerprint})"
        )


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' shapes, dtypes and bytes; 16 hex digits."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def describe_source(fingerprint: str, default: str) -> str:
    """The human-readable name of a known copy, else ``default``."""
    return KNOWN_SOURCES.get(fingerprint, default)


KNOWN_SOURCES = {
    "cbfc990179d2b4ba": (
        "CIFAR-10, offline copy re-encoded as JPEG (quality 75, 4:2:0) by a "
        "public mirror; pixels differ from the originals by about 6 grey "
        "levels on average; test set sorted by class"
    ),
}


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------
def validate(
    x_train, y_train, x_test, y_test, *, where: str = "arrays", full: bool = True
) -> None:
    """Check shapes, dtypes, label range and class counts; raise DataError.

    ``full=True`` also demands the official sizes (50,000 / 10,000) and exactly
    balanced classes (5,000 / 1,000 per class). Slices and synthetic data are
    checked with ``full=False``.
    """
    fix = (
        f"Re-create {where} (delete it and let lib.data download and verify "
        f"the official archive), or point {ENV_VAR} at a good copy."
    )
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            raise DataError(f"{where}: x_{split}/y_{split} are not arrays. {fix}")
        if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
            raise DataError(
                f"{where}: x_{split} has shape {x.shape}, expected "
                f"(N, 32, 32, 3) uint8 images (NHWC). {fix}"
            )
        if x.dtype != np.uint8:
            raise DataError(
                f"{where}: x_{split} has dtype {x.dtype}, expected uint8 "
                f"pixels 0..255. {fix}"
            )
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(
                f"{where}: y_{split} has shape {y.shape}, expected ({len(x)},) "
                f"labels, one per image. {fix}"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"{where}: y_{split} has dtype {y.dtype}, expected integer "
                f"labels. {fix}"
            )
        if len(y) and (y.min() < 0 or y.max() >= N_CLASSES):
            raise DataError(
                f"{where}: y_{split} has labels in [{y.min()}, {y.max()}], "
                f"expected 0..{N_CLASSES - 1}. {fix}"
            )
        if full:
            n = SHAPES[split]
            if len(x) != n:
                raise DataError(
                    f"{where}: x_{split} has {len(x)} images, CIFAR-10 has "
                    f"{n}. {fix}"
                )
            counts = np.bincount(y, minlength=N_CLASSES)
            if not (counts == n // N_CLASSES).all():
                raise DataError(
                    f"{where}: {split} class counts are {counts.tolist()}, "
                    f"CIFAR-10 has {n // N_CLASSES} per class. {fix}"
                )


# --------------------------------------------------------------------------
# the npz cache
# --------------------------------------------------------------------------
KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_npz(path: Path, *, full: bool = True) -> Dataset:
    """Load and validate one npz file; corrupt or truncated files raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no such file. Set {ENV_VAR} to an existing npz file or "
            "directory, or unset it to download CIFAR-10."
        )
    fix = (
        f"The file is corrupt or truncated: delete it and run "
        f"`python -m lib data` to rebuild it, or point {ENV_VAR} at a good copy."
    )
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise DataError(
                    f"{path}: missing arrays {missing} (has {z.files}); an "
                    f"npz cache needs {list(KEYS)}."
                )
            arrays = {k: z[k] for k in KEYS}
            source = str(z["source"]) if "source" in z.files else ""
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e}). {fix}") from e
    validate(*(arrays[k] for k in KEYS), where=str(path), full=full)
    arrays = {k: (v.astype(np.int64) if k.startswith("y") else v) for k, v in arrays.items()}
    ds = Dataset(**arrays, source="", path=str(path))
    ds.source = describe_source(ds.fingerprint, source or f"npz file {path.name}")
    return ds


def write_npz(ds: Dataset, path: Path) -> None:
    """Write the cache atomically (temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(
                f, x_train=ds.x_train, y_train=ds.y_train.astype(np.uint8),
                x_test=ds.x_test, y_test=ds.y_test.astype(np.uint8),
                source=np.array(ds.source),
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------
# the official archive, through torchvision
# --------------------------------------------------------------------------
def from_official(root: Path, *, download: bool) -> Dataset:
    """Read the official archive under ``root`` with torchvision.

    torchvision checks the MD5 of the archive (on download) and of every
    batch file (always) before it unpickles anything; a mismatch raises.
    """
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity, extract_archive

    root = Path(root)
    archive = root / ARCHIVE_NAME
    if archive.is_file() and not (root / EXTRACTED_NAME).is_dir():
        # a local archive: verified and extracted here, offline (torchvision's own
        # constructor only extracts what it has just downloaded)
        if not check_integrity(str(archive), CIFAR10.tgz_md5):
            raise DataError(f"{archive}: fails its MD5 check (expected {CIFAR10.tgz_md5}); "
                            "the file is damaged or not the official archive. Delete it and "
                            f"retry with internet access, or set {ENV_VAR} to a ready npz file.")
        extract_archive(str(archive), str(root))
        download = False
    try:
        train = CIFAR10(str(root), train=True, download=download)
        test = CIFAR10(str(root), train=False, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted."
        raise DataError(
            f"{root}: the official CIFAR-10 archive is missing or fails its "
            f"MD5 check ({e}). Delete {root / EXTRACTED_NAME} and "
            f"{root / ARCHIVE_NAME} and retry with internet access, or set "
            f"{ENV_VAR} to a ready npz file."
        ) from e
    except OSError as e:  # no network
        raise DataError(
            f"cannot download CIFAR-10 into {root} ({e}). This machine seems "
            f"offline: set {ENV_VAR} to a directory or npz file that holds "
            "the data."
        ) from e
    ds = Dataset(
        x_train=np.asarray(train.data, dtype=np.uint8),
        y_train=np.asarray(train.targets, dtype=np.int64),
        x_test=np.asarray(test.data, dtype=np.uint8),
        y_test=np.asarray(test.targets, dtype=np.int64),
        source="CIFAR-10, official archive (torchvision download, MD5 verified)",
        path=str(root),
    )
    validate(ds.x_train, ds.y_train, ds.x_test, ds.y_test, where=str(root))
    return ds


# --------------------------------------------------------------------------
# the one entry point
# --------------------------------------------------------------------------
_MEMO: dict = {}


def resolve(data_dir: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """Where to look: (path, explicit). Argument, then $CIFAR10_DATA, then data/."""
    if data_dir not in (None, ""):
        return Path(data_dir).expanduser(), True
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser(), True
    return DEFAULT_DIR, False


def load_cifar10(data_dir: str | os.PathLike | None = None, *, download: bool = True,
                 full: bool = True) -> Dataset:
    """Return CIFAR-10 as a validated :class:`Dataset` (memoised per path).

    Defined in chapter 2. See the module docstring for where it looks. ``full``
    demands the official sizes and class balance (off only for test fixtures).
    """
    path, explicit = resolve(data_dir)
    key = (str(path.resolve()) if path.exists() else str(path), full)
    if key in _MEMO:
        return _MEMO[key]
    if path.suffix == ".npz" or path.is_file():
        ds = read_npz(path, full=full)
    elif path.is_dir() or not explicit:
        cache = path / CACHE_NAME
        if cache.is_file():
            ds = read_npz(cache, full=full)
        else:
            has_official = (path / ARCHIVE_NAME).is_file() or (path / EXTRACTED_NAME).is_dir()
            if not has_official and not download:
                raise DataError(
                    f"{path}: holds neither {CACHE_NAME} nor the official archive. "
                    f"Set {ENV_VAR} to a directory or npz file with CIFAR-10."
                )
            path.mkdir(parents=True, exist_ok=True)
            ds = from_official(path, download=not has_official)
            write_npz(ds, cache)
            ds.path = str(cache)
    else:
        raise DataError(
            f"{path}: no such file or directory ({ENV_VAR} or data_dir). Point "
            "it at a directory holding cifar10.npz or the official archive, or "
            "at a ready npz file; unset it to download into data/."
        )
    _MEMO[key] = ds
    return ds


# --------------------------------------------------------------------------
# slices and synthetic data (tests, budget="smoke")
# --------------------------------------------------------------------------
def _stratified(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` items of ``y`` in the classes' proportions."""
    per = np.bincount(y, minlength=N_CLASSES)
    want = np.floor(per / per.sum() * n).astype(int)
    want[: n - want.sum()] += 1
    idx = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[: want[c]] for c in range(N_CLASSES)]
    )
    return np.sort(idx)


def subset(ds: Dataset, n_train: int | None = None, n_test: int | None = None,
           seed: int = 0) -> Dataset:
    """A class-stratified random slice (same seed, same slice)."""
    rng = np.random.default_rng(seed)

    def pick(y, n):
        if n is None or n >= len(y):
            return np.arange(len(y))
        return _stratified(y, n, rng)

    i, j = pick(ds.y_train, n_train), pick(ds.y_test, n_test)
    return Dataset(
        ds.x_train[i], ds.y_train[i], ds.x_test[j], ds.y_test[j],
        source=f"{ds.source} [slice {len(i)}/{len(j)}, seed {seed}]",
        path=ds.path,
    )


def holdout_split(ds: Dataset, n_val: int, seed: int = 0) -> Dataset:
    """Train on all but ``n_val`` training images; the held-out ones take the test slot.

    Class-stratified, with a fixed ``seed`` so that every trial of a search is
    scored on the same validation images (chapter 6); the test set is not used.
    """
    if not 0 < n_val < len(ds.y_train):
        raise ValueError(f"holdout={n_val} must be between 1 and {len(ds.y_train) - 1}")
    val_idx = _stratified(ds.y_train, n_val, np.random.default_rng(seed))
    mask = np.ones(len(ds.y_train), bool)
    mask[val_idx] = False
    return Dataset(ds.x_train[mask], ds.y_train[mask], ds.x_train[val_idx],
                   ds.y_train[val_idx], source=f"{ds.source} [validation split {n_val}]",
                   fingerprint=ds.fingerprint, path=ds.path)


def synthetic(n_train: int = 512, n_test: int = 256, seed: int = 0) -> Dataset:
    """A tiny CIFAR-shaped dataset with a learnable signal, for tests.

    Each class has its own mean colour and a stripe orientation/frequency;
    noise makes it non-trivial. A small CNN learns it in a few epochs.
    """
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(N_CLASSES, 3))
    yy, xx = np.mgrid[0:32, 0:32]

    def make(n):
        y = np.arange(n) % N_CLASSES
        rng.shuffle(y)
        angle = y[:, None, None] * np.pi / N_CLASSES
        freq = 0.3 + 0.05 * y[:, None, None]
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
        stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
        img = colours[y][:, None, None, :] + 40 * stripes[..., None]
        img = img + rng.normal(0, 25, size=img.shape)
        return np.clip(img, 0, 255).astype(np.uint8), y.astype(np.int64)

    x_tr, y_tr = make(n_train)
    x_te, y_te = make(n_test)
    return Dataset(x_tr, y_tr, x_te, y_te, source=f"synthetic (seed {seed})")


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 NHWC images, as fractions of 255."""
    x = x.reshape(-1, 3).astype(np.float64) / 255.0
    return x.mean(0), x.std(0)


def reencode_jpeg(ds: Dataset, quality: int) -> Dataset:
    """Every image of ``ds`` saved once more as JPEG at ``quality`` (4:2:0, Pillow) and
    decoded, in memory (chapter 5 measures what lossy copies cost the recipe). The
    result has its own fingerprint, so its runs never mix with those of ``ds``."""
    import io

    from PIL import Image

    if not 1 <= int(quality) <= 95:
        raise ValueError(f"quality={quality!r}: use 1..95 (Pillow's useful range)")

    def one(x):
        out = np.empty_like(x)
        for i, img in enumerate(x):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=int(quality), subsampling=2)
            out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        return out

    return Dataset(one(ds.x_train), ds.y_train, one(ds.x_test), ds.y_test,
                   source=f"{ds.source}, re-encoded as JPEG quality {quality}",
                   path=ds.path)
