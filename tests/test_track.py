from lib import runs, track


def test_events_hold_every_epoch(tmp_path, synth, tiny_config):
    run = runs.get(tiny_config, synth, "g", tmp_path)
    df = track.read_scalars(run.tb_dir)
    tags = set(df.tag)
    assert {"loss/train", "loss/test", "accuracy/train", "accuracy/test", "lr"} <= tags
    test_acc = df[df.tag == "accuracy/test"].sort_values("step")
    assert test_acc.step.tolist() == list(range(1, tiny_config.epochs + 1))
    assert abs(test_acc.value.iloc[-1] - run.summary["test_acc"]) < 1e-6


def test_flat_hparams():
    flat = track.flat_hparams({"model": {"hidden": [1, 2], "depth": 3}, "lr": 0.1, "n": None})
    assert flat == {"model.hidden": "[1, 2]", "model.depth": 3, "lr": 0.1, "n": "None"}


def test_graph_predictions_histograms_and_hparams_are_logged(tmp_path, synth, tiny_config):
    run = runs.get(tiny_config, synth, "g", tmp_path,
                   track=dict(graph=True, predictions=8, wandb=False))
    kinds = track.event_summary(run.tb_dir)["tags"]
    assert kinds["graph"] == 1 and kinds["images"] == 1 and kinds["hparams"] >= 1
    assert kinds["histograms"] == 2 * len(run.weights.layer.unique())  # weights and grads


def test_corrupt_or_truncated_event_file_is_skipped_with_a_warning(tmp_path, synth,
                                                                    tiny_config):
    import shutil

    run = runs.get(tiny_config, synth, "g", tmp_path)
    logs = tmp_path / "logs"
    shutil.copytree(run.tb_dir, logs / "good")
    (logs / "bad").mkdir()
    (logs / "bad" / "events.out.tfevents.1.bad").write_bytes(b"\x00\x01garbage" * 50)
    good_file = next((logs / "good").glob("events.*"))
    data = good_file.read_bytes()
    (logs / "cut").mkdir()
    (logs / "cut" / "events.out.tfevents.2.cut").write_bytes(data[: len(data) // 2])
    warned = []
    df = track.read_scalars(logs, warn=warned.append)
    assert any("events.out.tfevents.1.bad" in w for w in warned)
    assert any("events.out.tfevents.2.cut" in w for w in warned)
    assert len(df[df.tag == "accuracy/test"]) >= tiny_config.epochs  # the good file is read


def test_wandb_missing_is_one_clear_error_and_the_book_goes_on(monkeypatch, tmp_path):
    import builtins

    from lib import book

    real = builtins.__import__

    def no_wandb(name, *a, **k):
        if name == "wandb" or name.startswith("wandb."):
            raise ImportError("No module named 'wandb'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    assert not track.wandb_available()
    assert book.ch04_track()["wandb"] is False
    import pytest

    with pytest.raises(track.TrackingError, match="pip install wandb"):
        track.Tracker(tmp_path / "tb", wandb=True)


def test_wandb_offline_run_lands_in_the_run_folder(tmp_path, synth, tiny_config):
    import pytest

    if not track.wandb_available():
        pytest.skip("wandb not installed")
    run = runs.get(tiny_config, synth, "g", tmp_path, track=dict(wandb=True, predictions=4))
    wb = track.wandb_run_dir(run.path)
    assert wb is not None and list(wb.glob("run-*.wandb"))
    summary = track.wandb_summary(wb)
    assert summary is not None
    assert abs(summary["test_acc"] - run.summary["test_acc"]) < 1e-9


def test_screenshots_without_chromium_fail_with_install_hint(monkeypatch, capsys):
    import shutil

    from lib import cli, screens

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert cli.main(["screenshots", "--budget", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "Chromium is not installed" in err and "apt-get install chromium" in err
    assert err.count("\n") == 1
    monkeypatch.undo()
    assert screens.TB_PAGES  # the module stays importable without a browser


def test_tracking_overhead_rows(synth, tiny_config):
    from lib import bench

    df = bench.tracking_overhead(synth, tiny_config, repeats=1,
                                 variants={"no logging": None,
                                           "TensorBoard scalars": dict(histograms=False)},
                                 log=lambda *a: None)
    assert list(df.variant) == ["no logging", "TensorBoard scalars"]
    r = bench.overhead_ratios(df)
    assert r["no logging"] == 1.0 and r["TensorBoard scalars"] > 0


def test_links_outside_the_wandb_folder_are_dropped(tmp_path):
    from lib import track

    wb = tmp_path / "wandb"
    (wb / "run" / "logs").mkdir(parents=True)
    (wb / "run" / "logs" / "debug.log").write_text("x")
    (wb / "debug.log").symlink_to("run/logs/debug.log")  # inside: kept
    (wb / "run" / "logs" / "core.log").symlink_to("/nonexistent/cache/core.log")  # outside
    gone = track.drop_outside_links(wb)
    assert gone == [wb / "run" / "logs" / "core.log"]
    assert (wb / "debug.log").is_symlink() and not (wb / "run" / "logs" / "core.log").exists()


def test_tensorboard_http_api_shows_our_scalars_histograms_and_hparams(tmp_path, synth,
                                                                        tiny_config):
    """TensorBoard itself (its HTTP API, as the browser reads it) serves what we log."""
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    run = runs.get(tiny_config, synth, "g", tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("tensorboard")
    proc = subprocess.Popen([str(exe), "--logdir", str(run.tb_dir), "--host", "127.0.0.1",
                             "--port", str(port), "--load_fast", "false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def get(path, body=None):
        headers = {"X-XSRF-Protected": "1", "Content-Type": "application/json"} if body else {}
        req = urllib.request.Request(url + path, headers=headers,
                                     data=json.dumps(body).encode() if body else None)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    try:
        deadline = time.time() + 120
        while True:  # TensorBoard loads the event files in the background
            assert proc.poll() is None, "tensorboard exited"
            assert time.time() < deadline, "tensorboard never showed the run's scalars"
            try:
                scalars = get("/data/plugin/scalars/tags").get(".", {})
            except OSError:
                scalars = {}
            if "final/test_acc" in scalars:
                break
            time.sleep(0.5)
        assert {"loss/train", "accuracy/test", "lr"} <= set(scalars)
        curve = get("/data/plugin/scalars/scalars?run=.&tag=accuracy/test")
        assert [step for _, step, _ in curve] == list(range(1, tiny_config.epochs + 1))
        assert abs(curve[-1][2] - run.summary["test_acc"]) < 1e-6
        hists = set(get("/data/plugin/histograms/tags").get(".", {}))
        assert {f"weights/{n}" for n in run.weights.layer.unique()} <= hists
        groups = get("/data/plugin/hparams/session_groups", {
            "experimentName": "", "colParams": [], "startIndex": 0, "sliceSize": 10,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                "STATUS_RUNNING"]})["sessionGroups"]
        assert len(groups) == 1
        assert groups[0]["hparams"]["lr"] == tiny_config.lr
        assert groups[0]["hparams"]["model.width"] == tiny_config.model.width
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_screenshot_text_shows_no_local_path():
    from pathlib import Path

    from lib import screens
    from lib.data import REPO_ROOT

    line = f"executable  {REPO_ROOT}/.venv/bin/python  root {Path.home()}/x  args[0] sweep"
    out = screens.redact_paths(line)
    assert str(REPO_ROOT) not in out and "<repo>/.venv/bin/python" in out
    assert "args[0] sweep" in out
    assert len(out) == len(line) and out.index("args[0]") == line.index("args[0]")
