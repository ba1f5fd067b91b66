"""The guards on the final scalars' training (hopscotch/search/guards.py): each changes the training as stated,
all at zero (``ScalarGuard.paper()``) is the paper's training, bit for bit, and ``ScalarGuard()`` is what a search
ships with."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from hopscotch.patch import patch_model, set_skips
from hopscotch.patch.patcher import get_scalars
from hopscotch.search import SearchConfig
from hopscotch.search.guards import GenericText, ScalarGuard
from hopscotch.search.objectives import batch_loss
from hopscotch.search.train import FINAL_SEED_OFFSET, train_final_scalars, train_scalars
from tests.helpers.model_testing import tiny_model

PAPER = ScalarGuard.paper()


def _batches(n, seed, width=10):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 97, (1, width), generator=g)
        labels = ids.clone()
        labels[:, :4] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def _train(guard=PAPER, generic=None, info=None, epochs=3, seed=0):
    model = tiny_model("llama")
    patch_model(model)
    config = SearchConfig(final_epochs=epochs, final_lr=5e-2, seed=seed, final_batch_size=0, guard=guard)
    losses = train_final_scalars(model, _batches(8, seed=1), [1, 3], config, generic=generic, info=info)
    return model, losses


def test_all_guards_at_zero_are_the_papers_training_bit_for_bit():
    """ScalarGuard.paper() is the default guard with every setting at 0: the scalars' plain training (Adam over
    the task's batches in an order seeded by the final seed), given generic text or not."""
    assert PAPER == ScalarGuard(generic_weight=0) and PAPER.off and not ScalarGuard().off
    zero, zero_losses = _train(generic=_batches(3, seed=9))
    plain = tiny_model("llama")
    patch_model(plain)
    set_skips(plain, attention=[1, 3])
    plain_losses = train_scalars(plain, _batches(8, seed=1), objective="nll", epochs=3, lr=5e-2,
                                 seed=FINAL_SEED_OFFSET)
    assert torch.equal(get_scalars(plain), get_scalars(zero)) and plain_losses == zero_losses
    assert not torch.equal(get_scalars(plain), torch.ones_like(get_scalars(plain)))  # training moved them


def test_the_pull_keeps_the_scalars_nearer_one():
    far = (get_scalars(_train()[0]) - 1).abs().sum()
    near = (get_scalars(_train(replace(PAPER, pull=1.0))[0]) - 1).abs().sum()
    pinned = (get_scalars(_train(replace(PAPER, pull=1e6))[0]) - 1).abs().max()
    assert near < 0.8 * far and pinned < 1e-2  # Adam takes lr-sized steps: it hovers around 1


def test_the_generic_term_fits_the_generic_text_better():
    ids = torch.tensor([[5, 17, 33, 60] * 4] * 4)  # text the scalars can fit: a phrase over and over
    generic = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}]

    def generic_loss(model):
        with torch.no_grad():
            return batch_loss(model, generic[0], "nll").item()

    without = generic_loss(_train()[0])
    with_it = [generic_loss(_train(ScalarGuard(generic_weight=w), generic=generic)[0]) for w in (1.0, 5.0)]
    assert with_it[1] < with_it[0] < without - 0.3
    with pytest.raises(ValueError, match=r"generic_weight=1 \(the guard mixes generic text into the training\) "
                                         r"needs generic=: packed plain text batches"):
        _train(ScalarGuard(generic_weight=1.0))


def test_the_generic_term_reads_the_text_in_turn_as_long_as_each_step(monkeypatch):
    """Each step adds w x the next-token loss on the next stretch of the generic stream (rows in order, padding
    left out, wrapping round), as many tokens long as the step's task batch."""
    import hopscotch.search.train as train_mod

    generic = _batches(2, seed=5, width=7)
    generic[1]["attention_mask"][0, -2:] = 0  # padding is not text
    stream = torch.cat([generic[0]["input_ids"][0], generic[1]["input_ids"][0, :5]])
    seen, real = [], train_mod.batch_loss
    monkeypatch.setattr(train_mod, "batch_loss", lambda m, b, *a, **k: seen.append(b) or real(m, b, *a, **k))
    _train(ScalarGuard(generic_weight=0.5), generic=generic, epochs=1)
    task, gen = seen[0::2], seen[1::2]
    assert len(task) == len(gen) == 8 and all(g["labels"].equal(g["input_ids"]) for g in gen)
    taken = torch.cat([g["input_ids"][0] for g in gen])
    assert [g["input_ids"].numel() for g in gen] == [t["attention_mask"].sum().item() for t in task]
    assert taken.equal(stream.repeat(len(taken) // len(stream) + 1)[:len(taken)])
    with pytest.raises(ValueError, match=r"generic text of 1 tokens: expected at least 2"):
        GenericText([{"input_ids": torch.tensor([[4]])}])


def test_early_stopping_keeps_the_epoch_best_on_the_held_out_rows():
    info = {}
    model, losses = _train(replace(PAPER, holdout=0.25), info=info, epochs=4)
    assert len(info["holdout_rows"]) == 2 and len(info["holdout_losses"]) == 5 and len(losses) == 4
    best = min(range(5), key=lambda e: info["holdout_losses"][e])
    assert info["kept_epoch"] == best
    # The kept scalars are that epoch's: retraining only that many epochs on the same rows gives the same scalars.
    info2 = {}
    again, _ = _train(replace(PAPER, holdout=0.25), info=info2, epochs=best) if best else (None, None)
    if best:
        torch.testing.assert_close(get_scalars(again), get_scalars(model), rtol=0, atol=0)
    else:
        assert torch.equal(get_scalars(model), torch.ones_like(get_scalars(model)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(pull=-1.0), r"ScalarGuard: pull=-1.0 \(float\); expected 0 or more \(0 = off\)"),
    (dict(generic_weight=float("nan")), r"ScalarGuard: generic_weight=nan \(float\); expected 0 or more"),
    (dict(holdout=1.0), r"holdout=1.0 \(float\); expected a fraction in \[0, 1\)"),
    (dict(holdout=True), r"holdout=True \(bool\); expected a finite number"),
])
def test_bad_guards_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScalarGuard(**kwargs)


def _search(tmp_path=None, generic=None, **settings):
    from hopscotch.search import search

    return search(tiny_model("llama"), _batches(4, seed=1), method="hopscotch", num_skip=2, final_epochs=2,
                  generic_batches=generic, state_path=tmp_path, progress=False, **settings)


def test_the_guards_are_search_settings_recorded_in_the_plan(tmp_path):
    """A search's final training runs under the config's guard (the same scalars as train_final_scalars with that
    guard on the blocks it chose), and the plan records the guard's settings and what it did."""
    paper = _search(generic_weight=0)
    assert paper.provenance["final_guard"] == {"settings": {"generic_weight": 0.0, "pull": 0.0, "holdout": 0.0},
                                               "did": {}}
    held = _search(generic_weight=0, holdout=0.5, pull=0.1)
    assert held.skipped_attention == paper.skipped_attention  # the greedy steps do not see the guard
    assert held.provenance["hyperparameters"]["guard"] == {"generic_weight": 0.0, "pull": 0.1, "holdout": 0.5}
    did = held.provenance["final_guard"]["did"]
    assert len(did["holdout_rows"]) == 2 and len(did["holdout_losses"]) == 3 and did["guard"]["pull"] == 0.1
    model = tiny_model("llama")
    train_final_scalars(model, _batches(4, seed=1), held.skipped_attention,
                        SearchConfig(final_epochs=2, guard=ScalarGuard(generic_weight=0, holdout=0.5, pull=0.1)))
    assert torch.equal(get_scalars(model), held.scalar_tensor())
    assert not torch.equal(held.scalar_tensor(), paper.scalar_tensor())


def test_the_generic_guard_needs_generic_batches_and_a_state_keeps_its_guard(tmp_path):
    from hopscotch.errors import ArgumentError
    from hopscotch.search import StateMismatchError

    with pytest.raises(ArgumentError, match=r"search: generic_weight=0.5 \(the final scalars' training mixes in "
                                            r"generic text\) needs generic_batches=.*generic_weight=0 for the paper's"):
        _search(generic_weight=0.5)
    generic = _batches(3, seed=5, width=16)
    a = _search(tmp_path / "s.json", generic=generic, generic_weight=0.5)
    assert a.provenance["final_guard"]["did"]["guard"]["generic_weight"] == 0.5
    with pytest.raises(StateMismatchError, match=r"guard.generic_weight: 0.5 in the file, 1.5 now"):
        _search(tmp_path / "s.json", generic=generic)  # the default guard
    with pytest.raises(StateMismatchError, match=r"generic_data: "):  # other generic text: another final training
        _search(tmp_path / "s.json", generic=_batches(3, seed=6, width=16), generic_weight=0.5)
    again = _search(tmp_path / "s.json", generic=generic, generic_weight=0.5)
    assert torch.equal(again.scalar_tensor(), a.scalar_tensor())


def test_the_default_search_mixes_in_generic_text_and_the_papers_training_is_one_setting_away(tmp_path):
    """The default guard (ScalarGuard(), chosen in docs/RESULTS.md) is generic weight 1.5: a default greedy search
    needs generic batches and says how to do without; generic_weight=0 is the paper's training, bit for bit; and
    train_final_scalars' default config is the search's."""
    from hopscotch.errors import ArgumentError

    assert SearchConfig().guard == ScalarGuard() == ScalarGuard(generic_weight=1.5, pull=0, holdout=0)
    with pytest.raises(ArgumentError, match=r"search: generic_weight=1.5 \(the final scalars' training mixes in "
                                            r"generic text, the default\) needs generic_batches=: packed plain text"):
        _search()
    generic = _batches(3, seed=5, width=16)
    default = _search(generic=generic)
    assert default.provenance["hyperparameters"]["guard"] == {"generic_weight": 1.5, "pull": 0.0, "holdout": 0.0}
    assert default.provenance["final_guard"]["did"]["guard"]["generic_weight"] == 1.5
    paper = _search(generic=generic, generic_weight=0)  # generic text given, not used
    assert paper.skipped_attention == default.skipped_attention  # the greedy steps do not see the guard
    assert not torch.equal(paper.scalar_tensor(), default.scalar_tensor())
    model = tiny_model("llama")
    train_final_scalars(model, _batches(4, seed=1), paper.skipped_attention,
                        SearchConfig(final_epochs=2, guard=ScalarGuard.paper()))
    assert torch.equal(get_scalars(model), paper.scalar_tensor())
    model = tiny_model("llama")
    train_final_scalars(model, _batches(4, seed=1), default.skipped_attention, SearchConfig(final_epochs=2),
                        generic=generic)
    assert torch.equal(get_scalars(model), default.scalar_tensor())
