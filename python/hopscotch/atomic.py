"""Writing files so that an interruption never leaves half of one, and cleaning up after the ones that were killed.

A file is written to a temporary name in the same directory, flushed and fsync'ed, then renamed over the
destination (``os.replace`` is atomic on POSIX): a kill at any moment leaves the old file or the new one. A
directory (a converted model, an export) is built under a temporary name and renamed into place at the end.

Every temporary is named ``.<destination name>.hopscotch-partial-<pid>[-<suffix>]`` (``partial_path``). A writer
that is SIGKILLed cannot remove its own, so the next writer of the same destination removes the partials of
processes that no longer exist and says so in one line (a warning on the ``hopscotch`` logger, which Python prints
to stderr when logging is not configured). ``find_partials`` lists them under a directory with the bytes they
hold (``hopscotch info`` reports them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

from .errors import HopscotchError

__all__ = ["MANIFEST", "PARTIAL_TAG", "DestinationError", "Partial", "atomic_directory", "atomic_write_bytes",
           "atomic_write_text", "check_destination", "clean_stale_partials", "find_partials", "finish_directory",
           "manifest_files", "partial_path", "pid_alive", "replace_directory", "start_directory"]

_log = logging.getLogger("hopscotch")

PARTIAL_TAG = ".hopscotch-partial-"
# The marker a directory written by finish_directory(..., manifest=...) carries: what wrote it and every file it
# wrote, so that a later --overwrite replaces only what hopscotch wrote.
MANIFEST = ".hopscotch-written.json"
# .<name>.hopscotch-partial-<pid>[-<suffix>]
_PARTIAL = re.compile(r"^\.(?P<name>.+?)\.hopscotch-partial-(?P<pid>\d+)(?:-[0-9a-z]+)?$")


@dataclass(frozen=True)
class Partial:
    """A temporary a writer left: its path, the destination it was for, the writer's pid and what it holds."""

    path: Path
    destination: Path
    pid: int
    bytes: int
    alive: bool

    def describe(self) -> str:
        state = "its writer is still running" if self.alive else f"process {self.pid} has ended"
        return f"{self.path} ({self.bytes / 1e6:.1f} MB; {state})"


def partial_path(destination: str | os.PathLike, *, unique: bool = False) -> Path:
    """The temporary name a writer of ``destination`` uses (``unique``: one more random suffix, for writers that
    may write the same destination twice at once in one process)."""
    dest = Path(destination)
    suffix = f"-{secrets.token_hex(4)}" if unique else ""
    return dest.parent / f".{dest.name}{PARTIAL_TAG}{os.getpid()}{suffix}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a reused id counts as alive: nothing is removed)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _size(path: Path) -> int:
    try:
        if path.is_symlink() or not path.is_dir():
            return path.lstat().st_size
        total = 0
        for root, _, files in os.walk(path):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, f)).st_size
        return total
    except OSError:
        return 0


def _as_partial(path: Path) -> Partial | None:
    m = _PARTIAL.match(path.name)
    if m is None:
        return None
    pid = int(m.group("pid"))
    return Partial(path, path.parent / m.group("name"), pid, _size(path), pid_alive(pid))


def find_partials(root: str | os.PathLike, *, max_depth: int = 4,
                  skip: tuple[str, ...] = (".git", ".venv", "node_modules", "__pycache__")) -> list[Partial]:
    """The partials under ``root`` (``root`` itself, and subdirectories down to ``max_depth``), sorted by path."""
    root = Path(root)
    found: list[Partial] = []

    def walk(d: Path, depth: int) -> None:
        try:
            entries = list(os.scandir(d))
        except OSError:
            return
        for e in entries:
            p = Path(e.path)
            part = _as_partial(p)
            if part is not None:
                found.append(part)
            elif depth < max_depth and e.is_dir(follow_symlinks=False) and e.name not in skip:
                walk(p, depth + 1)

    if root.is_dir():
        walk(root, 0)
    return sorted(found, key=lambda p: str(p.path))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_partials(destination: str | os.PathLike) -> list[Partial]:
    """Remove the partials of ``destination`` whose writer process has ended; one log line says what went."""
    dest = Path(destination)
    stale = []
    with contextlib.suppress(OSError):
        for e in os.scandir(dest.parent):
            if not e.name.startswith(f".{dest.name}."):
                continue
            part = _as_partial(Path(e.path))
            if part is not None and part.destination.name == dest.name and not part.alive:
                stale.append(part)
    for part in stale:
        _remove(part.path)
    if stale:
        total = sum(p.bytes for p in stale)
        _log.warning(f"removed {len(stale)} partial {'copy' if len(stale) == 1 else 'copies'} of {dest} left by an "
                     f"interrupted run ({total / 1e6:.1f} MB): {', '.join(p.path.name for p in stale)}")
    return stale


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(path)
    tmp = partial_path(path, unique=True)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: remove the temporary file, then let it propagate
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


class DestinationError(HopscotchError, ValueError):
    """A destination a command may not write to (it holds an input, the working directory, or foreign files)."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_destination(out: str | os.PathLike, *, overwrite: bool, inputs: Mapping[str, str | os.PathLike | None],
                      foreign: Callable[[Path], list[str]], name: str = "out", file: bool = False,
                      error: type[Exception] = DestinationError) -> None:
    """Refuse a destination that writing ``out`` (a directory, or one file with ``file=True``) would damage.

    Refused: ``out`` is the working directory or a parent of it; ``out`` holds (or is) one of the command's
    ``inputs`` (name -> path); ``out`` exists, is not empty and ``overwrite`` is False; or ``overwrite`` is True but
    ``foreign(out)`` lists entries hopscotch did not write (``manifest_files``). ``name`` is how the message calls
    ``out`` (``--out`` for the command line).
    """
    out = Path(out)
    real = out.resolve()
    cwd = Path.cwd().resolve()
    if not file and _inside(cwd, real):
        raise error(f"{name} {out} is the working directory or a parent of it; write to a new directory")
    for what, path in inputs.items():
        if path is not None and _inside(Path(path).resolve(), real):
            raise error(f"{name} {out} {'is' if Path(path).resolve() == real else 'holds'} the {what} {path}: "
                        f"writing there would destroy it; choose another {name}")
    if not out.exists() and not out.is_symlink():
        return
    if file:
        if out.is_dir():
            raise error(f"{name} {out} is a directory; expected a file path")
    elif not out.is_dir():
        raise error(f"{out} exists and is not a directory")
    elif not any(out.iterdir()):
        return
    if not overwrite:
        what = "exists" if file else "is not empty"
        hint = "--overwrite" if name.startswith("--") else "overwrite=True (--overwrite)"
        raise error(f"{out} {what}; pass {hint} to replace it")
    others = foreign(out)
    if others:
        shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
        raise error(f"{name} {out} holds {'files' if not file else 'a file'} hopscotch did not write ({shown}); "
                    "overwrite replaces only what hopscotch wrote: choose another path, or remove it yourself")


def manifest_files(folder: str | os.PathLike) -> dict | None:
    """The MANIFEST of a directory written by finish_directory (None when it has none or it is unreadable)."""
    import json

    try:
        doc = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("files"), list) else None


def _write_manifest(tmp: Path, writer: str) -> None:
    import json

    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    (tmp / MANIFEST).write_text(json.dumps({"writer": writer, "files": files}, indent=1))


def start_directory(path: str | os.PathLike) -> Path:
    """A fresh temporary directory to build ``path`` in (stale partials of ``path`` are removed first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(path)
    tmp = partial_path(path, unique=True)
    tmp.mkdir()
    return tmp


def finish_directory(tmp: Path, path: str | os.PathLike, *, manifest: str | None = None) -> None:
    """Put the built ``tmp`` in place of ``path`` (whatever was there goes; the caller checked it may), first
    writing the MANIFEST of what it holds when ``manifest`` names the writer."""
    path = Path(path)
    if manifest is not None:
        _write_manifest(tmp, manifest)
    old = None
    if path.exists():
        old = partial_path(path, unique=True)  # a kill from here on leaves a partial, cleaned next time
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        _remove(old)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it becomes ``path``, on any error it is removed.

    If ``path`` appears meanwhile (another process finished the same work first), the new copy is discarded and
    the existing one kept.
    """
    path = Path(path)
    tmp = start_directory(path)
    try:
        yield tmp
        try:
            tmp.rename(path)
        except OSError:
            if not path.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def replace_directory(path: str | os.PathLike, *, manifest: str | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` (see ``finish_directory``),
    on any error it is removed and ``path`` is left as it was."""
    tmp = start_directory(path)
    try:
        yield tmp
        finish_directory(tmp, path, manifest=manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
