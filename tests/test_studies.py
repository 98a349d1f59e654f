"""The search around the recipe: conditional spaces, implied settings, tuples written
"a/b/c", enqueued first trials, the fidelity study's rule (chapter 6)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

from lib import fast, search, studies
from lib.recipe import fast_config
from lib.train import make_config

SPACE = {
    "optimizer": {"choices": ["sgd", "adamw"],
                  "implies": {"adamw": {"parametrisation": "coupled",
                                        "bias_lr_scale": 1.0}}},
    "lr": {"given": "optimizer", "cases": {"sgd": {"low": 2.0, "high": 20.0, "log": True},
                                           "adamw": {"low": 1e-4, "high": 1e-2,
                                                     "log": True}}},
    "model.block_widths": ["8/16", "8/16/16"],
}


def base():
    return studies.recipe_base("smoke", "tiny")


def test_conditional_space_decodes_to_configs():
    sgd = search.trial_config(search.StudySpec("c", SPACE, base()),
                              {"optimizer": "sgd", "lr|sgd": 5.0,
                               "model.block_widths": "8/16"})
    assert (sgd.optimizer, sgd.lr, sgd.parametrisation) == ("sgd", 5.0, "decoupled")
    assert sgd.model.block_widths == (8, 16) and sgd.model.depth == 2
    adamw = search.trial_config(search.StudySpec("c", SPACE, base()),
                                {"optimizer": "adamw", "lr|adamw": 1e-3,
                                 "model.block_widths": "8/16/16"})
    assert (adamw.optimizer, adamw.parametrisation, adamw.bias_lr_scale) == \
        ("adamw", "coupled", 1.0)
    assert adamw.lr == 1e-3 and adamw.model.depth == 3


def test_encode_is_the_inverse_of_decode():
    over = {"optimizer": "adamw", "lr": 3e-3, "model.block_widths": (8, 16)}
    p = search.encode(SPACE, over)
    assert p == {"optimizer": "adamw", "lr|adamw": 3e-3, "model.block_widths": "8/16"}
    d = search.decode(SPACE, p)
    assert d["lr"] == 3e-3 and d["model.block_widths"] == (8, 16) and d["model.depth"] == 2


def test_random_points_follow_their_case():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = search.sample_params(SPACE, rng)
        (k,) = [k for k in p if k.startswith("lr|")]
        assert k == f"lr|{p['optimizer']}"
        r = SPACE["lr"]["cases"][p["optimizer"]]
        assert r["low"] <= p[k] <= r["high"]


@pytest.mark.parametrize("space, message", [
    ({"lr": {"given": "optimizer", "cases": {"sgd": [1.0]}}}, "'given' must name"),
    ({"optimizer": SPACE["optimizer"], "lr": {"given": "optimizer", "cases": {"sgd": [1.0]}}},
     "no case for optimizer='adamw'"),
    ({"optimizer": {"choices": ["sgd"], "implies": {"adam": {}}}}, "not a choice"),
    ({"model.block_widths": ["8/x"]}, "numbers joined by '/'"),
    ({"model.block_widths": ["8/-16"]}, "is not a valid value"),
    ({"optimizer": {"choices": ["adamw"]}}, "is not a valid value"),  # decoupled + adamw
])
def test_bad_conditional_space_is_one_line(space, message):
    with pytest.raises(search.SearchError, match=message) as e:
        search.StudySpec("c", space, base())
    assert "\n" not in str(e.value)


def test_enqueued_trials_come_first_and_must_be_in_the_space(tmp_path):
    first = {"optimizer": "sgd", "lr": 4.0, "model.block_widths": (8, 16)}
    s = search.StudySpec("q", SPACE, make_config(base(), precision="fp32"), "tpe", "none",
                         n_trials=3, n_startup_trials=2, enqueue=(first,))
    search.run_study(s, runs_dir=tmp_path, synthetic=True, log=lambda *a: None)
    df = search.trials_frame(search.load_study("q", tmp_path)).sort_values("number")
    assert df.iloc[0]["lr|sgd"] == 4.0 and df.iloc[0]["model.block_widths"] == "8/16"
    assert df.state.eq("COMPLETE").sum() == 3
    with pytest.raises(search.SearchError, match="no value for 'model.block_widths'"):
        search.StudySpec("q2", SPACE, base(), enqueue=({"optimizer": "sgd", "lr": 4.0},))
    # a spec stored before `enqueue` existed still compares equal (resuming it works),
    # and one with other enqueued trials does not
    import json

    plain = search.StudySpec("q", SPACE, base())
    old = json.loads(plain.to_json())
    del old["enqueue"]
    assert search._comparable(json.dumps(old)) == search._comparable(plain.to_json())
    assert search._comparable(s.to_json()) != search._comparable(plain.to_json())


@pytest.mark.parametrize("budget", ["smoke", "cpu", "gpu"])
def test_recipe_studies_are_valid_and_start_from_the_recipe(budget):
    specs = studies.recipe_studies(budget)
    main = specs["recipe-main"]
    first = search.trial_config(main, search.encode(main.space, main.enqueue[0]))
    if budget != "smoke":  # the recipe's defaults are the first trial, exactly
        ref = fast_config(budget)
        for f in ("lr", "momentum", "weight_decay", "batch_size", "label_smoothing",
                  "lookahead_every", "parametrisation", "optimizer"):
            assert getattr(first, f) == getattr(ref, f), f
        assert first.model == ref.model
        ch3 = search.trial_config(main, search.encode(main.space, main.enqueue[1]))
        assert ch3.model.widths() == [32, 64, 128] and ch3.batch_size == 128
    # the pruner's first rung comes after the warm-up
    assert main.min_epochs >= main.base.warmup * main.base.epochs
    assert sum(n.startswith("recipe-tpe-") for n in specs) == \
        sum(n.startswith("recipe-random-") for n in specs) == studies.COMPARE_REPEATS[budget]
    # every fidelity scores the same validation split, and the reference is the largest
    cfgs = studies.fidelity_configs(budget)
    assert len({c.holdout for _, _, c in cfgs}) == 1
    assert len({label for label, _, _ in cfgs}) == studies.FIDELITY_N_CONFIGS[budget]


def test_ch03_in_recipe_takes_the_same_sgd_steps():
    lr, wd = fast.coupled_to_decoupled(0.05, 0.9, 5e-4, 128)
    torch_lr, torch_wd = fast.decoupled_to_torch(lr, 0.9, wd, 128)
    # summed loss: the gradient is 128 times the mean loss's; the same step needs lr/128
    assert math.isclose(torch_lr * 128, 0.05) and math.isclose(torch_wd / 128, 5e-4)
    p = studies.ch03_in_recipe()
    assert math.isclose(p["lr"], lr, rel_tol=1e-5) and math.isclose(p["weight_decay"], wd,
                                                                     rel_tol=1e-4)


def test_fidelity_rule_picks_the_cheapest_well_correlated_fidelity():
    rows = []
    refs = [0.60, 0.70, 0.80, 0.85, 0.90]
    for i, ref in enumerate(refs):
        rows += [dict(config=f"c{i}", fidelity="reference", val_acc=ref, minutes=10.0),
                 dict(config=f"c{i}", fidelity="5k x 5", val_acc=1 - ref, minutes=1.0),
                 dict(config=f"c{i}", fidelity="10k x 5", val_acc=ref / 2, minutes=2.0),
                 dict(config=f"c{i}", fidelity="10k x 10", val_acc=ref - 0.1, minutes=4.0)]
    tab = studies.fidelity_table(pd.DataFrame(rows), "cpu")
    rho = dict(zip(tab.fidelity, tab.spearman))
    assert rho["5k x 5"] == pytest.approx(-1) and rho["10k x 5"] == pytest.approx(1)
    assert rho["10k x 10"] == pytest.approx(1)
    assert studies.pick_fidelity(tab) == "10k x 5"  # cheapest with rho >= 0.8
    assert studies.pick_fidelity(tab, min_rho=1.5) in ("10k x 5", "10k x 10")
    with pytest.raises(search.SearchError, match="sweep --study fidelity"):
        studies.pick_fidelity(tab.iloc[:0])


def test_fidelity_study_and_main_study_guard_at_smoke(tmp_path, synth):
    from lib.data import synthetic

    ds = synthetic(512, 256)
    with pytest.raises(search.SearchError, match="sweep --study fidelity"):
        studies.check_recipe_fidelity(ds, "smoke", tmp_path)
    df = studies.fidelity_runs(ds, "smoke", tmp_path, train=True)
    assert len(df) == len(studies.fidelity_configs("smoke"))
    tab = studies.fidelity_table(df, "smoke")
    assert set(tab.fidelity) == {"tiny", "small"} and (tab.configs == 3).all()


def test_compare_frame_and_top_distinct_at_smoke(tmp_path):
    for name in ("recipe-tpe-0", "recipe-random-0"):
        search.run_study(studies.recipe_studies("smoke")[name], runs_dir=tmp_path,
                         synthetic=True, log=lambda *a: None)
    df = studies.compare_frame("smoke", tmp_path)
    assert set(df.sampler) == {"tpe", "random"} and set(df.repeat) == {0}
    for _, g in df.groupby("sampler"):  # the incumbent never falls and starts at trial 1
        assert list(g["index"]) == list(range(1, len(g) + 1))
        assert (g.incumbent.diff().dropna() >= 0).all()
    top = studies.top_distinct(search.load_study("recipe-tpe-0", tmp_path), k=2)
    arch = top[[c for c in studies.ARCHITECTURE if c in top.columns]]
    assert len(arch.drop_duplicates()) == len(top) <= 2


def test_retrain_reuses_the_recipe_and_refuses_an_unfinished_study(tmp_path):
    from lib import runs
    from lib.data import synthetic

    ds = synthetic(512, 256)
    spec = studies.recipe_studies("smoke")["recipe-main"]
    partial = search.StudySpec(**{**{f: getattr(spec, f) for f in spec.__dataclass_fields__},
                                  "n_trials": 3})
    search.run_study(partial, runs_dir=tmp_path, synthetic=True, log=lambda *a: None)
    assert "3 of its 6 trials" in studies.unfinished(search.load_study("recipe-main",
                                                                    tmp_path), "smoke")
    with pytest.raises(search.SearchError, match="3 of its 6 trials"):
        studies.retrain(ds, "smoke", runs_dir=tmp_path, train=True)
    search.run_study(spec, runs_dir=tmp_path, synthetic=True, log=lambda *a: None)
    assert studies.unfinished(search.load_study("recipe-main", tmp_path), "smoke") is None
    # the recipe's defaults (the first trial) at full budget are chapter 5's runs
    default = studies.retrain_configs(search.encode(studies._space("smoke"),
                                                    studies._enqueued("smoke")[0]), "smoke")
    assert [c.epochs for c in default] == [fast_config("smoke").epochs]
    study = search.load_study("recipe-main", tmp_path)
    before = studies.retrain_status(study, "smoke", studies.retrain(ds, "smoke",
                                                                    runs_dir=tmp_path))
    assert (before.cached == 0).all() and (before.wanted == 1).all()  # smoke: 1 seed
    answer, _ = studies.best_setup_answer(ds, "smoke", tmp_path)
    assert answer == ("not named yet: 0 of the 1 re-training runs of the main study's "
                      "choice are cached")
    # the validation choice (rank 1) first: the best setup waits for its seeds and for
    # the yardstick, not for the other ranks
    first = studies.retrain(ds, "smoke", k=1, runs_dir=tmp_path, train=True)
    assert set(first["rank"]) == {1}
    b = studies.best_setup(ds, "smoke", tmp_path)
    assert b.missing == 1 and list(b.first.key) == list(first.key)
    assert not b.named and "the yardstick" in b.reason
    assert "the yardstick" in studies.best_setup_answer(ds, "smoke", tmp_path)[0]
    runs.get(fast_config("smoke"), ds, "recipe", tmp_path)
    b = studies.best_setup(ds, "smoke", tmp_path)
    assert b.named and len(b.defaults) == 1  # (at smoke, rank 2 is the defaults)
    answer, uncertainty = studies.best_setup_answer(ds, "smoke", tmp_path)
    assert answer.startswith(f"trial {int(b.status.trial.iloc[0])} of the search around")
    assert "minus the recipe's defaults" in uncertainty
    # both arms in float32 here: no defaults re-trained at another precision; had chapter 5
    # trained its defaults with bfloat16 autocast, they are re-trained once in float32
    assert studies.matched_default(ds, "smoke", tmp_path) is None and b.matched is None
    summary = b.defaults[0].path / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()),
                                   "amp_dtype": "bfloat16"}))
    assert studies.matched_default(ds, "smoke", tmp_path) is None  # not trained without
    assert "not in the cache yet" in studies.best_setup(ds, "smoke", tmp_path).precision_note()
    assert b.precision_note().startswith("Both arms ran on cpu, ")  # one machine, one dtype
    m = studies.matched_default(ds, "smoke", tmp_path, train=True)
    assert m.config.precision == "fp32" and m.config.seed == 0 and m.path.parent.name == (
        "search-best") and m.config == fast_config("smoke", precision="fp32")
    b2 = studies.best_setup(ds, "smoke", tmp_path)
    assert b2.matched.key == m.key
    assert "re-trained in float32 (cpu, " in b2.precision_note() and (
        f"{b.defaults[0].summary['test_acc']:.2%}" in b2.precision_note())
    assert "float32" in b.machines() and "bfloat16" in studies.best_setup(
        ds, "smoke", tmp_path).machines()
    rt = studies.retrain(ds, "smoke", runs_dir=tmp_path, train=True)
    after = studies.retrain_status(study, "smoke", rt)
    assert (after.cached == after.wanted).all() and list(after.trial) == list(
        rt.drop_duplicates("rank").trial)
    assert studies.best_setup(ds, "smoke", tmp_path).missing == 0
    assert list(rt[rt["rank"] == 1].key) == list(first.key)  # cached, not trained again
    top = studies.top_distinct(search.load_study("recipe-main", tmp_path),
                               studies.RECIPE_RETRAIN_K["smoke"])
    assert list(rt.trial.unique()) == list(top.number)  # best validation first
    assert rt.test_acc_tta.notna().all() and (rt.epochs == fast_config("smoke").epochs).all()
    for r in rt.run:  # whole training set, TTA logits kept beside the plain ones
        assert r.config.holdout == 0 and (r.path / "test_logits_tta.npy").is_file()
    again = studies.retrain(ds, "smoke", runs_dir=tmp_path)  # cached: nothing trained
    assert list(again.key) == list(rt.key)
    assert all(runs.find(r.config, ds, "search-best", tmp_path) or r.config ==
               fast_config("smoke", seed=r.config.seed) for r in rt.run)


def test_compare_summary_reads_each_repeats_final_incumbent():
    df = pd.DataFrame(dict(sampler=["tpe"] * 6 + ["random"] * 3,
                           repeat=[0, 0, 0, 1, 1, 1, 0, 0, 0],
                           index=[1, 2, 3] * 3,
                           incumbent=[0.5, 0.8, 0.9, 0.7, 0.898, 0.898, 0.607, 0.607, 0.61]))
    s = studies.compare_summary(df)
    assert s.loc["tpe", "finals"] == [0.9, 0.898] and s.loc["tpe", "repeats"] == 2
    assert s.loc["tpe", "best_mean"] == pytest.approx(0.899)
    assert s.loc["tpe", "trials_to_best"] == pytest.approx(2.5)  # 3 and 2
    assert s.loc["random", "repeats"] == 1 and math.isnan(s.loc["random", "best_lo"])
    assert s.loc["random", "trials_to_best"] == 1  # 0.607 is within 0.5 points of 0.61


def test_a_conditional_spec_reads_back_from_its_study():
    spec = studies.recipe_studies("smoke")["recipe-tpe-0"]

    class Stored:  # what lib.search keeps in the study (JSON with sorted keys)
        user_attrs = {"spec": spec.to_json()}

    back = search.study_spec(Stored)
    names = list(back.space)
    assert back.space == spec.space and names.index("optimizer") < names.index("lr")
    p = search.sample_params(spec.space, np.random.default_rng(1))
    assert search.trial_config(back, p) == search.trial_config(spec, p)


def test_merge_cases_gives_each_trial_its_own_case():
    df = pd.DataFrame({"number": [0, 1], "optimizer": ["sgd", "adamw"],
                       "lr|sgd": [5.0, np.nan], "lr|adamw": [np.nan, 1e-3], "x": [1, 2]})
    m = search.merge_cases(df, SPACE)
    assert list(m.columns) == ["number", "optimizer", "lr", "x"]
    assert list(m.lr) == [5.0, 1e-3]
    assert search.merge_cases(df, {"optimizer": ["sgd"]}).equals(df)  # nothing to merge


SPACE_WITH_MOMENTUM = {**SPACE, "momentum": {"given": "optimizer", "cases": {
    "sgd": {"low": 0.6, "high": 0.95}, "adamw": [0.9]}}}


def _random_study(seed):
    """An in-memory study and a generator of random points, for tests that ask trials."""
    import optuna

    return (optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(0)),
            np.random.default_rng(seed))


def _ask(st, space, rng):
    """One random point of ``space``, asked of the study ``st`` as Optuna would."""
    p = search.sample_params(space, rng)
    st.enqueue_trial(p)
    t = st.ask()
    search.suggest_all(t, space)
    return p, t


def test_merged_trials_give_importance_one_learning_rate():
    import optuna

    space = SPACE_WITH_MOMENTUM
    st, rng = _random_study(0)
    for _ in range(12):
        p, t = _ask(st, space, rng)
        st.tell(t, float(np.log10(p.get("lr|sgd", p.get("lr|adamw")))))
    m = search.merged_trials(st.trials, space)
    for t, orig in zip(m, st.trials):
        case = orig.params["optimizer"]
        assert t.params["lr"] == orig.params[f"lr|{case}"] and "lr|sgd" not in t.params
        assert t.params["momentum"] == (orig.params["momentum|sgd"] if case == "sgd" else 0.9)
        assert t.value == orig.value
    d = m[0].distributions["lr"]
    assert (d.low, d.high, d.log) == (1e-4, 20.0, True)
    imp = optuna.importance.get_param_importances(
        _study_of(m), evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    # the value is log10(lr): lr and the optimiser (whose ranges are disjoint) explain
    # it, the widths do not
    assert imp["lr"] + imp["optimizer"] > 0.7 and imp["model.block_widths"] < 0.05


def _study_of(trials):
    import optuna

    st = optuna.create_study(direction="maximize")
    st.add_trials(trials)
    return st


def test_compare_verdict_measures_the_difference_against_the_validation_noise():
    df = pd.DataFrame(dict(sampler=["tpe"] * 6 + ["random"] * 6, repeat=[0, 0, 1, 1, 2, 2] * 2,
                           index=[1, 2] * 6,
                           incumbent=[.60, .70, .60, .71, .60, .69, .60, .68, .60, .70, .60,
                                      .66]))
    v = studies.compare_verdict(studies.compare_summary(df), n_val=5_000)
    assert v["d"] == pytest.approx(0.70 - 0.68)
    assert v["se"] == pytest.approx(math.sqrt(0.69 * 0.31 / 5_000))
    assert v["se_diff"] == pytest.approx(math.sqrt(2) * v["se"])
    assert v["lo"] < v["d"] < v["hi"] and v["below_se"] is False  # 2 points > 0.92


def test_trials_table_puts_each_trials_own_case_in_one_column():
    df = pd.DataFrame({"number": [0, 1], "state": ["COMPLETE", "PRUNED"], "value": [.7, .8],
                       "epochs_run": [10, 3], "optimizer": ["sgd", "adamw"],
                       "lr|sgd": [5.0, np.nan], "lr|adamw": [np.nan, 1e-3],
                       "model.block_widths": ["64/128", "64/128"], "macs": [1e8, 2e8],
                       "train_time_s": [60.0, 30.0]})
    t = studies.trials_table(df, SPACE)
    assert list(t.trial) == [0, 1]  # complete first, then pruned, each best first
    assert t.setting.tolist() == ["sgd, lr 5, 64/128", "adamw, lr 0.001, 64/128"]
    assert t.MMACs.tolist() == [100, 200] and t.minutes.tolist() == [1.0, 0.5]


def test_machine_names_the_widest_bf16_feature_and_the_dtype():
    m = studies.machine
    assert m({"cpu_flags": "avx2 fma avx512f avx512_bf16 amx_bf16", "device": "cpu",
              "amp_dtype": "bfloat16"}) == "cpu, AMX, bfloat16"
    assert m({"cpu_flags": "avx2 avx512f avx512_bf16", "amp_dtype": "bfloat16"}) \
        == "cpu, AVX-512 bf16, bfloat16"
    assert m({"cpu_flags": "avx2 fma", "amp_dtype": "float32"}) == "cpu, AVX2, float32"
    assert m({"device_name": "AMD EPYC", "amp_dtype": "bfloat16"}) == (
        "cpu, AMD EPYC, CPU flags not recorded, bfloat16")  # not taken for AVX2


def test_twin_runs_compare_the_same_epoch(tmp_path):
    """A trial the pruner stopped at epoch 2 is compared with the fidelity study's run of
    the same key at epoch 2, not at its last epoch."""
    import json

    from lib.train import config_dict

    c = make_config()
    for group, accs in (("fidelity", [0.30, 0.50, 0.70]), ("recipe-main", [0.31, 0.52])):
        d = tmp_path / "search" / group / "k1"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(config_dict(c)))
        (d / "summary.json").write_text(json.dumps({"val_acc": accs[-1], "cpu_flags": "avx2"}))
        pd.DataFrame({"epoch": range(1, len(accs) + 1), "val_acc": accs}).to_csv(
            d / "metrics.csv", index=False)
    tw = studies.twin_runs(pd.DataFrame({"number": [7], "key": ["k1"]}), tmp_path)
    row = tw.iloc[0]
    assert (row.trial, row.epoch) == (7, 2)
    assert (row.val_fidelity, row.val_main) == (0.50, 0.52)
    assert row.machine_main == "cpu, AVX2, float32"


def test_trials_at_epoch_reads_positions_in_each_optimisers_range():
    import optuna

    from lib import analysis

    space = SPACE_WITH_MOMENTUM
    st, rng = _random_study(1)
    for i in range(10):
        _, t = _ask(st, space, rng)
        for e in (1, 2, 3):
            t.report(0.1 * e + 0.01 * i, e)
        if i == 9:  # still running: not read
            break
        st.tell(t, state=optuna.trial.TrialState.PRUNED) if i % 2 else st.tell(t, 0.5)
    at = analysis.trials_at_epoch(st.trials, 2, space)
    assert len(at) == 9 and [t.value for t in at] == pytest.approx(
        [0.2 + 0.01 * i for i in range(9)])
    for t, orig in zip(at, st.trials):
        case = orig.params["optimizer"]
        leaf = space["lr"]["cases"][case]
        want = (math.log(orig.params[f"lr|{case}"]) - math.log(leaf["low"])) / (
            math.log(leaf["high"]) - math.log(leaf["low"]))
        assert t.params["lr"] == pytest.approx(want) and 0 <= t.params["lr"] <= 1
        assert "momentum" not in t.params and "lr|sgd" not in t.params  # fixed for adamw
    assert analysis.trials_at_epoch(st.trials, 4, space) == []


@pytest.mark.parametrize("best, words", [
    ([0.870, 0.872, 0.874], "not confirmed: it scores below the recipe's defaults"),
    ([0.910, 0.912, 0.914], "confirmed: it scores above the recipe's defaults"),
    ([0.890, 0.900, 0.910], "not told apart from the recipe's defaults (with these seeds, "
                            "a difference smaller than about {half:.2f} points"),
    # the seeds' interval excludes zero, but +0.3 points is below the test set's sampling
    # error of a difference (0.42 points at 90 % on 10,000 images)
    ([0.9, 0.9001, 0.9002], "not told apart from the recipe's defaults (the seeds' "
                            "interval excludes zero, but the difference, +0.30 points"),
    ([0.900], "too few seeds to tell it from the recipe's defaults")])
def test_best_setup_verdict_reads_the_interval_against_the_defaults(best, words):
    from types import SimpleNamespace

    run = SimpleNamespace(summary=dict(test_images=10_000))
    defaults = [SimpleNamespace(summary=dict(test_acc=a)) for a in (0.895, 0.897, 0.899)]
    if best[0] == 0.9:  # defaults with almost no spread, 0.3 points below
        defaults = [SimpleNamespace(summary=dict(test_acc=a)) for a in (0.897, 0.8971,
                                                                         0.8972)]
    rt = pd.DataFrame(dict(rank=[1] * len(best) + [2], test_acc=best + [0.99],
                           is_default=False, run=run))
    b = studies.BestSetup(rt, pd.DataFrame(), defaults, None)
    ci = st.ttest_ind(best, [d.summary["test_acc"] for d in defaults],
                      equal_var=False).confidence_interval() if len(best) > 1 else None
    half = (ci.high - ci.low) / 2 * 100 if ci else 0  # Welch's, computed by scipy here
    assert b.verdict().startswith(words.format(half=half))  # rank 2's score plays no part
    assert studies.BestSetup(rt, None, [], "why").verdict() == "not named yet"
    again = studies.BestSetup(rt.assign(is_default=True), pd.DataFrame(), defaults, None)
    assert "re-found" in again.verdict()  # the choice was the defaults: no comparison
