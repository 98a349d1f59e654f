import os
import shutil

import pytest

from lib import cli, data
from lib.data import REPO_ROOT

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


def copy_book(root):
    """The book's sources (config, toc, book/, the CSS in _static/, the Sphinx extension
    in _ext/) in ``root``, with lib/ linked for literalinclude."""
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO_ROOT / name, root / name)
    for name in ("book", "_static", "_ext"):  # not a chapter being executed beside
        shutil.copytree(REPO_ROOT / name, root / name,
                        ignore=shutil.ignore_patterns(".*.tmp.ipynb"))
    (root / "lib").symlink_to(REPO_ROOT / "lib")
    return root


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    """A copy of the book whose chapters were executed at budget="smoke"."""
    root = copy_book(tmp_path_factory.mktemp("smoke_book"))
    for nb in cli.chapters(root):
        cli.execute(nb, budget="smoke", runs_dir=str(root / "runs"))
    return root


@pytest.fixture(scope="session")
def published_html(tmp_path_factory):
    """The committed (executed) notebooks built to HTML, as a reader gets them."""
    root = copy_book(tmp_path_factory.mktemp("published_book"))
    cli.build_html(root)  # Sphinx warnings are errors
    return root / "_build" / "html"
