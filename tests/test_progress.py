"""Progress in a log (hopscotch/progress.py): with stderr not a terminal, long work writes plain lines (one per
step of coarse work, one per interval otherwise, one when a lasting bar ends) and never a redrawn bar; on a terminal
it is tqdm's bar; disabled (--quiet), nothing."""

from __future__ import annotations

import pytest

import hopscotch.progress as progress_mod
from hopscotch.progress import Progress, track
from hopscotch.search import search
from tests.helpers.model_testing import calibration_batches as _batches, tiny_model


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", c)
    monkeypatch.setattr(progress_mod, "_last_line", 0.0)
    monkeypatch.setattr(progress_mod, "is_terminal", lambda: False)
    return c


def test_a_log_gets_one_line_per_interval_and_one_at_the_end(clock, capsys):
    with Progress(100, "nll", unit="batch") as bar:
        for i in range(100):
            clock.now += 1.0  # 100 s in all: lines at 30, 60 and 90 s, then the end
            bar.update(loss=f"{i:.1f}")
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == ["nll: 30/100 batch, 30 s, loss=29.0", "nll: 60/100 batch, 60 s, loss=59.0",
                                    "nll: 90/100 batch, 90 s, loss=89.0", "nll: 100/100 batch, 100 s, loss=99.0"]
    assert "\r" not in out.err


def test_nested_bars_share_the_interval_and_a_passing_bar_leaves_no_line(clock, capsys):
    outer = Progress(3, "search", every_step=True, unit="steps")
    for step in range(3):
        for _ in track(range(50), f"step {step}", leave=False, unit="batch"):
            clock.now += 1.0  # each inner bar runs 50 s
        outer.update(picked=step)
    outer.close()
    lines = capsys.readouterr().err.splitlines()
    # every outer step has its line; inner bars print at most one line per 30 s of all bars, none at their end
    assert [x for x in lines if x.startswith("search")] == [
        "search: 1/3 steps, 50 s, picked=0", "search: 2/3 steps, 100 s, picked=1", "search: 3/3 steps, 150 s, picked=2"]
    assert [x for x in lines if x.startswith("step")] == ["step 0: 30/50 batch, 30 s", "step 1: 30/50 batch, 30 s",
                                                          "step 2: 30/50 batch, 30 s"]


def test_disabled_progress_writes_nothing(clock, capsys):
    for _ in track(range(5), "quiet", enabled=False):
        clock.now += 100.0
    with Progress(2, "quiet", enabled=False, every_step=True) as bar:
        bar.update()
        bar.update()
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    monkeypatch.setattr(progress_mod, "is_terminal", lambda: True)
    bar = Progress(4, "bar")
    assert bar.bar is not None and not bar.lines
    bar.update(2, loss="1.0")
    assert bar.bar.n == 2 and bar.bar.postfix == "loss=1.0"
    bar.close()
    assert bar.bar is None


def test_a_search_logged_to_a_file_writes_lines_not_bars(capsys):
    """The search's own progress under pytest (stderr captured, not a terminal): one line per greedy step with the
    pick, and no carriage-return frames of nested bars."""
    plan = search(tiny_model("llama", num_layers=4), _batches(n=2), method="hopscotch", num_skip=2, final_epochs=1,
                  generic_weight=0, progress=True)
    err = capsys.readouterr().err
    steps = [x for x in err.splitlines() if x.startswith("hopscotch search: ")]
    assert [x.split(",")[0] for x in steps] == ["hopscotch search: 1/2 steps", "hopscotch search: 2/2 steps"]
    picks = [int(x.split("picked=")[1].split(",")[0]) for x in steps]
    assert picks == [s["picked"] for s in plan.provenance["steps"]]
    assert "\r" not in err and "%|" not in err
