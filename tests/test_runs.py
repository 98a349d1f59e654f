import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lib import runs, train
from lib.runs import CacheError

# The key of the default Config on a fixed fingerprint. If this changes, every cached
# run in runs/ is silently orphaned: bump CACHE_VERSION deliberately and update this.
DEFAULT_KEY = "b9d09f4df29b"


def test_key_is_stable_and_sensitive():
    c = train.Config()
    assert runs.run_key(c, "0" * 16) == DEFAULT_KEY
    assert runs.run_key(train.make_config(c), "0" * 16) == DEFAULT_KEY
    assert runs.run_key(train.make_config(c, lr=0.051), "0" * 16) != DEFAULT_KEY
    assert runs.run_key(train.make_config(c, **{"model.width": 33}), "0" * 16) != DEFAULT_KEY
    assert runs.run_key(c, "1" * 16) != DEFAULT_KEY


def test_load_or_train(tmp_path, synth, tiny_config, monkeypatch):
    run = runs.get(tiny_config, synth, "g", tmp_path)
    assert run.path == tmp_path / "g" / runs.run_key(tiny_config, synth.fingerprint)
    for f in ("config.json", "summary.json", "metrics.csv", "weights.csv", "test_logits.npy",
              "model.pt"):
        assert (run.path / f).is_file(), f
    assert list((run.path / "tb").glob("events.out.tfevents.*"))
    assert len(run.metrics) == tiny_config.epochs
    assert run.summary["data_fingerprint"] == synth.fingerprint
    assert run.summary["cache_version"] == runs.CACHE_VERSION
    model = run.model()
    assert sum(p.numel() for p in model.parameters()) == run.summary["n_params"]

    def boom(*a, **k):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(runs, "fit", boom)
    again = runs.get(tiny_config, synth, "g", tmp_path)
    assert again.summary == run.summary
    df = runs.load_results("g", tmp_path)
    assert len(df) == 1 and df.loc[0, "model.width"] == 8 and df.loc[0, "status"] == "ok"


def test_miss_without_training_is_an_error(tmp_path, synth, tiny_config):
    with pytest.raises(CacheError, match="training is off"):
        runs.get(tiny_config, synth, "g", tmp_path, train=False)


def test_mismatched_folder_is_reported(tmp_path, synth, tiny_config):
    run = runs.get(tiny_config, synth, "g", tmp_path)
    cfg = json.loads((run.path / "config.json").read_text())
    cfg["lr"] = 0.5
    (run.path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CacheError, match="no longer match its key"):
        runs.get(tiny_config, synth, "g", tmp_path)


SCRIPT = """
import sys
from lib import data, runs, train
ds = data.synthetic(400, 200, seed=0)
cfg = train.make_config(model=dict(depth=2, width=8), epochs=500, batch_size=64,
                        precision="fp32")
runs.get(cfg, ds, "g", sys.argv[1], progress=False)
"""


def test_killed_run_leaves_no_folder(tmp_path, synth):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)])
    try:
        deadline = time.time() + 120
        # wait until training has started writing (TensorBoard events in the temp folder)
        while not list((tmp_path / runs.TMP).glob("*/tb/events.*")):
            assert proc.poll() is None, "the training process ended early"
            assert time.time() < deadline, "training never started"
            time.sleep(0.2)
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())
    assert runs.list_runs("g", tmp_path) == []
    # the next writer removes the dead process's temporary folder
    removed = runs.clean_stale_tmp(tmp_path)
    assert len(removed) == 1 and not any((tmp_path / runs.TMP).iterdir())


def test_a_run_looked_for_and_missing_makes_the_chapter_stale_when_it_arrives(
        tmp_path, synth, tiny_config, monkeypatch):
    """A chapter that shows only cached runs (chapter 5's ablations) records the runs it
    looked for and did not find; the digest `python -m lib book` compares changes when
    one of them is trained."""
    from lib import cli

    monkeypatch.setattr(runs, "READ", [])
    assert runs.find(tiny_config, synth, "g", tmp_path) is None
    rel = f"g/{runs.run_key(tiny_config, synth.fingerprint)}"
    assert runs.READ == [rel]
    nb = cli.chapters()[0]
    params = {"budget": "smoke", "runs_dir": str(tmp_path)}
    before = cli.inputs_digest(nb, params, [rel])["runs read"]
    runs.get(tiny_config, synth, "g", tmp_path)
    assert cli.inputs_digest(nb, params, [rel])["runs read"] != before


RESUME_SCRIPT = """
import os, signal, sys
from lib import data, recipe, runs
ds = data.synthetic(n_train=400, n_test=200, seed=0)
c = recipe.fast_config("smoke", precision="fp32", n_train=None, n_test=None, epochs=4)
fit = runs.fit


def killed_after_epoch_2(*a, **k):  # a real SIGKILL, once epoch 2's state is saved
    k["callbacks"] = (lambda epoch, row, model: epoch == 2 and os.kill(os.getpid(),
                                                                       signal.SIGKILL),)
    return fit(*a, **k)


runs.fit = killed_after_epoch_2
runs.get(c, ds, "recipe", sys.argv[1], device="cpu", progress=False)
"""


def test_a_killed_run_goes_on_after_its_last_epoch_and_ends_as_if_never_killed(
        tmp_path, synth):
    """The recipe's network (whitening, moving average, alternating flips, TTA: every
    piece of training state) killed after epoch 2 of 4: the same call continues at
    epoch 3, and the run it writes equals one trained without a break."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lib import recipe

    c = recipe.fast_config("smoke", precision="fp32", n_train=None, n_test=None, epochs=4)
    done = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(tmp_path / "b")],
                          timeout=300)
    assert done.returncode == -signal.SIGKILL
    saved = list((tmp_path / "b" / runs.TMP / "resume").glob("recipe-*.pt"))
    assert len(saved) == 1 and runs.list_runs("recipe", tmp_path / "b") == []
    resumed = runs.get(c, synth, "recipe", tmp_path / "b", device="cpu", progress=False)
    straight = runs.get(c, synth, "recipe", tmp_path / "a", device="cpu", progress=False)
    assert not saved[0].exists()  # the finished run needs its state no more
    assert [r["epoch"] for r in resumed.summary["resumed"]] == [2]
    assert "resumed" not in straight.summary
    cols = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]
    assert resumed.metrics[cols].equals(straight.metrics[cols])
    for k in ("test_acc", "test_acc_tta", "train_loss"):
        assert resumed.summary[k] == straight.summary[k], k
    assert (np.load(resumed.path / "test_logits_tta.npy")
            == np.load(straight.path / "test_logits_tta.npy")).all()
    w = ["epoch", "layer", "norm", "std"]
    assert resumed.weights[w].equals(straight.weights[w])
    ea = EventAccumulator(str(resumed.path / "tb"))
    ea.Reload()  # TensorBoard holds every epoch once: the killed part's and the rest
    assert [e.step for e in ea.Scalars("accuracy/test")] == [1, 2, 3, 4]


def test_the_execution_report_counts_a_run_shown_twice_once():
    from types import SimpleNamespace

    from lib import book

    def run(key, cpu):
        return SimpleNamespace(key=key, summary=dict(device="cpu", device_name=cpu,
                                                     threads=2, torch="2"))

    s = SimpleNamespace(budget="smoke", data=SimpleNamespace(source="synthetic",
                                                             fingerprint="f"))
    a, b = run("k1", "Intel"), run("k2", "AMD")
    rep = book.execution_report(s, [a, b, a]).value  # a ladder step shown again
    assert rep["runs read"] == "k1, k2"
    assert rep["trained on"] == "cpu (Intel, 2 threads), torch 2: 1 run; " \
                                "cpu (AMD, 2 threads), torch 2: 1 run"
