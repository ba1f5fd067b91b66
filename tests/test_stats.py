"""hopscotch.evaluate.stats on synthetic data with a known truth: planted differences are found, none is invented
at more than about the nominal rate, and the intervals cover the true value at about the nominal rate.

Rates are checked over R = 200 independent repetitions (fixed seeds, so the tests are deterministic). With a
true rate p the count of events is Binomial(200, p): for p = 0.05 its standard deviation is 3.1 events (1.5
points), for p = 0.95 the same. The bounds below allow 3 standard deviations (4.6 points) plus what is known
of each method: the percentile bootstrap under-covers slightly at small n (a point or two at n = 60), the exact
McNemar test is conservative (its false-positive rate is below 5%).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hopscotch.evaluate.stats import (bootstrap_ci, compare_accuracy, compare_loss, mcnemar_exact,
                                      paired_bootstrap)

R = 200
SD = math.sqrt(0.05 * 0.95 / R)  # 0.0154: one binomial standard deviation of a 5% (or 95%) rate over R trials


def _nll_sums(rng, tokens, mean_per_token=1.0):
    """Per-item NLL sums of items with these token counts; per-token NLL ~ Gamma(2) with the given mean."""
    nll = rng.gamma(2.0, mean_per_token / 2.0, size=(tokens.size, 40))
    return (nll * (np.arange(40)[None] < tokens[:, None])).sum(1)


def _loss_items(rng, n, mean_per_token=1.0):
    """Per-item (NLL sum, token count): 5..40 tokens per item."""
    tokens = rng.integers(5, 41, size=n).astype(float)
    return _nll_sums(rng, tokens, mean_per_token), tokens


def test_interval_basics_and_determinism():
    est = bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=3)
    assert est.value == 2.5 and est.low < 2.5 < est.high and 1.0 <= est.low and est.high <= 4.0
    assert est == bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=3)
    d = est.to_dict()
    assert {"value", "low", "high", "n"} <= set(d) and d["n"] == 4
    ppl = bootstrap_ci([2.0, 3.0], [2, 2]).map(math.exp)
    assert ppl.value == pytest.approx(math.exp(1.25))
    assert bootstrap_ci([5.0]).low == bootstrap_ci([5.0]).high == 5.0
    with pytest.raises(ValueError, match="no items"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="one weight per item"):
        bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1.0, 2.0], [1.0])


def test_weighted_statistic_is_the_token_weighted_mean():
    est = bootstrap_ci([10.0, 1.0], [10, 1])
    assert est.value == pytest.approx(11 / 11)


def test_mcnemar_exact_values():
    # 10 discordant items all favouring B: p = 2 / 2**10
    p, only_a, only_b = mcnemar_exact([0] * 10 + [1] * 5, [1] * 10 + [1] * 5)
    assert (only_a, only_b) == (0, 10) and p == pytest.approx(2 / 1024)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1])[0] == 1.0
    p, _, _ = mcnemar_exact([1, 0], [0, 1])  # one each way
    assert p == 1.0


def test_planted_differences_are_found():
    rng = np.random.default_rng(0)
    # Loss: B's per-token NLL is 10% higher on the same 200 items (with item-level noise common to both).
    nll_a, tok = _loss_items(rng, 200)
    nll_b = nll_a * 1.10 * rng.normal(1.0, 0.05, size=200)
    cmp = compare_loss(nll_a, tok, nll_b, tok)
    assert cmp.significant and cmp.diff.low > 0
    assert cmp.diff.low < cmp.b - cmp.a < cmp.diff.high
    assert cmp.diff.value == pytest.approx(0.1 * cmp.a, rel=0.25)
    # Accuracy: B is right on 0.70 of items where A is right on 0.55 (correlated: shared item difficulty).
    difficulty = rng.random(400)
    hits_a = difficulty < 0.55
    hits_b = difficulty < 0.70
    cmp = compare_accuracy(hits_a, hits_b)
    assert cmp.significant and cmp.diff.low > 0 and "McNemar" in cmp.test
    assert cmp.diff.value == pytest.approx(hits_b.mean() - hits_a.mean())


def test_no_difference_is_invented_at_more_than_the_nominal_rate():
    """Two measurements of the same items from the same distribution: about 5% (bootstrap) or at most 5%
    (exact McNemar) of repetitions may come out significant."""
    rng = np.random.default_rng(1)
    false_loss = false_acc = 0
    for r in range(R):
        n = 60
        nll_a, tok = _loss_items(rng, n)
        nll_b = _nll_sums(rng, tok)  # B: a fresh draw for the same items (same token counts)
        false_loss += compare_loss(nll_a, tok, nll_b, tok, resamples=1000, seed=r).significant
        p_item = rng.random(150)
        hits_a = rng.random(150) < p_item
        hits_b = rng.random(150) < p_item
        false_acc += compare_accuracy(hits_a, hits_b, resamples=200, seed=r).significant
    assert false_loss / R <= 0.05 + 3 * SD + 0.01, false_loss  # + 1 point: small-n bootstrap is a bit liberal
    assert false_acc / R <= 0.05 + 3 * SD, false_acc  # exact McNemar is conservative: no extra allowance
    assert false_loss >= 1  # and the test is not degenerate (it can say "significant" at all)


def test_float_rounding_between_runs_is_not_a_difference():
    """The same plan evaluated in two processes: every item's NLL off by ~1e-7 relative, the same way. A bootstrap
    alone calls that consistent shift significant; it is rounding, so p = 1. A real shift of 1e-3 still counts."""
    rng = np.random.default_rng(3)
    tokens = rng.integers(5, 40, size=400).astype(float)
    nll = tokens * rng.uniform(0.5, 1.5, size=400)
    same = compare_loss(nll, tokens, nll * (1 + 3e-7), tokens)
    assert same.p_value == 1.0 and not same.significant
    real = compare_loss(nll, tokens, nll * (1 + 1e-3), tokens)
    assert real.p_value < 0.01 and real.significant


def test_intervals_cover_the_truth_at_about_the_nominal_rate():
    rng = np.random.default_rng(2)
    cover_mean = cover_ratio = cover_acc = 0
    for r in range(R):
        x = rng.exponential(1.0, size=60)  # skewed; true mean 1
        e = bootstrap_ci(x, resamples=1000, seed=r)
        cover_mean += e.low <= 1.0 <= e.high
        nll, tok = _loss_items(rng, 80, mean_per_token=2.0)  # true token-weighted mean 2.0
        e = bootstrap_ci(nll, tok, resamples=1000, seed=r)
        cover_ratio += e.low <= 2.0 <= e.high
        hits = rng.random(200) < 0.6
        e = bootstrap_ci(hits.astype(float), resamples=1000, seed=r)
        cover_acc += e.low <= 0.6 <= e.high
    for name, count in (("mean", cover_mean), ("token-weighted", cover_ratio), ("accuracy", cover_acc)):
        rate = count / R
        # 3 SD either way, plus 2 points below for the percentile bootstrap's known small-sample undercoverage
        assert 0.95 - 3 * SD - 0.02 <= rate <= 0.95 + 3 * SD, (name, rate)


def test_paired_test_is_stronger_than_comparing_two_intervals():
    """A small shift on items whose own variation is large: the intervals of A and B overlap, yet the paired test
    (which cancels the item effect) finds the difference."""
    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 1.0, size=300)
    b = a + 0.05 + rng.normal(0, 0.02, size=300)
    ia, ib = bootstrap_ci(a), bootstrap_ci(b)
    assert ia.high > ib.low  # overlapping
    assert paired_bootstrap(a, b).significant
