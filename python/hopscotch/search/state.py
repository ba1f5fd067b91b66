"""Resumable search state (docs/ARCHITECTURE.md §2.6).

Every finished step of a search is written to a JSON file before the next step starts (write to a temporary
file, fsync, rename: a kill at any moment leaves either the old or the new file, never half of one). A search
started again with the same settings replays the finished steps from the file and continues from the first
unfinished one; because every step is seeded by (seed, step, candidate), it reaches the same plan.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text

__all__ = ["SearchState", "StateMismatchError"]

_FORMAT = "hopscotch-search-state/1"


class StateMismatchError(ValueError):
    """A state file exists for a search with other settings: resuming it would mix two searches."""


@dataclass
class SearchState:
    """Settings of one search and the steps it has finished."""

    settings: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None

    @classmethod
    def open(cls, path: str | os.PathLike | None, settings: dict[str, Any]) -> "SearchState":
        """Resume the search at ``path`` if it has the same settings, or start a new one there.

        ``path=None`` keeps the state in memory only (nothing is resumable).
        """
        settings = json.loads(json.dumps(settings))  # normalise (tuples -> lists) for comparison
        if path is None:
            return cls(settings)
        path = Path(path)
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise StateMismatchError(f"search state {path} is not valid JSON ({exc}); delete it to start over")
            if data.get("format") != _FORMAT:
                raise StateMismatchError(f"{path} is not a hopscotch search state (format {data.get('format')!r})")
            old = data.get("settings", {})
            if old != settings:
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                details = "; ".join(f"{k}: {old.get(k)!r} in the file, {settings.get(k)!r} now" for k in diff)
                raise StateMismatchError(f"search state {path} was written by a search with other settings "
                                         f"({details}); use another state path or delete it to start over")
            return cls(settings, list(data.get("steps", [])), path)
        state = cls(settings, [], path)
        state.save()
        return state

    def save(self) -> None:
        if self.path is None:
            return
        atomic_write_text(self.path, json.dumps({"format": _FORMAT, "settings": self.settings, "steps": self.steps},
                                                indent=1))

    def record(self, step: dict[str, Any]) -> None:
        """Append a finished step and write it to disk before returning."""
        self.steps.append(json.loads(json.dumps(step)))
        self.save()

    def finished(self, name: str) -> dict[str, Any] | None:
        """The finished step called ``name`` (steps carry a unique ``name``), or None."""
        for s in self.steps:
            if s.get("name") == name:
                return s
        return None
