"""The fast search's lazy strategy (search/lazy.py): its step rules on planted numbers, and the whole search on a
tiny model whose useless attention blocks are known (agreement with the faithful search, exact first-step
losses, every piece of work counted, resumption after a kill)."""

from __future__ import annotations

import json
import os

import pytest

from hopscotch.search import FastSettings, search
from hopscotch.search.lazy import first_step, later_step, update_ratios
import test_search
from test_search import _batches, _planted_model, _self_labelled


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_first_step_probes_every_candidate_and_finishes_the_best_probes():
    probe_loss = {0: 3.0, 1: 2.0, 2: 2.5, 3: 4.0}
    trained_loss = {1: 1.9, 2: 1.8}
    probed, finished, ratios = [], [], {}

    def probe(c):
        probed.append(c)
        return probe_loss[c]

    def finish(c):
        finished.append(c)
        return trained_loss[c]

    trained = first_step([0, 1, 2, 3], probe=probe, finish_probe=finish, finishers=2, ratios=ratios)
    assert probed == [0, 1, 2, 3] and finished == [1, 2] and trained == [1, 2]
    # probe ratios against the best probe; the finished ones' against the best trained loss
    assert ratios == pytest.approx({0: 1.5, 1: 1.9 / 1.8, 2: 1.0, 3: 2.0})


def test_later_step_trains_the_incumbent_and_the_best_screened_of_the_pool():
    ratios = {0: 1.10, 1: 1.01, 2: 1.05, 3: 1.02, 4: 1.30, 5: 1.03}
    screened_sets = []

    def screen(cs):
        screened_sets.append(list(cs))
        return {c: {3: 5.0, 5: 4.0, 2: 6.0, 0: 1.0, 4: 0.5}[c] for c in cs}

    trained_loss = {1: 2.2, 5: 2.0}
    done = later_step([0, 1, 2, 3, 4, 5, 7], ratios=ratios, pool=3, challengers=1, screen=screen,
                      train=lambda c: trained_loss[c])
    assert done["incumbent"] == 1
    assert screened_sets == [[3, 5, 2]]  # the next three by ratio; 0 and 4 (better screened) are outside the pool
    assert done["challengers"] == [5] and done["trained"] == [1, 5]
    assert ratios[5] == 1.0 and ratios[1] == pytest.approx(1.1)  # new ratios against this step's best
    # a never-trained candidate (7) ranks after every candidate with a ratio; pool 0 trains the incumbent alone
    done = later_step([7, 4], ratios=ratios, pool=0, challengers=1, screen=screen, train=lambda c: 1.0)
    assert done["trained"] == [4] and done["challengers"] == []


def test_update_ratios_is_relative_to_the_best_of_one_kind():
    ratios = {}
    update_ratios(ratios, {3: 2.0, 4: 3.0})
    assert ratios == {3: 1.0, 4: 1.5}
    update_ratios(ratios, {})
    assert ratios == {3: 1.0, 4: 1.5}


def test_settings_of_the_screen_strategy_are_recorded_as_before_and_bad_ones_refused():
    # a search state records FastSettings.as_dict(): the screen strategy's must not change (states written before
    # the lazy strategy existed still resume), the lazy one's must name every knob that steers it
    assert set(FastSettings().as_dict()) == {"shortlist", "max_shortlist", "margin", "probe_fraction",
                                             "screen_fraction", "budget_ratio", "budget_k", "refine",
                                             "refine_fraction"}
    lazy = FastSettings(strategy="lazy").as_dict()
    assert {"strategy", "first_probe", "first_finish", "pool", "challengers"} <= set(lazy)
    with pytest.raises(ValueError, match=r"strategy='greedy': expected one of screen, lazy"):
        FastSettings(strategy="greedy")
    with pytest.raises(ValueError, match=r"first_probe=0, .*expected first_probe in \(0, 1\]"):
        FastSettings(strategy="lazy", first_probe=0)
    with pytest.raises(ValueError, match=r"challengers=-1"):
        FastSettings(strategy="lazy", challengers=-1)


def test_lazy_search_agrees_with_faithful_on_a_planted_model_and_counts_all_its_work(tmp_path):
    """12 layers, 4 planted useless blocks, k = 5: the lazy search skips what the faithful one skips, for fewer
    token-passes; the losses of its first step's finished probes are exactly the faithful search's (probe, then
    finish = one epoch at once); its token-passes are the sum of every recorded piece of work."""
    useless = (1, 3, 6, 9)
    batches = _self_labelled(_planted_model(useless, 12), _batches(n=8))
    faithful = search(_planted_model(useless, 12), batches, method="hopscotch", num_skip=5, final_epochs=1,
                      progress=False)
    state = tmp_path / "lazy.json"
    lazy = search(_planted_model(useless, 12), batches, method="hopscotch-fast", strategy="lazy", num_skip=5,
                  final_epochs=1, first_probe=0.25, first_finish=2, pool=4, state_path=state, progress=False)
    assert set(useless) <= set(lazy.skipped_attention)
    assert lazy.skipped_attention == faithful.skipped_attention
    steps = lazy.provenance["steps"]
    assert len(steps[0]["probe"]) == 12 and len(steps[0]["scores"]) == 2
    for c, loss in steps[0]["scores"].items():
        assert loss == pytest.approx(faithful.provenance["steps"][0]["scores"][c], rel=1e-5)
    assert all(len(s["scores"]) == 2 and len(s["lazy"]["screen"]) == 4 for s in steps[1:])
    records = json.loads(state.read_text())["steps"]
    assert {r["name"] for r in records} >= {"step0/probe0", "step0/probe11", "step1/screen", "final/k5"}
    recorded = sum(sum(r["passes"]) for r in records)
    assert lazy.provenance["token_passes"]["total"] == round(recorded)
    assert faithful.provenance["token_passes"]["total"] > 2 * recorded


def test_killed_lazy_search_resumes_to_the_same_plan(tmp_path, monkeypatch):
    """As the other strategies: kill it once some steps are on disk, run it again, get the same plan."""
    script = test_search._SCRIPT.replace("method={method!r},", "method={method!r}, strategy='lazy', first_probe=0.5,")
    assert script != test_search._SCRIPT
    monkeypatch.setattr(test_search, "_SCRIPT", script)
    test_search.test_killed_search_resumes_to_the_same_plan("hopscotch-fast", tmp_path)
    assert os.path.exists(tmp_path / "killed.json")
