"""The one exception bad data raises, with the file and the 1-based line it came from."""

from __future__ import annotations

import os

from ..errors import HopscotchError

__all__ = ["DataError", "where"]


def where(path: str | os.PathLike | None, line: int | None = None) -> str | None:
    """``"file, line N"`` (or just the file, or None) for an error message or an item's ``source``."""
    if path is None:
        return None
    return f"{path}, line {line}" if line is not None else str(path)


class DataError(HopscotchError, ValueError):
    """Calibration or evaluation data that cannot be used.

    The message starts with where the problem is (``"<file>, line <n>: "`` when known) and says what was expected.
    ``source`` holds that location (or None).
    """

    def __init__(self, message: str, source: str | None = None):
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)
