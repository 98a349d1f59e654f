import subprocess
import sys


def lib(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lib", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_missing_data_is_one_line(tmp_path):
    r = lib("data", "--data-dir", str(tmp_path / "missing"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing" in lines[0]


def test_train_dry_run_and_bad_option(tmp_path):
    r = lib("train", "--synthetic", "--budget", "smoke", "--runs-dir", str(tmp_path),
            "--set", "epochs=1", "--set", "model.width=8", "--set", "precision=fp32")
    assert r.returncode == 0, r.stderr
    assert "status ok" in r.stdout
    r = lib("train", "--synthetic", "--runs-dir", str(tmp_path), "--set", "model.filters=3")
    assert r.returncode == 2 and "unknown model option" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = lib("train", "--synthetic", "--runs-dir", str(tmp_path), "--set", "lr")
    assert r.returncode == 2 and "NAME=VALUE" in r.stderr


def test_bench_prints_speedup_last():
    r = lib("bench", "--synthetic", "--steps", "2", "--batch-size", "16")
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("speedup: ") and last.endswith("x")
    assert float(last.split()[1].rstrip("x")) > 0
