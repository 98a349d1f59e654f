"""Bad input never destroys work, never gives a traceback, never trains silently on the
wrong thing (each block below is one item of the appendix's table)."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import nbformat
import pytest

from lib import cli, runs, search
from lib.data import REPO_ROOT, DataError
from lib.models import ConfigError
from lib.train import make_config


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
])
def test_set_values_of_the_wrong_type_or_range(tmp_path, setting, words):
    r = lib("train", "--synthetic", "--runs-dir", str(tmp_path), "--set", setting)
    one_line_error(r, *words)
    assert not (tmp_path / "cli").exists()  # nothing trained


@pytest.mark.parametrize("space, words", [
    ({"epochs": [1, 2.5]}, ["epochs=2.5"]),
    ({"n_train": [-5, 100]}, ["n_train=-5"]),
    ({"augment": ["maybe"]}, ["augment='maybe'"]),
    ({"lr": {"low": "a", "high": 1}}, ["impossible range"]),
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


SMOKE = make_config(epochs=2, batch_size=32, holdout=64, save_weights=False,
                    precision="fp32", model=dict(depth=2, width=4))


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


def _open(url, q):
    try:
        spec = search.StudySpec("fresh", {"lr": [0.1, 0.2]}, SMOKE, "grid", "none", 2)
        search.create_study(spec, search.open_storage(url))
        q.put("ok")
    except Exception as e:  # noqa: BLE001 - report whatever happened to the parent
        q.put(f"{type(e).__name__}: {e}")


def test_a_fresh_sqlite_study_opened_by_several_processes_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_open, args=(url, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
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


def test_sweep_with_a_missing_storage_folder_is_one_line(tmp_path):
    r = lib("sweep", "--budget", "smoke", "--runs-dir", str(tmp_path), "--storage",
            f"sqlite:///{tmp_path}/missing/x.db", "--n-trials", "1")
    one_line_error(r, "does not exist")


# 7. smoke means small ----------------------------------------------------------------
def test_smoke_budget_never_reads_the_real_data(tmp_path):
    env = dict(os.environ, CIFAR10_DATA=str(tmp_path / "no-data-here"))
    r = lib("train", "--budget", "smoke", "--runs-dir", str(tmp_path), "--set", "epochs=1",
            "--set", "model.width=4", env=env)
    assert r.returncode == 0, r.stderr
    assert "synthetic" in (tmp_path / "cli").iterdir().__next__().joinpath(
        "summary.json").read_text()


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

#: Guarantees shown by other tests of this suite (not one command each).
GUARANTEES = [
    ("a chapter whose cell fails", "`<chapter> failed in cell N: ... (<chapter> is "
     "unchanged)`", "the committed chapter (it is executed into a temporary file)",
     "test_failing_chapter_is_not_replaced"),
    ("SIGKILL during a run", "nothing (the process is gone)", "every finished run; the "
     "half-written one leaves no folder", "test_killed_run_leaves_no_folder"),
    ("SIGKILL during a sweep, then the same command", "`trial(s) [N] were interrupted; "
     "marked failed and queued again`", "every finished trial; the interrupted one is "
     "retried first", "test_sigkill_mid_sweep_then_rerun_resumes"),
    ("SIGKILL of one of several workers (SQLite or PostgreSQL)", "`1 worker(s) ... failed; "
     "run the same command to resume`", "every finished trial, none counted twice",
     "test_two_workers_on_sqlite_survive_a_sigkill"),
    ("SIGKILL of the parent of `--n-workers N`", "nothing", "the workers end with it "
     "(no orphans)", "test_worker_dies_when_its_parent_is_killed"),
    ("a valid local `cifar-10-python.tar.gz`, offline", "nothing: it is verified (MD5) and "
     "used", "-", "test_local_official_archive_is_verified_and_used_offline"),
]


def table_markdown() -> str:
    rows = ["| bad input | what you see | what is kept |", "|---|---|---|"]
    for what, args, env, msg, kept in TABLE:
        cmd = " ".join(["python -m lib", *args])
        pre = " ".join(f"{k}={v}" for k, v in env.items())
        rows.append(f"| {what}: `{(pre + ' ' if pre else '') + cmd}` | one line, `error:` "
                    f"with `{msg}` | {kept} |")
    for what, seen, kept, _test in GUARANTEES:
        rows.append(f"| {what} | {seen} | {kept} |")
    return "\n".join(rows)


@pytest.mark.parametrize("what, args, env, msg, kept", TABLE, ids=[t[0] for t in TABLE])
def test_bad_input_table(tmp_path, what, args, env, msg, kept):
    extra = [] if args[0] == "book" else ["--runs-dir", str(tmp_path)]
    r = lib(*args, *extra, env={**os.environ, **env})
    assert r.returncode == 2 and msg in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "cli").exists() and not (tmp_path / "search").exists() \
        or args[0] == "sweep"
    if "/nonexistent/dir" in " ".join(args):
        assert not os.path.exists("/nonexistent")


def test_guarantees_name_real_tests():
    import pathlib

    source = "\n".join(p.read_text() for p in pathlib.Path(__file__).parent.glob("test_*.py"))
    for *_, test in GUARANTEES:
        assert f"def {test}(" in source, test


def test_appendix_has_the_table():
    text = (REPO_ROOT / "book" / "reproduce.md").read_text()
    assert table_markdown() in text, "run `python tests/test_bad_input.py` and paste its table"


if __name__ == "__main__":
    print(table_markdown())
