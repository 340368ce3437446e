"""Every tutorial runs top to bottom in its fast setting."""

import runpy
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(path, monkeypatch):
    monkeypatch.setenv("PROBCOMP_FAST", "1")
    monkeypatch.chdir(path.parent)
    runpy.run_path(str(path), run_name="__main__")  # tutorials assert their own claims
