"""The append-only record file of a batch: one JSON line per finished item, read back to resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import BatchError


# The record file -----------------------------------------------------------------------------
def read_records(path: str | Path | None, config: Any = None) -> dict[Any, Any]:
    """The records of a JSONL record file by key (``{}`` when there is none).

    Each line is ``{"key": ..., "record": ..., "config": ...}``; a line that does not parse
    (cut short when a run was killed) is skipped, and a line written under another
    ``config`` stops the run (its records would mix two settings)."""
    if path is None or not Path(path).exists():
        return {}
    done: dict[Any, Any] = {}
    want = _jsonable(config)
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key, rec = _key(row["key"]), row["record"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        if row.get("config") != want:
            raise BatchError(
                f"record file {str(path)!r} line {n} was written with other settings "
                f"({row.get('config')!r}, not {want!r}); use another record file or the same settings"
            )
        done[key] = rec
    return done


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v)) if v is not None else None


def _key(k: Any) -> Any:
    """A key as read back from JSON (lists become tuples, so keys stay hashable)."""
    return tuple(_key(x) for x in k) if isinstance(k, list) else k


def _append(path: Path, key: Any, rec: Any, config: Any) -> None:
    line = json.dumps({"key": key, "record": rec, "config": _jsonable(config)})
    with path.open("a") as f:  # one write per line, flushed at once
        f.write(line + "\n")
        f.flush()
