"""Every chapter executes at budget="smoke" (synthetic data), and the book builds to HTML."""

import re

import pytest

from lib import cli

CHAPTERS = cli.chapters()


def figures(cells) -> int:
    """How many PNG figures the cells' outputs hold."""
    return sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))


def test_toc_lists_chapters():
    assert [p.name for p in CHAPTERS][:1] == ["01_filters.ipynb"]


def test_every_chapter_executes_at_smoke(smoke_book):
    import nbformat

    for nb in cli.chapters(smoke_book):
        cells = nbformat.read(nb, as_version=4).cells
        for c in cells:
            for o in c.get("outputs", []):
                assert o.get("output_type") != "error", f"{nb.name}: {o.get('ename')}"
        params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
        assert params, f"{nb.name} has no cell tagged 'parameters'"
        assert 'budget = "smoke"' in "".join(c.source for c in cells)
        assert figures(cells), f"{nb.name}: no figure in the outputs"


def test_published_chapters_show_their_figures():
    """The committed, executed chapters carry their figures (a kernel started with
    MPLBACKEND=Agg would have dropped every one of them silently)."""
    import nbformat

    for nb in CHAPTERS:
        cells = nbformat.read(nb, as_version=4).cells
        assert figures(cells), f"{nb.name}: executed without a single figure"


def test_published_chapters_carry_no_path_of_the_machine_that_built_them():
    """The notebooks are published as downloads: no absolute path of the build machine
    in their metadata (papermill records input_path and output_path) or outputs."""
    import nbformat

    for nb in CHAPTERS:
        text = nb.read_text()
        meta = nbformat.reads(text, as_version=4).metadata.get("papermill", {})
        assert not {"input_path", "output_path"} & set(meta), nb.name
        found = re.findall(r'(?<![\w.])/(?:work|home|root|tmp|Users)/[^\s"\\]*', text)
        assert not found, f"{nb.name}: {found[:3]}"


def test_html_build(smoke_book):
    cli.build_html(smoke_book)  # warnings are errors: raises UserError on any
    html = smoke_book / "_build" / "html"
    assert (html / "index.html").is_file()
    for f in cli.toc_files(smoke_book):
        page = html / f.relative_to(smoke_book).with_suffix(".html")
        assert page.is_file(), page
        text = page.read_text()
        visible = re.sub(r"<[^>]+>", " ", page.read_text())
        assert "Traceback" not in visible and "Error:" not in visible, page
        # myst-nb's classes for an error and for text a cell wrote to stderr (the word
        # itself may appear in code, e.g. a solution that reads a subprocess's stderr)
        assert 'class="output traceback' not in text, page
        assert 'class="output stderr' not in text, page


def test_bad_parameter_fails_before_the_kernel_starts(tmp_path):
    with pytest.raises(cli.UserError, match="budget 'huge' is not a budget"):
        cli.execute(CHAPTERS[0], tmp_path / "out.ipynb", budget="huge",
                    runs_dir=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out.ipynb").exists()
    with pytest.raises(cli.UserError, match="unknown chapter parameter"):
        cli.execute(CHAPTERS[0], tmp_path / "out.ipynb", colour="red")


def test_staleness(smoke_book, tmp_path):
    import nbformat

    nb = cli.chapters(smoke_book)[0]
    params = {"budget": "smoke", "runs_dir": str(smoke_book / "runs")}
    meta = nbformat.read(nb, as_version=4).metadata[cli.META]
    assert meta["read"], "the chapter recorded no run it read"
    assert cli.staleness(nb, params) == []
    assert cli.staleness(nb, {**params, "seed": 1}) == ["parameters changed"]
    # a run the chapter read changes on disk
    run_dir = next(r for r in meta["read"] if (smoke_book / "runs" / r).is_dir())
    summary = smoke_book / "runs" / run_dir / "summary.json"
    original = summary.read_text()
    summary.write_text(original.replace('"status": "ok"', '"status": "ok" '))
    assert cli.staleness(nb, params) == ["runs read changed"]
    summary.write_text(original)
    # an edited cell
    copy = tmp_path / nb.name
    book = nbformat.read(nb, as_version=4)
    book.cells[0].source += "\nOne more sentence."
    nbformat.write(book, copy)
    assert cli.staleness(copy, params) == ["notebook source changed"]
    fresh = tmp_path / "fresh.ipynb"
    book.metadata.pop(cli.META)
    nbformat.write(book, fresh)
    assert cli.staleness(fresh, params) == ["not executed by `python -m lib book` yet"]


def test_versus_seeds_says_whether_seeds_separate_two_configs():
    from lib.book import versus_seeds

    far = versus_seeds("A", [0.84, 0.841, 0.839], "B", [0.88, 0.881, 0.879])
    assert far.startswith("B scores 88.00% against 84.00% for A (3 and 3 seeds)")
    assert "4.00 percentage points higher" in far and "larger than the spread" in far
    near = versus_seeds("A", [0.84, 0.85, 0.83], "B", [0.845, 0.835, 0.83])
    assert "lower" in near and "cannot tell the two apart" in near
    flat = versus_seeds("A", [0.8, 0.8], "B", [0.9, 0.9])  # no spread: t-test undefined
    assert "10.00 percentage points higher" in flat and "p = 0," in flat
    with pytest.raises(ValueError, match="two seeds"):
        versus_seeds("A", [0.8], "B", [0.9, 0.9])


def test_epoch_returns_words_follow_the_numbers():
    from lib.book import epoch_returns

    t = epoch_returns({30: 0.88, 15: 0.87, 45: 0.884})  # any order of budgets
    assert t.startswith("From 15 to 30 epochs it gains 1.00 percentage points (0.067 points "
                        "per extra epoch); from 30 to 45 epochs it gains 0.40 percentage")
    assert "diminishing returns" in t
    assert "bought nothing" in epoch_returns({15: 0.87, 30: 0.88, 45: 0.88})
    assert "cost accuracy" in epoch_returns({15: 0.87, 30: 0.88, 45: 0.879})
    assert "it loses 0.10 percentage points" in epoch_returns({15: 0.87, 30: 0.88, 45: 0.879})
    assert "far from saturated" in epoch_returns({10: 0.8, 20: 0.82, 30: 0.85})
    assert epoch_returns({10: 0.8, 20: 0.8}) == "From 10 to 20 epochs it keeps its accuracy."
    with pytest.raises(ValueError, match="two budgets"):
        epoch_returns({10: 0.8})


def test_trained_on_counts_each_kind_of_machine():
    from types import SimpleNamespace

    from lib.book import timing_note, trained_on

    def run(threads):
        return SimpleNamespace(summary=dict(device="cpu", device_name="EPYC", threads=threads,
                                            torch="2.0"))

    assert trained_on([]) == "no training run"
    assert trained_on([run(2), run(2)]) == "cpu (EPYC, 2 threads), torch 2.0"
    assert trained_on([run(2), run(1), run(1)]) == ("cpu (EPYC, 2 threads), torch 2.0: 1 run; "
                                                    "cpu (EPYC, 1 thread), torch 2.0: 2 runs")
    keras = SimpleNamespace(summary=dict(device="cpu", device_name="EPYC", threads=2,
                                         framework="keras", tensorflow="2.21", keras="3.15"))
    assert trained_on([keras]) == "cpu (EPYC, 2 threads), TensorFlow 2.21, Keras 3.15"
    assert timing_note([run(2), run(2)]) == ""
    assert timing_note([run(2), run(1)]).startswith(
        " Minutes per run compare only between runs trained alike: cpu (EPYC, 2 threads)")


def test_versus_ch3_words_follow_the_numbers():
    from lib.book import versus_ch3

    t = versus_ch3(0.85, 20, {15: 0.84, 30: 0.87})
    assert "85.00%" in t and "with 20 epochs" in t
    assert ("at 15 epochs (fewer than its 20) the search's choice falls short of it by "
            "1.00 percentage points") in t
    assert ("at 30 epochs (more than its 20) the search's choice beats it by "
            "2.00 percentage points") in t
    tie = versus_ch3(0.8, 20, {20: 0.8})
    assert "(as many than" not in tie and "the search's choice ties it." in tie
