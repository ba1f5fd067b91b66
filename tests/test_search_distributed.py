"""The candidate-parallel search on 2 CPU ranks (gloo, launched by torchrun's engine): the same plan and the same
state records as one process, for the faithful and the fast search; a state left by a search killed mid-step
resumes on another number of ranks to the same plan; a rank that dies or hangs ends the run with one line.

Each test launches 2 processes (about 20 s each here, most of it importing torch and transformers twice)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hopscotch import SkipPlan
from hopscotch.search.state import read_steps
from tests.helpers import ROOT
from tests.helpers.cli_testing import run_cli
from tests.helpers.distributed_search import run_search

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py; the ranks run one thread each too

METHODS = ("hopscotch", "hopscotch-fast")


def _env() -> dict:
    path = os.pathsep.join([str(ROOT / "python"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _torchrun(out: Path, *args, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """tests/helpers/distributed_search.py on ``nproc`` ranks; a run that hangs fails the test (``timeout``)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "tests.helpers.distributed_search", str(out), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _records(path: Path) -> list[dict]:
    """The state's records without their wall times (the one thing that may differ)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_steps(path)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The one-process searches (plan and state file) of tests/helpers/distributed_search.py, 1 thread."""
    out = tmp_path_factory.mktemp("one_process")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {m: (run_search(m, state_path=out / f"{m}.state.json"), out / f"{m}.state.json") for m in METHODS}
    finally:
        torch.set_num_threads(saved)


def _same_plan(a: SkipPlan, b: SkipPlan) -> None:
    assert a.skipped_attention == b.skipped_attention
    assert torch.equal(a.scalar_tensor(), b.scalar_tensor())  # bit for bit
    assert [s["scores"] for s in a.provenance["steps"]] == [s["scores"] for s in b.provenance["steps"]]
    assert a.provenance["final_losses"] == b.provenance["final_losses"]
    assert a.provenance["token_passes"] == b.provenance["token_passes"]


def test_two_ranks_search_as_one_process_and_resume_a_killed_one(reference, tmp_path):
    """On 2 ranks: fresh searches, and one-process searches killed mid-step 1 (the state cut there, a half-written
    line after) resumed; each equals the one-process search, plan and state records."""
    for method in METHODS:
        _, state = reference[method]
        lines = state.read_text().splitlines(keepends=True)
        step1 = [i for i, line in enumerate(lines) if '"name": "step1/' in line]
        cut = step1[0] + 2 if method == "hopscotch" else step1[0] + 1  # mid-step: some of step 1 done
        (tmp_path / f"resumed-{method}.state.json").write_text("".join(lines[:cut]) + lines[cut][:25])
    run = _torchrun(tmp_path, *METHODS, *(f"resumed-{m}={m}" for m in METHODS))
    assert run.returncode == 0, run.stderr[-3000:]
    for method in METHODS:
        plan, state = reference[method]
        for name in (method, f"resumed-{method}"):
            for rank in (0, 1):
                _same_plan(SkipPlan.load(tmp_path / f"{name}-rank{rank}.json"), plan)
            # rank 0 alone wrote the state: the same records in the same order
            assert _records(tmp_path / f"{name}.state.json") == _records(state)
    # the fast search trained its shortlists side by side (several candidates in some step)
    fast_steps = reference["hopscotch-fast"][0].provenance["steps"]
    assert max(s["shortlist"]["finalists"] for s in fast_steps) >= 2


def test_hung_rank_times_out_with_one_line(tmp_path):
    """Rank 1 stops answering mid-step 1: rank 0's collective times out (5 s) and says so in one line."""
    run = _torchrun(tmp_path, "hopscotch", "--hang", "1:1:3", "--timeout", 5, timeout=120)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("rank ")]
    assert len(lines) == 1, run.stderr[-3000:]
    assert lines[0].startswith("rank 0: error: rank 0 of 2: exchanging the results of")
    assert "did not answer within 5 s" in lines[0] and "run the search again, with any number of ranks" in lines[0]
    assert len(read_steps(tmp_path / "hopscotch.state.json")) >= 6  # step 0 (6 candidates) was kept


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += [int(child), *_children(int(child))]
    return out


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"HOPSCOTCH_ERROR_DIR" in b"\0".join(env):
            return pid
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks' processes in /proc (Linux)")
def test_killed_rank_ends_search_with_one_line_and_resumes_on_one(tiny_dir, tmp_path, capsys):
    """`hopscotch search --nproc 2` with rank 1 killed (SIGKILL) mid-search: one line, exit 1; the same command
    on one process then resumes to the plan of an uninterrupted one-process search."""
    args = ["search", "--model", tiny_dir, "--task", "arc_easy", "--calibration", 24, "--batch-size", 1,
            "--evaluation", 0, "--max-new-tokens", 4, "--method", "hopscotch", "--num-skip", 2, "--final-epochs", 1,
            "--generic-weight", 0, "--no-eval", "--no-speed", "--quiet"]
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "ref.json")
    assert code == 0, err
    plan, state = tmp_path / "p.json", tmp_path / "p.state.json"
    proc = subprocess.Popen([sys.executable, "-m", "hopscotch", *map(str, args), "--out", str(plan), "--nproc", "2"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (state.is_file() and state.read_text().count('"step0/cand') >= 2):  # the first round is in
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.02)
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1
    # one line from hopscotch (the libraries' own import-time warnings aside), no traceback, no torchrun report
    lines = [line for line in err.splitlines() if "hopscotch" in line]
    assert len(lines) == 1 and "Traceback" not in err and "ChildFailedError" not in err, err[-3000:]
    assert lines[0] == (f"hopscotch search: error: rank 1 of 2 was killed (SIGKILL); every finished step is saved in "
                        f"{state}; run the same command again to resume (any --nproc)")
    done = sum('"name": "step' in line for line in state.read_text().splitlines())
    assert 2 <= done < 4 + 3  # mid-search: the first round kept, not every candidate
    code, _, err = run_cli(capsys, *args, "--out", plan)
    assert code == 0, err
    ref, got = SkipPlan.load(tmp_path / "ref.json"), SkipPlan.load(plan)
    assert got.skipped_attention == ref.skipped_attention and torch.equal(got.scalar_tensor(), ref.scalar_tensor())
    steps = [[{k: v for k, v in s.items() if k != "seconds"} for s in json.loads(p.read_text())["provenance"]["steps"]]
             for p in (plan, tmp_path / "ref.json")]
    assert steps[0] == steps[1]
