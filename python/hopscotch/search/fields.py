"""How a setting is declared and checked: ``setting(default, help, check, expected, ...)`` on a field of a frozen
dataclass, and ``check_fields`` in its ``__post_init__`` (``config.py``, ``guards.py`` and ``tasks.TaskConfig`` use
them).

The field's annotation gives its type (int, float, str, bool, one of these or None, or a nested settings
dataclass); ``check`` and ``expected`` its range; ``choices`` its allowed strings. A bad value raises
``ConfigError`` naming the owner, the setting, the value and what was expected; the command line rewrites it as
``--flag VALUE: expected ...``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable

from ..errors import ArgumentError, show_value

__all__ = ["ConfigError", "setting", "check_fields"]


class ConfigError(ArgumentError):
    """A setting of the wrong type or out of range: ``owner``, ``name``, ``value`` and what was ``expected``."""

    def __init__(self, owner: str, name: str, value: Any, expected: str):
        self.owner, self.name, self.value, self.expected = owner, name, value, expected
        super().__init__(f"{owner}: {name}={show_value(value)}; expected {expected}")

    def owned_by(self, owner: str) -> "ConfigError":
        """The same error, named as ``owner``'s argument (``search`` for its keyword settings)."""
        return ConfigError(owner, self.name, self.value, self.expected)


def setting(default: Any, help: str, check: Callable[[Any], bool] | None = None, expected: str = "", *,
            choices: tuple[str, ...] | None = None, used_by: tuple[str, ...] | None = None,
            short: str | None = None, cli: bool = True) -> Any:
    """A dataclass field holding one setting: its default, help text and check, written once.

    ``used_by``: the methods whose work it steers (None: all); ``short``: a short command-line flag;
    ``cli=False``: the command line sets it from elsewhere (the objective comes from the prepared data)."""
    return dataclasses.field(default=default, metadata={
        "help": help, "check": check, "expected": expected, "choices": choices, "used_by": used_by,
        "short": short, "cli": cli})


_KINDS = {int: "an integer", float: "a finite number", str: "a string", bool: "True or False", type(None): "None"}


def _kind_text(kind) -> str:
    """What a value of the annotation ``kind`` is, in words (``bool | None``: "True or False, or None")."""
    parts = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    return ", or ".join(_KINDS.get(k, getattr(k, "__name__", str(k))) for k in parts)


def check_fields(obj) -> None:
    """Check every field of the settings dataclass ``obj`` against its annotation and its ``setting`` metadata;
    ints given for floats are stored as floats (so a config compares and records the same either way)."""
    owner = type(obj).__name__
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        kind, value, meta = hints[f.name], getattr(obj, f.name), f.metadata
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, kind):
                raise ConfigError(owner, f.name, value, f"a {kind.__name__}")
            continue
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise ConfigError(owner, f.name, value, _kind_text(kind))
        if kind is float and not math.isfinite(value):
            raise ConfigError(owner, f.name, value, meta["expected"] or _KINDS[float])
        if kind is float and not isinstance(value, float):
            object.__setattr__(obj, f.name, float(value))
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(owner, f.name, value, "one of " + ", ".join(meta["choices"]))
        if meta.get("check") and not meta["check"](value):
            raise ConfigError(owner, f.name, value, meta["expected"])
