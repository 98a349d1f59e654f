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


def official_archive(tmp_path, monkeypatch, n_per_batch=20):
    """A CIFAR-10-format archive of synthetic images, with torchvision's expected MD5s
    patched to its own (the real ones belong to the 163 MB official file)."""
    import hashlib
    import tarfile

    from torchvision.datasets import CIFAR10

    ds = data.synthetic(5 * n_per_batch, n_per_batch)
    src = tmp_path / "build" / data.EXTRACTED_NAME
    src.mkdir(parents=True)

    def batch(x, y):
        return {"data": x.transpose(0, 3, 1, 2).reshape(len(y), -1), "labels": y.tolist()}

    parts = {f"data_batch_{i + 1}": batch(ds.x_train[i::5], ds.y_train[i::5]) for i in range(5)}
    parts["test_batch"] = batch(ds.x_test, ds.y_test)
    parts["batches.meta"] = {"label_names": list(data.CLASSES)}
    md5 = {}
    for name, obj in parts.items():
        (src / name).write_bytes(pickle.dumps(obj))
        md5[name] = hashlib.md5((src / name).read_bytes()).hexdigest()
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / data.ARCHIVE_NAME, "w:gz") as tar:
        tar.add(src, arcname=data.EXTRACTED_NAME)
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]]
                                                for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    monkeypatch.setattr(CIFAR10, "tgz_md5",
                        hashlib.md5((root / data.ARCHIVE_NAME).read_bytes()).hexdigest())
    return root


def test_local_official_archive_is_verified_and_used_offline(tmp_path, monkeypatch):
    """A valid cifar-10-python.tar.gz is checked, extracted and read with no network."""
    import socket

    root = official_archive(tmp_path, monkeypatch)

    def no_network(*a, **k):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(data, "validate", lambda *a, **k: None)  # 100 images, not 50,000
    ds = data.load_cifar10(root, full=False)
    assert len(ds.y_train) == 100 and (root / data.CACHE_NAME).is_file()
    assert "MD5 verified" in ds.source


def test_damaged_local_archive_names_the_md5(tmp_path, monkeypatch):
    root = official_archive(tmp_path, monkeypatch)
    f = root / data.ARCHIVE_NAME
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DataError, match="fails its MD5 check"):
        data.load_cifar10(root, full=False)
    assert not (root / data.EXTRACTED_NAME).exists()  # nothing extracted, nothing unpickled
