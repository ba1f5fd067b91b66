"""The errors hopscotch raises on purpose, and the argument checks of its public functions.

Every error meant for the user derives from ``HopscotchError`` (the command line prints it as one line, exit
status 2). ``ArgumentError`` is what a public function (``patch_model``, ``apply_plan``, ``set_skips``,
``SkipPlan.load``, ``export_model``, ``from_pretrained``, ``search``, ``load_model``) raises when handed an
argument of the wrong kind: it names the function, the argument, the value and what was expected, instead of an
``AttributeError`` or ``TypeError`` from deep inside. It is a ``TypeError`` and a ``ValueError`` both, so code
that caught either before still does.
"""

from __future__ import annotations

import math
import operator
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["ArgumentError", "ExportError", "HopscotchError", "ModelLoadError", "ModelNotFoundError", "PlanError",
           "as_index_list", "as_path", "check_arg", "parse_size", "show_value"]


class HopscotchError(Exception):
    """Base of the errors hopscotch raises about its input (arguments, files, plans, models)."""


class ArgumentError(HopscotchError, TypeError, ValueError):
    """A public function got an argument of the wrong type or form."""


class PlanError(HopscotchError, ValueError):
    """A plan that cannot be read, or that does not fit the model it is applied to."""


class ExportError(HopscotchError, ValueError):
    """The model, plan or destination cannot be exported as asked (``export_model``, ``hopscotch export``)."""


class ModelNotFoundError(HopscotchError, FileNotFoundError):
    """The requested model (path, GGUF file or packaged model) is not there."""


class ModelLoadError(HopscotchError, ValueError):
    """A checkpoint that would load with weights missing or newly initialised, or that cannot be loaded here."""


def show_value(value: Any, limit: int = 60) -> str:
    """``'plan.json' (str)``: a short repr and the type, for error messages (``<LlamaForCausalLM>`` for an object
    whose repr spans lines, such as a model)."""
    text = repr(value)
    if "\n" in text:
        return f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} ({type(value).__name__})"


def check_arg(ok: bool, func: str, name: str, value: Any, expected: str) -> None:
    """Raise ``ArgumentError("func: name=<value> (<type>); expected <expected>")`` unless ``ok``."""
    if not ok:
        raise ArgumentError(f"{func}: {name}={show_value(value)}; expected {expected}")


def as_path(value: Any, func: str, name: str) -> Path:
    """``value`` as a Path: a str or os.PathLike, else ArgumentError."""
    check_arg(isinstance(value, (str, os.PathLike)) and str(value) != "", func, name, value,
              "a path (a non-empty str or os.PathLike)")
    return Path(value)


def as_index_list(values: Any, func: str, name: str) -> list[int]:
    """``values`` as a list of block indices (ints, numpy ints; not bools), order and duplicates kept."""
    expected = "an iterable of integer block indices (e.g. [6, 7])"
    check_arg(values is not None and not isinstance(values, (str, bytes, dict)) and hasattr(values, "__iter__"),
              func, name, values, expected)
    out = []
    for v in values:
        try:
            index = None if isinstance(v, bool) else operator.index(v)
        except TypeError:
            index = None
        if index is None:
            raise ArgumentError(f"{func}: {name}={show_value(values)} holds {v!r}; expected {expected}")
        out.append(index)
    return out


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]B)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_size(value: Any, name: str) -> int:
    """A size in bytes from an int or a string such as ``"5GB"``, ``"500MB"``, ``"20KB"`` or ``"1000000"``."""
    expected = "a size such as 5GB, 500MB or 20KB, or a number of bytes"
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and _SIZE.match(value):
        number, unit = _SIZE.match(value).groups()
        size = math.floor(float(number) * _UNITS[unit.upper() if unit else None])
    else:
        raise ArgumentError(f"{name} {value!r}: expected {expected}")
    if size <= 0:
        raise ArgumentError(f"{name} {value!r}: expected a positive size ({expected})")
    return size
