"""prepare_task takes a TaskConfig whole (hopscotch/tasks.py): each setting, set apart from the base, changes the
data it builds; keyword settings are the config's; a bad setting is named; the command line's defaults are the
config's."""

from __future__ import annotations

import json

import pytest

from hopscotch.search.state import data_digest
from hopscotch.tasks import TaskConfig, prepare_task
from tests.helpers.tiny_models import tiny_llama, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

# Small enough for a tiny model; every other setting at its default.
BASE = TaskConfig(calibration=4, evaluation=5, max_new_tokens=6, wiki_blocks=2, text_blocks=2, seq_len=48)


def _changed(tmp_path) -> dict:
    """A value of each setting other than BASE's."""
    items = [{"query": f"Question: {w}?\nAnswer:", "choices": [" yes", " no"], "gold": i % 2}
             for i, w in enumerate(["cats", "dogs", "rain", "snow", "tea", "milk", "salt", "sand", "wind", "fire"])]
    data_file = tmp_path / "mc.jsonl"
    data_file.write_text("".join(json.dumps(x) + "\n" for x in items))
    return {"objective": "nll", "calibration": 3, "evaluation": 4, "seed": 1, "variant": "mc_5shot", "chat": False,
            "max_new_tokens": 2, "batch_size": 2, "seq_len": 32, "wiki_blocks": 1, "text_blocks": 1,
            "data_file": str(data_file), "calibration_fold": 1}


def _data(model, tok, config: TaskConfig) -> dict:
    d = prepare_task(model, tok, "arc_easy", config, progress=False)
    return {"calibration": data_digest(d.calibration), "evaluation": data_digest(d.eval_batches),
            "items": [x.id for x in d.eval_items], "wiki": data_digest(d.wiki_batches),
            "text": data_digest(d.text_calibration)}


def test_every_setting_reaches_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HOPSCOTCH_CACHE", str(tmp_path / "cache"))  # the targets are generated, not read back
    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    model = tiny_llama(tok)
    base = _data(model, tok, BASE)
    changed = _changed(tmp_path)
    assert set(changed) == {f for f in TaskConfig.__dataclass_fields__}  # every setting is tried
    for name, value in changed.items():
        got = _data(model, tok, BASE.replace(**{name: value}))
        assert got != base, f"{name}={value!r} did not change the data prepare_task builds"


def test_keyword_settings_are_the_configs_and_bad_ones_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HOPSCOTCH_CACHE", str(tmp_path / "cache"))
    tok = tiny_tokenizer()
    model = tiny_llama(tok)
    by_config = prepare_task(model, tok, "arc_easy", BASE.replace(objective="nll"), progress=False)
    by_name = prepare_task(model, tok, "arc_easy", objective="nll", calibration=4, evaluation=5, max_new_tokens=6,
                           wiki_blocks=2, text_blocks=2, seq_len=48, progress=False)
    assert data_digest(by_config.calibration) == data_digest(by_name.calibration) and by_config.info == by_name.info
    with pytest.raises(ValueError, match=r"^prepare_task: calibration=-1 \(int\); expected 0 or more$"):
        prepare_task(model, tok, "arc_easy", calibration=-1)
    with pytest.raises(ValueError, match=r"^prepare_task: seeds=2 \(int\); expected a setting \(objective, "):
        prepare_task(model, tok, "arc_easy", seeds=2)
    with pytest.raises(ValueError, match=r"^prepare_task: config='arc' \(str\); expected a TaskConfig or None$"):
        prepare_task(model, tok, "arc_easy", "arc")


def test_the_command_lines_data_defaults_are_the_configs():
    from hopscotch.cli import build_parser

    args = build_parser().parse_args(["search"])
    default = TaskConfig()
    assert (args.calibration, args.evaluation, args.data_seed, args.objective, args.max_new_tokens,
            args.batch_size) == (default.calibration, default.evaluation, default.seed, default.objective,
                                 default.max_new_tokens, default.batch_size)
    assert args.seed == 0 and args.data_seed == 0  # the search's seed and the split's: two flags
    other = build_parser().parse_args(["search", "--seed", "3"])
    assert other.seed == 3 and other.data_seed == 0
    ev = build_parser().parse_args(["eval", "--data-seed", "2"])
    assert ev.data_seed == 2
