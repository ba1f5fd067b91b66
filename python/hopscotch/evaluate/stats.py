"""Uncertainty of every reported figure: bootstrap confidence intervals over items, and paired tests.

Everything here resamples *items* (an evaluation question, a prompt/answer pair, a packed text block), never
tokens: tokens of one item are not independent. A loss is the token-weighted mean NLL, so an item contributes
its NLL sum and its token count and the statistic is the ratio ``sum(nll) / sum(tokens)`` recomputed on every
resample; an accuracy is the mean of per-item 0/1 hits; a perplexity is ``exp`` of the loss interval (the
percentile interval transforms exactly under a monotone function).

- :func:`bootstrap_ci`: percentile bootstrap, ``resamples`` (default 2000) seeded draws, 95% by default.
- :func:`paired_bootstrap`: two measurements of the *same* items (two plans, or a plan and the original model);
  resamples item indices once for both, so the item-to-item variation common to both cancels. Two-sided p-value
  from the bootstrap distribution of the difference centred on its observed value.
- :func:`mcnemar_exact`: for paired 0/1 outcomes (accuracy): the exact binomial test on the discordant items.

Numpy only; deterministic for a given ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["DEFAULT_RESAMPLES", "RESOLUTION", "Estimate", "Comparison", "bootstrap_ci", "paired_bootstrap", "mcnemar_exact",
           "compare_accuracy", "compare_loss"]

DEFAULT_RESAMPLES = 2000
RESOLUTION = 1e-5  # relative differences of two statistics at or below this are float rounding (paired_bootstrap)
_CHUNK = 4_000_000  # resample indices drawn at most this many at a time (memory)


@dataclass(frozen=True)
class Estimate:
    """A statistic with its percentile-bootstrap interval over ``n`` items."""

    value: float
    low: float
    high: float
    n: int
    confidence: float = 0.95
    resamples: int = DEFAULT_RESAMPLES

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n,
                "confidence": self.confidence, "resamples": self.resamples, "method": "percentile bootstrap over items"}

    def map(self, fn: Callable[[float], float]) -> "Estimate":
        """The same interval through a monotone increasing function (e.g. ``math.exp`` for perplexity)."""
        return Estimate(fn(self.value), fn(self.low), fn(self.high), self.n, self.confidence, self.resamples)

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


@dataclass(frozen=True)
class Comparison:
    """B minus A on the same items: the difference, its interval, a two-sided p-value and the test used."""

    metric: str
    a: float
    b: float
    diff: Estimate
    p_value: float
    test: str
    alpha: float = 0.05

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    def to_dict(self) -> dict:
        return {"metric": self.metric, "a": self.a, "b": self.b, "diff": self.diff.to_dict(), "p_value": self.p_value,
                "significant": self.significant, "alpha": self.alpha, "test": self.test}


def _arrays(values, weights):
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("no items: a confidence interval needs at least one item")
    if not np.all(np.isfinite(v)):
        raise ValueError("per-item values must be finite")
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != v.shape:
            raise ValueError(f"{v.size} values but {w.size} weights; expected one weight per item")
        if np.any(w < 0) or w.sum() <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
    return v, w


def _stat(v, w):
    return float(v.sum() / w.sum()) if w is not None else float(v.mean())


def _resampled_counts(n: int, resamples: int, seed: int):
    """Yield blocks of multinomial resample counts [r, n] (how often each item is drawn), seeded."""
    rng = np.random.default_rng(seed)
    per = max(1, _CHUNK // max(n, 1))
    done = 0
    while done < resamples:
        r = min(per, resamples - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=r).astype(np.float64)
        done += r


def _boot(arrays: Sequence[tuple[np.ndarray, np.ndarray | None]], resamples: int, seed: int) -> np.ndarray:
    """[resamples, len(arrays)]: each statistic on the same resampled items."""
    n = arrays[0][0].size
    out = []
    for counts in _resampled_counts(n, resamples, seed):
        cols = []
        for v, w in arrays:
            num = counts @ v
            den = counts @ w if w is not None else counts.sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                cols.append(num / den)
        out.append(np.stack(cols, 1))
    return np.concatenate(out, 0)


def _percentile(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    lo, hi = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def bootstrap_ci(values: Sequence[float], weights: Sequence[float] | None = None, *,
                 resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Percentile-bootstrap interval of the mean of ``values`` (or of ``sum(values) / sum(weights)``: the
    token-weighted loss when values are per-item NLL sums and weights their token counts)."""
    v, w = _arrays(values, weights)
    value = _stat(v, w)
    if v.size == 1:
        return Estimate(value, value, value, 1, confidence, resamples)
    lo, hi = _percentile(_boot([(v, w)], resamples, seed)[:, 0], confidence)
    return Estimate(value, lo, hi, int(v.size), confidence, resamples)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], weights_a: Sequence[float] | None = None,
                     weights_b: Sequence[float] | None = None, *, resamples: int = DEFAULT_RESAMPLES,
                     confidence: float = 0.95, seed: int = 0, metric: str = "mean", alpha: float = 0.05) -> Comparison:
    """Paired comparison of statistic(B) - statistic(A) on the same items (item i of ``a`` is item i of ``b``).

    The items are resampled once per draw and both statistics recomputed on that draw; the interval is the
    percentile interval of the differences, and the two-sided p-value is the share of draws whose difference lies
    at least as far from the observed difference as the observed difference lies from 0 (the bootstrap
    distribution shifted to the null of no difference). A difference within ``RESOLUTION`` (relative) of the
    statistics is rounding, not an effect (the same plan evaluated in two processes differs by ~1e-7 in float32,
    consistently on every item, which a bootstrap alone would call significant): its p-value is 1.
    """
    va, wa = _arrays(a, weights_a)
    vb, wb = _arrays(b, weights_b)
    if va.size != vb.size:
        raise ValueError(f"paired comparison of {va.size} and {vb.size} items; expected the same items in both")
    sa, sb = _stat(va, wa), _stat(vb, wb)
    d = sb - sa
    if va.size == 1:
        return Comparison(metric, sa, sb, Estimate(d, d, d, 1, confidence, resamples), 1.0, "paired bootstrap", alpha)
    boot = _boot([(va, wa), (vb, wb)], resamples, seed)
    diffs = boot[:, 1] - boot[:, 0]
    diffs = diffs[np.isfinite(diffs)]
    lo, hi = _percentile(diffs, confidence)
    extreme = np.abs(diffs - d) >= abs(d) - 1e-12 * max(1.0, abs(d))
    rounding = abs(d) <= RESOLUTION * max(abs(sa), abs(sb))
    p = float((extreme.sum() + 1) / (diffs.size + 1)) if d != 0 and not rounding else 1.0
    return Comparison(metric, sa, sb, Estimate(d, lo, hi, int(va.size), confidence, resamples), min(p, 1.0),
                      "paired bootstrap", alpha)


def mcnemar_exact(hits_a: Sequence[int | bool], hits_b: Sequence[int | bool]) -> tuple[float, int, int]:
    """Exact McNemar test of paired 0/1 outcomes: (two-sided p-value, #A right & B wrong, #A wrong & B right).

    Under the null (no difference) each discordant item is equally likely to favour either side, so the smaller
    count is Binomial(b + c, 1/2); p = min(1, 2 * P(X <= min(b, c))).
    """
    a = np.asarray(hits_a, dtype=bool).reshape(-1)
    b = np.asarray(hits_b, dtype=bool).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison of {a.size} and {b.size} items; expected the same items in both")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0, 0, 0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail), only_a, only_b


def compare_accuracy(hits_a: Sequence[int | bool], hits_b: Sequence[int | bool], *, metric: str = "acc",
                     resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95, seed: int = 0,
                     alpha: float = 0.05) -> Comparison:
    """Accuracy of B minus A on the same items: paired-bootstrap interval of the difference, exact McNemar p."""
    boot = paired_bootstrap(np.asarray(hits_a, float), np.asarray(hits_b, float), resamples=resamples,
                            confidence=confidence, seed=seed, metric=metric, alpha=alpha)
    p, only_a, only_b = mcnemar_exact(hits_a, hits_b)
    return Comparison(metric, boot.a, boot.b, boot.diff, p,
                      f"exact McNemar ({only_a} items only A got right, {only_b} only B)", alpha)


def compare_loss(nll_a: Sequence[float], tokens_a: Sequence[float], nll_b: Sequence[float],
                 tokens_b: Sequence[float], *, metric: str = "loss", resamples: int = DEFAULT_RESAMPLES,
                 confidence: float = 0.95, seed: int = 0, alpha: float = 0.05) -> Comparison:
    """Token-weighted loss of B minus A on the same items (per-item NLL sums and token counts): paired bootstrap."""
    return paired_bootstrap(nll_a, nll_b, tokens_a, tokens_b, resamples=resamples, confidence=confidence, seed=seed,
                            metric=metric, alpha=alpha)
