"""A greedy search's candidates spread over the ranks of a torch.distributed run (torchrun).

Every rank holds the whole model and the same data (rank 0's, sent to the others). Each step's untrained
candidates are dealt out in rounds, one per rank; after a round the records are gathered, in candidate order, so
every rank sees every record and rank 0 appends them to the state file. The screenings and the final scalars are
computed on every rank and rank 0's record is the one kept (so every rank takes the same decisions). A candidate's
training depends only on (seed, step, candidate) and the data, never on the rank that runs it, so the plan is the
one-process plan; a search killed mid-step resumes with any number of ranks (the state names candidates, not
ranks).

Collectives run under the process group's timeout (``init_from_env``). A rank that dies or stops answering makes
the others' next collective fail, and the run ends with one ``DistributedError`` line, never a hang.
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Any, Callable

import torch

from ..errors import HopscotchError
from .config import SearchConfig
from .state import SearchState, StateMismatchError

__all__ = ["Ranks", "LOCAL", "DistributedError", "current", "init_from_env", "open_state", "same_inputs",
           "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 1800.0  # torch's own default for gloo; a collective waits at most one candidate's training


class DistributedError(HopscotchError, RuntimeError):
    """A collective with the other ranks failed: a rank died, hung past the timeout, or the data differ."""


class Ranks:
    """The ranks a search runs on: ``rank`` of ``world``; ``gather`` and ``broadcast`` are no-ops on one process."""

    def __init__(self, rank: int = 0, world: int = 1, timeout_s: float | None = None):
        self.rank, self.world, self.timeout_s = rank, world, timeout_s

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, these: list, work: Callable[[Any], Any]) -> list:
        """``work(x)`` for every x of ``these``, spread over the ranks in rounds of ``world`` (x number i of a
        round on rank i); returns the results in the order of ``these`` on every rank."""
        out: list = []
        for start in range(0, len(these), self.world):
            batch = these[start:start + self.world]
            mine = work(batch[self.rank]) if self.rank < len(batch) else None
            out += self.gather(mine, f"the results of {batch}")[:len(batch)]
        return out

    def gather(self, obj: Any, what: str) -> list:
        """Every rank's ``obj``, in rank order."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        self._collective(lambda: torch.distributed.all_gather_object(out, obj), what)
        return out

    def broadcast(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.main else None]
        self._collective(lambda: torch.distributed.broadcast_object_list(box, src=0), what)
        return box[0]

    def _collective(self, call: Callable[[], None], what: str) -> None:
        try:
            call()
        except Exception as exc:  # gloo / NCCL report a dead peer or a timeout as RuntimeError (DistBackendError)
            wait = f"{self.timeout_s:g} s" if self.timeout_s else "the process group's timeout"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            first = re.sub(r"^\[[^\]]*\]\s*", "", first)[:200]  # gloo's source location
            raise DistributedError(
                f"rank {self.rank} of {self.world}: exchanging {what} with the other ranks failed ({first}): a rank "
                f"died or did not answer within {wait}; every finished candidate is in the state "
                "file: run the search again, with any number of ranks, to resume") from None

    def __repr__(self) -> str:
        return f"Ranks(rank={self.rank}, world={self.world})"


LOCAL = Ranks()


def current() -> Ranks:
    """The ranks of the initialised default process group (one process: ``LOCAL``)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return LOCAL
    return Ranks(dist.get_rank(), dist.get_world_size(), _TIMEOUT_S.get("set"))


_TIMEOUT_S: dict[str, float] = {}  # the timeout init_from_env gave the process group (for the error message)


def init_from_env(timeout_s: float = DEFAULT_TIMEOUT_S) -> Ranks:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...): gloo for CPU
    tensors and NCCL for CUDA ones when CUDA is there, collectives timing out after ``timeout_s`` seconds. Returns
    the ranks (``LOCAL`` when not launched by torchrun, or with one process)."""
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return current()
    if not dist.is_initialized():
        _TIMEOUT_S["set"] = timeout_s
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def same_inputs(ranks: Ranks, batches: list[dict], similarity: list[dict] | None, generic: list[dict] | None):
    """Rank 0's calibration, similarity and generic batches, on every rank (each rank may have made its own, e.g.
    self-distillation answers generated on each rank)."""
    return ranks.broadcast((batches, similarity, generic), "the calibration data")


def open_state(ranks: Ranks, path, config: SearchConfig, inputs: dict) -> SearchState:
    """The search state: opened (or made) by rank 0 alone, which alone writes it; the other ranks hold its
    finished steps in memory. A model that differs between ranks (its config hash) is refused; a state that
    cannot be resumed raises the same ``StateMismatchError`` on every rank."""
    if ranks.world == 1:
        return SearchState.open(path, config, inputs)
    seen = ranks.gather(inputs, "the model and data digests")
    odd = [r for r, x in enumerate(seen) if x != seen[0]]
    if odd:
        raise DistributedError(f"rank {odd[0]} holds another model or data than rank 0 ({seen[odd[0]]} vs "
                               f"{seen[0]}); every rank must load the same model")
    state, answer, error = None, None, None
    if ranks.main:
        try:
            state = SearchState.open(path, config, inputs)
            answer = ("ok", state.steps)
        except Exception as exc:  # told to every rank (they would wait for the state), then raised here
            error = exc
            answer = ("mismatch" if isinstance(exc, StateMismatchError) else "failed", str(exc))
    answer = ranks.broadcast(answer, "the search state")
    if error is not None:
        raise error
    if answer[0] == "mismatch":
        raise StateMismatchError(answer[1])
    if answer[0] == "failed":
        raise HopscotchError(f"rank 0 could not open the search state {path}: {answer[1]}")
    return state if ranks.main else SearchState(config, inputs, answer[1])
