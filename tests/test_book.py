"""Every chapter executes at budget="smoke" (synthetic data), and the book builds to HTML."""

import re

import pytest

from lib import cli

CHAPTERS = cli.chapters()


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
        assert 'class="output traceback' not in text and "stderr" not in text, page


def test_bad_parameter_fails_at_the_first_cell(tmp_path):
    with pytest.raises(cli.UserError, match=r"cell \d+: ParameterError: budget='huge'"):
        cli.execute(CHAPTERS[0], tmp_path / "out.ipynb", budget="huge",
                    runs_dir=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()
    with pytest.raises(cli.UserError, match="unknown chapter parameter"):
        cli.execute(CHAPTERS[0], tmp_path / "out.ipynb", colour="red")
