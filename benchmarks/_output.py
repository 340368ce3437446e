"""Shared output helper of the benchmark scripts: print the JSON record, and keep a copy with ``--out``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], out: str | Path | None) -> None:
    """Print ``result`` as indented JSON; also write it to ``out`` (parents created) if given."""
    text = json.dumps(result, indent=1)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    print(text)
