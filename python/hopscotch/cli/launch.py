"""``hopscotch search --nproc N``: the same command on N processes of this machine, launched by torchrun's engine
(torch.distributed.elastic, what ``torchrun --standalone --nproc-per-node N -m hopscotch search ...`` runs).

Each process (rank) runs the command without ``--nproc``; the ranks share each step's candidates
(``search/distributed.py``). A failing run ends with one line: the ranks write their error lines to a folder
this launcher reads (``ERROR_DIR_ENV``) instead of printing them, and the launcher prints the one that says what
went wrong first: a rank's own error (bad input, out of memory ...) before another rank's report that it lost
contact, and a rank killed by a signal when no rank said more.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import uuid
from pathlib import Path

__all__ = ["launch", "report_error", "ERROR_DIR_ENV"]

ERROR_DIR_ENV = "HOPSCOTCH_ERROR_DIR"
_LOST = "lost"  # the kind of a rank's error line that reports losing contact (DistributedError)


def report_error(command: str, line: str, lost_contact: bool) -> bool:
    """Under this launcher, write a rank's error line for the launcher to print (True); else False (print it)."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder:
        return False
    rank = os.environ.get("RANK", "0")
    Path(folder, f"rank{rank}").write_text(f"{_LOST if lost_contact else 'own'}\t{line}\n", encoding="utf-8")
    return True


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def launch(nproc: int, argv: list[str], *, state_hint: str) -> int:
    """Run ``hopscotch <argv>`` (``--nproc`` removed) on ``nproc`` local ranks; return the exit status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the one line below says what happened
    threads = max(1, (os.cpu_count() or 1) // nproc)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"hopscotch-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    with tempfile.TemporaryDirectory(prefix="hopscotch-ranks-") as errors:
        os.environ[ERROR_DIR_ENV] = errors
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # as torchrun does, the cores shared out
        try:
            elastic_launch(config, sys.executable)("-m", "hopscotch", *_without_nproc(argv))
            return 0
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            line, status = _one_line(Path(errors), nproc, rank, failure.exitcode, state_hint)
            print(f"hopscotch search: error: {line}", file=sys.stderr, flush=True)
            return status
        finally:
            os.environ.pop(ERROR_DIR_ENV, None)


def _one_line(errors: Path, nproc: int, first_rank: int, exitcode: int, state_hint: str) -> tuple[str, int]:
    """The line that says what went wrong first, and the exit status."""
    lines = {}
    for f in sorted(errors.glob("rank*"), key=lambda p: int(p.name[4:])):
        kind, _, text = f.read_text(encoding="utf-8").strip().partition("\t")
        lines[int(f.name[4:])] = (kind, text.removeprefix("hopscotch search: error: "))
    own = [text for kind, text in lines.values() if kind != _LOST]
    if own:
        return own[0], 2 if exitcode == 2 else 1
    killed = [r for r in range(nproc) if r not in lines]
    if exitcode < 0 or killed:
        rank = first_rank if exitcode < 0 else killed[0]
        how = f"was killed ({signal.Signals(-exitcode).name})" if exitcode < 0 else "ended without a word"
        return f"rank {rank} of {nproc} {how}; {state_hint}", 1
    return next(iter(lines.values()))[1], 1
