import math

import numpy as np
import pytest
import torch

from lib import train
from lib.models import ConfigError


def test_same_seed_same_metrics(synth, tiny_config):
    a = train.fit(tiny_config, synth, device="cpu", progress=False)
    b = train.fit(tiny_config, synth, device="cpu", progress=False)
    assert a.history[-1]["test_acc"] == b.history[-1]["test_acc"]
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert np.array_equal(a.test_logits, b.test_logits)  # bit-identical, not just close
    c = train.fit(train.make_config(tiny_config, seed=1), synth, device="cpu", progress=False)
    assert [r["train_loss"] for r in a.history] != [r["train_loss"] for r in c.history]


def test_learns_the_synthetic_signal(synth, tiny_config):
    cfg = train.make_config(tiny_config, epochs=6)
    res = train.fit(cfg, synth, device="cpu", progress=False)
    assert res.summary["status"] == "ok"
    assert res.summary["test_acc"] > 0.5  # chance is 0.1
    assert len(res.history) == 6 and res.test_logits.shape == (200, 10)
    assert {"layer", "norm", "std"} <= set(res.weights[0])


def test_mlp_trains(synth):
    cfg = train.make_config(model=dict(kind="mlp", hidden=(32,)), epochs=2, batch_size=64,
                            precision="fp32")
    res = train.fit(cfg, synth, device="cpu", progress=False)
    assert res.summary["n_params"] == 3072 * 32 + 32 + 330


def test_divergence_is_recorded_not_raised(synth, tiny_config):
    cfg = train.make_config(tiny_config, lr=1e8, schedule="constant", warmup=0.0,
                            model=dict(batch_norm=False), weight_decay=0.0, epochs=3)
    res = train.fit(cfg, synth, device="cpu", progress=False)
    assert res.summary["status"] == "diverged"
    assert res.summary["epochs_run"] == 1
    assert not math.isfinite(res.history[0]["train_loss"])


def test_callback_stops_training(synth, tiny_config):
    cfg = train.make_config(tiny_config, epochs=5)
    res = train.fit(cfg, synth, device="cpu", progress=False, callbacks=[lambda e, r, m: e == 2])
    assert res.summary["status"] == "stopped" and res.summary["epochs_run"] == 2


def test_bf16_autocast_runs(synth, tiny_config):
    res = train.fit(train.make_config(tiny_config, precision="bf16"), synth, device="cpu",
                    progress=False)
    assert res.summary["amp_dtype"] == "bfloat16"
    assert np.isfinite(res.summary["test_loss"])


def test_augment_crop_and_flip():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = train.augment_batch(x, g1, pad=2), train.augment_batch(x, g2, pad=2)
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b)
    # each output image is a (possibly flipped) shifted window of the zero-padded input
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [xp[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(2)) for w in windows)


@pytest.mark.parametrize("schedule", [s for s in train.SCHEDULES if s != "triangle"])
def test_lr_schedules(schedule):
    f = [train.lr_factor(s, 100, schedule, 0.2) for s in range(100)]
    assert f[0] == pytest.approx(0.05) and f[19] == pytest.approx(1.0)
    assert max(f) == pytest.approx(1.0)
    if schedule != "constant":
        assert f[-1] < 0.05


def test_make_config_errors():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['learning_rate'\]"):
        train.make_config(learning_rate=0.1)
    with pytest.raises(ConfigError, match="optimizer"):
        train.make_config(optimizer="lbfgs")
    with pytest.raises(ConfigError, match="unknown model option"):
        train.make_config(**{"model.filters": 3})
    assert train.make_config(**{"model.depth": 2}).model.depth == 2


def test_config_roundtrip():
    c = train.make_config(model=dict(kind="mlp", hidden=(16, 8)), lr=0.3)
    assert train.config_from_dict(train.config_dict(c)) == c


def test_unknown_device():
    with pytest.raises(ConfigError):
        train.resolve_device("tpu")


def test_holdout_scores_on_a_fixed_validation_split_never_the_test_set(synth):
    from lib.data import holdout_split

    a, b = holdout_split(synth, 40), holdout_split(synth, 40)
    assert len(a.y_test) == 40 and len(a.y_train) == len(synth.y_train) - 40
    assert (a.x_test == b.x_test).all() and np.bincount(a.y_test).min() >= 3
    assert a.fingerprint == synth.fingerprint  # the run key names the whole dataset
    c = train.make_config(model=dict(depth=2, width=4), epochs=1, batch_size=64, holdout=40,
                    precision="fp32")
    res = train.fit(c, synth, device="cpu")
    assert "val_acc" in res.history[0] and "test_acc" not in res.history[0]
    assert res.summary["eval_split"] == "val" and res.summary["val_images"] == 40
    assert res.test_logits.shape == (40, 10)


def test_new_fields_at_their_defaults_keep_old_run_keys():
    from lib import runs

    base = train.make_config()
    assert runs.run_key(train.make_config(base, holdout=0), "f") == runs.run_key(base, "f")
    assert runs.run_key(train.make_config(base, holdout=10), "f") != runs.run_key(base, "f")
    assert runs.run_key(train.make_config(base, model={"early_pool": True}), "f") != \
        runs.run_key(base, "f")


def test_a_pinned_thread_count_is_in_the_key_and_restored_after(synth, tiny_config):
    from lib import runs

    base = train.make_config()
    assert runs.run_key(train.make_config(base, threads=0), "f") == runs.run_key(base, "f")
    assert runs.run_key(train.make_config(base, threads=1), "f") != runs.run_key(base, "f")
    with pytest.raises(ConfigError, match="threads"):
        train.make_config(base, threads=-1)
    before = torch.get_num_threads()
    res = train.fit(train.make_config(tiny_config, epochs=1, threads=1), synth, "cpu")
    assert res.summary["threads"] == 1 and torch.get_num_threads() == before


def test_the_data_order_does_not_depend_on_the_thread_count(synth, tiny_config, monkeypatch):
    """What another thread count changes is arithmetic, not the data: the batches'
    order (and the seeded draws behind it) is the same at 1 and 2 threads, so the runs
    start from the same weights and see the same images in the same order."""
    orders = {}
    real = torch.randperm

    for n in (1, 2):
        seen = []

        def randperm(*a, seen=seen, **k):
            out = real(*a, **k)
            seen.append(out.clone())
            return out

        monkeypatch.setattr(torch, "randperm", randperm)
        train.fit(train.make_config(tiny_config, epochs=2, threads=n), synth, "cpu",
                  progress=False)
        orders[n] = seen
    assert len(orders[1]) == len(orders[2]) >= 2  # one permutation per epoch at least
    assert all(torch.equal(a, b) for a, b in zip(orders[1], orders[2]))


def test_cpuinfo_reads_each_cpus_value(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 fma\n"
                 "cpu MHz\t\t: 2000.5\n\nprocessor\t: 1\nmodel name\t: Test CPU\n"
                 "flags\t\t: fpu avx2 fma\ncpu MHz\t\t: 2100.0\n")
    assert train.cpuinfo("model name", f) == ["Test CPU", "Test CPU"]
    assert train.cpuinfo("cpu MHz", f) == ["2000.5", "2100.0"]
    assert train.cpuinfo("flags", f)[0].split() == ["fpu", "avx2", "fma"]
    assert train.cpuinfo("flags", tmp_path / "missing") == []


def test_probe_is_class_balanced_even_on_a_sorted_split():
    y = np.repeat(np.arange(10), 30)  # sorted by class, as the offline copy's test set
    idx = train.probe_indices(y, 40)
    assert np.bincount(y[idx], minlength=10).tolist() == [4] * 10
    assert (train.probe_indices(y, 40) == idx).all()
