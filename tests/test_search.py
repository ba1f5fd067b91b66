"""Search methods on tiny models: plans come out, validate and are deterministic; resumption after a kill;
fast-vs-faithful agreement on a model whose useless attention blocks are known."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from hopscotch import SkipPlan, current_plan, is_patched
from hopscotch.patch import patch_model, set_skips
from hopscotch.patch.patcher import get_scalars
from hopscotch.errors import ArgumentError
from hopscotch.limits import SkipLimitError
from hopscotch.search import METHODS, ConfigError, FastConfig, ScalarGuard, SearchConfig, StateMismatchError, search
from hopscotch.search.runner import step_schedule
from hopscotch.search.screening import screen_candidates, screen_cost, worst_case
from hopscotch.search.state import read_steps
from hopscotch.search.train import (PassCounter, TokenPassCost, batch_tokens, rebatch, scalar_parameters,
                                    train_final_scalars)
from tests.helpers import ROOT
from tests.helpers.model_testing import calibration_batches as _batches, tiny_model


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

PAPER = dict(generic_weight=0)  # the paper's final training, task batches only (the default guard: test_guards.py)


def _planted_model(useless=(1, 3), num_layers=5):
    """A tiny model whose attention blocks ``useless`` barely matter (o_proj scaled down 1000x)."""
    model = tiny_model("llama", num_layers=num_layers)
    with torch.no_grad():
        for i in useless:
            model.model.layers[i].self_attn.o_proj.weight.mul_(1e-3)
    return model


@pytest.mark.parametrize("method", METHODS)
def test_each_method_returns_a_valid_deterministic_plan(method, tmp_path):
    plans = []
    for _ in range(2):
        model = tiny_model("llama", num_layers=5)
        plan = search(model, _batches(), method=method, num_skip=2, final_epochs=1, progress=False, **PAPER)
        plan.validate(model)
        assert is_patched(model)
        assert len(plan.skipped_attention) == 2 or method == "shortgpt"
        plans.append(plan)
    a, b = plans
    assert a.skipped_attention == b.skipped_attention and a.skipped_mlp == b.skipped_mlp
    assert torch.equal(a.scalar_tensor(), b.scalar_tensor())
    assert a.provenance["method"] == method
    path = a.save(tmp_path / "p.json")
    assert SkipPlan.load(path) == a
    if method.startswith("hopscotch"):
        steps = a.provenance["steps"]
        assert [s["picked"] for s in steps] == a.skipped_attention or sorted(s["picked"] for s in steps) == \
            a.skipped_attention
        assert all(s["scores"] for s in steps)  # every candidate's score is logged
        assert a.provenance["token_passes"]["backward"] > 0
        assert not torch.equal(a.scalar_tensor(), torch.ones(5, 4))  # the final scalars were trained
    if method == "shortgpt":
        assert a.skipped_attention == a.skipped_mlp  # whole layers


def _self_labelled(model, batches):
    """Labels = the model's own greedy next tokens (teacher forcing): a self-distillation objective."""
    out = []
    with torch.no_grad():
        for b in batches:
            pred = model(input_ids=b["input_ids"]).logits.argmax(-1)
            labels = torch.full_like(b["labels"], -100)
            labels[:, 1:] = torch.where(b["labels"][:, 1:] != -100, pred[:, :-1], -100)
            out.append({**b, "labels": labels})
    return out


@pytest.mark.parametrize("objective", ["nll", "kl"])
def test_fast_and_faithful_agree_on_planted_useless_blocks(objective):
    picks = {}
    passes = {}
    batches = _self_labelled(_planted_model(), _batches(n=8))
    for method in ("hopscotch", "hopscotch-fast"):
        model = _planted_model()
        plan = search(model, batches, method=method, num_skip=2, objective=objective, final_epochs=1,
                      progress=False, **PAPER)
        picks[method] = plan.skipped_attention
        passes[method] = plan.provenance["token_passes"]["total"]
    assert picks["hopscotch"] == picks["hopscotch-fast"] == [1, 3]
    assert passes["hopscotch-fast"] < passes["hopscotch"]


def test_fast_widens_the_shortlist_and_agrees_with_faithful_on_a_deeper_planted_model():
    """12 layers, 4 planted useless blocks, k=5: near-tied screening scores widen the shortlist, the budget narrows
    it; fast and faithful skip the same blocks, at a fraction of the token-passes."""
    useless = (1, 3, 6, 9)
    batches = _self_labelled(_planted_model(useless, 12), _batches(n=8))
    plans = {}
    for method in ("hopscotch", "hopscotch-fast"):
        plans[method] = search(_planted_model(useless, 12), batches, method=method, num_skip=5, final_epochs=1,
                               budget_ratio=3.0, max_shortlist=6, margin=0.05, refine=0, progress=False, **PAPER)
    fast, faithful = plans["hopscotch-fast"], plans["hopscotch"]
    assert set(useless) <= set(fast.skipped_attention)
    assert fast.skipped_attention == faithful.skipped_attention
    assert fast.provenance["final_losses"][-1] == pytest.approx(faithful.provenance["final_losses"][-1], rel=0.02)
    steps = fast.provenance["steps"]
    assert any(s["shortlist"]["close"] > 1 and s["shortlist"]["width"] > 1 for s in steps)  # widened somewhere
    assert any(s["shortlist"]["width"] < s["shortlist"]["close"] for s in steps)  # and narrowed by the budget
    assert all(s["shortlist"]["width"] <= 6 and s["budget"]["planned"] <= s["budget"]["available"] for s in steps)
    ratio = faithful.provenance["token_passes"]["total"] / fast.provenance["token_passes"]["total"]
    assert ratio >= 3.0


def test_screen_cost_is_what_screening_counts():
    """The budget plans the refinement with ``screen_cost``: it must be the work ``screen_candidates`` records."""
    model = patch_model(tiny_model("llama", num_layers=6))
    batches = _batches(n=3)
    cost = TokenPassCost.of(model)
    counter = PassCounter()
    screen_candidates(model, batches, [1, 4, 5], objective="nll", teacher=None, counter=counter, chosen=[2],
                      cost=cost)
    assert counter.forward == pytest.approx(sum(screen_cost(cost, batches, [1, 4, 5], [2])))
    assert sum(screen_cost(cost, batches, [1], [2])) > sum(screen_cost(cost, batches, [5], [2]))  # deeper reach


def test_refinement_rescreens_the_best_screened_candidates_on_other_batches():
    """Each fast step re-screens its best ``refine`` candidates on further batches and ranks them by the
    position-weighted mean of both screens; the finalists are the best of that ranking and every refined candidate
    within ``margin`` of it (at most ``max_shortlist``)."""
    batches = _self_labelled(_planted_model((1, 3), 8), _batches(n=8))
    plan = search(_planted_model((1, 3), 8), batches, method="hopscotch-fast", num_skip=2, final_epochs=1,
                  refine=4, refine_fraction=0.25, shortlist=1, max_shortlist=3, margin=0.05, budget_ratio=0,
                  progress=False, **PAPER)
    for step in plan.provenance["steps"]:
        first = {int(c): v for c, v in step["screen"].items()}
        again = {int(c): v for c, v in step["refine"].items()}
        assert sorted(again) == sorted(sorted(first, key=lambda c: (first[c], c))[:4])  # the 4 best screened
        assert set(step["scores"]) <= {str(c) for c in again}  # finalists come from the refined ones
        mean = {c: (first[c] + 2 * again[c]) / 3 for c in again}  # 1 screening batch, 2 refining (equal sizes)
        ranked = sorted(mean, key=lambda c: (mean[c], c))
        close = [c for c in ranked if mean[c] - mean[ranked[0]] <= 0.05 * mean[ranked[0]]]  # within the margin
        assert sorted(int(c) for c in step["scores"]) == sorted(ranked[:min(max(1, len(close)), 3)])
    assert plan.skipped_attention == [1, 3]
    with pytest.raises(ConfigError, match=r"FastConfig: refine=-1 \(int\); expected 0 or more"):
        FastConfig(refine=-1)


def test_every_candidate_of_a_step_sees_the_same_batch_order():
    assert step_schedule(3, 1, 10) == step_schedule(3, 1, 10)
    assert step_schedule(3, 1, 10) != step_schedule(3, 2, 10)  # but steps differ
    assert sorted(step_schedule(3, 1, 10)[0]) == list(range(10))


def test_token_pass_unit_counts_the_head_and_backward_twice():
    model = tiny_model("llama", num_layers=4)
    cost = TokenPassCost.of(model)
    assert cost.forward(1, 1) == pytest.approx(1.0)  # one token through every layer and the head
    assert 0 < cost.head < 1 and cost.layers(0) == pytest.approx(1 - cost.head)
    assert cost.layers(2) == pytest.approx(cost.layers(0) / 2)  # equal layers
    assert cost.layers(0, skipped_attn=[0]) < cost.layers(0)
    b = _batches(n=2)
    tokens = sum(int(x["attention_mask"].sum()) for x in b)
    answers = sum(int((x["labels"][:, 1:] != -100).sum()) for x in b)
    assert cost.epoch(b) == pytest.approx(3 * (tokens * cost.layers(0) + answers * cost.head))


@pytest.mark.parametrize("guard", ["paper", "default"])
def test_fast_budget_guarantee_by_construction(guard, tmp_path):
    """SmolLM2's shape (30 layers, LM head ~21% of a token-pass): at k=8 the ledger guarantees >= 8x fewer
    token-passes than the faithful search, every step's floor (screening + one candidate) fitting its allowance.
    The default guard's generic text doubles the final training at most (as many tokens as the task's, each a
    loss): the budget reserves it too."""
    final_epochs = 3 if guard == "paper" else 6  # in candidate-epochs, every token a loss (the worst case)
    w = worst_case(30, 8, FastConfig(), final_epochs=final_epochs, head_share=0.21)
    assert w["floors_fit"] and w["ratio_min"] >= 8.0 - 1e-9
    # without the budget the widest shortlist at every step would cost more than 1/8
    assert worst_case(30, 8, FastConfig(budget_ratio=0), final_epochs=final_epochs)["ratio_min"] < 8.0
    # measured on a 30-layer tiny model: fast work vs the faithful work of the same steps (computed exactly) and of
    # the same final training
    model = _planted_model((2, 5, 9, 14, 20), 30)
    batches = _self_labelled(model, _batches(n=8, seq=16))
    kw = PAPER if guard == "paper" else dict(generic_batches=_batches(n=4, seq=32, seed=9))
    plan = search(model, batches, method="hopscotch-fast", num_skip=8, final_epochs=3, progress=False,
                  state_path=tmp_path / "s.json", **kw)
    cost = TokenPassCost.of(model)
    faithful = sum(cost.epoch(batches, s["chosen_before"] + [c]) for s in plan.provenance["steps"]
                   for c in range(30) if c not in s["chosen_before"])
    final = next(s for s in read_steps(tmp_path / "s.json") if s["name"] == "final/k8")
    faithful += sum(final["passes"])
    if guard == "paper":
        assert sum(final["passes"]) == pytest.approx(3 * cost.epoch(batches, plan.skipped_attention))
    else:  # each step (one row: final_batch_size 1) adds as many tokens of generic text, every next token a loss
        rows = [int(r.sum()) for b in batches for r in b["attention_mask"]]
        generic = sum(cost.forward(n, n - 1, 0, plan.skipped_attention) * 3 for n in rows)
        assert sum(final["passes"]) == pytest.approx(3 * cost.epoch(batches, plan.skipped_attention) + 3 * generic)
    assert faithful / plan.provenance["token_passes"]["total"] >= 8.0 - 1e-6


def test_llm_drop_variants_and_targets():
    model = _planted_model()
    for target in ("attn", "mlp", "block", "joint"):
        for iterative in (False, True):
            plan = search(model, _batches(), method="llm-drop", target=target, iterative=iterative, num_skip=2,
                          progress=False)
            n = len(plan.skipped_attention) + len(plan.skipped_mlp)
            assert n == (4 if target == "block" else 2)
            if target == "attn":
                assert plan.skipped_attention == [1, 3]  # the near-zero blocks are the most similar
            assert plan.provenance["steps"][0]["scores"]
            assert [s["name"] for s in plan.provenance["steps"]] == (["llm_drop_0", "llm_drop_1"] if iterative
                                                                     else ["llm_drop_0"])
            assert plan.provenance["token_passes"]["total"] > 0


def test_similarity_baselines_score_the_text_batches_when_given():
    model = _planted_model()
    text = _batches(n=3, seed=9)
    plan = search(model, _batches(), method="shortgpt", num_skip=1, similarity_batches=text, progress=False)
    assert plan.provenance["similarity_data"] == "separate text batches"
    assert [s["name"] for s in plan.provenance["steps"]] == ["shortgpt_0"]  # its own name, not LLM-Drop's
    assert plan.provenance["similarity_tokens"] == sum(int(b["attention_mask"].sum()) for b in text)


def test_rebatch_keeps_every_row_and_token_and_drops_padding():
    b = _batches(n=2, batch=3, seq=8)
    b[0]["attention_mask"][1, 5:] = 0  # a right-padded row
    b[0]["labels"][1, 5:] = -100
    ones = rebatch(b, 1)
    assert len(ones) == 6 and ones[1]["input_ids"].shape == (1, 5)  # its padding dropped
    assert sum(map(batch_tokens, ones)) == sum(map(batch_tokens, b))
    fours = rebatch(b, 4)
    assert [x["input_ids"].shape[0] for x in fours] == [4, 2]
    assert torch.equal(fours[0]["input_ids"][1, :5], b[0]["input_ids"][1, :5])
    assert fours[0]["attention_mask"][1].tolist() == [1] * 5 + [0] * 3
    assert (fours[0]["labels"][1, 5:] == -100).all()
    assert sum(int((x["labels"] != -100).sum()) for x in fours) == sum(int((x["labels"] != -100).sum()) for x in b)
    left = _batches(n=1)
    left[0]["attention_mask"][0, 0] = 0
    with pytest.raises(ValueError, match=r"right-padded"):
        rebatch(left, 1)
    with pytest.raises(ValueError, match=r"batch_size=0: expected a positive integer"):
        rebatch(b, 0)


@pytest.mark.parametrize("objective", ["nll", "kl"])
def test_final_scalars_train_on_rebatched_rows(objective, monkeypatch):
    """final_batch_size=1: one Adam step per row and epoch, over the same tokens; 0 keeps the batches."""
    import hopscotch.search.train as train_mod

    rows_seen = []
    real = train_mod.batch_loss

    def counting(model, batch, *args, **kwargs):
        rows_seen.append(batch["input_ids"].shape[0])
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(train_mod, "batch_loss", counting)
    seen, passes = {}, {}
    for fbs in (1, 0):
        model = tiny_model("llama", num_layers=3)
        rows_seen.clear()
        plan = search(model, _batches(n=2, batch=3), method="hopscotch", num_skip=1, objective=objective,
                      final_epochs=2, final_batch_size=fbs, progress=False, **PAPER)
        assert plan.provenance["hyperparameters"]["final_batch_size"] == fbs
        seen[fbs] = list(rows_seen)
        passes[fbs] = plan.provenance["token_passes"]["total"]
    # 3 candidates x 2 batches of 3 rows, then the final scalars: 2 epochs of 6 rows of 1, or of 2 batches of 3
    assert seen[1] == [3] * 6 + [1] * 12 and seen[0] == [3] * 6 + [3] * 4
    # the same tokens (the kl teacher's forward over the re-batched rows is counted once more)
    assert passes[1] == passes[0] if objective == "nll" else passes[1] > passes[0]


@pytest.mark.parametrize("objective", ["nll", "kl"])
def test_train_final_scalars_is_the_search_final_step(objective):
    """The public final-scalar recipe, run on the blocks a search chose, gives that search's scalars exactly (so a
    block set chosen another way can be given the same adaptation), and leaves only those blocks skipped."""
    batches = _batches(n=3, batch=2)
    model = tiny_model("llama", num_layers=4)
    plan = search(model, batches, method="hopscotch", num_skip=2, objective=objective, seed=3, final_epochs=2,
                  final_batch_size=1, progress=False, **PAPER)
    set_skips(model, attention=[0, 1, 3])  # state that must not leak into the recipe
    with torch.no_grad():
        for p in scalar_parameters(model):
            p.fill_(0.5)
    counter = PassCounter()
    config = SearchConfig(objective=objective, seed=3, final_epochs=2, final_batch_size=1, guard=ScalarGuard.paper())
    losses = train_final_scalars(model, batches, plan.skipped_attention, config, counter=counter)
    assert losses == plan.provenance["final_losses"] and len(losses) == 2
    assert torch.equal(get_scalars(model), plan.scalar_tensor())
    assert current_plan(model).skipped_attention == plan.skipped_attention
    # 2 epochs forward + backward over the rows, and for kl the teacher's forward computed here
    assert counter.backward > 0 and (counter.forward > counter.backward / 2) == (objective == "kl")
    # nothing skipped or no epochs: scalars at 1, no training
    assert train_final_scalars(model, batches, [], config) == []
    assert torch.equal(get_scalars(model), torch.ones_like(get_scalars(model)))
    assert train_final_scalars(model, batches, [1], config.replace(final_epochs=0)) == []
    assert current_plan(model).skipped_attention == [1]
    fresh = tiny_model("llama", num_layers=4)  # an unpatched model is patched; defaults are the search's
    with pytest.raises(ArgumentError, match=r"train_final_scalars: generic_weight=1.5 .* needs generic=: packed"):
        train_final_scalars(fresh, batches, [2])  # the search's default guard mixes in generic text
    assert len(train_final_scalars(fresh, batches, [2], generic=_batches(n=2, seed=9))) == 3 and is_patched(fresh)
    assert current_plan(fresh).skipped_attention == [2]
    with pytest.raises(ArgumentError, match=r"train_final_scalars: config=\{\} \(dict\); expected a SearchConfig"):
        train_final_scalars(fresh, batches, [2], {})


def test_bad_arguments_are_refused():
    model = tiny_model("llama", num_layers=3)
    with pytest.raises(ConfigError, match=r"search: method='magic' \(str\); expected one of hopscotch, hopscotch-fast"):
        search(model, _batches(), method="magic")
    with pytest.raises(SkipLimitError, match=r"num_skip 3: expected 0 to 2 for a model with 3 layers"):
        search(model, _batches(), num_skip=3)
    with pytest.raises(ConfigError, match=r"search: objective='mse' \(str\); expected one of nll"):
        search(model, _batches(), objective="mse")
    with pytest.raises(ArgumentError, match=r"search: batches=\[\] holds no calibration batches"):
        search(model, [], num_skip=1)
    with pytest.raises(ConfigError, match=r"search: final_batch_size=-1 \(int\); expected 0 or more"):
        search(model, _batches(), num_skip=1, final_batch_size=-1)
    with pytest.raises(ConfigError, match=r"search: budget_ratio=0.5 \(float\); expected more than 1, or 0"):
        search(model, _batches(), num_skip=1, budget_ratio=0.5)
    with pytest.raises(ConfigError, match=r"search: probe_fraction=0.5 \(float\); expected a setting \(method, "):
        search(model, _batches(), num_skip=1, probe_fraction=0.5)  # retired
    with pytest.raises(ArgumentError, match=r"search: config='fast' \(str\); expected a SearchConfig or None"):
        search(model, _batches(), "fast")
    with pytest.raises(ArgumentError, match=r"search: batch 0 has keys \['input_ids'\]|calibration batch 0 has keys"):
        search(model, [{"input_ids": torch.ones(1, 3, dtype=torch.long)}], num_skip=1)


def test_state_of_another_search_is_refused_and_a_state_serves_other_k(tmp_path):
    state = tmp_path / "state.json"
    kw = dict(method="hopscotch-fast", final_epochs=1, state_path=state, progress=False, **PAPER)
    p2 = search(tiny_model("llama", num_layers=4), _batches(n=2), num_skip=2, **kw)
    with pytest.raises(StateMismatchError, match=r"other settings \(seed: 0 in the file, 1 now\); delete it or "
                                                 r"choose another state file"):
        search(tiny_model("llama", num_layers=4), _batches(n=2), num_skip=2, seed=1, **kw)
    with pytest.raises(StateMismatchError, match=r"other settings \(fast.margin: 0.0125 in the file, 0.5 now\)"):
        search(tiny_model("llama", num_layers=4), _batches(n=2), num_skip=2, margin=0.5, **kw)
    with pytest.raises(StateMismatchError, match=r"other settings \(data: "):
        search(tiny_model("llama", num_layers=4), _batches(n=2, seed=5), num_skip=2, **kw)
    # The greedy steps do not depend on k: k=1 reuses step 0, k=3 adds one step.
    n_steps = len(read_steps(state))
    p1 = search(tiny_model("llama", num_layers=4), _batches(n=2), num_skip=1, **kw)
    assert p1.skipped_attention == [p2.provenance["steps"][0]["picked"]]
    after_k1 = read_steps(state)
    assert len(after_k1) == n_steps + 1 and after_k1[-1]["name"] == "final/k1"  # only the final training is new
    p3 = search(tiny_model("llama", num_layers=4), _batches(n=2), num_skip=3, **kw)
    assert set(p2.skipped_attention) < set(p3.skipped_attention)


_SCRIPT = textwrap.dedent("""
    import sys, json, torch
    sys.path.insert(0, {root!r})
    torch.set_num_threads(1)
    from tests.helpers.model_testing import calibration_batches as _batches, tiny_model
    from hopscotch.search import search
    model = tiny_model("llama", num_layers=5)
    plan = search(model, _batches(n=6), method={method!r}, num_skip=3, final_epochs=2, state_path=sys.argv[1],
                  progress=False, generic_weight=0)
    print(json.dumps({{"attn": plan.skipped_attention, "scalars": plan.scalar_tensor().tolist()}}))
""")


def _run(script, state, **kw):
    return subprocess.run([sys.executable, "-c", script, str(state)], capture_output=True, text=True, **kw)


@pytest.mark.parametrize("method", ["hopscotch", "hopscotch-fast"])
def test_killed_search_resumes_to_the_same_plan(method, tmp_path):
    script = _SCRIPT.format(root=str(ROOT), method=method)
    fresh = _run(script, tmp_path / "fresh.json", timeout=600)
    assert fresh.returncode == 0, fresh.stderr
    expected = json.loads(fresh.stdout.strip().splitlines()[-1])
    state = tmp_path / "killed.json"
    proc = subprocess.Popen([sys.executable, "-c", script, str(state)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    steps = 0
    while time.time() < deadline and proc.poll() is None:  # kill it once some steps are on disk
        try:
            steps = len(read_steps(state))
        except (OSError, ValueError, KeyError):
            steps = 0
        if steps >= 4:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the search finished before it could be killed"
    before = state.read_bytes()
    recorded = len(read_steps(state))
    resumed = _run(script, state, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == expected
    assert len(read_steps(state)) > recorded
    whole = before[:before.rfind(b"\n") + 1]  # the finished lines (a line being appended at the kill is redone)
    assert state.read_bytes().startswith(whole)  # appended to, never rewritten
