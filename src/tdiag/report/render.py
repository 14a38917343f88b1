"""Execute a study notebook with papermill and render it to an offline HTML page.

The page must open without network access: the `offline` template drops the
require.js / MathJax / mermaid scripts the stock template loads from a CDN, code
cells are hidden, figures are inline PNGs. Papermill's injected-parameters cell is
removed so the HTML does not change from one execution to the next. The page's title is
the notebook's first Markdown heading, and the page links back to the index.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from tdiag import atomic, paths
from tdiag.config import Config

TEMPLATES = Path(__file__).parent / "templates"
HIDDEN_CELL_TAGS = {"injected-parameters", "parameters"}


def execute_notebook(source: Path, executed: Path, parameters: dict, cwd: Path) -> None:
    import papermill

    logging.getLogger("papermill").setLevel(logging.WARNING)
    with atomic.atomic_path(executed) as tmp:
        papermill.execute_notebook(
            str(source), str(tmp), parameters=parameters, kernel_name="python3",
            cwd=str(cwd), progress_bar=False, log_output=False,
        )


HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def page_title(nb, default: str) -> str:
    """The text of the notebook's first Markdown heading (the page's `<title>`), else `default`."""
    for cell in nb.cells:
        found = HEADING.search(cell.source) if cell.cell_type == "markdown" else None
        if found:
            return found.group(1)
    return default


def notebook_to_html(executed: Path, page: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    from traitlets.config import Config as TraitletsConfig

    logging.getLogger("traitlets").setLevel(logging.WARNING)
    settings = TraitletsConfig()
    settings.TagRemovePreprocessor.remove_cell_tags = HIDDEN_CELL_TAGS
    exporter = HTMLExporter(
        config=settings, template_name="offline", extra_template_basedirs=[str(TEMPLATES)],
        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True, embed_images=True,
    )
    exporter.register_preprocessor(TagRemovePreprocessor(config=settings), enabled=True)
    nb = nbformat.read(str(executed), as_version=4)
    nb.metadata["title"] = page_title(nb, default=page.stem)  # the lab template's <title>; without it, "Notebook"
    body, _ = exporter.from_notebook_node(nb)
    atomic.write_text(page, body)


def render_study(cfg: Config, study: str, root: Path = Path(".")) -> Path:
    """Judge the study's claims from its runs (results/<study>/verdicts.json), then run its
    notebook, which opens with those verdicts, and convert it to the page."""
    from tdiag.report import claims

    root = root.resolve()
    claims.write_verdicts(claims.load(root / claims.CLAIMS_FILE), root, study)
    executed = root / paths.executed_notebook(study)
    execute_notebook(root / paths.notebook(study), executed, {"study": study, "root": str(root)}, root)
    page = root / paths.report_page(study)
    notebook_to_html(executed, page)
    return page


def render_index(cfg: Config, root: Path = Path(".")) -> Path:
    from tdiag.report.index import index_html

    page = root / paths.report_index()
    atomic.write_text(page, index_html(cfg, root))
    return page
