"""The resumable-run rows every study script in experiments/ keeps (experiments/rows.py: read_rows, append_row)."""

import importlib.util
import json
import warnings

import pytest

from tests.helpers import ROOT

_spec = importlib.util.spec_from_file_location("study_rows", ROOT / "experiments" / "rows.py")
_rows = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rows)
append_row, read_rows = _rows.append_row, _rows.read_rows


def test_rows_round_trip_and_later_row_wins(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    assert read_rows(path, lambda r: r["key"]) == {}
    append_row(path, {"key": "a", "v": 1})
    append_row(path, {"key": "b", "v": 2})
    append_row(path, {"key": "a", "v": 3})
    rows = read_rows(path, lambda r: r["key"])
    assert rows == {"a": {"key": "a", "v": 3}, "b": {"key": "b", "v": 2}}
    assert path.read_text().count("\n") == 3


def test_interrupted_last_line_is_dropped_and_the_next_row_stays_readable(tmp_path):
    path = tmp_path / "rows.jsonl"
    append_row(path, {"key": "a", "v": 1})
    with path.open("a") as f:  # a write cut short: no closing brace, no newline
        f.write(json.dumps({"key": "b", "v": 2})[:9])
    with pytest.warns(UserWarning, match="line 2 is cut short"):
        assert set(read_rows(path, lambda r: r["key"])) == {"a"}
    append_row(path, {"key": "c", "v": 3})  # the fragment goes; the file holds whole lines again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_rows(path, lambda r: r["key"]) == {"a": {"key": "a", "v": 1}, "c": {"key": "c", "v": 3}}
    assert path.read_text().count("\n") == 2


def test_a_bad_line_before_the_last_is_an_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"key": 1}\nnot json\n{"key": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON object"):
        read_rows(path, lambda r: r["key"])


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"key": 1}\n\n{"key": 2}\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(read_rows(path, lambda r: r["key"])) == {1, 2}


def test_a_last_row_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"key": 1}\n{"key": 2}')
    assert set(read_rows(path, lambda r: r["key"])) == {1, 2}
    append_row(path, {"key": 3})
    assert set(read_rows(path, lambda r: r["key"])) == {1, 2, 3}


def _append_many(path, who, n, start):  # in a spawned child, which imports this module (and so rows.py) afresh
    start.wait(60)  # both children write at once, not one after the other's start-up
    for i in range(n):
        append_row(path, {"key": f"{who}-{i}", "pad": "x" * 2000})


def test_two_runs_appending_to_one_file_lose_no_row(tmp_path):
    """Runs on different tasks share one work folder (the faithful searches, one per task, side by side)."""
    import multiprocessing as mp

    path = tmp_path / "rows.jsonl"
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_append_many, args=(str(path), who, 200, start)) for who in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = read_rows(path, lambda r: r["key"])
    assert len(rows) == 400
    assert path.read_text().count("\n") == 400
