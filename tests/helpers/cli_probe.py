"""Run many `hopscotch` command lines in ONE subprocess and report what each did, for tests/test_bad_input.py.

    python tests/helpers/cli_probe.py WORKDIR < cases.json > results.json

``cases.json`` is a list of argv lists. Each runs through ``hopscotch.cli.main`` (the console script's own
function) with the working directory WORKDIR, its file descriptors 1 and 2 captured (so library output and warnings
are caught too), and an exception escaping ``main`` recorded as a traceback. Per case the result holds the exit
status, stdout, stderr, the escaped traceback (None when nothing escaped) and WORKDIR's contents (relative path ->
[size, mtime_ns]) before and after. Importing torch and transformers once for dozens of cases keeps the probe
suite fast; tests/test_bad_input.py also runs a few cases through the real ``hopscotch`` executable.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path


def snapshot(root: Path) -> dict[str, list[int]]:
    """Every file and directory under ``root`` (relative path -> [size, mtime_ns]; directories size -1)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = [-1 if p.is_dir() else st.st_size, st.st_mtime_ns]
    return out


@contextlib.contextmanager
def captured_fds():
    """Redirect fds 1 and 2 to temporary files; yields a dict filled with their text on exit."""
    result = {}
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    files = {fd: tempfile.TemporaryFile(mode="w+b") for fd in (1, 2)}
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, f in files.items():
        os.dup2(f.fileno(), fd)
    try:
        yield result
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            files[fd].seek(0)
            result[fd] = files[fd].read().decode("utf-8", "replace")
            files[fd].close()


def run_case(argv: list[str], root: Path) -> dict:
    from hopscotch.cli import main

    before = snapshot(root)
    escaped, code = None, None
    with captured_fds() as out:
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's errors and --help
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # what the console script would print as a traceback
            escaped = traceback.format_exc()
            code = 1
    return {"argv": argv, "code": code, "stdout": out[1], "stderr": out[2], "escaped": escaped,
            "before": before, "after": snapshot(root)}


def main() -> None:
    root = Path(sys.argv[1]).resolve()
    cases = json.loads(sys.stdin.read())
    os.chdir(root)
    import hopscotch.cli  # noqa: F401  (imported once, outside the cases' capture)

    results = [run_case([str(a) for a in argv], root) for argv in cases]
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    main()
