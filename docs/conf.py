"""Sphinx configuration of the probcomp documentation (``./dev.sh docs``).

Before Sphinx reads a page, this file
* writes the benchmark pages from ``benchmarks/results/*.json`` (``gen_benchmark_pages.py``),
* writes the API reference page from the ``__all__`` of ``probcomp``, ``probcomp.inference``
  and ``probcomp.models`` (``gen_api_page.py``), and
* puts every tutorial into ``tutorials/`` as an executed notebook (``notebooks.py``: the
  execution the test suite made, when the tutorial and the package are unchanged since).
The other pages are MyST notebooks that myst-nb executes at build time (cached by their code).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen_api_page  # noqa: E402
import gen_benchmark_pages  # noqa: E402
import notebooks  # noqa: E402

import probcomp  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")  # kernels inherit it; 2-D examples gain nothing from threads
os.environ.setdefault("PROBCOMP_FAST", "1")

project = "probcomp"
author = "the probcomp developers"
copyright = "the probcomp developers, MIT licence"
release = version = probcomp.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "_templates", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

nb_execution_mode = "cache"
# keyed by the package source too, so a change to probcomp re-executes the pages
nb_execution_cache_path = str(HERE / "_build" / ".jupyter_cache" / notebooks.package_digest()[:16])
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_timeout = 600
nb_execution_in_temp = True
nb_merge_streams = True

autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "sphinx_book_theme"
html_title = f"probcomp {release}"
html_theme_options = {"show_toc_level": 2, "navigation_with_keys": False}
html_static_path: list[str] = []

gen_benchmark_pages.main(HERE / "benchmarks" / "generated")
gen_api_page.main(HERE / "api" / "index.md")
_tut = HERE / "tutorials"
for _path in notebooks.tutorials():
    import nbformat

    _target = _tut / f"{_path.stem}.ipynb"
    _nb = notebooks.executed(_path)
    _text = nbformat.writes(_nb)
    if not _target.is_file() or _target.read_text() != _text:  # unchanged files keep Sphinx's cache
        _target.write_text(_text)
