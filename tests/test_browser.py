"""The published book in a real browser: every page of _toc.yml in headless Chromium.

Skips (with the reason) where Chromium is not installed; `.ci/run` installs it
(Debian's `chromium`), so CI never skips. Screenshots of each page's first screen
are kept in `_build/test-screenshots/` (not committed) for a person to look at.
"""

import functools
import http.server
import json
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest

from lib import cli
from lib.data import REPO_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not found: apt-get install chromium")
SHOTS = REPO_ROOT / "_build" / "test-screenshots"
# Chromium flags for a closed network (see the machine notes): no background traffic.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# Console errors that come from the theme, not from the book, each with its reason:
ALLOWED_CONSOLE = (
    # pydata-sphinx-theme reports a fresh browser profile's empty theme setting,
    # then falls back to "auto" (light/dark from the system).
    "Got invalid theme mode: . Resetting to auto.",
)


def page_title(src: Path) -> str:
    """The first level-1 heading of a chapter's source."""
    if src.suffix == ".ipynb":
        text = "\n".join(c.source for c in nbformat.read(src, as_version=4).cells
                         if c.cell_type == "markdown")
    else:
        text = src.read_text()
    return re.search(r"^# (.+)$", text, re.M).group(1).strip()


@pytest.fixture(scope="module")
def site(published_html):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(published_html))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", published_html
    srv.shutdown()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def open_page(browser, url):
    """A page that records console errors; requests off localhost are blocked
    (the book's MathJax comes from a CDN, unreachable offline; its failure to
    load is the one console error we allow, and only for non-local URLs)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []

    def on_console(msg):
        if msg.type == "error":
            where = (msg.location or {}).get("url", "")
            local = not where or urlparse(where).hostname == "127.0.0.1"
            if local and msg.text not in ALLOWED_CONSOLE:
                errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda e: None if str(e) in ALLOWED_CONSOLE else errors.append(str(e)))
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1)"), lambda route: route.abort())
    page.goto(url, wait_until="load")
    return page, errors


def test_every_page(site, browser):
    base, html = site
    SHOTS.mkdir(parents=True, exist_ok=True)
    for src in cli.toc_files():
        rel = src.relative_to(REPO_ROOT).with_suffix(".html").as_posix()
        page, errors = open_page(browser, f"{base}/{rel}")
        try:
            h1 = page.inner_text("main h1").replace("#", "").strip()
            assert page_title(src) in h1, (rel, h1)
            broken = page.evaluate("Array.from(document.images)"
                                   ".filter(i => !i.complete || i.naturalWidth === 0)"
                                   ".map(i => i.src)")
            assert broken == [], (rel, broken)
            text = page.inner_text("main")
            assert "Traceback" not in text and "Error:" not in text, rel
            hrefs = page.evaluate("Array.from(document.querySelectorAll('a[href]'))"
                                  ".map(a => a.href)")
            for h in hrefs:
                u = urlparse(h)
                if u.hostname == "127.0.0.1":
                    target = html / u.path.lstrip("/")
                    assert target.is_file() or (target / "index.html").is_file(), (rel, h)
            assert errors == [], (rel, errors)
            # tables fit their column: nothing hidden behind a scroll bar
            # (wider than the page, or than the text column: the theme puts a table in a
            # scrolling box, which would hide its last columns behind a scroll bar)
            wide = page.evaluate("""Array.from(document.querySelectorAll('main table'))
                .filter(t => t.offsetParent !== null)
                .filter(t => t.getBoundingClientRect().width >
                             document.querySelector('main').getBoundingClientRect().width + 1
                             || t.parentElement.scrollWidth > t.parentElement.clientWidth + 2)
                .map(t => t.innerText.slice(0, 60))""")
            assert wide == [], (rel, wide)
            # no cell cut short by pandas ("qua...", "1289...")
            cut = page.evaluate("""Array.from(document.querySelectorAll('main td, main th'))
                .map(c => c.innerText.trim()).filter(t => /(\\.\\.\\.|\u2026)$/.test(t))""")
            assert cut == [], (rel, cut[:5])
            # every figure is described: alt text that is not a file name, or a caption
            bare = page.evaluate("""Array.from(document.querySelectorAll('main img'))
                .filter(i => !i.closest('figure')?.querySelector('figcaption'))
                .filter(i => { const a = (i.getAttribute('alt') || '').trim();
                               return a.length < 10 || /\\.(png|jpe?g|svg)$/i.test(a); })
                .map(i => i.getAttribute('src'))""")
            assert bare == [], (rel, bare[:5])
            page.screenshot(path=str(SHOTS / (Path(rel).stem + ".png")))
            # the same with every toggle open (hidden code, exercise solutions): tables
            # and printed output still fit their column
            page.evaluate("document.querySelectorAll('main details')"
                          ".forEach(d => d.open = true)")
            for button in page.locator("main button.toggle-button").all():
                button.click()
            page.wait_for_timeout(300)
            wide = page.evaluate("""Array.from(document.querySelectorAll(
                    'main table, main .cell_output pre'))
                .filter(t => t.offsetParent !== null)
                .filter(t => t.scrollWidth > t.clientWidth + 2 ||
                             t.getBoundingClientRect().width >
                             document.querySelector('main').getBoundingClientRect().width + 1)
                .map(t => t.innerText.slice(0, 60))""")
            assert wide == [], (rel, "with toggles open", wide)
        finally:
            page.close()


def test_bibliography_links_are_well_formed(site, browser):
    base, html = site
    page, errors = open_page(browser, f"{base}/book/bibliography.html")
    try:
        links = page.evaluate("Array.from(document.querySelectorAll('main a[href]'))"
                              ".map(a => a.href)")
        external = [h for h in links if urlparse(h).hostname not in (None, "127.0.0.1")]
        assert external, "the bibliography links no paper"
        for h in external:
            u = urlparse(h)
            assert u.scheme == "https" and "." in (u.hostname or "") and " " not in h, h
        cited = page.evaluate("document.querySelectorAll('main .citation, main dl.citation dt,"
                              " main div.citation').length")
        assert cited > 0
        assert errors == []
    finally:
        page.close()


def test_search_finds_a_chapter_word(site, browser):
    base, _ = site
    page, errors = open_page(browser, f"{base}/search.html?q=convolution")
    try:
        page.wait_for_selector("ul.search li", timeout=20_000)
        hits = page.evaluate("Array.from(document.querySelectorAll('ul.search li a'))"
                             ".map(a => a.getAttribute('href'))")
        assert any("01_filters" in h for h in hits), json.dumps(hits)
        assert errors == []
    finally:
        page.close()
