"""The resumable-run rows every study script keeps: one JSON object per line, appended as each piece of work
finishes, read back (keyed) when a run resumes. Study scripts only; the package's benchmarks append CSV rows
(``hopscotch.bench.results.append_results``)."""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Hashable


def read_rows(path: str | os.PathLike, key: Callable[[dict], Hashable]) -> dict:
    """The rows a resumable run has recorded in ``path`` (one JSON object per line, as ``append_row`` writes
    them), keyed by ``key(row)``; a later row replaces an earlier one with the same key. A missing file is an
    empty run. A last line cut short by an interrupted write is dropped with a warning (its work is redone; the
    next ``append_row`` removes it); an unreadable line anywhere else is an error naming the file and line."""
    path = Path(path)
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    rows = {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                warnings.warn(f"{path}: line {i} is cut short (an interrupted write?); ignoring it", stacklevel=2)
                break
            raise ValueError(f"{path}: line {i} is not a JSON object ({e}); fix or remove that line") from e
        rows[key(row)] = row
    return rows


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Append ``row`` to a resumable run's ``path`` as one JSON line, flushed to disk before returning. A last line
    cut short by an interrupted write (unreadable: ``read_rows`` has dropped it) is removed first, one missing only
    its newline is closed, so the file holds whole lines only. The file is locked while it is changed, so runs on
    different tasks may share one work folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    with path.open("r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        data = f.read()
        if data and not data.endswith(b"\n"):
            start = data.rfind(b"\n") + 1
            try:  # whole but for its newline: keep it
                json.loads(data[start:])
                f.write(b"\n")
            except json.JSONDecodeError:
                f.truncate(start)
        f.seek(0, os.SEEK_END)
        f.write((json.dumps(row) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
