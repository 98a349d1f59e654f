"""python -m lib plan: what the book would read and train, before anything trains."""

import time

import pytest

from lib import book, cli, plan, runs
from lib.data import REPO_ROOT


def test_other_data_lists_every_run_with_measured_estimates():
    t = time.time()
    df, _ = plan.table("cpu", "0" * 16, REPO_ROOT / "runs")  # a copy nobody trained on
    assert time.time() - t < 10
    runs_only = df[~df.what.str.startswith("study ")]
    assert not runs_only.cached.any()
    ch03 = df[df.group == "ch03"]  # chapter 3's runs, its MLP search, chapter 7's wd runs
    main = ch03[ch03.what.str.match(r"(mlp|cnn), seed \d")]
    assert len(main) == 6 and len(ch03) > len(main)
    assert (ch03.estimate == "measured (same config, other data)").all()
    assert (df.minutes.fillna(0) >= 0).all() and df.minutes.sum() > 60


def test_a_cached_run_is_not_in_the_training_total(tmp_path, synth):
    c = book.ch01_config("smoke")
    before, _ = plan.table("smoke", synth.fingerprint, tmp_path)
    row = before[before.group == "ch01"].iloc[0]
    assert not row.cached
    runs.get(c, synth, "ch01", tmp_path, progress=False)
    after, _ = plan.table("smoke", synth.fingerprint, tmp_path)
    row = after[after.group == "ch01"].iloc[0]
    assert row.cached and row.minutes == 0


def test_book_refuses_a_long_training_unless_told(monkeypatch):
    monkeypatch.setattr(cli, "plan_summary", lambda *a, **k: 999.0)
    monkeypatch.setattr(cli, "check_params", lambda p: None)
    a = cli.parser().parse_args(["book", "--budget", "cpu"])
    with pytest.raises(cli.UserError, match="train about 999 minutes"):
        a.func(a)


def test_gpu_check_runs_on_the_cpu_and_says_so():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "lib", "gpu-check", "--tiny", "--workers", "1",
                        "2"], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "no GPU here, every figure below is the CPU's" in out
    assert "chapter 3's CNN:" in out and "the recipe's network:" in out
    assert "2 worker(s) at once:" in out and "dry run" in out


def test_projection_of_the_gpu_book_scales_with_speed():
    from lib import gpucheck

    slow = gpucheck.projected_hours(100.0, REPO_ROOT / "runs", echo=lambda m: None)
    fast = gpucheck.projected_hours(10_000.0, REPO_ROOT / "runs", echo=lambda m: None)
    assert slow > fast > 0 and slow / fast == pytest.approx(100, rel=0.01)
