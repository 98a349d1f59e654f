"""Chapter 8's Keras CNN: same architecture, schedule and caching as the PyTorch one."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lib import book, runs
from lib.data import synthetic
from lib.models import ConfigError, build_model, count_params, model_config
from lib.train import lr_factor, make_config, to_input

kc = pytest.importorskip("lib.keras_cnn")
if kc.unavailable_reason():
    pytest.skip(kc.unavailable_reason(), allow_module_level=True)

CONFIGS = [
    book.ch03_cnn_model(),
    model_config(depth=2, width=8, kernel_size=5, batch_norm=False),
    model_config(depth=3, width=6, growth=1.5, kernel_size=3, convs_per_block=2, pool="avg",
                 activation="gelu"),
]


@pytest.mark.parametrize("m", CONFIGS, ids=["ch03", "k5-nobn", "avg-gelu"])
def test_parameter_count_matches_torch(m):
    assert kc.count_params(kc.build_model(m)) == count_params(build_model(m))


@pytest.mark.parametrize("m", CONFIGS, ids=["ch03", "k5-nobn", "avg-gelu"])
def test_same_weights_same_logits(m):
    """Copying a PyTorch CNN's weights into the Keras model gives the same outputs:
    the two frameworks build the same function, layer for layer."""
    torch.manual_seed(0)
    tm = build_model(m)
    # move BatchNorm's running statistics off their (0, 1) start so that they matter
    with torch.no_grad():
        for mod in tm.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
    tm.eval()
    km = kc.build_model(m)
    kc.from_torch(km, tm)
    ds = synthetic(8, 16)
    x = to_input(ds, ds.x_test)
    want = tm(x).detach().numpy()
    got = km(x.permute(0, 2, 3, 1).numpy(), training=False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_from_torch_refuses_another_architecture():
    with pytest.raises(ConfigError, match="different layer"):
        kc.from_torch(kc.build_model(CONFIGS[1]), build_model(CONFIGS[0]))


def test_mlp_and_early_pool_are_refused():
    with pytest.raises(ConfigError, match="CNNs only"):
        kc.build_model(model_config(kind="mlp"))
    with pytest.raises(ConfigError, match="early_pool"):
        kc.build_model(model_config(early_pool=True))


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_schedule_matches_lr_factor(schedule):
    total, peak = 50, 0.3
    sch = kc.lr_schedule(peak, total, schedule, 0.2)
    got = np.array([float(sch(s)) for s in range(total)])
    want = np.array([peak * lr_factor(s, total, schedule, 0.2) for s in range(total)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_l2_penalty_gradient_is_torch_weight_decay():
    """The Keras kernel penalty's gradient is wd * w: what torch.optim.SGD adds."""
    import tensorflow as tf

    km = kc.build_model(CONFIGS[1], weight_decay=0.01)
    with tf.GradientTape() as tape:
        pen = tf.add_n(km.losses)
    kernels = [v for v in km.trainable_weights if len(v.shape) > 1]
    grads = tape.gradient(pen, kernels)
    for v, g in zip(kernels, grads):
        np.testing.assert_allclose(g.numpy(), 0.01 * v.numpy(), rtol=1e-5, atol=1e-8)


def test_pipeline_augments_like_torch():
    """Crops keep 32x32 and come from the zero-padded image; eval data is untouched."""
    ds = synthetic(64, 32)
    c = make_config(book.ch03_cnn_config("smoke"), batch_size=16, seed=3)
    train, ev = kc.pipelines(c, ds)
    xb, yb = next(iter(train))
    assert xb.shape == (16, 32, 32, 3) and yb.shape == (16,)
    mean, std = ds.x_train.reshape(-1, 3).mean(0) / 255, ds.x_train.reshape(-1, 3).std(0) / 255
    xe, _ = next(iter(ev))
    np.testing.assert_allclose(xe.numpy()[0], (ds.x_test[0] / 255 - mean) / std, atol=1e-4)
    batches = sum(1 for _ in train)
    assert batches == 64 // 16


def test_keras_run_is_cached_apart_from_torch(tmp_path):
    ds = synthetic(128, 64)
    c = make_config(book.ch03_cnn_config("smoke"), batch_size=32, epochs=2,
                    model=dict(depth=2, width=8))
    r = runs.get(c, ds, "ch07", tmp_path, framework="keras")
    assert r.key == runs.run_key(c, ds.fingerprint, "keras") != runs.run_key(c, ds.fingerprint)
    assert r.summary["framework"] == "keras" and r.summary["epochs_run"] == 2
    assert r.summary["n_params"] == count_params(build_model(c.model))
    m = r.metrics
    assert list(m.epoch) == [1, 2] and m.test_acc.between(0, 1).all()
    assert np.isfinite(m.train_loss).all() and (m.train_s > 0).all()
    assert r.test_logits().shape == (64, 10)
    assert abs(r.summary["test_acc"] - m.test_acc.iloc[-1]) < 1e-6
    assert set(r.weights.layer) >= {"block1_conv1/kernel", "logits/kernel"}
    assert (r.path / "model.weights.h5").is_file()
    assert list((r.path / "tb").glob("train/events.out.tfevents.*"))
    # a hit, not a retrain; and no torch run of that config exists
    assert runs.get(c, ds, "ch07", tmp_path, framework="keras", train=False).key == r.key
    assert runs.find(c, ds, "ch07", tmp_path) is None
    with pytest.raises(runs.CacheError, match="framework"):
        runs.run_key(c, ds.fingerprint, "jax")


def test_missing_tensorflow_is_one_clear_line(tmp_path):
    """With TensorFlow not importable, the reason is one line naming the install."""
    (tmp_path / "tensorflow.py").write_text("raise ImportError('No module named tensorflow')\n")
    code = textwrap.dedent("""
        from lib import keras_cnn
        r = keras_cnn.unavailable_reason()
        print(repr(r))
        assert r and "\\n" not in r and "pip install" in r, r
    """)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.getcwd()}")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_tensorflow_then_torch_optimiser_does_not_crash():
    """Importing TensorFlow before torch's first optimiser used to kill the process
    (triton loaded after TensorFlow: both bundle LLVM); ``import lib`` prevents it."""
    code = ("import lib, tensorflow, torch\n"
            "torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0 and "ok" in out.stdout, (out.returncode, out.stderr[-1500:])


def test_chapter_7_without_tensorflow_says_so_in_one_line(tmp_path, monkeypatch):
    """With TensorFlow not importable, chapter 8 still executes: its first output is one
    line naming the problem and the install, and no cell fails."""
    import nbformat

    from lib import cli
    from tests.conftest import copy_book

    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "tensorflow.py").write_text("raise ImportError('No module named tensorflow')\n")
    monkeypatch.setenv("PYTHONPATH", f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    (tmp_path / "book_copy").mkdir()
    root = copy_book(tmp_path / "book_copy")
    nb = root / "book" / "08_keras.ipynb"
    cli.execute(nb, budget="smoke", runs_dir=str(root / "runs"))
    cells = nbformat.read(nb, as_version=4).cells
    outs = [o for c in cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outs if o.output_type == "error"]
    md = [o.data["text/markdown"] for o in outs if "text/markdown" in o.get("data", {})]
    assert md[0].startswith("**TensorFlow is not available") and "pip install" in md[0]
    assert "\n" not in md[0]
