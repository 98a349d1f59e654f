"""The PDF handout: the committed chapters built with XeLaTeX, exercises and solutions in.

Skips (with the reason) where TeX is missing; `.ci/run` installs the README's TeX
packages, so CI builds it.
"""

import re
import shutil

import pytest

from lib import cli

from .conftest import copy_book

TEX = all(shutil.which(t) for t in ("xelatex", "latexmk"))
pytestmark = pytest.mark.skipif(
    not TEX, reason="xelatex/latexmk not found: apt-get install texlive-xetex "
                    "texlive-latex-extra texlive-fonts-recommended latexmk fonts-freefont-otf")


def test_pdf_handout_builds_with_exercises_and_solutions(tmp_path):
    root = copy_book(tmp_path)
    cli.build_html(root, builder="pdflatex")
    out = root / "_build" / "latex"
    pdf = out / "book.pdf"
    assert pdf.is_file() and pdf.read_bytes()[:5] == b"%PDF-"
    log = (out / "book.log").read_text(errors="replace")
    pages = int(re.search(r"Output written on book\.pdf \((\d+) pages", log).group(1))
    assert pages > 50, pages
    tex = (out / "book.tex").read_text()
    # every chapter's exercises, and their solutions (a dropdown in HTML, text in the PDF)
    # with the code that computed them (folded away in HTML, printed in the PDF)
    assert tex.count("Exercises") >= 8 and tex.count("Solution 1") >= 8
    # (Pygments' LaTeX writes code token by token, "_" as \PYGZus{})
    assert r"track\PYGZus{}gap" in tex and r"only\PYGZus{}a" in tex
    assert "Traceback" not in tex
