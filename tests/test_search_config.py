"""The search's one home for settings (SearchConfig) and its state file: the command line's flags come from the
config, bad values are named, a resumed search compares configs; the state file is appended to, survives a partial
last line, and a file in another format is refused."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from hopscotch.cli import build_parser
from hopscotch.cli.common import CliError
from hopscotch.cli.search_cmd import config_from_args
from hopscotch.search import (METHODS, OBJECTIVES, ConfigError, FastConfig, ScalarGuard, SearchConfig,
                              StateMismatchError, search)
from hopscotch.search.state import FORMAT, read_steps
from hopscotch.search.train import train_final_scalars
from tests.helpers.model_testing import calibration_batches as _batches, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

def _parse(*argv):
    return build_parser().parse_args(["search", *map(str, argv)])


def test_the_command_line_builds_its_flags_and_defaults_from_the_config():
    assert config_from_args(_parse()) == SearchConfig()  # every default comes from the config
    args = _parse("--method", "hopscotch", "-k", 6, "--margin", 0.02, "--pull", 0.5, "--budget-ratio", 0,
                  "--iterative")
    assert config_from_args(args) == SearchConfig(method="hopscotch", num_skip=6, iterative=True,
                                            fast=FastConfig(margin=0.02, budget_ratio=0.0),
                                            guard=ScalarGuard(generic_weight=1.5, pull=0.5))
    actions = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["search"]._actions}
    assert all(name in actions for _, name, f in SearchConfig.settings() if f.metadata["cli"])  # a flag each
    assert actions["objective"].default == "self-distill"  # the data's flag: it builds the targets
    assert actions["generic_weight"].default == 1.5 and "(default 1.5)" in actions["generic_weight"].help
    assert config_from_args(_parse("--generic-weight", 0)).guard == ScalarGuard.paper()  # one flag away
    assert tuple(actions["method"].choices) == METHODS and tuple(actions["objective"].choices) == OBJECTIVES
    assert "%" not in actions["method"].help and "faithful picks" not in actions["method"].help
    for gone in ("probe_fraction", "strategy", "first_probe", "first_finish", "pool", "challengers"):
        assert gone not in actions


@pytest.mark.parametrize("argv, message", [
    (("--margin", "-0.1"), "--margin -0.1: expected 0 or more"),
    (("--screen-fraction", "0"), "--screen-fraction 0.0: expected a fraction in (0, 1]"),
    (("--shortlist", "4"), "--max-shortlist 3: expected at least shortlist (4)"),
    (("--lr", "nan"), "--lr nan: expected a positive learning rate"),
    (("--holdout", "1"), "--holdout 1.0: expected a fraction in [0, 1) of the calibration rows (0 = off)"),
])
def test_a_bad_flag_is_named_with_what_was_expected(argv, message):
    with pytest.raises(CliError) as info:
        config_from_args(_parse(*argv))
    assert str(info.value) == message


def test_config_round_trips_and_changes_by_flat_name():
    config = SearchConfig(method="hopscotch", fast=FastConfig(refine=3), guard=ScalarGuard(holdout=0.25))
    assert SearchConfig.from_dict(json.loads(json.dumps(config.as_dict()))) == config
    assert config.replace(margin=0.5, pull=1, lr=1) == dataclasses.replace(
        config, lr=1.0, fast=FastConfig(refine=3, margin=0.5), guard=ScalarGuard(holdout=0.25, pull=1.0))
    assert isinstance(config.replace(lr=1).lr, float)  # ints given for floats are stored as floats
    with pytest.raises(ConfigError, match=r"SearchConfig: strategy='lazy' \(str\); expected a setting"):
        config.replace(strategy="lazy")
    with pytest.raises(ConfigError, match=r"SearchConfig: fast=3 \(int\); expected a FastConfig"):
        SearchConfig(fast=3)
    with pytest.raises(ConfigError, match=r"SearchConfig: iterative=1 \(int\); expected True or False"):
        SearchConfig(iterative=1)


def test_a_state_compares_the_settings_its_method_reads():
    faithful = SearchConfig(method="hopscotch")
    # the faithful search reads no fast setting, no llm-drop setting, and its steps do not depend on k
    assert faithful.identity() == faithful.replace(margin=0.9, target="mlp", num_skip=7).identity()
    assert "guard.pull" in faithful.identity() and "final_lr" in faithful.identity()
    drop = SearchConfig(method="llm-drop")
    assert drop.identity() != drop.replace(num_skip=2).identity()  # one-shot picks depend on k
    assert drop.identity() == drop.replace(final_lr=1.0, pull=2.0).identity()


def _resume(state, method, k):
    return search(tiny_model("llama", num_layers=4), _batches(n=2), method=method, num_skip=k, final_epochs=1,
                  state_path=state, progress=False, generic_weight=0)


def test_a_file_in_another_format_is_refused(tmp_path):
    """The first released format is the only one read: an older hopscotch's state (one JSON object) or any other
    file is refused, naming the file and the way out."""
    state = tmp_path / "old.json"
    state.write_text(json.dumps({"format": "hopscotch-search-state/1", "settings": {"method": "hopscotch"},
                                 "steps": []}, indent=1))
    with pytest.raises(StateMismatchError) as info:
        _resume(state, "hopscotch", 2)
    assert str(info.value) == (f"search state {state} is in format 'hopscotch-search-state/1'; this hopscotch reads "
                               f"'{FORMAT}' only; delete it or choose another state file (--state, state_path) to "
                               "start afresh")
    assert json.loads(state.read_text())["format"] == "hopscotch-search-state/1"  # left as it was
    state.write_text("plan, not state\n")
    with pytest.raises(StateMismatchError, match=r"old.json is not a hopscotch search state \(no header of format "):
        _resume(state, "hopscotch", 2)


def test_a_partial_last_line_is_dropped_and_the_search_resumes_to_the_same_plan(tmp_path):
    state = tmp_path / "s.json"
    whole = _resume(state, "hopscotch", 2)
    lines = state.read_bytes().splitlines(keepends=True)
    cut = b"".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2]  # killed while appending a candidate
    state.write_bytes(cut)
    assert len(read_steps(state)) == len(lines) - 3 and state.read_bytes() == cut  # reading leaves it
    again = _resume(state, "hopscotch", 2)
    assert again.skipped_attention == whole.skipped_attention
    assert torch.equal(again.scalar_tensor(), whole.scalar_tensor())
    assert state.read_bytes().startswith(b"".join(lines[:-2])) and state.read_bytes().endswith(b"\n")
    lines = state.read_bytes().splitlines(keepends=True)
    state.write_bytes(b"".join(lines[:2]) + b"{not json\n" + b"".join(lines[2:]))
    with pytest.raises(StateMismatchError, match=r"s.json, line 3 is not valid JSON"):
        _resume(state, "hopscotch", 2)


def _spy(monkeypatch, module, name: str) -> list:
    """Every call of ``module.name`` (args, kwargs, result), the real function still doing the work."""
    calls, real = [], getattr(module, name)

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    monkeypatch.setattr(module, name, spy)
    return calls


# A non-default value of each setting a leaf reads (objective: kl, whose teacher the leaf receives).
RUNNER_READS = {"objective": "kl", "lr": 0.5, "seed": 4, "candidate_epochs": 2}
FINAL_READS = {"objective": "kl", "final_epochs": 1, "final_lr": 0.5, "final_batch_size": 0, "seed": 5,
               "generic_weight": 0.5, "pull": 0.3, "holdout": 0.4}


def test_every_setting_the_runner_reads_reaches_the_candidates_training(monkeypatch):
    """GreedyRunner takes the SearchConfig whole: each setting it reads, set apart from the default, changes what
    the candidate's training (train_schedule) receives."""
    import hopscotch.search.runner as runner_mod
    from hopscotch.patch import patch_model
    from hopscotch.search.objectives import teacher_logprobs
    from hopscotch.search.runner import GreedyRunner, step_schedule
    from hopscotch.search.state import SearchState

    calls = _spy(monkeypatch, runner_mod, "train_schedule")

    def received(config: SearchConfig) -> dict:
        calls.clear()
        model, batches = tiny_model("llama", num_layers=3), _batches(n=3)
        patch_model(model)
        teacher = teacher_logprobs(model, batches) if config.objective == "kl" else None
        GreedyRunner(model, batches, SearchState(config, {}), config, teacher=teacher).train(0, [1])
        (args, kw, _), = calls
        return {"schedule": args[2], "objective": kw["objective"], "lr": kw["lr"], "teacher": kw["teacher"]}

    base = received(SearchConfig())
    assert base["schedule"] == step_schedule(0, 0, 3, 1) and base["lr"] == SearchConfig().lr
    for name, value in RUNNER_READS.items():
        got = received(SearchConfig().replace(**{name: value}))
        assert got != base, f"{name}={value} did not reach the candidates' training"
    assert received(SearchConfig(seed=4, candidate_epochs=2))["schedule"] == step_schedule(4, 0, 3, 2)


def test_every_setting_the_final_training_reads_reaches_it(monkeypatch):
    """train_final_scalars takes the SearchConfig whole: each setting it reads, set apart from the default, changes
    what its training (train_schedule) receives or gives back."""
    import hopscotch.search.train as train_mod

    calls = _spy(monkeypatch, train_mod, "train_schedule")
    batches, generic = _batches(n=3, batch=2), _batches(n=2, seed=7)

    def received(config: SearchConfig) -> list:
        calls.clear()
        train_final_scalars(tiny_model("llama", num_layers=3), batches, [1], config, generic=generic)
        return [([tuple(b["input_ids"].shape) for b in args[1]], args[2], kw["objective"], kw["lr"],
                 kw["teacher"] is not None, kw.get("extra_loss") is not None, out[0]) for args, kw, out in calls]

    base = received(SearchConfig())
    assert base and all(call[3] == SearchConfig().final_lr for call in base)
    for name, value in FINAL_READS.items():
        got = received(SearchConfig().replace(**{name: value}))
        assert got != base, f"{name}={value} did not reach the final training"
