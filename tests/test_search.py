"""The search engine: space checks, storage errors, resume after SIGKILL, pruning, grid."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from lib import runs, search, studies
from lib.data import REPO_ROOT
from lib.train import make_config

SMOKE = studies.base_config("smoke")


def spec(name="t", **kw):
    kw.setdefault("space", {"lr": {"low": 0.01, "high": 0.2, "log": True},
                            "model.width": [4, 8]})
    kw.setdefault("base", make_config(SMOKE, model=dict(depth=2), precision="fp32"))
    kw.setdefault("n_trials", 4)
    return search.StudySpec(name, **kw)


@pytest.mark.parametrize("space, message", [
    ({"learning_rate": [0.1]}, "unknown hyperparameter 'learning_rate'"),
    ({"lr": {"low": 0.1, "high": 0.01}}, "impossible range"),
    ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs low > 0"),
    ({"lr": []}, "no choices"),
    ({"model.kernel_size": [3, 4]}, "model.kernel_size=4 is not a valid value"),
    ({"lr": {"low": 0.1}}, "needs low and high"),
    ({}, "empty"),
])
def test_bad_space_is_one_clear_line(space, message):
    with pytest.raises(search.SearchError, match=message) as e:
        spec(space=space)
    assert "\n" not in str(e.value)


def test_grid_needs_lists_and_study_needs_validation_split():
    with pytest.raises(search.SearchError, match="grid study needs a list"):
        spec(sampler="grid")
    with pytest.raises(search.SearchError, match="holdout"):
        spec(base=make_config(SMOKE, holdout=0))


def test_unopenable_storage_is_one_line(tmp_path):
    with pytest.raises(search.SearchError, match="cannot open the study storage") as e:
        search.open_storage("nosuchdb://user@host/db")
    assert "\n" not in str(e.value)


def test_missing_or_empty_study(tmp_path):
    with pytest.raises(search.SearchError, match="python -m lib sweep --study nope"):
        search.load_study("nope", tmp_path)
    s = spec("empty")
    search.create_study(s, search.open_storage(search.default_storage("empty", tmp_path)))
    with pytest.raises(search.SearchError, match="no trained trials"):
        search.load_study("empty", tmp_path)


def test_study_trains_cached_runs_and_stops_at_n_trials(tmp_path):
    s = spec(pruner="sha", n_trials=5)
    out = search.run_study(s, runs_dir=tmp_path, synthetic=True, log=lambda *a: None)
    assert out["trained"] == 5
    study = search.load_study("t", tmp_path)
    df = search.trials_frame(study)
    done = df[df.state.isin(["COMPLETE", "PRUNED"])]
    # every trial is a normal cached run with per-epoch metrics and weight statistics
    for key, n in zip(done.key, done.epochs_run):
        run = runs.read_run(tmp_path / "search" / "t" / key)
        assert len(run.metrics) == n and "val_acc" in run.metrics
        assert {"norm", "q01", "q99"} <= set(run.weights.columns)
        assert (run.activations.dead_frac.between(0, 1)).all()
        assert list((run.path / "tb").glob("events.*"))
        assert run.summary["eval_split"] == "val" and "test_acc" not in run.summary
    per_epoch = search.per_epoch_frame(s, search.trained_frame(study), tmp_path)
    assert len(per_epoch) == done.epochs_run.sum() and per_epoch.val_acc.between(0, 1).all()
    last = per_epoch.sort_values("epoch").groupby("number").last()
    assert (last.val_acc == last.value).all()  # a trial's value is its last epoch's
    ov = search.study_overview(s, search.trained_frame(study))
    assert ov["trials trained"] == 5 and ov["epochs spent"] == done.epochs_run.sum()
    assert ov["of which pruned"] == (done.state == "PRUNED").sum()
    assert ov["sampler / pruner"] == "tpe / sha" and ov["training hours"] >= 0
    # pruned trials stopped early; complete ones ran the full budget
    assert (done[done.state == "PRUNED"].epochs_run < s.base.epochs).all()
    assert (done[done.state == "COMPLETE"].epochs_run == s.base.epochs).all()
    # running it again trains nothing more; growing n_trials resumes the same study
    again = search.run_study(s, runs_dir=tmp_path, synthetic=True, log=lambda *a: None)
    assert again["trained"] == 5 and len(search.trials_frame(study)) == len(df)
    with pytest.raises(search.SearchError, match="different space"):
        search.run_study(spec(pruner="none"), runs_dir=tmp_path, synthetic=True,
                         log=lambda *a: None)


@pytest.mark.parametrize("budget", ["smoke", "cpu", "gpu"])
def test_book_studies_are_valid_and_wide_keeps_airbench_layout(budget):
    specs = studies.studies(budget)
    assert {"main", "grid-lr-bs", "pair-pruned", "pair-sha", "pair-full", "wide"} <= set(specs)
    wide, main = specs["wide"], specs["main"]
    c = search.trial_config(wide, {"model.depth": 4, "model.width": 64, "lr": 0.1})
    assert (c.model.convs_per_block, c.model.early_pool, c.model.kernel_size) == (2, True, 3)
    assert c.optimizer == "sgd" and c.model.widths() == [64, 128, 256, 512]
    # the second study looks at more images per trial than the main one (or as many)
    assert (wide.base.n_train or 10**9) >= (main.base.n_train or 10**9)


def test_grid_study_visits_every_cell_once(tmp_path):
    s = spec("g", sampler="grid", pruner="none", n_trials=100,
             space={"lr": [0.01, 0.1], "batch_size": [16, 32]})
    out = search.run_study(s, runs_dir=tmp_path, synthetic=True, log=lambda *a: None)
    df = search.trials_frame(search.load_study("g", tmp_path))
    assert out["trained"] == 4
    assert sorted(zip(df.lr, df.batch_size)) == [(0.01, 16), (0.01, 32), (0.1, 16), (0.1, 32)]


def test_diverged_trial_is_recorded_not_dropped(tmp_path):
    s = spec("d", space={"lr": [1e4]}, n_trials=1, pruner="none",
             base=make_config(SMOKE, model=dict(depth=2, width=4, batch_norm=False),
                              precision="fp32"))
    search.run_study(s, runs_dir=tmp_path, synthetic=True, log=lambda *a: None)
    df = search.trials_frame(search.load_study("d", tmp_path))
    assert df.state.tolist() == ["COMPLETE"] and df.status.tolist() == ["diverged"]


def test_compute_cap_skips_without_counting(tmp_path):
    s = spec("c", space={"model.width": [4, 64]}, sampler="grid", pruner="none",
             n_trials=1, max_macs=2e6)
    search.run_study(s, runs_dir=tmp_path, synthetic=True, log=lambda *a: None)
    df = search.trials_frame(search.load_study("c", tmp_path))
    assert set(df[df.epochs_run == 0].skipped.str.contains("MACs > cap")) == {True}
    assert (df.epochs_run > 0).sum() == 1


def _states(db):
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("select state from trials order by number")]


def test_sigkill_mid_sweep_then_rerun_resumes(tmp_path):
    space = tmp_path / "space.yaml"  # models big enough that a trial takes a few seconds
    space.write_text("lr: {low: 0.01, high: 0.1, log: true}\nmodel.width: [32, 48]\n"
                     "model.convs_per_block: [2]\n")
    cmd = [sys.executable, "-m", "lib", "sweep", "--study", "main", "--budget", "smoke",
           "--space", str(space), "--synthetic", "--runs-dir", str(tmp_path),
           "--n-trials", "3"]
    db = tmp_path / "search" / "main.db"
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while True:  # kill once a trial has finished and the next one is training
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.time() < deadline, "the sweep never got going"
            try:
                st = _states(db)
            except sqlite3.Error:
                st = []
            if any(s in ("COMPLETE", "PRUNED") for s in st) and st and st[-1] == "RUNNING" \
                    and list((tmp_path / runs.TMP).glob("*/tb/events.*")):
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = search.trials_frame(search.optuna_load("main", search.default_storage(
        "main", tmp_path)))
    killed = before[before.state == "RUNNING"].number.tolist()
    finished = before[before.state.isin(["COMPLETE", "PRUNED"])]
    assert len(killed) == 1

    r = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"trial(s) {killed} were interrupted" in r.stdout
    after = search.trials_frame(search.load_study("main", tmp_path))
    # the killed trial is FAIL and was retried with its parameters; nothing counted twice
    assert after.set_index("number").loc[killed[0], "state"] == "FAIL"
    retry = after[after.get("retry_of") == killed[0]]
    assert len(retry) == 1 and retry.state.iloc[0] in ("COMPLETE", "PRUNED")
    trained = after[after.state.isin(["COMPLETE", "PRUNED"]) & (after.epochs_run > 0)]
    assert len(trained) == 3
    # trials finished before the kill are kept as they were
    kept = after.set_index("number").loc[finished.number]
    assert (kept.value.values == finished.value.values).all()
    # every trained trial's run is in the cache, and no temporary folder is left
    assert all((tmp_path / "search" / "main" / k / "summary.json").is_file()
               for k in trained.key)
    assert not list((tmp_path / runs.TMP).iterdir())


def test_retrain_top_configs_on_test_set_then_cache_hit(tmp_path):
    from lib.data import synthetic

    search.run_study(spec("r", pruner="none", n_trials=3), runs_dir=tmp_path, synthetic=True,
                     log=lambda *a: None)
    ds = synthetic(256, 128)
    rt = search.retrain("r", "smoke", ds, k=2, runs_dir=tmp_path, log=lambda *a: None,
                        epochs=1)
    seeds = search.RETRAIN_SEEDS["smoke"]
    assert len(rt) == 2 * seeds and rt["rank"].tolist() == [1] * seeds + [2] * seeds
    assert rt.trial.nunique() == 2 and rt.key.nunique() == 2 * seeds
    assert (rt.epochs == 1).all() and rt.test_acc.between(0, 1).all()
    for r in rt.run:  # whole training set, scored on the test set
        assert r.summary["eval_split"] == "test" and r.config.holdout == 0
        assert r.path.parent.name == "search-best"
    # ranks follow the search's validation accuracy
    assert rt.groupby("rank").val_acc.first().is_monotonic_decreasing
    # a second call reads the cache: nothing trains
    again = search.retrain("r", "smoke", ds, k=2, runs_dir=tmp_path, train=False,
                           log=lambda *a: None, epochs=1)
    assert again.key.tolist() == rt.key.tolist()
    with pytest.raises(search.SearchError, match="positive number of epochs"):
        search.retrain("r", "smoke", ds, k=1, runs_dir=tmp_path, epochs=-1)
    one = search.retrain("r", "smoke", ds, k=1, runs_dir=tmp_path, train=False,
                         log=lambda *a: None, epochs=1, seeds=1)
    assert one.key.tolist() == rt.key.tolist()[:1]  # the first seed's cached run
    # one row per configuration, scores aggregated over its seeds, best first
    summ = search.retrain_summary(rt)
    assert list(summ.index) == sorted(summ.index, key=lambda r: -rt[rt["rank"] == r]
                                      .test_acc.mean())
    for r, row in summ.iterrows():
        mine = rt[rt["rank"] == r]
        assert row.seeds == seeds and row.trial == mine.trial.iloc[0]
        assert row.test_acc_mean == pytest.approx(mine.test_acc.mean())
        assert row.test_acc_std == pytest.approx(mine.test_acc.std())
        assert row.minutes_per_run == pytest.approx(mine.train_time_s.mean() / 60)


def test_retrain_summary_groups_scores_and_refuses_bad_rows():
    import pandas as pd

    rt = pd.DataFrame(dict(study=["a", "a", "b", "b", "b"], rank=[1, 1, 1, 1, 1],
                           trial=[4, 4, 7, 7, 7], seed=[0, 1, 0, 1, 2],
                           test_acc=[0.5, 0.7, 0.8, 0.9, 1.0], tta=[0.6, 0.8, 0.9, 1.0, 1.0]))
    s = search.retrain_summary(rt, by=["study", "rank"], scores=("tta", "test_acc"))
    assert s.index.tolist() == [("b", 1), ("a", 1)]  # sorted by the first score
    assert s.seeds.tolist() == [3, 2] and s.trial.tolist() == [7, 4]
    assert s.loc[("a", 1)].test_acc_mean == pytest.approx(0.6)
    assert s.loc[("a", 1)].test_acc_std == pytest.approx(0.1414, abs=1e-4)
    assert s.loc[("b", 1)].tta_mean == pytest.approx(29 / 30)
    assert "minutes_per_run" not in s  # no timing column, no made-up timing
    with pytest.raises(search.SearchError, match=r"no column\(s\) \['gain'\]"):
        search.retrain_summary(rt, scores=("gain",))
    with pytest.raises(search.SearchError, match="no re-trained runs"):
        search.retrain_summary(rt.iloc[:0])
    rt["train_time_s"] = [600.0, 660.0, 1200.0, 1203.0, 1206.0]
    view = search.summary_view(search.retrain_summary(rt), drop=["trial"])
    assert view.columns.tolist() == ["seeds", "min/run", "test acc", "test acc std"]
    assert view["min/run"].iloc[0] == pytest.approx(16.2)  # 973.8 s a run: 16.23 min
    assert view["test acc"].iloc[0] == pytest.approx(0.78)


def test_pruning_audit_counts_the_good_configs_a_pruner_stopped():
    import pandas as pd

    full = pd.DataFrame(dict(number=range(5), key=list("abcde"), state=["COMPLETE"] * 5,
                             value=[0.9, 0.8, 0.7, 0.6, 0.5]))
    pruned = pd.DataFrame(dict(number=range(5), key=list("abcde"),
                               state=["COMPLETE", "PRUNED", "COMPLETE", "PRUNED", "PRUNED"],
                               value=[0.9, 0.3, 0.7, 0.2, 0.1]))
    a = search.pruning_audit(pruned, full, k=3)
    assert (a["k"], a["killed"], a["killed_trials"], a["best_kept"]) == (3, 1, [1], True)
    b = search.pruning_audit(pruned.assign(state="PRUNED"), full, k=2)
    assert (b["killed"], b["best_kept"]) == (2, False)


def test_startup_makeup_counts_what_tpe_counts_as_its_random_start():
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}

    def add(state, epochs, enqueued=False, value=None):
        t = create_trial(state=state, params={"x": 0.5}, distributions=dist, value=value,
                         user_attrs={"epochs_run": epochs},
                         system_attrs={"fixed_params": {"x": 0.5}} if enqueued else {})
        st.add_trial(t)

    add(TrialState.COMPLETE, 3, enqueued=True, value=0.5)  # the recipe's defaults
    add(TrialState.PRUNED, 0)  # skipped for compute: counted, never trained
    add(TrialState.FAIL, 1)  # a failed trial: TPE does not count it
    add(TrialState.PRUNED, 1)
    add(TrialState.COMPLETE, 3, value=0.6)
    add(TrialState.COMPLETE, 3, value=0.7)  # the fifth counted: beyond a start-up of 4
    assert search.startup_makeup(st, 4) == dict(random_trained=2, enqueued=1, untrained=1)
    assert search.startup_makeup(st, 10) == dict(random_trained=3, enqueued=1, untrained=1)
