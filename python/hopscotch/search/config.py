"""Every setting of a search, in one place: its default, its check and its help text, written once.

``SearchConfig`` (frozen) holds the settings every method reads; ``FastConfig`` the fast search's screening and
budget; ``ScalarGuard`` (``guards.py``) the guards on the final scalars' training. ``search()`` takes a
``SearchConfig``, ``hopscotch search`` builds one flag per setting from these fields (name, type, default, choices
and help), and the search state records the config as ``as_dict()`` gives it.

Each field is declared with ``setting(default, help, check=..., expected=...)``; ``used_by`` names the methods
whose work the setting steers (the others ignore it, and a resumed search does not compare it). A value of the
wrong type or out of range raises ``ConfigError`` naming the setting, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .baselines import LLM_DROP_TARGETS
from .fields import ConfigError, check_fields, setting
from .guards import ScalarGuard
from .objectives import OBJECTIVES

__all__ = ["METHODS", "GREEDY_METHODS", "SIMILARITY_METHODS", "ConfigError", "FastConfig", "SearchConfig"]

METHODS = ("hopscotch", "hopscotch-fast", "llm-drop", "shortgpt", "random")
GREEDY_METHODS = ("hopscotch", "hopscotch-fast")  # Hopscotch's greedy search, then the final scalars
SIMILARITY_METHODS = ("llm-drop", "shortgpt")  # scored on similarity batches


def _fraction(low_open: bool, high_open: bool) -> tuple[Callable[[float], bool], str]:
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    return ((lambda v: (0 < v if low_open else 0 <= v) and (v < 1 if high_open else v <= 1)),
            f"a fraction in {lo}0, 1{hi}")


@dataclass(frozen=True)
class FastConfig:
    """How ``hopscotch-fast`` finds the candidates it trains each step (``strategies.ScreenStrategy``)."""

    screen_fraction: float = setting(
        0.15, "share of the calibration batches every candidate is screened on (one forward, no training)",
        *_fraction(True, False))
    refine: int = setting(
        10, "the best-screened candidates screened again on further batches (0 = none)",
        lambda v: v >= 0, "0 or more")
    refine_fraction: float = setting(
        0.15, "share of the calibration batches the refinement screens on", *_fraction(False, True))
    shortlist: int = setting(1, "candidates trained per step, at least", lambda v: v >= 1, "1 or more")
    max_shortlist: int = setting(
        3, "most candidates trained per step, when refined screening scores are within --margin of the best",
        lambda v: v >= 1, "1 or more")
    margin: float = setting(
        0.0125, "candidates whose refined screening loss is within this fraction of the best are trained too",
        lambda v: v >= 0, "0 or more")
    budget_ratio: float = setting(
        8.0, "spend at most 1/this of the faithful search's token-passes, screening included (0 = no budget)",
        lambda v: v == 0 or v > 1, "more than 1, or 0 for no budget")
    budget_k: int = setting(
        8, "the budget reserves the final scalars' training of a search to this many blocks",
        lambda v: v >= 1, "1 or more")

    def __post_init__(self):
        check_fields(self)
        if self.max_shortlist < self.shortlist:
            raise ConfigError(type(self).__name__, "max_shortlist", self.max_shortlist,
                              f"at least shortlist ({self.shortlist})")


@dataclass(frozen=True)
class SearchConfig:
    """The settings of one search (see the module docstring). ``search(model, batches, SearchConfig(...))``."""

    method: str = setting(
        "hopscotch-fast",
        "hopscotch: the paper's greedy search (each step trains every remaining candidate's scalars one epoch and "
        "skips the lowest loss); hopscotch-fast: the same rule, training only a shortlist chosen by screening "
        "every candidate without training, within a work budget; llm-drop, shortgpt: similarity baselines "
        "(LLM-Drop, ShortGPT); random: seeded random blocks", choices=METHODS)
    num_skip: int = setting(4, "blocks to skip", lambda v: v >= 0, "0 or more", short="-k")
    objective: str = setting(
        "nll", "what the scalars are trained to lower: nll of the batches' labels (the model's own answers for "
        "self-distill), or kl to the original model's next-token distribution", choices=OBJECTIVES, cli=False)
    seed: int = setting(0, "seed of the search: its data orders and screening batches, and random's blocks (not of "
                        "the task's split into calibration and evaluation items)")
    lr: float = setting(1e-2, "Adam lr when scoring candidates", lambda v: v > 0, "a positive learning rate",
                        used_by=GREEDY_METHODS)
    candidate_epochs: int = setting(
        1, "training budget of each candidate: epochs over the calibration batches (the paper's: 1)",
        lambda v: v >= 1, "1 or more", used_by=GREEDY_METHODS)
    final_lr: float = setting(3e-3, "Adam lr of the final scalars", lambda v: v > 0, "a positive learning rate",
                              used_by=GREEDY_METHODS)
    final_epochs: int = setting(3, "epochs of the final scalars", lambda v: v >= 0, "0 or more",
                                used_by=GREEDY_METHODS)
    final_batch_size: int = setting(
        1, "batch size of the final scalars' training, over the same calibration rows (1: more Adam steps for the "
        "same tokens; 0 keeps the calibration batches)", lambda v: v >= 0, "0 or more", used_by=GREEDY_METHODS)
    target: str = setting("attn", "llm-drop: which modules to drop", choices=LLM_DROP_TARGETS, used_by=("llm-drop",))
    iterative: bool = setting(False, "llm-drop: rescore after each drop", used_by=("llm-drop",))
    fast: FastConfig = setting(FastConfig(), "hopscotch-fast: screening, shortlist and budget",
                               used_by=("hopscotch-fast",))
    guard: ScalarGuard = setting(ScalarGuard(), "guards on the final scalars' training (all 0: the paper's, "
                                 "task data only)", used_by=GREEDY_METHODS)

    def __post_init__(self):
        check_fields(self)

    # ---- dicts ---------------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """Every setting, groups as nested dicts (what the search state and the plan's provenance record)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchConfig":
        """The config ``as_dict`` gave (unknown keys refused; missing ones take their defaults)."""
        groups = {f.name: _group_type(cls, f) for f in dataclasses.fields(cls) if _group_type(cls, f)}
        kwargs = {}
        for key, value in data.items():
            if key not in {f.name for f in dataclasses.fields(cls)}:
                raise ConfigError(cls.__name__, key, value, "a setting of SearchConfig")
            kwargs[key] = groups[key](**value) if key in groups and isinstance(value, dict) else value
        return cls(**kwargs)

    def replace(self, **settings) -> "SearchConfig":
        """A copy with ``settings`` changed, named flat (``margin=0.02`` sets ``fast.margin``; ``fast=FastConfig()``
        replaces the group)."""
        if not settings:
            return self
        owners = {f.name: None for f in dataclasses.fields(self)}  # top-level settings and whole groups
        owners.update({name: group for group, name, _ in self.settings()})
        unknown = sorted(set(settings) - set(owners))
        if unknown:
            raise ConfigError(type(self).__name__, unknown[0], settings[unknown[0]],
                              "a setting (" + ", ".join(owners) + ")")
        top = {k: v for k, v in settings.items() if owners[k] is None}
        for group in {owners[k] for k in settings} - {None}:
            top[group] = dataclasses.replace(top.get(group, getattr(self, group)),
                                             **{k: v for k, v in settings.items() if owners[k] == group})
        return dataclasses.replace(self, **top)

    @classmethod
    def settings(cls) -> Iterator[tuple[str | None, str, dataclasses.Field]]:
        """Every leaf setting as (group or None, name, field), in declaration order; names are unique."""
        for f in dataclasses.fields(cls):
            group = _group_type(cls, f)
            if group is None:
                yield None, f.name, f
            else:
                for g in dataclasses.fields(group):
                    yield f.name, g.name, g

    @property
    def skip_kind(self) -> str:
        """What ``num_skip`` counts: attention blocks, whole layers (shortgpt), or llm-drop's ``target``."""
        return "block" if self.method == "shortgpt" else self.target if self.method == "llm-drop" else "attn"

    def value(self, group: str | None, name: str) -> Any:
        return getattr(getattr(self, group) if group else self, name)

    # ---- what a resumed search compares ----------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """The settings that steer the work a search state records, flat (``fast.margin``): those its method
        reads, less ``num_skip`` for the greedy methods (their steps do not depend on it, and the final training
        is recorded per k, so one state serves searches for any k)."""
        out = {}
        for f in dataclasses.fields(self):
            used = f.metadata.get("used_by")
            if used is not None and self.method not in used:
                continue
            if f.name == "num_skip" and self.method in GREEDY_METHODS:
                continue
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                out.update({f"{f.name}.{k}": v for k, v in dataclasses.asdict(value).items()})
            else:
                out[f.name] = value
        return out


def _group_type(cls, f: dataclasses.Field):
    hint = typing.get_type_hints(cls)[f.name]
    return hint if dataclasses.is_dataclass(hint) else None

