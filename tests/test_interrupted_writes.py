"""Killed writers (issue 36): a writer SIGKILLed mid-write leaves a partial named ``.NAME.hopscotch-partial-PID``;
``hopscotch info`` reports it with its bytes; the next run of the same writer removes it, says so in one line, and
leaves nothing behind but its result. Each writer runs in a subprocess that is killed once it has written part of
its output (an export's first shard, a plan's scalars, a model conversion's weights)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


# Runs one writer; with HOLD set, the writer stops (forever) right after writing part of its output and touches
# the file HOLD, so the test can kill it there.
WRITER = r"""
import os, sys, time
from pathlib import Path
hold = os.environ.get("HOLD")

def stop_here():
    if hold:
        Path(hold).write_text(str(os.getpid()))
        time.sleep(600)

mode, work = sys.argv[1], Path(sys.argv[2])
if mode == "export":
    import safetensors.torch
    real = safetensors.torch.save_file
    def save_file(*a, **k):
        real(*a, **k)
        stop_here()
    safetensors.torch.save_file = save_file
    from hopscotch import SkipPlan, export_model
    from hopscotch.models import load_model
    model = load_model(work / "tiny", with_tokenizer=False)
    export_model(model, SkipPlan.load(work / "p.json"), work / "exp", max_shard_size="20KB")
elif mode == "plan":
    import hopscotch.atomic as atomic
    real = atomic.os.fsync
    def fsync(fd):
        real(fd)
        stop_here()
    atomic.os.fsync = fsync
    import torch
    from transformers import LlamaConfig
    from hopscotch import SkipPlan
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=97)
    SkipPlan.for_model(config, [1], [], torch.ones(4, 4)).save(work / "p.json")
elif mode == "convert":  # the packaged model's first conversion, into $HOPSCOTCH_CACHE
    import transformers
    real = transformers.PreTrainedModel.save_pretrained
    def save_pretrained(self, *a, **k):
        real(self, *a, **k)
        stop_here()
    transformers.PreTrainedModel.save_pretrained = save_pretrained
    from hopscotch.models import load_model
    load_model(None, with_tokenizer=False)
"""


def _env(**extra) -> dict:
    return {**os.environ, **extra}


def _kill_mid_write(mode: str, work: Path, env: dict) -> int:
    """Start the writer, wait until it holds a partial output, SIGKILL it; returns its pid."""
    hold = work.parent / f"{work.name}-{mode}.hold"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, mode, str(work)], env={**env, "HOLD": str(hold)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not hold.exists():
        if proc.poll() is not None:
            pytest.fail(f"the writer ended before holding: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the writer never reached its hold point")
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    hold.unlink()
    return proc.pid


def _rerun(mode: str, work: Path, env: dict) -> str:
    proc = subprocess.run([sys.executable, "-c", WRITER, mode, str(work)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def _info_partials(where: Path, env: dict) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "hopscotch", "info", "--json", "--partials-in", str(where)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [p for p in json.loads(proc.stdout)["partials"] if Path(p["path"]).is_relative_to(where)]


def _check_cycle(mode: str, work: Path, where: Path, name: str, expected: set[str], env: dict,
                 info: bool = True) -> None:
    """Kill the writer mid-write, see the partial reported (by `hopscotch info` with ``info``, else by
    find_partials, what it calls), rerun: it is removed, said in one line, only the result is left."""
    from hopscotch.atomic import find_partials

    pid = _kill_mid_write(mode, work, env)
    partial = [p for p in where.iterdir() if p.name.startswith(f".{name}.hopscotch-partial-{pid}")]
    assert len(partial) == 1, sorted(p.name for p in where.iterdir())
    if info:
        reported = [(r["path"], r["pid"], r["process_running"], r["bytes"]) for r in _info_partials(where, env)]
    else:
        reported = [(str(p.path), p.pid, p.alive, p.bytes) for p in find_partials(where)]
    assert [r[:3] for r in reported] == [(str(partial[0]), pid, False)] and reported[0][3] > 0
    err = _rerun(mode, work, env)
    said = [line for line in err.splitlines() if "partial" in line]
    assert len(said) == 1 and f"removed 1 partial copy of {where / name} left by an interrupted run" in said[0], err
    assert {p.name for p in where.iterdir()} == expected


def test_a_killed_export_leaves_a_partial_that_the_next_export_removes(tmp_path):
    from tests.helpers.cli_testing import save_tiny_llama_dir
    from hopscotch import SkipPlan
    from hopscotch.models import load_model

    save_tiny_llama_dir(tmp_path / "tiny")
    SkipPlan.for_model(load_model(tmp_path / "tiny", with_tokenizer=False), [1]).save(tmp_path / "p.json")
    _check_cycle("export", tmp_path, tmp_path, "exp", {"tiny", "p.json", "p.safetensors", "exp"}, _env())
    assert (tmp_path / "exp" / "config.json").is_file()


def test_a_killed_plan_write_leaves_a_partial_that_the_next_write_removes(tmp_path):
    _check_cycle("plan", tmp_path, tmp_path, "p.safetensors", {"p.json", "p.safetensors"}, _env(), info=False)


def test_partials_of_running_writers_and_other_files_are_left_alone(tmp_path):
    """Only partials of processes that ended go: a live writer's (this process) and look-alikes stay."""
    from hopscotch.atomic import atomic_write_text, find_partials

    mine = tmp_path / f".x.json.hopscotch-partial-{os.getpid()}-abcd1234"
    mine.write_text("being written")
    ended = tmp_path / ".x.json.hopscotch-partial-999999999"  # a pid that cannot exist
    ended.write_text("left by a killed writer")
    lookalikes = [tmp_path / ".x.json.partial-notapid", tmp_path / ".x.json.partial-999999999"]
    for p in lookalikes:
        p.write_text("not ours")
    assert {p.path for p in find_partials(tmp_path)} == {mine, ended}
    atomic_write_text(tmp_path / "x.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.json", mine.name] + [p.name for p in lookalikes])


@pytest.mark.slow
def test_a_killed_model_conversion_leaves_a_partial_that_the_next_load_removes(tmp_path):
    from hopscotch.models import converted_model_dir, smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    env = _env(HOPSCOTCH_CACHE=str(tmp_path / "cache"))
    models = tmp_path / "cache" / "models"
    name = converted_model_dir().name  # the same under any cache root
    _check_cycle("convert", tmp_path, models, name, {name}, env, info=False)
