import os

import pytest

from lib import data

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def synth():
    """A tiny CIFAR-shaped dataset with a learnable signal."""
    return data.synthetic(n_train=400, n_test=200, seed=0)


@pytest.fixture
def tiny_config():
    """A CNN config that trains on the synthetic data in about a second."""
    from lib.train import make_config

    return make_config(model=dict(depth=2, width=8), epochs=2, batch_size=64, lr=0.05,
                       precision="fp32")


def write_npz(path, **arrays):
    import numpy as np

    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path
