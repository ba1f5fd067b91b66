"""The command line when the OS refuses a user's file (issue 48): no space left, a read-only file system, permission
denied. Each is said as what happened to that file and the option that named it, in one line, never as the
library's own text nor the name of the temporary the writer used, and nothing half-written is left behind.

The OS's refusals are made here by letting the call that would make them raise the OSError the OS raises (the
tests run as root on CI machines, where permissions do not refuse anything); ``/sys`` refusing a write for real is
in tests/test_bad_input.py. Part of the bad-input suite (docs/BAD_INPUT.md).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hopscotch.atomic import PARTIAL_TAG
from tests.helpers.cli_testing import run_cli, save_tiny_llama_dir


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    from hopscotch import SkipPlan
    from hopscotch.models import load_model

    root = tmp_path_factory.mktemp("os")
    save_tiny_llama_dir(root / "tiny")
    SkipPlan.for_model(load_model(root / "tiny", with_tokenizer=False), [1]).save(root / "p.json")
    import json

    (root / "qa.jsonl").write_text("".join(json.dumps({"prompt": f"{i} plus {i}?", "answer": f" {2 * i}"}) + "\n"
                                           for i in range(8)))
    return root


@pytest.fixture
def work(inputs, tmp_path, monkeypatch) -> Path:
    """A fresh working directory holding the inputs (symbolic links: nothing in it can change them)."""
    for p in inputs.iterdir():
        (tmp_path / p.name).symlink_to(p)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _os_error(code: int, path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


def _one_line(capsys, *argv) -> str:
    code, out, err = run_cli(capsys, *argv)
    lines = [line for line in err.splitlines() if " error: " in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert PARTIAL_TAG not in lines[0] and "Errno" not in lines[0], lines[0]
    return lines[0]


def _left(work: Path) -> set[str]:
    return {p.name for p in work.iterdir() if not p.is_symlink()}


def test_export_when_the_disk_is_full(work, capsys, monkeypatch):
    """The disk fills while the weights are written: the message names --out, the partial export is removed."""
    import safetensors.torch

    def full(tensors, filename, metadata=None):
        raise _os_error(errno.ENOSPC, filename)  # what writing a shard raises on a full disk

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    line = _one_line(capsys, "export", "--model", "tiny", "--plan", "p.json", "--out", "exp", "--quiet")
    assert line == "hopscotch export: error: --out exp: cannot write it: no space left on the device"
    assert _left(work) == set()


def test_export_to_a_read_only_file_system(work, capsys, monkeypatch):
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if PARTIAL_TAG in self.name:
            raise _os_error(errno.EROFS, self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    line = _one_line(capsys, "export", "--model", "tiny", "--plan", "p.json", "--out", "exp", "--quiet")
    assert line.endswith("--out exp: cannot write it: the file system is read-only")
    assert _left(work) == set()


def test_search_that_cannot_save_its_plan(work, capsys, monkeypatch):
    """The plan's file cannot be created (permission denied): --out is named, the state is kept for a rerun."""
    import hopscotch.atomic as atomic

    def refuse(path, mode="r", *args, **kwargs):
        if PARTIAL_TAG in str(path) and Path(path).name.startswith(".out."):
            raise _os_error(errno.EACCES, path)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", refuse, raising=False)
    line = _one_line(capsys, "search", "--model", "tiny", "--num-skip", "1", "--method", "random", "--objective",
                     "nll", "--data", "qa.jsonl", "--calibration", "2", "--evaluation", "0", "--no-eval",
                     "--no-speed", "--quiet", "--out", "out.json", "--state", "s.json")
    assert line == "hopscotch search: error: --out out.json: cannot write it: permission denied"
    assert _left(work) == {"s.json"}


def test_eval_of_a_plan_that_cannot_be_read(work, capsys, monkeypatch):
    """Unreadable for the user (os.access), or refused by the OS when read: --plan is named either way."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p).name != "p.json" and real_access(p, mode, **kw))
    line = _one_line(capsys, "eval", "--plan", "p.json")
    assert line.startswith("hopscotch eval: error: --plan p.json: permission denied (it cannot be read); expected")
    monkeypatch.setattr(os, "access", real_access)
    real_read = Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name == "p.json":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert _one_line(capsys, "eval", "--plan", "p.json") == \
        "hopscotch eval: error: --plan p.json: cannot read it: permission denied"


def test_eval_of_data_that_cannot_be_read(work, capsys, monkeypatch):
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "qa.jsonl":
            raise _os_error(errno.EIO, self)
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    line = _one_line(capsys, "eval", "--model", "tiny", "--data", "qa.jsonl", "--quiet")
    assert line == "hopscotch eval: error: --data qa.jsonl: cannot read it: an input/output error"
