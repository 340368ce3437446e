"""Every tutorial runs top to bottom in its fast setting, in a Jupyter kernel as the docs show it.

The executed notebook is stored for the docs build (``docs/notebooks.py``), which then shows
these outputs instead of executing the tutorial a second time.
"""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import notebooks  # noqa: E402

TUTORIALS = notebooks.tutorials()


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(path):
    notebooks.execute(path)  # tutorials assert their own claims; a failing cell raises with its traceback
