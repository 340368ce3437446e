"""The documentation site builds with warnings as errors, and its API reference covers the public names.

The build executes the MyST pages (their code cells are the docs' snippets) and shows the
tutorials as executed in their fast setting: an execution the tutorial tests stored under the
same key (``docs/notebooks.py``), or a new one.  ``conftest.py`` runs this test last, after the
tutorial tests.
"""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_docs_snippets_are_executed_cells():
    """A plain Python fence in a page would not run: snippets are code cells of MyST notebooks."""
    for page in DOCS.rglob("*.md"):
        if "_build" in page.parts or "generated" in page.parts:
            continue
        text = page.read_text()
        assert "```python" not in text, f"{page}: use a ```{{code-cell}} python cell"
        if "{code-cell}" in text:
            assert text.startswith("---\nfile_format: mystnb"), f"{page} has code cells but is not a notebook"


@pytest.mark.slow
def test_docs_build_with_warnings_as_errors(tmp_path):
    out = tmp_path / "html"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    warnings = [ln for ln in proc.stderr.splitlines() if "WARNING" in ln or "ERROR" in ln]
    warnings = [ln for ln in warnings if "Kernel is running over TCP" not in ln]
    assert proc.returncode == 0 and not warnings, "\n".join(warnings) or proc.stderr[-4000:]
    html = {p.name: p.read_text() for p in (out / "api" / "generated").glob("*.html")}
    everything = "\n".join(html.values()) + (out / "api" / "index.html").read_text()
    for ns in ("probcomp", "probcomp.inference", "probcomp.models"):
        for name in importlib.import_module(ns).__all__:
            full = f"{ns}.{name}"
            ids = (f'id="{full}"', f'id="module-{full}"')
            assert f"{full}.html" in html or any(i in everything for i in ids), f"{full} has no API entry"
    for tutorial in sorted((ROOT / "tutorials").glob("[0-9]*.py")):
        page = (out / "tutorials" / f"{tutorial.stem}.html").read_text()
        assert "cell_output" in page, f"{tutorial.name} shows no outputs"
    assert re.search(
        r"<img[^>]+product2d|W2", (out / "benchmarks" / "generated" / "product2d.html").read_text()
    )
