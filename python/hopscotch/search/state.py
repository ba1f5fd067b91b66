"""Resumable search state (docs/ARCHITECTURE.md §2.6): one file of JSON lines, appended to, never rewritten.

The first line is the header: the format, the config of the search that wrote the file (``SearchConfig.as_dict``,
verbatim) and digests of its inputs (model, data). It is written whole (temporary file, fsync, rename) when the
file is made. Every finished step is then appended as one line and fsync'ed before the search goes on, so a kill
at any moment leaves every finished step on disk and at most a partial last line, which the next run drops. A
search started again with the same config and inputs replays the finished steps and continues from the first
unfinished one. Every decision depends only on recorded results and on data orders seeded by the search's seed and
the step (``runner.step_schedule``: every candidate of a step sees the same order, never one of its own), so it
reaches the same plan.

A resumed search compares configs by ``SearchConfig.identity()`` (the settings that steer the recorded work) and
the input digests. This format is the first one hopscotch releases (docs/ARCHITECTURE.md §4); a file in any other
is refused, naming its format.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import HopscotchError
from .config import ConfigError, SearchConfig

__all__ = ["SearchState", "StateMismatchError", "FORMAT", "data_digest", "read_steps"]

FORMAT = "hopscotch-search-state/2"
_AFRESH = "delete it or choose another state file (--state, state_path) to start afresh"


class StateMismatchError(HopscotchError, ValueError):
    """A state file that this search cannot resume: another search's, or an unreadable one."""


def data_digest(batches: list[dict]) -> str:
    """A short hash of batches (token ids, attention mask and labels): the state file refuses other data."""
    h = hashlib.sha256()
    for b in batches:
        for key in ("input_ids", "attention_mask", "labels"):
            if key in b:
                h.update(b[key].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _normal(value: Any) -> Any:
    """``value`` as a JSON round trip gives it back (tuples -> lists, int keys -> str): what a resumed run reads."""
    return json.loads(json.dumps(value))


class SearchState:
    """The config and inputs of one search and the steps it has finished (``path=None``: in memory only)."""

    def __init__(self, config: SearchConfig, inputs: dict[str, Any], steps: list[dict] | None = None,
                 path: Path | None = None):
        self.config, self.inputs, self.path = config, _normal(inputs), path
        self.steps: list[dict[str, Any]] = []
        self._by_name: dict[str, dict[str, Any]] = {}
        for s in steps or []:
            self._add(s)

    # ---- opening -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike | None, config: SearchConfig, inputs: dict[str, Any]) -> "SearchState":
        """Resume the search at ``path`` if it was written with the same config identity and inputs, or start a
        new one there (the header written at once)."""
        if path is None:
            return cls(config, inputs)
        path = Path(path)
        if not path.exists():
            state = cls(config, inputs, path=path)
            state._write_whole()
            return state
        old_config, old_inputs, steps = _read(path)
        mine, theirs = {**config.identity(), **_normal(inputs)}, {**old_config.identity(), **old_inputs}
        if _normal(mine) != _normal(theirs):
            diff = sorted(k for k in set(mine) | set(theirs) if _normal(mine.get(k)) != _normal(theirs.get(k)))
            details = "; ".join(f"{k}: {theirs.get(k)!r} in the file, {mine.get(k)!r} now" for k in diff)
            raise StateMismatchError(f"search state {path} was written by a search with other settings ({details}); "
                                     + _AFRESH)
        return cls(old_config, old_inputs, steps, path)

    # ---- recording -----------------------------------------------------------------------------------------
    def record(self, step: dict[str, Any]) -> None:
        """Append a finished step (a dict with a unique ``name``) and have it on disk before returning."""
        step = self._add(step)
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(step) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finished(self, name: str) -> dict[str, Any] | None:
        """The finished step called ``name``, or None."""
        return self._by_name.get(name)

    def _add(self, step: dict[str, Any]) -> dict[str, Any]:
        step = _normal(step)
        self.steps.append(step)
        self._by_name.setdefault(step.get("name"), step)
        return step

    def _write_whole(self) -> None:
        header = {"format": FORMAT, "config": self.config.as_dict(), "inputs": self.inputs}
        atomic_write_text(self.path, "".join(json.dumps(x) + "\n" for x in [header, *self.steps]))


def read_steps(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The finished steps of the state file at ``path`` as they stand, for reading a search's work
    (studies, tests); a line being appended is left alone."""
    return _parse(Path(path), repair=False)[1]


def _read(path: Path) -> tuple[SearchConfig, dict, list[dict]]:
    """(config, inputs, steps) of the state at ``path``; a partial last line is cut off the file."""
    head, steps = _parse(path, repair=True)
    try:
        config = SearchConfig.from_dict(head["config"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise StateMismatchError(f"search state {path} has a config this hopscotch cannot read ({exc}); " + _AFRESH) \
            from None
    return config, head.get("inputs", {}), steps


def _parse(path: Path, repair: bool) -> tuple[dict, list[dict]]:
    """(header, steps) of the state file at ``path``. A partial last line (a search killed while
    appending) is skipped, and with ``repair`` cut off the file, so that the next record starts clean."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StateMismatchError(f"search state {path} cannot be read ({exc})") from None
    if not raw.startswith(b'{"format": "' + FORMAT.encode() + b'"'):
        found = _found_format(raw)
        raise StateMismatchError((f"search state {path} is in format {found!r}; this hopscotch reads {FORMAT!r} only; "
                                  if found else f"{path} is not a hopscotch search state (no header of format "
                                  f"{FORMAT!r}); ") + _AFRESH)
    whole = raw[:raw.rfind(b"\n") + 1]  # what follows the last newline is a line being (or killed while) appended
    records = []
    for i, line in enumerate(whole.split(b"\n")[:-1]):
        try:
            records.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StateMismatchError(f"search state {path}, line {i + 1} is not valid JSON ({exc}); " + _AFRESH) \
                from None
    if repair and len(whole) < len(raw):
        os.truncate(path, len(whole))
    return records[0], records[1:]


def _found_format(raw: bytes) -> str | None:
    """The ``format`` a JSON file names (its first line's, or the whole file's), or None."""
    for text in (raw.split(b"\n", 1)[0], raw):
        try:
            head = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(head, dict) and isinstance(head.get("format"), str):
            return head["format"]
    return None
