"""Bad input never destroys work, never gives a traceback, never trains silently on the
wrong thing (each block below is one item of the appendix's table)."""

import dataclasses
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import nbformat
import pytest

from lib import book, cli, data, runs, search
from lib.data import REPO_ROOT, DataError
from lib.models import ConfigError, ModelConfig
from lib.train import Config, make_config

from .conftest import write_npz


def lib(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lib", *args], capture_output=True,
                          text=True, env=env, timeout=600, cwd=REPO_ROOT)


def one_line_error(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def main_error(capsys, monkeypatch, *argv) -> str:
    """``python -m lib ARGV`` in this process: exit status 2 and one ``error:`` line on
    stderr (anything else, a traceback included, fails the test); returns the line."""
    import signal as _signal

    monkeypatch.setattr(_signal, "signal", lambda *a: None)  # main's SIGTERM handler
    assert cli.main(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (dead, waiting to be reaped)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return not runs._pid_alive(pid)
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _book_notebooks() -> dict:
    return {p.name: p.read_bytes() for p in (REPO_ROOT / "book").glob("*.ipynb")}


# 1. a failing or mis-parametrised chapter leaves the committed one as it was ----------
def small_notebook(path, body="x = 1"):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell('budget: str = "cpu"')
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path.read_bytes()


def test_failing_chapter_is_not_replaced(tmp_path):
    nb = tmp_path / "01_ch.ipynb"
    before = small_notebook(nb, "raise RuntimeError('boom')")
    with pytest.raises(cli.UserError, match="boom.*01_ch.ipynb is unchanged"):
        cli.execute(nb, budget="smoke")
    assert nb.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01_ch.ipynb"]  # no temp file


def test_bad_budget_or_missing_data_stop_before_the_kernel(tmp_path, monkeypatch):
    nb = tmp_path / "01_ch.ipynb"
    before = small_notebook(nb)
    with pytest.raises(cli.UserError, match="budget 'huge'"):
        cli.execute(nb, budget="huge")
    with pytest.raises(DataError, match="no such file"):
        cli.execute(nb, budget="cpu", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(cli.UserError, match="unknown chapter parameter"):
        cli.execute(nb, budget="smoke", bogus=1)
    with pytest.raises(cli.UserError, match="seed"):
        cli.execute(nb, budget="smoke", seed="one")
    with pytest.raises(cli.UserError, match="device"):
        cli.execute(nb, budget="smoke", device="tpu9")
    assert nb.read_bytes() == before
    cli.execute(nb, budget="smoke")  # a good run replaces it
    assert nb.read_bytes() != before


def test_a_chapters_first_cell_checks_its_parameters():
    """A chapter run by papermill directly stops at its first cell (book.setup), before
    any data loads or anything trains."""
    for kw, word in ((dict(budget="huge"), "budget='huge'"), (dict(device="tpu9"), "tpu9"),
                     (dict(seed="one"), "seed='one'"), (dict(seed=-1), "seed=-1")):
        with pytest.raises(book.ParameterError, match=word):
            book.setup("01_filters", **{"budget": "smoke", **kw})


def test_book_command_with_bad_budget_is_one_line():
    r = lib("book", "--budget", "huge")
    assert r.returncode == 2 and "invalid choice: 'huge'" in r.stderr
    assert "Traceback" not in r.stderr


# 3. every config field is checked against its type and range, in one place ----------
@pytest.mark.parametrize("setting, words", [
    ("lr=abc", ["lr='abc'", "a finite number"]),
    ("batch_size=abc", ["batch_size='abc'", "an integer"]),
    ("epochs=1.5", ["epochs=1.5", "an integer"]),
    ("n_train=0", ["n_train=0", ">= 1"]),
    ("n_train=-5", ["n_train=-5"]),
    ("augment=maybe", ["augment='maybe'", "true/false"]),
    ("momentum=1.5", ["momentum=1.5"]),
    ("seed=0.5", ["seed=0.5"]),
    ("lr=nan", ["lr=", "a finite number"]),
    ("holdout=true", ["holdout=True", "an integer"]),
    ("model.width=abc", ["width='abc'"]),
    ("model.depth=2.5", ["depth=2.5"]),
    ("model.batch_norm=2", ["batch_norm=2", "true/false"]),
    ("model.hidden=abc", ["hidden='abc'", "a list"]),
    ("model.hidden=[1.5]", ["hidden=[1.5]", "integers"]),
    ("model.block_widths=[8,16,true]", ["block_widths=[8, 16, True]", "integers"]),
    ("model.n_classes=0", ["n_classes=0", ">= 2"]),
    ("model.n_classes=5", ["n_classes=5", "the data's 10 classes"]),
    ("model=abc", ["model='abc'", "model.depth=4"]),
    ("seed=-1", ["seed=-1", "0 <= seed"]),
    ("seed=100000000000000000000", ["seed=100000000000000000000"]),
    ("threads=100000", ["threads=100000", "1..1024"]),
    ("holdout=100000", ["holdout=100000", "training images"]),
    ("lr=1e999", ["lr=", "a finite number"]),
])
def test_set_values_of_the_wrong_type_or_range(tmp_path, setting, words):
    r = lib("train", "--synthetic", "--runs-dir", str(tmp_path), "--set", setting)
    one_line_error(r, *words)
    assert not (tmp_path / "cli").exists()  # nothing trained


#: Values of every kind a user might type, for every field.
ANY_VALUE = ["abc", "", 1.5, -1, 0, True, None, [1], [1.5], ["a"], [True], {"a": 1},
             float("nan"), float("inf"), 10**400, 10**30]


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Config)
                                   if f.name != "model"] +
                         [f"model.{f.name}" for f in dataclasses.fields(ModelConfig)])
def test_every_config_field_is_checked_in_one_place(field):
    """Whatever value any field gets, make_config (behind --set, the papermill
    parameters' configs and every search space) either keeps it as given or raises one
    ConfigError line naming the field; never another exception, never a silent change."""
    name = field.removeprefix("model.")
    for v in ANY_VALUE:
        try:
            c = make_config(**{field: v})
        except ConfigError as e:
            assert "\n" not in str(e) and name in str(e), (field, v, str(e))
            continue
        got = getattr(c.model if field.startswith("model.") else c, name)
        want = tuple(v) if isinstance(v, list) and isinstance(got, tuple) else v
        assert got == want and type(got) is type(want), (field, v, got)


@pytest.mark.parametrize("space, words", [
    ({"epochs": [1, 2.5]}, ["epochs=2.5"]),
    ({"n_train": [-5, 100]}, ["n_train=-5"]),
    ({"augment": ["maybe"]}, ["augment='maybe'"]),
    ({"lr": {"low": "a", "high": 1}}, ["impossible range"]),
    ({"threads": [5000]}, ["threads=5000"]),
    ({"model.hidden": [[64, 1.5]]}, ["hidden=[64, 1.5]"]),
])
def test_search_spaces_are_checked_like_configs(space, words):
    base = make_config(holdout=64, epochs=2, batch_size=32)
    with pytest.raises(search.SearchError) as e:
        search.check_space(space, base)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)


def test_papermill_parameters_are_checked_by_the_same_code():
    with pytest.raises(ConfigError, match="epochs=1.5"):
        make_config(epochs=1.5)


# 4. workers die with their parent; the trial count holds; a fresh study can be
#    opened by several processes at once; temp folders are cleaned per host ----------
PARENT = textwrap.dedent("""
    import multiprocessing as mp, sys, time
    from lib import search

    def child(path):
        search.die_with_parent()
        open(path, "w").write("started")
        time.sleep(120)

    if __name__ == "__main__":
        p = mp.get_context("spawn").Process(target=child, args=(sys.argv[1],))
        p.start()
        print(p.pid, flush=True)
        time.sleep(120)
""")


def test_worker_dies_when_its_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    flag = tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, str(script), str(flag)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        deadline = time.time() + 60
        while not flag.exists():
            assert time.time() < deadline, "the child never started"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.time() + 10
        while runs._pid_alive(child):
            try:  # reap it if it became our zombie (it is not our child: just wait)
                os.waitpid(child, os.WNOHANG)
            except ChildProcessError:
                pass
            assert time.time() < deadline, "the worker outlived its parent"
            time.sleep(0.1)
    finally:
        proc.kill()


def test_killing_a_sweep_ends_its_workers(tmp_path):
    """The real thing: SIGKILL the parent of `python -m lib sweep --n-workers 2` while
    both workers train; both end with it."""
    space = tmp_path / "space.yaml"  # trials of many epochs: still training when killed
    space.write_text("lr: {low: 0.01, high: 0.1, log: true}\nepochs: [300]\n"
                     "model.width: [8]\nmodel.depth: [2]\n")
    cmd = [sys.executable, "-m", "lib", "sweep", "--study", "orphans", "--budget", "smoke",
           "--space", str(space), "--runs-dir", str(tmp_path), "--n-workers", "2",
           "--n-trials", "4", "--sampler", "random", "--pruner", "none"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = search.default_storage("orphans", tmp_path)
    pids: set = set()
    try:
        deadline = time.time() + 240
        while len(pids) < 2:
            assert proc.poll() is None, "the sweep ended before both workers trained"
            assert time.time() < deadline, "the two workers never both trained"
            try:
                df = search.trials_frame(search.optuna_load("orphans", url))
                if "pid" in df:
                    pids = set(df[df.state == "RUNNING"].pid.dropna().astype(int))
            except search.SearchError:
                pass
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 30
        while not all(_gone(p) for p in pids):
            assert time.time() < deadline, f"workers {pids} outlived their parent"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in pids:  # only if the test failed: end the orphans it made
            if not _gone(p):
                os.kill(p, signal.SIGKILL)


SMOKE = make_config(epochs=2, batch_size=32, holdout=64, save_weights=False,
                    precision="fp32", model=dict(depth=2, width=4))


def test_a_trial_started_when_the_study_is_full_steps_aside(tmp_path):
    """The race of item 4 made deterministic: another worker is training the last
    trial; a worker checking the count (before a trial, and inside it) trains nothing."""
    spec = search.StudySpec("full", {"lr": [0.1, 0.2]}, SMOKE, "random", "none", n_trials=1)
    url = f"sqlite:///{tmp_path / 'full.db'}"
    study = search.create_study(spec, search.open_storage(url))
    study.ask()  # another worker's trial, RUNNING: the study's one trial
    ds = data.synthetic(256, 64)
    search._worker(spec, url, None, tmp_path, "cpu", 0, True, False, ds=ds)
    assert [t.number for t in study.get_trials() if t.state.name != "WAITING"] == [0]
    study.optimize(search.objective(spec, ds, tmp_path, "cpu"), n_trials=1)  # inside
    late = [t for t in study.get_trials() if t.number > 0 and t.state.name != "WAITING"]
    assert len(late) == 1 and late[0].user_attrs.get("skipped") == \
        "the study has enough trials"
    assert not (tmp_path / "search").exists()  # nothing trained


def test_two_workers_train_exactly_n_trials(tmp_path):
    s = search.StudySpec("w", {"lr": {"low": 0.01, "high": 0.3, "log": True}}, SMOKE,
                         "random", "none", n_trials=5)
    out = search.run_study(s, runs_dir=tmp_path, n_workers=2, synthetic=True,
                           log=lambda *a: None)
    assert out["trained"] == 5
    study = search.load_study("w", tmp_path)
    assert search.n_trained(study) == 5
    # each CPU worker pins its share of the cores, and its trials' keys cover it
    share = max(1, (os.cpu_count() or 1) // 2)
    from lib.runs import list_runs
    trained = list_runs("search/w", tmp_path)
    assert len(trained) == 5
    assert {(r.config.threads, r.summary["threads"]) for r in trained} == {(share, share)}


def _open(url, q, barrier):
    try:
        spec = search.StudySpec("fresh", {"lr": [0.1, 0.2]}, SMOKE, "grid", "none", 2)
        barrier.wait(120)  # all at once (without the schema lock this fails most times)
        search.create_study(spec, search.open_storage(url))
        q.put("ok")
    except Exception as e:  # noqa: BLE001 - report whatever happened to the parent
        q.put(f"{type(e).__name__}: {e}")


def test_a_fresh_sqlite_study_opened_by_several_processes_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    ctx = mp.get_context("spawn")
    q, barrier = ctx.Queue(), ctx.Barrier(4)
    procs = [ctx.Process(target=_open, args=(url, q, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert sorted(q.get(timeout=5) for _ in procs) == ["ok"] * 4


def test_stale_tmp_is_cleaned_for_this_host_only(tmp_path):
    tmp = tmp_path / runs.TMP
    dead = 2**22 + 12345  # above the default pid_max: never a live process
    mine = tmp / f"g-abc@{runs._host()}@{dead}"
    other = tmp / f"g-abc@another-machine@{dead}"
    alive = tmp / f"g-abc@{runs._host()}@{os.getpid()}"
    legacy = tmp / f"g-abc-{dead}"
    for d in (mine, other, alive, legacy):
        d.mkdir(parents=True)
    assert runs.clean_stale_tmp(tmp_path) == [mine]
    assert other.exists() and alive.exists() and legacy.exists()


# 5. storage URLs -------------------------------------------------------------------
def test_sqlite_storage_in_a_missing_folder_is_an_error_not_a_mkdir(tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(search.SearchError, match="does not exist"):
        search.open_storage(f"sqlite:///{missing / 'x.db'}")
    assert not (tmp_path / "no").exists()
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(search.SearchError, match="is not a folder"):
        search.open_storage(f"sqlite:///{afile / 'x.db'}")
    with pytest.raises(search.SearchError, match="is not a folder|does not exist"):
        search.open_storage("sqlite:////proc/self/nope/x.db")


def test_missing_database_driver_names_what_to_install():
    with pytest.raises(search.SearchError, match="pip install pymysql") as e:
        search.open_storage("mysql+pymysql://user@127.0.0.1/db")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("url", ["postgresql://u@127.0.0.1/db",
                                 "postgresql+psycopg://u@127.0.0.1/db"])
def test_missing_postgresql_driver_names_the_extra(url, monkeypatch):
    for mod in ("psycopg", "psycopg2"):  # as on a machine without the postgres extra
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(search.SearchError, match=r"cifar-cnn-book\[postgres\]") as e:
        search.open_storage(url)
    assert "driver is not installed" in str(e.value) and "\n" not in str(e.value)


def test_sweep_with_a_missing_storage_folder_is_one_line(tmp_path):
    r = lib("sweep", "--budget", "smoke", "--runs-dir", str(tmp_path), "--storage",
            f"sqlite:///{tmp_path}/missing/x.db", "--n-trials", "1")
    one_line_error(r, "does not exist")


# 7. smoke means small ----------------------------------------------------------------
@pytest.mark.parametrize("args, group", [
    (["train", "--set", "epochs=1", "--set", "model.width=4"], "cli"),
    (["sweep", "--study", "main", "--n-trials", "1"], "search/main"),
    (["recipe", "--list"], None),
], ids=["train", "sweep", "recipe"])
def test_smoke_budget_never_reads_the_real_data(tmp_path, args, group):
    """`--budget smoke` is synthetic data (hundreds of images, seconds) on every command,
    with or without --synthetic: here there is no real data to read at all."""
    env = dict(os.environ, CIFAR10_DATA=str(tmp_path / "no-data-here"))
    r = lib(*args, "--budget", "smoke", "--runs-dir", str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    if group is None:
        return
    summaries = [run.summary for run in runs.list_runs(group, tmp_path)]
    assert len(summaries) == 1, summaries
    assert "synthetic" in summaries[0]["data_source"]
    assert summaries[0]["train_images"] <= 512


# already held at the audit: kept by these tests ------------------------------
@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "garbage",
                                    "wrong shape", "labels out of range", "pickled objects"])
def test_bad_data_files_are_one_line(tmp_path, capsys, monkeypatch, damage):
    import numpy as np

    f = tmp_path / "c.npz"
    ds = data.synthetic(50, 20)
    arrays = dict(x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
    if damage == "wrong shape":
        arrays["x_train"] = arrays["x_train"][:, :16]
    if damage == "labels out of range":
        arrays["y_test"] = arrays["y_test"] + 10
    if damage == "pickled objects":
        arrays["x_train"] = np.array([object()] * 50, dtype=object)
    if damage != "missing":
        write_npz(f, **arrays)
    raw = f.read_bytes() if f.exists() else b""
    if damage in ("empty", "truncated", "garbage"):
        f.write_bytes({"empty": b"", "truncated": raw[: len(raw) // 2],
                       "garbage": os.urandom(len(raw))}[damage])
    line = main_error(capsys, monkeypatch, "data", "--data-dir", str(f))
    assert str(f) in line


@pytest.mark.parametrize("argv, known", [
    (["train", "--synthetic", "--preset", "nope"], "known: ['ch01', 'ch03-cnn', 'fast']"),
    (["train", "--synthetic", "--set", "filters=3"], "'lr'"),
    (["train", "--synthetic", "--set", "model.filters=3"], "'width'"),
    (["sweep", "--study", "nope", "--budget", "smoke"], "'main'"),
    (["sweep", "--study", "main", "--budget", "smoke", "--sampler", "nope"], "'random'"),
    (["recipe", "--only", "nope", "--budget", "smoke"], "recipe-ablation"),
    (["book", "--only", "99"], "01_filters"),
    (["train", "--synthetic", "--device", "tpu9"], "auto, cpu, cuda"),
], ids=["preset", "option", "model option", "study", "sampler", "group", "chapter",
        "device"])
def test_unknown_names_list_the_known_ones(tmp_path, capsys, monkeypatch, argv, known):
    line = main_error(capsys, monkeypatch, *argv, *(["--runs-dir", str(tmp_path)]
                                                    if argv[0] != "book" else []))
    assert known in line, line
    assert not (tmp_path / "cli").exists()


def test_unknown_hyperparameter_lists_the_known_ones():
    with pytest.raises(search.SearchError, match="known: .*model.width"):
        search.check_space({"learning_rate": [0.1]}, SMOKE)


LONG_RUN = ["train", "--synthetic", "--set", "epochs=500", "--set", "model.width=8",
            "--set", "precision=fp32"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_keeps_finished_runs_and_leaves_no_folder(tmp_path, sig):
    finished = runs.get(make_config(SMOKE, holdout=0, epochs=1), data.synthetic(128, 64),
                        "cli", tmp_path)
    # as from a terminal: a shell starts background jobs with SIGINT ignored, and a test
    # run from one (nohup pytest &) would otherwise hand that on to the command
    proc = subprocess.Popen([sys.executable, "-m", "lib", *LONG_RUN, "--runs-dir",
                             str(tmp_path)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while not list((tmp_path / runs.TMP).glob("*/tb/events.*")):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.time() < deadline, "training never started"
            time.sleep(0.2)
        os.kill(proc.pid, sig)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: interrupted; finished runs are "
                                                   "kept"), err[-2000:]
    assert [r.key for r in runs.list_runs("cli", tmp_path)] == [finished.key]
    assert (finished.path / "summary.json").is_file()
    assert not any((tmp_path / runs.TMP).iterdir())  # the interrupted run left nothing


def test_a_model_file_that_would_run_code_is_refused(tmp_path):
    """Weights are read with ``weights_only=True``: a model.pt that unpickles into a
    function call is refused, and the call never happens."""
    import pickle

    import torch

    run = runs.get(make_config(SMOKE, holdout=0, epochs=1, save_weights=True),
                   data.synthetic(128, 64), "g", tmp_path)
    flag = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(flag), "w"))

    torch.save({"w": Payload()}, run.path / "model.pt")
    with pytest.raises(pickle.UnpicklingError):
        run.state_dict()
    assert not flag.exists()


# the appendix's table: each bad input, what the user sees, what is kept -------------
#: (bad input, command, environment overrides, what the user sees, what is kept).
#: ``test_bad_input_table`` runs every row; ``test_appendix_has_the_table`` checks that
#: book/reproduce.md shows exactly :func:`table_markdown` (``python
#: tests/test_bad_input.py`` prints it).
TABLE = [
    ("an unknown budget", ["book", "--budget", "huge"], {}, "invalid choice: 'huge'",
     "every chapter as committed: nothing executes"),
    ("a data path that does not exist", ["book", "--budget", "cpu"],
     {"CIFAR10_DATA": "/nonexistent/cifar.npz"}, "/nonexistent/cifar.npz: no such file",
     "every chapter as committed: checked before any kernel starts"),
    ("a value of the wrong type", ["train", "--synthetic", "--set", "lr=abc"], {},
     "lr='abc' has the wrong type; expected a finite number", "nothing trains"),
    ("a fractional epoch count", ["train", "--synthetic", "--set", "epochs=1.5"], {},
     "epochs=1.5 has the wrong type; expected an integer", "nothing trains"),
    ("a negative slice", ["train", "--synthetic", "--set", "n_train=-5"], {},
     "n_train=-5 is invalid; allowed: None (all) or >= 1", "nothing trains"),
    ("a yes/no value that is neither", ["train", "--synthetic", "--set", "augment=maybe"],
     {}, "augment='maybe' has the wrong type; expected true/false", "nothing trains"),
    ("an unknown option", ["train", "--synthetic", "--set", "model.filters=3"], {},
     "unknown model option(s) ['filters']", "nothing trains"),
    ("an impossible recipe option", ["train", "--synthetic", "--preset", "fast", "--set",
                                     "tta=3"], {}, "tta=3 is invalid", "nothing trains"),
    ("a storage folder that does not exist",
     ["sweep", "--budget", "smoke", "--storage", "sqlite:////nonexistent/dir/x.db"], {},
     "the folder /nonexistent/dir does not exist", "no folder is created"),
    ("a database whose driver is missing",
     ["sweep", "--budget", "smoke", "--storage", "mysql+pymysql://u@127.0.0.1/db"], {},
     "its database driver is not installed; pip install pymysql", "nothing starts"),
    ("an unknown study", ["sweep", "--study", "nope", "--budget", "smoke"], {},
     "unknown study 'nope'", "nothing starts"),
]

#: Guarantees shown by other tests of the fast suite (not one command each): (what, what
#: the user sees, what is kept, the tests that show it).
GUARANTEES = [
    ("a bad chapter parameter (budget, device, seed, an unknown name such as papermill's "
     "`-p bogus 1`) or missing data, for `python -m lib book`", "one line, before any "
     "kernel starts (a chapter run by papermill itself stops in its first cell)",
     "every chapter as committed",
     ("test_bad_budget_or_missing_data_stop_before_the_kernel",
      "test_book_command_with_bad_budget_is_one_line",
      "test_a_chapters_first_cell_checks_its_parameters")),
    ("a chapter whose cell fails", "`<chapter> failed in cell N: ... (<chapter> is "
     "unchanged)`", "the committed chapter (it is executed into a temporary file)",
     ("test_failing_chapter_is_not_replaced",)),
    ("a data file that is missing, empty, truncated, not an npz, of the wrong shape, with "
     "labels out of range or holding pickled objects", "one line, `error:`, naming the file "
     "and what is wrong", "nothing is unpickled, nothing starts",
     ("test_bad_data_files_are_one_line",)),
    ("a local `cifar-10-python.tar.gz`, offline", "nothing when it is valid: it is verified "
     "(MD5) and used; one line naming the MD5 check when it is damaged", "nothing of a "
     "damaged archive is extracted or unpickled",
     ("test_local_official_archive_is_verified_and_used_offline",
      "test_damaged_local_archive_names_the_md5",
      "test_official_archive_is_verified_before_unpickling")),
    ("any config field of the wrong type or out of range, from `--set`, a chapter or a "
     "search space", "one line naming the field, the value and what is allowed",
     "nothing trains", ("test_every_config_field_is_checked_in_one_place",
                        "test_set_values_of_the_wrong_type_or_range",
                        "test_search_spaces_are_checked_like_configs",
                        "test_papermill_parameters_are_checked_by_the_same_code")),
    ("an unknown name: preset, option, model option, study, sampler, recipe group, "
     "chapter, device, hyperparameter", "one line listing the known names", "nothing starts",
     ("test_unknown_names_list_the_known_ones",
      "test_unknown_hyperparameter_lists_the_known_ones")),
    ("`--budget smoke` on `train`, `sweep` or `recipe`", "nothing", "the real data is "
     "never read: synthetic images (hundreds), seconds",
     ("test_smoke_budget_never_reads_the_real_data",)),
    ("Ctrl-C or SIGTERM during a run", "`error: interrupted; finished runs are kept, the "
     "interrupted one left no folder`", "every finished run; no temporary folder is left",
     ("test_ctrl_c_keeps_finished_runs_and_leaves_no_folder",)),
    ("SIGKILL during a run", "nothing (the process is gone)", "every finished run; the "
     "half-written one leaves no folder", ("test_killed_run_leaves_no_folder",)),
    ("SIGKILL during a sweep, then the same command", "`trial(s) [N] were interrupted; "
     "marked failed and queued again`", "every finished trial; the interrupted one is "
     "retried first", ("test_sigkill_mid_sweep_then_rerun_resumes",)),
    ("SIGKILL of one of several workers (SQLite or PostgreSQL)", "`1 worker(s) ... failed; "
     "run the same command to resume`", "every finished trial, none counted twice",
     ("test_two_workers_on_sqlite_survive_a_sigkill",)),
    ("SIGKILL of the parent of `--n-workers N`", "nothing", "the workers end with it "
     "(no orphans)", ("test_worker_dies_when_its_parent_is_killed",
                      "test_killing_a_sweep_ends_its_workers")),
    ("several workers reaching a study's last trials", "nothing", "exactly `--n-trials` "
     "trials are trained (the count is checked again before and inside each trial)",
     ("test_two_workers_train_exactly_n_trials",
      "test_a_trial_started_when_the_study_is_full_steps_aside")),
    ("several processes starting one new SQLite study at once", "nothing", "one study; "
     "none of them crashes", ("test_a_fresh_sqlite_study_opened_by_several_processes_at_once",)),
    ("a runs folder shared between machines", "nothing", "other hosts' runs in progress "
     "(only this host's dead processes' temporary folders are removed)",
     ("test_stale_tmp_is_cleaned_for_this_host_only",)),
    ("a SQLite `--storage` in a missing folder, under a file or in `/proc`", "one line: the "
     "folder does not exist, or is not a folder", "no folder is created",
     ("test_sqlite_storage_in_a_missing_folder_is_an_error_not_a_mkdir",
      "test_sweep_with_a_missing_storage_folder_is_one_line")),
    ("a PostgreSQL or MySQL `--storage` without its driver", "one line naming what to "
     "install (`pip install 'cifar-cnn-book[postgres]'`, `pip install pymysql`)",
     "nothing starts", ("test_missing_postgresql_driver_names_the_extra",
                        "test_missing_database_driver_names_what_to_install")),
    ("the same config at another CPU thread count", "nothing", "a run pinned to N threads "
     "(each search worker on the CPU) has its own cache key: a result is never taken from "
     "another thread count; the data order is the same at any count (what differs is the "
     "arithmetic)", ("test_a_pinned_thread_count_is_in_the_key_and_restored_after",
                     "test_two_workers_train_exactly_n_trials",
                     "test_the_data_order_does_not_depend_on_the_thread_count")),
    ("a `model.pt` that would unpickle into code", "an unpickling error", "the code never "
     "runs (weights are read with `weights_only=True`)",
     ("test_a_model_file_that_would_run_code_is_refused",)),
]

#: Tests of this file that check the table itself rather than stand for a row.
TABLE_TESTS = {"test_bad_input_table", "test_guarantees_name_real_tests",
               "test_every_test_here_is_a_row_of_the_table", "test_appendix_has_the_table"}


def table_markdown() -> str:
    rows = ["| bad input | what you see | what is kept | checked by |", "|---|---|---|---|"]
    for what, args, env, msg, kept in TABLE:
        cmd = " ".join(["python -m lib", *args])
        pre = " ".join(f"{k}={v}" for k, v in env.items())
        rows.append(f"| {what}: `{(pre + ' ' if pre else '') + cmd}` | one line, `error:` "
                    f"with `{msg}` | {kept} | `test_bad_input_table` (runs the command) |")
    for what, seen, kept, tests in GUARANTEES:
        rows.append(f"| {what} | {seen} | {kept} | {', '.join(f'`{t}`' for t in tests)} |")
    return "\n".join(rows)


@pytest.mark.parametrize("what, args, env, msg, kept", TABLE, ids=[t[0] for t in TABLE])
def test_bad_input_table(tmp_path, what, args, env, msg, kept):
    extra = [] if args[0] == "book" else ["--runs-dir", str(tmp_path)]
    before = _book_notebooks()
    r = lib(*args, *extra, env={**os.environ, **env})
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]  # argparse prints its usage line first
    assert "error:" in last and msg in last, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "cli").exists() and not list((tmp_path / "search").glob("*/*"))
    if "/nonexistent/dir" in " ".join(args):
        assert not os.path.exists("/nonexistent")
    if args[0] == "book":  # no chapter replaced, no temporary notebook left
        assert _book_notebooks() == before


def _suite_source() -> str:
    import pathlib

    return "\n".join(p.read_text() for p in pathlib.Path(__file__).parent.glob("test_*.py"))


def test_guarantees_name_real_tests():
    source = _suite_source()
    for *_, tests in GUARANTEES:
        assert tests, "a row needs a test"
        for test in tests:
            assert f"def {test}(" in source, test


def test_every_test_here_is_a_row_of_the_table():
    """And the other way round: each test of this file stands for a row (or checks the
    table), so that a new case cannot be tested without the appendix saying so."""
    import inspect
    import sys as _sys

    named = {t for *_, tests in GUARANTEES for t in tests} | TABLE_TESTS
    here = {n for n, f in inspect.getmembers(_sys.modules[__name__], inspect.isfunction)
            if n.startswith("test_")}
    assert here - named == set(), "add these tests to a row of GUARANTEES"


def appendix_table() -> str:
    """The table under the appendix's heading 'Bad input: what you see, what is kept'."""
    text = (REPO_ROOT / "book" / "reproduce.md").read_text().splitlines()
    start = text.index("## Bad input: what you see, what is kept")
    rows = []
    for line in text[start + 1:]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return "\n".join(rows)


def test_appendix_has_the_table():
    assert appendix_table() == table_markdown(), \
        "run `python tests/test_bad_input.py` and paste its table into book/reproduce.md"


if __name__ == "__main__":
    print(table_markdown())
