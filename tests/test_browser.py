"""The browser check (tests/browser.py) reports each fault a page can have and passes a
page the renderer makes, titled and linked to the index. The real pages are checked
after the pipeline test (test_pipeline.py, `_check_outputs`)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from browser import assert_pages_work, check_page, require_chromium
from tdiag.report import render

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
"""A valid 1x1 PNG."""


def _page(folder: Path, body: str, name: str = "page.html") -> Path:
    page = folder / name
    page.write_text(f"<!DOCTYPE html><html><head><title>t</title></head><body>{body}</body></html>")
    return page


def test_the_check_passes_a_page_with_text_and_an_inline_image(tmp_path: Path):
    check = check_page(_page(tmp_path, f'<p>text</p><img src="data:image/png;base64,{PNG}">'), require_chromium())
    assert check.problems == [] and check.images == 1 and check.text_length == 4


@pytest.mark.parametrize("body, problem", [
    ("   ", "the page is blank"),
    ('<p>text</p><img src="data:image/png;base64,AAAA">', "image 1 (data:image/png;base64,AAAA) did not load or decode"),
    ('<p>text</p><img src="missing.png">', "image 1 (missing.png) did not load or decode"),
    ('<p>text</p><img src="http://example.com/x.png">', "a request leaves the machine: http://example.com/x.png"),
    ('<p>text</p><link rel="stylesheet" href="https://cdn.example.org/a.css">',
     "a request leaves the machine: https://cdn.example.org/a.css"),
    ("<p>text</p><script>fetch('https://example.org/api')</script>",
     "a request leaves the machine: https://example.org/api"),
    ("<p>text</p><script>undefined_function()</script>", "script error: Uncaught ReferenceError"),
])
def test_the_check_reports_each_fault(tmp_path: Path, body: str, problem: str):
    check = check_page(_page(tmp_path, body), require_chromium())
    assert any(found.startswith(problem) for found in check.problems), check.problems


def test_a_rendered_page_is_titled_links_to_the_index_and_opens_offline(tmp_path: Path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("Intro text\n\n# Study: *does* it learn?\n\nWhat the page shows."),
        nbformat.v4.new_code_cell("table", outputs=[nbformat.v4.new_output(
            "display_data", data={"text/html": '<table class="tdiag-table"><tr><td>1</td></tr></table>',
                                  "text/plain": "1"})]),
        nbformat.v4.new_code_cell("figure", outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": PNG, "text/plain": "<Figure>"})]),
    ]
    executed, page = tmp_path / "study.ipynb", tmp_path / "study.html"
    nbformat.write(nb, str(executed))
    render.notebook_to_html(executed, page)
    html = page.read_text()
    assert "<title>Study: *does* it learn?</title>" in html
    assert '<a href="index.html">' in html.split("Intro text")[0]  # above the page's first text
    assert_pages_work([page], require_chromium())


def test_every_study_notebook_starts_its_page_with_a_heading():
    for notebook in sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(str(notebook), as_version=4)
        assert render.page_title(nb, default="") == nb.cells[0].source.splitlines()[0].lstrip("# "), notebook.name
