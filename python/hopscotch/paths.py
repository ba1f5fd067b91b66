"""One way to check a path a user gave, and to say what went wrong reading or writing it.

``check_input(path, name, ...)`` refuses a path a command or function is to read, saying what the path is: missing,
a directory where a file is expected (or the reverse), not a regular file, unreadable, or a file of the wrong kind
(by its suffix). ``check_output(path, name, ...)`` refuses a destination that cannot be written: a directory where a
file is to go, a file where a directory is needed above it. ``name`` is how the message calls the path: the
command line's option (``--data``) or a function's argument (``SkipPlan.load: path``).

``reading(name, path)`` and ``writing(name, path)`` wrap the code that reads or writes the file: an ``OSError``
raised meanwhile (no space left, a read-only file system, permission denied ...) becomes a ``PathError`` naming
``name`` and ``path`` and what happened, never the library's own text or the name of a temporary it wrote to.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from .errors import HopscotchError

__all__ = ["PathError", "check_input", "check_output", "json_problem", "os_reason", "reading", "writing"]

# What the OS said, in the words an error line uses (the rest: the OS's own text, lower case).
_REASONS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EDQUOT: "the disk quota is exceeded", errno.ENOENT: "no such file or directory",
            errno.EISDIR: "it is a directory", errno.ENOTDIR: "a part of the path is a file, not a directory",
            errno.EIO: "an input/output error", errno.ENAMETOOLONG: "the name is too long"}


class PathError(HopscotchError, ValueError):
    """A path that is not what was asked for, or a file that could not be read or written."""


def os_reason(exc: OSError) -> str:
    """What an OSError means, without the file name it carries (which may be a temporary's)."""
    if exc.errno is None and not exc.strerror:  # raised by a library with a message of its own
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return _REASONS.get(exc.errno) or (exc.strerror or type(exc).__name__).lower()


def json_problem(exc: ValueError) -> str:
    """Why a file is not the JSON it should be, where the parser stopped (no parser's wording)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start + 1})"
    where = f" at line {exc.lineno}, column {exc.colno}" if hasattr(exc, "lineno") else ""
    return f"not valid JSON{where}: corrupt or truncated"


def _first_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return p
    return Path(".")


def _not_a_dir(path: Path) -> str:
    return f"{path} is a file, not a directory" if path.is_file() else f"{path} is not a directory"


def check_input(path: str | os.PathLike, name: str, *, kind: str = "file", expected: str,
                suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` as a Path, once it is something to read of ``kind`` (``"file"``, ``"dir"`` or ``"any"``: a file or
    a directory); a file must end in one of ``suffixes`` when they are given. Raises ``PathError``
    ``"<name> <path>: no such file; expected <expected>"`` and the like."""
    p = Path(path).expanduser()
    noun = {"file": "file", "dir": "directory"}.get(kind, "file or directory")
    if p.is_symlink() and not p.exists():
        raise PathError(f"{name} {path} is a broken symbolic link; expected {expected}")
    if not p.exists():
        found = _first_existing(p.parent)
        if found.exists() and not found.is_dir():
            raise PathError(f"{name} {path}: {_not_a_dir(found)}; expected {expected}")
        raise PathError(f"{name} {path}: no such {noun}; expected {expected}")
    if kind == "file" and p.is_dir():
        raise PathError(f"{name} {path} is a directory; expected {expected}")
    if kind == "dir" and not p.is_dir():
        raise PathError(f"{name} {_not_a_dir(p)}; expected {expected}")
    if not p.is_dir() and not p.is_file():
        raise PathError(f"{name} {path} is not a regular file (a device, pipe or socket); expected {expected}")
    if p.is_file() and suffixes and p.suffix.lower() not in suffixes:
        raise PathError(f"{name} {path} is not a {' or '.join(suffixes)} file; expected {expected}")
    if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
        raise PathError(f"{name} {path}: permission denied (it cannot be read); expected {expected}")
    return p


def check_output(path: str | os.PathLike, name: str, *, kind: str = "file") -> Path:
    """``path`` as a Path, once a ``kind`` (``"file"`` or ``"dir"``) can be put there: it is not a directory
    when a file is to go there, and nothing above it is a file. Whether an existing one may be replaced is the
    caller's rule (``atomic.check_destination``)."""
    p = Path(path).expanduser()
    if kind == "file" and p.is_dir():
        raise PathError(f"{name} {path} is a directory; expected a file path")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise PathError(f"{name} {path} exists and is not a directory")
    found = _first_existing(p.parent)
    if found.exists() and not found.is_dir():
        raise PathError(f"{name} {path}: {_not_a_dir(found)}")
    return p


@contextlib.contextmanager
def _os_errors(name: str, path, action: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if isinstance(exc, HopscotchError):
            raise
        raise PathError(f"{name} {path}: cannot {action} it: {os_reason(exc)}") from None


def reading(name: str, path: str | os.PathLike) -> contextlib.AbstractContextManager[None]:
    """Meanwhile, an OSError is ``PathError("<name> <path>: cannot read it: <what happened>")``."""
    return _os_errors(name, path, "read")


def writing(name: str, path: str | os.PathLike) -> contextlib.AbstractContextManager[None]:
    """Meanwhile, an OSError is ``PathError("<name> <path>: cannot write it: <what happened>")`` (never the name
    of the temporary the writer used)."""
    return _os_errors(name, path, "write")
