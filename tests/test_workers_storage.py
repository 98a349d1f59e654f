"""Several worker processes on one study, on a real PostgreSQL server and on SQLite:
a worker killed mid-trial loses nothing and counts nothing twice.

The PostgreSQL test needs a server: ``.ci/run`` starts one (``.ci/postgres``) and sets
``LIB_TEST_POSTGRES_URL``; elsewhere the test is skipped, saying so.
"""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from lib import search
from lib.data import REPO_ROOT

# fifteen epochs (of a tiny synthetic set): trials long enough that the kill lands inside one
SPACE = ("lr: {low: 0.01, high: 0.1, log: true}\nmodel.width: [24, 32]\n"
         "model.convs_per_block: [2]\nepochs: [15]\n")


def sweep_cmd(tmp_path, study, storage, workers, n_trials):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return [sys.executable, "-m", "lib", "sweep", "--study", study, "--budget", "smoke",
            "--space", str(space), "--runs-dir", str(tmp_path), "--storage", storage,
            "--n-workers", str(workers), "--n-trials", str(n_trials), "--sampler", "random",
            "--pruner", "none"]


def frame(study, storage):
    return search.trials_frame(search.optuna_load(study, storage))


def kill_one_worker_mid_trial(cmd, study, storage):
    """Start the sweep, SIGKILL one worker while a trial of its is running (after some
    trial has finished), and wait for the sweep to end."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    victim = None
    try:
        deadline = time.time() + 240
        while victim is None:
            assert proc.poll() is None, f"the sweep ended first: {proc.stderr.read()[-800:]}"
            assert time.time() < deadline, "no trial finished in time"
            try:
                df = frame(study, storage)
            except search.SearchError:
                df = None
            if df is not None and len(df) and (df.state == "COMPLETE").any():
                running = df[df.state == "RUNNING"]
                if len(running) and "pid" in running:
                    victim = int(running.pid.iloc[0])
            time.sleep(0.2)
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the trial the kill interrupted: the victim's trial that did not finish, still
    # RUNNING or already failed by the other worker's heartbeat check (on a loaded
    # machine the trial seen above may finish before the signal lands, and the worker
    # starts the next one)
    df = frame(study, storage)
    left = df[df.state.isin(["RUNNING", "FAIL"]) & (df.pid == victim)]
    assert len(left) == 1, (f"the killed worker {victim} left {len(left)} unfinished "
                            f"trials: {df[['number', 'state', 'pid']].to_dict('records')}")
    number = int(left.number.iloc[0])
    return number, proc.returncode, err


def check_resumed(tmp_path, cmd, study, storage, killed, n_trials):
    r = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    df = frame(study, storage)
    trained = df[df.state.isin(["COMPLETE", "PRUNED"]) & (df.epochs_run > 0)]
    assert len(trained) == n_trials  # none lost, none counted twice
    assert trained.number.is_unique
    assert df.set_index("number").loc[killed, "state"] == "FAIL"
    retry = df[df.get("retry_of") == killed]
    assert len(retry) == 1 and retry.state.iloc[0] == "COMPLETE"
    assert "database is locked" not in r.stderr


@pytest.fixture
def postgres_url():
    url = os.environ.get("LIB_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL server: set LIB_TEST_POSTGRES_URL (.ci/run starts one "
                    "with .ci/postgres)")
    return url


def test_three_workers_on_postgresql_survive_a_sigkill(tmp_path, postgres_url):
    study = f"pg-{uuid.uuid4().hex[:8]}"
    cmd = sweep_cmd(tmp_path, study, postgres_url, 3, 6)
    killed, rc, err = kill_one_worker_mid_trial(cmd, study, postgres_url)
    assert rc == 2 and "run the same command to resume" in err
    check_resumed(tmp_path, cmd, study, postgres_url, killed, 6)


def test_two_workers_on_sqlite_survive_a_sigkill(tmp_path):
    study = "lite"
    url = f"sqlite:///{tmp_path / 'lite.db'}"
    cmd = sweep_cmd(tmp_path, study, url, 2, 5)
    killed, rc, err = kill_one_worker_mid_trial(cmd, study, url)
    assert rc == 2 and "database is locked" not in err
    check_resumed(tmp_path, cmd, study, url, killed, 5)
