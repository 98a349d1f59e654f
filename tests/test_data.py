import os
import pickle

import numpy as np
import pytest

from lib import data
from lib.data import DataError

from .conftest import write_npz


def good_arrays(n_train=50, n_test=20):
    ds = data.synthetic(n_train, n_test)
    return dict(x_train=ds.x_train, y_train=ds.y_train.astype(np.uint8),
                x_test=ds.x_test, y_test=ds.y_test.astype(np.uint8))


def read(path):
    return data.read_npz(path, full=False)


def test_roundtrip_and_fingerprint(tmp_path):
    ds = data.synthetic(100, 40)
    data.write_npz(ds, tmp_path / "c.npz")
    back = read(tmp_path / "c.npz")
    assert back.fingerprint == ds.fingerprint
    assert back.source == ds.source
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file


def test_fingerprint_sees_one_pixel():
    ds = data.synthetic(100, 40)
    x = ds.x_train.copy()
    x[3, 4, 5, 1] ^= 1
    assert data.fingerprint_arrays(x, ds.y_train, ds.x_test, ds.y_test) != ds.fingerprint


def test_wrong_shape(tmp_path):
    a = good_arrays()
    a["x_train"] = a["x_train"][:, :28, :28]
    with pytest.raises(DataError, match=r"x_train has shape \(50, 28, 28, 3\).*expected"):
        read(write_npz(tmp_path / "c.npz", **a))


def test_wrong_dtype(tmp_path):
    a = good_arrays()
    a["x_test"] = a["x_test"].astype(np.float32)
    with pytest.raises(DataError, match="x_test has dtype float32, expected uint8"):
        read(write_npz(tmp_path / "c.npz", **a))


def test_labels_out_of_range(tmp_path):
    a = good_arrays()
    a["y_train"][7] = 10
    with pytest.raises(DataError, match=r"labels in \[0, 10\], expected 0..9"):
        read(write_npz(tmp_path / "c.npz", **a))


def test_label_count_mismatch(tmp_path):
    a = good_arrays()
    a["y_test"] = a["y_test"][:-1]
    with pytest.raises(DataError, match="one per image"):
        read(write_npz(tmp_path / "c.npz", **a))


def test_missing_array(tmp_path):
    a = good_arrays()
    del a["y_test"]
    with pytest.raises(DataError, match=r"missing arrays \['y_test'\]"):
        read(write_npz(tmp_path / "c.npz", **a))


def test_full_checks_sizes_and_class_counts(tmp_path):
    with pytest.raises(DataError, match="has 50 images, CIFAR-10 has 50000"):
        data.read_npz(write_npz(tmp_path / "c.npz", **good_arrays()))
    x = np.zeros((10_000, 32, 32, 3), np.uint8)
    y = np.zeros(10_000, np.uint8)
    with pytest.raises(DataError, match="class counts"):
        data.validate(np.zeros((50_000, 32, 32, 3), np.uint8), np.arange(50_000) % 10, x, y)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.load_cifar10(tmp_path / "nope.npz")
    with pytest.raises(DataError, match="no such file or directory"):
        data.load_cifar10(tmp_path / "nodir")
    with pytest.raises(DataError, match="holds neither cifar10.npz nor the official archive"):
        data.load_cifar10(tmp_path, download=False)


def test_env_var_is_the_one_setting(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "missing.npz"))
    with pytest.raises(DataError, match="missing.npz"):
        data.load_cifar10()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_npz(tmp_path, damage):
    f = write_npz(tmp_path / "c.npz", **good_arrays())
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else os.urandom(len(raw)))
    with pytest.raises(DataError, match="corrupt or truncated"):
        read(f)


def test_directory_with_cache(tmp_path):
    ds = data.synthetic(100, 40)
    data.write_npz(ds, tmp_path / data.CACHE_NAME)
    assert data.load_cifar10(tmp_path, full=False).fingerprint == ds.fingerprint


def test_official_archive_is_verified_before_unpickling(tmp_path):
    """A tampered batch file fails torchvision's MD5 check: DataError, nothing unpickled."""
    d = tmp_path / data.EXTRACTED_NAME
    d.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    for n in names:
        (d / n).write_bytes(pickle.dumps({"data": [], "labels": []}))
    with pytest.raises(DataError, match="MD5"):
        data.load_cifar10(tmp_path, download=False)


def test_subset_is_stratified_and_reproducible():
    ds = data.synthetic(500, 200)
    a, b = data.subset(ds, 100, 50, seed=1), data.subset(ds, 100, 50, seed=1)
    assert len(a.y_train) == 100 and len(a.y_test) == 50
    assert np.array_equal(a.x_train, b.x_train)
    assert np.bincount(a.y_train, minlength=10).tolist() == [10] * 10
    assert a.fingerprint != ds.fingerprint


def test_synthetic_is_cifar_shaped():
    ds = data.synthetic(30, 20)
    data.validate(ds.x_train, ds.y_train, ds.x_test, ds.y_test, full=False)
    assert ds.x_train.shape == (30, 32, 32, 3)
