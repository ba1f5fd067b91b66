"""Progress of long work: a tqdm bar on a terminal, plain lines in a log.

On a terminal (stderr a tty, or a notebook) ``Progress`` is a tqdm bar. Written to a file or a pipe, bars would
fill it with redrawn frames, so there it writes plain lines to stderr instead: a bar that stays (``leave=True``:
an evaluation, the search's steps) one line when it ends, ``every_step=True`` (coarse work: the search's steps)
one line per update, and every bar, nested ones included, at most one line per ``LINE_INTERVAL_S`` seconds while
it runs, that interval counted across all bars. ``enabled=False`` (``--quiet``) shows nothing either way.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

__all__ = ["LINE_INTERVAL_S", "Progress", "is_terminal", "track"]

LINE_INTERVAL_S = 30.0  # in a log, the least time between two lines of running bars
_last_line = 0.0  # when the last line of any bar was written (time.monotonic)

T = TypeVar("T")


def is_terminal() -> bool:
    """True where a redrawn bar is what the user sees: stderr is a terminal, or a notebook shows tqdm's widget."""
    if "ipykernel" in sys.modules:
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """``total`` steps of work called ``desc``; ``update(n, **postfix)`` after each, ``close()`` (or ``with``) at
    the end. The postfix (e.g. ``loss="1.2345"``) is shown on the bar or at the end of a line."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, leave: bool = True, every_step: bool = False,
                 unit: str = "it"):
        self.total, self.desc, self.leave, self.every_step, self.unit = total, desc, leave, every_step, unit
        self.n, self.postfix, self.bar, self.lines = 0, {}, None, enabled and not is_terminal()
        self.start = time.monotonic()
        self._shown = -1  # the count the last line showed
        if enabled and not self.lines:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=leave, unit=unit)

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if postfix:
            self.postfix = postfix
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(**postfix)
        elif self.lines:
            now = time.monotonic()
            if self.every_step or now - max(_last_line, self.start) >= LINE_INTERVAL_S:
                self._line(now)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.lines and self.leave and self._shown != self.n:
            self._line(time.monotonic())
        self.lines = False

    def _line(self, now: float) -> None:
        global _last_line
        _last_line, self._shown = now, self.n
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}, {now - self.start:.0f} s{extra}", file=sys.stderr,
              flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], desc: str, *, enabled: bool = True, total: int | None = None, leave: bool = True,
          unit: str = "it") -> Iterator[T]:
    """``items`` one by one, the progress shown as ``Progress`` shows it (``total``: when ``items`` has no len)."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    with Progress(len(items) if total is None else total, desc, enabled=enabled, leave=leave, unit=unit) as p:
        for item in items:
            yield item
            p.update()
