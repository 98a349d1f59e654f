"""A study replayed into the trackers' views (chapter 6's screenshots of the sweep)."""

import pytest

from lib import search, sweeplog, track
from lib.train import make_config

SMOKE = make_config(epochs=2, batch_size=32, holdout=64, save_weights=False,
                    precision="fp32", model=dict(depth=2, width=4))


def test_every_trained_trial_becomes_a_tensorboard_run_with_its_hparams(tmp_path):
    spec = search.StudySpec("tiny", {"lr": {"low": 0.01, "high": 0.3, "log": True},
                                     "batch_size": [16, 32]}, SMOKE, "random", "none",
                            n_trials=3)
    search.run_study(spec, runs_dir=tmp_path, synthetic=True, log=lambda *a: None)
    folder = sweeplog.log_study(spec, tmp_path / "logs", tmp_path, log=lambda *a: None)
    trials = sorted(p.name for p in folder.glob("trial-*"))
    assert len(trials) == 3
    study = search.load_study("tiny", tmp_path)
    trained = search.trained_frame(study)
    for t in trained.to_dict("records"):
        d = folder / f"trial-{t['number']:03d}"
        sc = track.read_scalars(d)
        val = sc[sc.tag == "accuracy/val"].sort_values("step")
        assert len(val) == 2 and val.value.iloc[-1] == pytest.approx(t["value"], abs=1e-6)
        assert track.event_summary(d).loc["hparams", "tags"] >= 1
    # the hyperparameters a trial sampled, short names, and how it ended
    hp = sweeplog.trial_hparams(trained.to_dict("records")[0], spec.space)
    assert set(hp) == {"lr", "batch_size", "state"}
    # an export replaces the previous one; a study without trials is a one-line error
    assert sweeplog.log_study(spec, tmp_path / "logs", tmp_path, log=lambda *a: None) == folder
    empty = search.StudySpec("none-yet", spec.space, SMOKE, "random", "none", n_trials=1)
    search.create_study(empty, search.open_storage(search.default_storage("none-yet",
                                                                          tmp_path)))
    with pytest.raises(search.SearchError, match="no trained trial"):
        sweeplog.log_study(empty, tmp_path / "logs", tmp_path)


def test_a_conditional_hyperparameter_is_logged_under_its_own_name(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    space = {"optimizer": ["sgd", "adam"],
             "lr": {"given": "optimizer", "cases": {
                 "sgd": {"low": 0.01, "high": 0.3, "log": True},
                 "adam": {"low": 1e-4, "high": 1e-3, "log": True}}}}
    spec = search.StudySpec("cond", space, SMOKE, "random", "none", n_trials=3)
    search.run_study(spec, runs_dir=tmp_path, synthetic=True, log=lambda *a: None)
    folder = sweeplog.log_study(spec, tmp_path / "logs", tmp_path, log=lambda *a: None)
    trained = search.trained_frame(search.load_study("cond", tmp_path))
    for t in trained.to_dict("records"):
        acc = EventAccumulator(str(folder / f"trial-{t['number']:03d}"))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hp = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        lr = t[f"lr|{t['optimizer']}"]  # Optuna's name for the trial's own case
        assert hp["optimizer"].string_value == t["optimizer"]
        assert hp["lr"].number_value == pytest.approx(lr) and "lr|sgd" not in hp
