"""The lazy strategy of the fast search: trained losses carried from step to step instead of a fresh screen.

A candidate's trained loss, relative to the best of its step, ranks the same way from one step to the next
(SmolLM2, ARC-Easy / BoolQ / HellaSwag, faithful paths: rank correlation 0.77-0.99 between consecutive steps, and
a step's winner was among the previous step's three best trained candidates in 18 of 21 steps), whereas the
untrained screen ranks the winner anywhere from 1st to 12th. So the lazy strategy keeps, for every candidate,
its *latest ratio*: its loss at the last step that trained it divided by the best loss of that step, and:

- **first step**: every candidate is *probed*, trained from fresh scalars on the first ``first_probe`` of the
  step's shared batch order; the ``first_finish`` best probes finish their epoch from where they stopped (which
  gives exactly the faithful loss) and the best of them is skipped. Probe ratios are relative to the best probe,
  trained ratios to the best trained loss.
- **every later step**: the *incumbent* (the lowest latest ratio) is trained in full, and so are
  ``challengers`` more: the best-screened (no training, the previous winner's scalars, on the screen and refine
  batches) of the ``pool`` next-lowest latest ratios. The lowest trained loss wins; each gets a new ratio.

A later step trains 1 + ``challengers`` candidates whatever the model's depth, so the cost of a search to k
blocks is about ``L * first_probe + first_finish * (1 - first_probe) + (1 + challengers) (k - 1)``
candidate-epochs plus the screening of ``pool`` candidates per later step, against
``L + (L - 1) + ... + (L - k + 1)`` for the faithful search; the search records its token-passes as every other
method does (screening and probes included). It picks what the
faithful search picks whenever the faithful winner is the first step's best finished probe and, later, the
incumbent or the challenger.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["first_step", "later_step", "update_ratios"]


def first_step(remaining: list[int], *, probe: Callable[[int], float], finish_probe: Callable[[int], float],
               finishers: int, ratios: dict[int, float]) -> list[int]:
    """Probe every remaining candidate and finish the ``finishers`` best; returns the finished ones.

    ``probe(c)`` trains c on the probe positions and returns its probe loss; ``finish_probe(c)`` finishes it
    and returns its trained loss. ``ratios`` receives every candidate's ratio (the finished ones' trained ratio).
    """
    probes = {c: probe(c) for c in remaining}
    update_ratios(ratios, probes)
    trained = sorted(remaining, key=lambda c: (probes[c], c))[:finishers]
    update_ratios(ratios, {c: finish_probe(c) for c in trained})
    return trained


def later_step(remaining: list[int], *, ratios: dict[int, float], pool: int, challengers: int,
               screen: Callable[[list[int]], dict[int, float]], train: Callable[[int], float]) -> dict:
    """Train the incumbent and the ``challengers`` best-screened of the next ``pool`` by latest ratio; returns
    what was done.

    ``screen(cs)`` scores candidates without training (lower is better); ``train(c)`` trains c one epoch and
    returns its loss. Candidates without a ratio (never trained) rank last, in block order.
    """
    ranked = sorted(remaining, key=lambda c: (ratios.get(c, float("inf")), c))
    incumbent, others = ranked[0], ranked[1:1 + pool]
    scores = screen(others) if len(others) > challengers else {}
    challenger = sorted(others, key=lambda c: (scores.get(c, 0.0), c))[:challengers]
    trained = [incumbent, *challenger]
    update_ratios(ratios, {c: train(c) for c in trained})
    return {"incumbent": incumbent, "challengers": challenger, "trained": trained, "screen": scores}


def update_ratios(ratios: dict[int, float], losses: dict[int, float]) -> None:
    """Each candidate's loss divided by the best loss among ``losses`` (losses of one kind, of one step)."""
    if not losses:
        return
    best = min(losses.values())
    for c, v in losses.items():
        ratios[c] = v / best if best > 0 else v - best + 1.0
