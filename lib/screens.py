"""Real screenshots of the tracking UIs for chapter 4 (``python -m lib screenshots``).

TensorBoard is started on 127.0.0.1 for one run's event files and its dashboards
(scalars, time series, histograms, HParams, graph) are photographed with headless
Chromium (the system package, driven by Playwright). Weights & Biases has no web
UI offline; its local terminal UI, W&B LEET (``wandb leet``), is started in a
detached tmux session and its screen is rendered to HTML and photographed the
same way. Nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

#: Chromium flags for a closed network: no background traffic.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]

#: TensorBoard dashboards photographed: file name -> URL fragment (a tag filter keeps
#: each picture to what its caption in chapter 4 says).
TB_PAGES = {"tb_scalars": "scalars&tagFilter=%5E(loss%7Caccuracy)%2F",
            "tb_histograms": "histograms&tagFilter=%5Eweights%2F",
            "tb_hparams": "hparams", "tb_graph": "graphs", "tb_images": "images"}
#: The HParams table keeps these hyperparameters next to the final metrics.
HPARAMS_SHOWN = {"lr", "batch_size", "weight_decay"}
_HPARAMS_STATUS = {"Unknown", "Success", "Failure", "Running"}


#: W&B LEET's configuration for the sweep picture (wandb 0.31's whole settings file: a
#: partial one is not merged with the defaults): one chart, runs list, no side panels.
LEET_SWEEP_CONFIG = {
    "startup_mode": "workspace_latest", "chart_guides": "off",
    "metrics_grid": {"rows": 4, "cols": 3}, "system_grid": {"rows": 6, "cols": 2},
    "media_grid": {"rows": 1, "cols": 2}, "workspace_metrics_grid": {"rows": 1, "cols": 1},
    "workspace_system_grid": {"rows": 3, "cols": 3},
    "workspace_media_grid": {"rows": 1, "cols": 2}, "symon_grid": {"rows": 2, "cols": 3},
    "symon_sidebar_visible": True, "color_scheme": "wandb-vibe-10",
    "tag_color_scheme": "wandb-vibe-10", "per_plot_color_scheme": "sunset-glow",
    "system_color_scheme": "wandb-vibe-10", "french_fries_color_scheme": "viridis",
    "system_color_mode": "per_series", "system_tail_window_minutes": 10,
    "single_run_color_mode": "per_series", "heartbeat_interval_seconds": 15,
    "left_sidebar_visible": True, "right_sidebar_visible": False,
    "metrics_grid_visible": True, "console_logs_visible": False, "media_visible": False,
    "workspace_overview_visible": False, "workspace_metrics_grid_visible": True,
    "workspace_system_metrics_visible": False, "workspace_console_logs_visible": False,
    "workspace_media_visible": False}


class ScreenshotError(RuntimeError):
    """A tool the screenshots need is missing or failed; the message says which."""


def chromium() -> str:
    """Path of the system's Chromium, or ScreenshotError saying how to install it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise ScreenshotError("Chromium is not installed; on Debian/Ubuntu: "
                              "`sudo apt-get install chromium` (see the README)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise ScreenshotError(f"the server for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise ScreenshotError(f"{url} did not answer within {timeout:.0f} s")


def _set_checkbox(boxes, name: str, on: bool) -> None:
    for j in range(boxes.count()):
        box = boxes.nth(j)
        if box.text_content().strip() == name and \
                (box.get_attribute("checked") is not None) != on:
            box.click()
            time.sleep(0.3)


def _prepare(page, frag: str) -> None:
    """Make one dashboard show what its caption says (chapter 4)."""
    if frag.startswith("scalars"):  # whole curves: no outlier clipping, no smoothing
        page.get_by_text("Ignore outliers in chart scaling").first.click()
        # the y axis is scaled to the smoothed line, so with smoothing on the raw one
        # runs off the chart; at 0 the one line drawn is the value of each epoch
        smoothing = page.locator("input[type=number]").first
        smoothing.fill("0")
        smoothing.press("Enter")
        time.sleep(2)
    elif frag == "hparams":  # a few hyperparameters and every final metric
        boxes = page.locator("tf-hparams-query-pane paper-checkbox")
        names = [boxes.nth(i).text_content().strip() for i in range(boxes.count())]
        for n in names:
            if n and n not in _HPARAMS_STATUS and not n.startswith("final/"):
                _set_checkbox(boxes, n, n in HPARAMS_SHOWN)
        time.sleep(2)
    elif frag == "graphs":  # open the model, then its convolutional block
        for want in ("CNN", "Sequential[featu"):
            nodes = page.locator("g.node.meta")
            labels = [nodes.nth(i).text_content() for i in range(nodes.count())]
            hit = [i for i, t in enumerate(labels) if t == want * 2 or
                   (t.startswith(want) and len(t) < 40)]
            if hit:
                nodes.nth(hit[0]).locator(".nodeshape").first.dblclick()
                time.sleep(3)


@contextlib.contextmanager
def _tensorboard_page(log_dir: Path, width: int, height: int):
    """TensorBoard serving ``log_dir`` on 127.0.0.1 and a headless Chromium page of
    ``width`` x ``height``: yields (browser, page, url); both stop on leaving."""
    from playwright.sync_api import sync_playwright

    exe = chromium()
    port = _free_port()
    tb = Path(sys.executable).with_name("tensorboard")
    # the log directory is named relative to its parent, where TensorBoard starts: the
    # runs pane shows it, and a published picture should not show this machine's paths
    log_dir = Path(log_dir).resolve()
    cmd = [str(tb) if tb.exists() else "tensorboard", "--logdir", log_dir.name,
           "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=log_dir.parent)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS)
            try:
                yield browser, browser.new_page(viewport={"width": width,
                                                          "height": height}), url
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def tensorboard(log_dir: Path, out: Path, width: int = 1600, height: int = 1000) -> list[Path]:
    """Screenshots of TensorBoard's dashboards for the event files in ``log_dir``."""
    shots = []
    with _tensorboard_page(log_dir, width, height) as (browser, page, url):
        for name, frag in TB_PAGES.items():
            page.goto(f"{url}/#{frag}")
            page.wait_for_load_state("networkidle")
            time.sleep(4)  # charts draw after the data arrives
            _prepare(page, frag)
            shots.append(out / f"{name}.png")
            if frag == "images":  # one card, at twice the resolution: legible labels
                zoom = browser.new_page(viewport={"width": width, "height": height},
                                        device_scale_factor=2)
                zoom.goto(f"{url}/#{frag}")
                zoom.wait_for_load_state("networkidle")
                time.sleep(4)
                zoom.locator("tf-image-loader").first.screenshot(path=str(shots[-1]))
                zoom.close()
            else:
                page.screenshot(path=str(shots[-1]))
    return shots


def redact_paths(text: str) -> str:
    """``text`` with the repository's absolute path written ``<repo>`` and the home
    directory ``~`` (W&B LEET's environment panel shows the interpreter's and the run's
    local paths, which a published picture should not). Each line keeps its length: the
    characters saved are put back as spaces after the word that held the path, so the
    panels drawn to its right stay in place."""
    from .data import REPO_ROOT

    for path, short in ((str(REPO_ROOT.resolve()), "<repo>"), (str(Path.home()), "~")):
        if len(path) > len(short):
            pad = " " * (len(path) - len(short))
            text = re.sub(re.escape(path) + r"(\S*)",
                          lambda m, s=short, p=pad: s + m.group(1) + p, text)
    return text


def _leet_png(target: list[str], out: Path, name: str, cols: int, rows: int,
              env: dict | None = None, keys: tuple[tuple[str, str], ...] = (),
              ready: str | None = None) -> Path:
    """Run ``wandb leet <target>`` in a detached tmux session of ``cols`` x ``rows``,
    wait until its screen shows ``ready`` (or 10 s), press each of ``keys`` ((tmux key
    name, text the key should remove from the screen) pairs), capture the screen, render
    it to HTML and photograph it as ``out/<name>.png``. The status line, which names the
    local folder, is left out."""
    import os

    from playwright.sync_api import sync_playwright
    from rich.console import Console
    from rich.terminal_theme import MONOKAI
    from rich.text import Text

    exe = chromium()
    if shutil.which("tmux") is None:
        raise ScreenshotError("tmux is not installed; `sudo apt-get install tmux`")
    wandb = Path(sys.executable).with_name("wandb")
    if not wandb.exists():
        raise ScreenshotError("wandb is not installed (`pip install wandb`); the W&B "
                              "screenshot needs its LEET terminal UI")
    session = f"leet{_free_port()}"
    prefix = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(cols), "-y",
                    str(rows), f"{prefix} TERM=xterm-256color {wandb} leet "
                    + " ".join(map(str, target))], check=True, env=os.environ)
    def capture():
        return subprocess.run(["tmux", "capture-pane", "-t", session, "-p", "-e"],
                              capture_output=True, text=True, check=True).stdout

    try:
        time.sleep(10)
        deadline = time.time() + 60
        while ready and ready not in capture():
            if time.time() > deadline:
                raise ScreenshotError(f"W&B LEET did not show {ready!r} within 70 s")
            time.sleep(2)
        time.sleep(2)
        for key, gone in keys:  # press until ``gone`` has left the screen (3 tries)
            for _ in range(3):
                subprocess.run(["tmux", "send-keys", "-t", session, key], check=True)
                time.sleep(4)  # the whole screen redrawn
                if gone not in capture():
                    break
            else:
                raise ScreenshotError(f"W&B LEET still shows {gone!r} after {key!r}")
        if keys:  # a resize makes the interface redraw the whole screen
            for c in (cols - 1, cols):
                subprocess.run(["tmux", "resize-window", "-t", session, "-x", str(c)],
                               check=True)
                time.sleep(3)
        screen = capture()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    console = Console(record=True, width=cols, force_terminal=True, color_system="truecolor",
                      file=open(os.devnull, "w"))
    screen = redact_paths("\n".join(ln for ln in screen.splitlines()
                                    if "wandb dir:" not in ln))
    console.print(Text.from_ansi(screen))
    html = out / f"{name}.html"
    # every braille chart dot held to one cell: in the browser's fallback font they are
    # wider and would push the rest of their line sideways
    page_html = console.export_html(inline_styles=True, theme=MONOKAI)
    page_html = re.sub("([\u2800-\u28ff])", r'<span class="cell">\1</span>', page_html)
    html.write_text(page_html.replace("<head>", "<head><style>.cell { display: "
                                      "inline-block; width: 1ch; overflow: hidden; "
                                      "vertical-align: bottom; } pre { display: "
                                      "inline-block; }</style>", 1))
    png = out / f"{name}.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1900, "height": 1000})
        page.goto(html.resolve().as_uri())
        page.locator("pre").first.screenshot(path=str(png))
        browser.close()
    html.unlink()
    return png


def wandb_leet(run_dir: Path, out: Path, cols: int = 150, rows: int = 42) -> Path:
    """A screenshot of W&B LEET (the local terminal UI) showing an offline run."""
    return _leet_png(["run", run_dir], out, "wandb_leet", cols, rows)


def wandb_sweep(wandb_dir: Path, out: Path, metric: str = "accuracy/val",
                name: str = "wandb_sweep", cols: int = 150, rows: int = 40) -> Path:
    """W&B LEET's workspace over a folder of offline runs (a study's trials, written by
    :func:`lib.sweeplog.log_study`): every run selected and ``metric`` of all of them
    overlaid in one chart. The selection and the metric filter are LEET's own workspace
    state file in the folder; its layout comes from a private configuration (one chart,
    no overview sidebar), so the user's own LEET settings are neither used nor changed."""
    import json
    import tempfile

    wandb_dir = Path(wandb_dir)
    offline = sorted(p.name for p in wandb_dir.glob("offline-run-*") if p.is_dir())
    if not offline:
        raise ScreenshotError(f"no W&B offline run in {wandb_dir}")
    (wandb_dir / ".wandb-leet.json").write_text(json.dumps(
        {"metrics_filter": {"query": f"^{metric}$"}, "selected_runs": offline}))
    with tempfile.TemporaryDirectory() as cfg:
        (Path(cfg) / "wandb").mkdir()
        (Path(cfg) / "wandb" / "wandb-leet.json").write_text(json.dumps(LEET_SWEEP_CONFIG))
        # "]" hides the run overview (the workspace keeps it open at start)
        return _leet_png([wandb_dir], out, name, cols, rows,
                         env={"XDG_CONFIG_HOME": cfg}, keys=(("]", "Run Overview"),),
                         ready=f"of {len(offline)}]")


#: The HParams views of a sweep: the searched hyperparameters (short names, as
#: :func:`lib.sweeplog.trial_hparams` writes them) and one metric; axes on a log scale.
SWEEP_METRIC = "final/val_acc"
SWEEP_LOG_AXES = ("lr", "weight_decay")


def _choose(page, label: str, item: str) -> None:
    """Pick ``item`` in the HParams query pane's drop-down menu labelled ``label``."""
    page.locator(f'paper-dropdown-menu[label="{label}"]').first.click()
    time.sleep(1)
    items = page.locator("paper-item", has_text=item)
    for i in range(items.count()):
        if items.nth(i).is_visible():
            items.nth(i).click()
            time.sleep(1)
            return
    raise ScreenshotError(f"TensorBoard's HParams pane has no {item!r} under {label!r}")


def tensorboard_sweep(log_dir: Path, out: Path, shown: set[str], table_shown: set[str],
                      prefix: str = "tb_sweep", width: int = 1800, height: int = 900,
                      table_rows: int = 12) -> list[Path]:
    """TensorBoard's HParams dashboard over a study's trials (one run per trial, written by
    :func:`lib.sweeplog.log_study`): the first ``table_rows`` rows of the table view with
    the hyperparameters ``table_shown``, sorted by ``SWEEP_METRIC`` (best first), and the
    parallel-coordinates view of the hyperparameters ``shown``, coloured by it."""
    shots = []
    # wide enough that the table's metric column and every axis fit; each picture is
    # cropped to its view
    with _tensorboard_page(log_dir, width, height) as (_browser, page, url):
        page.goto(f"{url}/#hparams")
        page.wait_for_load_state("networkidle")
        time.sleep(6)
        boxes = page.locator("tf-hparams-query-pane paper-checkbox")
        names = [boxes.nth(i).text_content().strip() for i in range(boxes.count())]

        def show(which):
            for n in names:
                if n and n not in _HPARAMS_STATUS:
                    _set_checkbox(boxes, n, n in which or n == SWEEP_METRIC)
            time.sleep(2)

        show(table_shown)
        # table: best first (the query pane's own sorting controls)
        _choose(page, "Sort by", SWEEP_METRIC)
        _choose(page, "Direction", "Descending")
        time.sleep(3)
        shots.append(out / f"{prefix}_table.png")
        box = page.locator("tf-hparams-table-view").first.bounding_box()
        header = page.locator("div.table-header").first.bounding_box()
        row = page.locator("vaadin-grid-cell-content", has_text="trial-").first \
            .bounding_box()
        rows_h = header["height"] + 6 + table_rows * (row["height"] + 12)
        page.screenshot(path=str(shots[-1]), clip=dict(
            x=box["x"], y=box["y"], width=box["width"],
            height=min(box["height"], height - box["y"], rows_h)))
        show(shown)
        tabs = page.locator("paper-tab")
        for i in range(tabs.count()):
            if "PARALLEL" in tabs.nth(i).text_content().upper():
                tabs.nth(i).click()
        time.sleep(4)
        for axis in SWEEP_LOG_AXES:  # the scale chooser of each axis
            box = page.locator("div.column").filter(
                has=page.locator("div.column-title", has_text=axis))
            if box.count():
                box.first.get_by_text("Logarithmic").click()
                time.sleep(1)
        time.sleep(2)
        shots.append(out / f"{prefix}_parallel.png")
        top = page.locator("tf-hparams-scale-and-color-controls").first.bounding_box()
        plot = page.locator("tf-hparams-parallel-coords-plot").first.bounding_box()
        page.screenshot(path=str(shots[-1]), clip=dict(
            x=top["x"], y=top["y"], width=max(top["width"], plot["width"]),
            height=plot["y"] + plot["height"] - top["y"]))
    return shots


def take(run, out: Path) -> list[Path]:
    """All of chapter 4's screenshots for a cached run (a :class:`lib.runs.Run`)."""
    out.mkdir(parents=True, exist_ok=True)
    shots = tensorboard(run.tb_dir, out)
    offline = sorted((run.path / "wandb").glob("offline-run-*"))
    if offline:
        shots.append(wandb_leet(offline[-1], out))
    return shots
