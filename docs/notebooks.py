"""Execute the tutorials once, for the test suite and the documentation build alike.

A tutorial (``tutorials/NAME.py``, jupytext percent format) is converted to a notebook and
run by a Jupyter kernel in its fast setting (``PROBCOMP_FAST=1``, one torch thread).  The
executed notebook is stored as ``docs/_build/executed/NAME.ipynb`` under a key: the hash of
the tutorial's source, of every source file and zoo record of the package, and of the
setting.  ``tests/test_tutorials.py`` executes through :func:`execute`; the docs build
(``docs/conf.py``) calls :func:`executed` for each tutorial and re-runs only those whose key
changed, so one test run executes every tutorial once, and the pages show exactly what the
test ran.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
STORE = ROOT / "docs" / "_build" / "executed"
PACKAGE_DIRS = ("probcomp", "inference", "models")
FAST_ENV = {
    "PROBCOMP_FAST": "1",
    "OMP_NUM_THREADS": "1",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
}


def tutorials() -> list[Path]:
    """Every tutorial, in order."""
    return sorted(TUTORIALS.glob("[0-9]*.py"))


def package_digest() -> str:
    """A hash of every source file and zoo record of the package."""
    h = hashlib.sha256()
    for d in PACKAGE_DIRS:
        for p in sorted((ROOT / d).rglob("*")):
            if p.is_file() and p.suffix in (".py", ".json") and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(ROOT)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()


def key(path: Path, digest: str | None = None) -> str:
    """What an execution of ``path`` depends on: its source, the package's source, the setting."""
    h = hashlib.sha256(path.read_bytes())
    h.update((digest or package_digest()).encode())
    h.update(repr(sorted(FAST_ENV.items())).encode())
    return h.hexdigest()


def _stored(path: Path, k: str):
    import nbformat

    out = STORE / f"{path.stem}.ipynb"
    if not out.is_file():
        return None
    try:
        nb = nbformat.read(out, as_version=4)
    except Exception:  # a torn or foreign file: execute again
        return None
    return nb if nb.metadata.get("probcomp", {}).get("key") == k else None


def execute(path: Path, *, timeout: int = 900):
    """Run the tutorial ``path`` in a fresh kernel (fast setting) and store the executed notebook.

    Raises ``nbclient.exceptions.CellExecutionError`` (with the cell's traceback) when a cell
    fails, for instance when a tutorial's own assertion does not hold.
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    k = key(path)
    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    saved = {v: os.environ.get(v) for v in FAST_ENV}
    os.environ.update(FAST_ENV)  # the kernel inherits this environment
    try:
        with tempfile.TemporaryDirectory() as cwd:  # figures a tutorial saves land here
            NotebookClient(
                nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}}
            ).execute()
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old
    nb.metadata["probcomp"] = {"key": k, "source": f"tutorials/{path.name}"}
    nb.metadata["mystnb"] = {"execution_mode": "off"}  # the docs build shows these outputs as they are
    STORE.mkdir(parents=True, exist_ok=True)
    tmp = STORE / f".{path.stem}.{os.getpid()}.ipynb"
    nbformat.write(nb, tmp)
    tmp.replace(STORE / f"{path.stem}.ipynb")  # atomic: a concurrent reader sees old or new
    return nb


def executed(path: Path):
    """The executed notebook of ``path``: the stored one when its key matches, else a new run."""
    return _stored(path, key(path)) or execute(path)
