"""Real screenshots of the tracking UIs for chapter 4 (``python -m lib screenshots``).

TensorBoard is started on 127.0.0.1 for one run's event files and its dashboards
(scalars, time series, histograms, HParams, graph) are photographed with headless
Chromium (the system package, driven by Playwright). Weights & Biases has no web
UI offline; its local terminal UI, W&B LEET (``wandb leet``), is started in a
detached tmux session and its screen is rendered to HTML and photographed the
same way. Nothing leaves the machine.
"""

from __future__ import annotations

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
    if frag.startswith("scalars"):  # whole curves: no outlier clipping of the y axis
        page.get_by_text("Ignore outliers in chart scaling").first.click()
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


def tensorboard(log_dir: Path, out: Path, width: int = 1600, height: int = 1000) -> list[Path]:
    """Screenshots of TensorBoard's dashboards for the event files in ``log_dir``."""
    from playwright.sync_api import sync_playwright

    exe = chromium()
    port = _free_port()
    tb = Path(sys.executable).with_name("tensorboard")
    cmd = [str(tb) if tb.exists() else "tensorboard", "--logdir", str(log_dir),
           "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shots = []
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": width, "height": height})
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
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return shots


def wandb_leet(run_dir: Path, out: Path, cols: int = 150, rows: int = 42) -> Path:
    """A screenshot of W&B LEET (the local terminal UI) showing an offline run."""
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
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(cols), "-y",
                    str(rows), f"TERM=xterm-256color {wandb} leet run {run_dir}"], check=True)
    try:
        time.sleep(8)
        screen = subprocess.run(["tmux", "capture-pane", "-t", session, "-p", "-e"],
                                capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    console = Console(record=True, width=cols, force_terminal=True, color_system="truecolor",
                      file=open("/dev/null", "w"))
    console.print(Text.from_ansi(screen))
    html = out / "wandb_leet.html"
    html.write_text(console.export_html(inline_styles=True, theme=MONOKAI))
    png = out / "wandb_leet.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(html.resolve().as_uri())
        page.locator("pre").first.screenshot(path=str(png))
        browser.close()
    html.unlink()
    return png


def take(run, out: Path) -> list[Path]:
    """All of chapter 4's screenshots for a cached run (a :class:`lib.runs.Run`)."""
    out.mkdir(parents=True, exist_ok=True)
    shots = tensorboard(run.tb_dir, out)
    offline = sorted((run.path / "wandb").glob("offline-run-*"))
    if offline:
        shots.append(wandb_leet(offline[-1], out))
    return shots
