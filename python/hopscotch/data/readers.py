"""Readers for local data files: plain text, JSONL with ``text``, JSONL with ``prompt``/``answer``, and
multiple-choice JSONL (``query``, ``choices``, ``gold``).

Every problem raises :class:`DataError` naming the file, the 1-based line and what was expected. An item's id is
its ``id`` field when the line has one (string or integer), else ``"<file name>:<line>"``; ids must be unique.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from .errors import DataError, where
from .items import Document, MultipleChoice, PromptAnswer

__all__ = [
    "read_text_file",
    "read_text_jsonl",
    "read_prompt_answer_jsonl",
    "read_multiple_choice_jsonl",
    "read_data_file",
]

_EXPECT_TEXT = 'one JSON object per line with a string field "text"'
_EXPECT_PA = 'one JSON object per line with string fields "prompt" and "answer"'
_EXPECT_MC = ('one JSON object per line with "query" (string), "choices" (a list of at least 2 strings) and '
              '"gold" (the 0-based index of the right choice)')


def _read_lines(path: str | os.PathLike, expected: str) -> list[str]:
    """The file's lines, decoded as UTF-8; errors for a missing, unreadable, non-UTF-8 or empty file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"file not found; expected {expected}", str(path))
    if not path.is_file():
        raise DataError(f"not a regular file; expected {expected}", str(path))
    raw = path.read_bytes()
    lines = []
    for n, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"bytes that are not UTF-8 at column {e.start + 1} ({chunk[e.start:e.start + 4]!r}); "
                            f"expected UTF-8 text", where(path, n)) from None
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]  # a UTF-8 byte-order mark is not content
    if not any(line.strip() for line in lines):
        raise DataError(f"file is empty; expected {expected}", str(path))
    return [line.rstrip("\r") for line in lines]


def _iter_jsonl(path: str | os.PathLike, expected: str) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) for every non-blank line."""
    for n, line in enumerate(_read_lines(path, expected), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON (at column {e.colno}); expected {expected}",
                            where(path, n)) from None
        if not isinstance(obj, dict):
            raise DataError(f"a JSON {type(obj).__name__}, not an object; expected {expected}", where(path, n))
        yield n, obj


def _string_field(obj: dict, key: str, src: str, expected: str, *, allow_empty: bool = False) -> str:
    if key not in obj:
        raise DataError(f'missing field "{key}" (fields present: {", ".join(sorted(obj)) or "none"}); '
                        f"expected {expected}", src)
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f'field "{key}" is {json.dumps(value)[:60]}, not a string; expected {expected}', src)
    if not allow_empty and not value.strip():
        raise DataError(f'field "{key}" is empty; expected {expected}', src)
    return value


def _item_id(obj: dict, path: Path, line: int, seen: dict[str, int]) -> str:
    src = where(path, line)
    if "id" in obj:
        value = obj["id"]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DataError(f'field "id" is {json.dumps(value)[:60]}; expected a string or an integer', src)
        item_id = str(value)
    else:
        item_id = f"{path.name}:{line}"
    if item_id in seen:
        raise DataError(f"id {item_id!r} already used on line {seen[item_id]}; ids must be unique", src)
    seen[item_id] = line
    return item_id


def read_text_file(path: str | os.PathLike) -> list[Document]:
    """Paragraphs (blocks separated by blank lines) of a UTF-8 text file, id ``"<file name>:<first line>"``."""
    path = Path(path)
    docs, block, start = [], [], None
    for n, line in enumerate(_read_lines(path, "UTF-8 text") + [""], start=1):
        if line.strip():
            if start is None:
                start = n
            block.append(line)
        elif block:
            docs.append(Document(f"{path.name}:{start}", "\n".join(block), where(path, start)))
            block, start = [], None
    return docs


def read_text_jsonl(path: str | os.PathLike) -> list[Document]:
    """Documents from JSONL lines with a ``text`` field (and optionally ``id``)."""
    path, seen = Path(path), {}
    return [Document(_item_id(obj, path, n, seen), _string_field(obj, "text", where(path, n), _EXPECT_TEXT),
                     where(path, n))
            for n, obj in _iter_jsonl(path, _EXPECT_TEXT)]


def read_prompt_answer_jsonl(path: str | os.PathLike) -> list[PromptAnswer]:
    """Prompt/answer items from JSONL lines with ``prompt`` and ``answer`` (and optionally ``id``)."""
    path, seen, items = Path(path), {}, []
    for n, obj in _iter_jsonl(path, _EXPECT_PA):
        src = where(path, n)
        prompt = _string_field(obj, "prompt", src, _EXPECT_PA)
        answer = _string_field(obj, "answer", src, _EXPECT_PA)
        items.append(PromptAnswer(_item_id(obj, path, n, seen), prompt, answer, source=src))
    return items


def read_multiple_choice_jsonl(path: str | os.PathLike) -> list[MultipleChoice]:
    """Multiple-choice items from JSONL lines with ``query``, ``choices``, ``gold`` (and optionally ``id``)."""
    path, seen, items = Path(path), {}, []
    for n, obj in _iter_jsonl(path, _EXPECT_MC):
        src = where(path, n)
        query = _string_field(obj, "query", src, _EXPECT_MC)
        choices = obj.get("choices")
        if "choices" not in obj:
            raise DataError(f'missing field "choices"; expected {_EXPECT_MC}', src)
        if not isinstance(choices, list) or len(choices) < 2:
            raise DataError(f'field "choices" is {json.dumps(choices)[:80]}; expected {_EXPECT_MC}', src)
        for i, c in enumerate(choices):
            if not isinstance(c, str) or not c.strip():
                raise DataError(f'choice {i} is {json.dumps(c)[:80]}; expected a non-empty string', src)
        if "gold" not in obj:
            raise DataError(f'missing field "gold"; expected {_EXPECT_MC}', src)
        gold = obj["gold"]
        if isinstance(gold, bool) or not isinstance(gold, int):
            raise DataError(f'field "gold" is {json.dumps(gold)[:80]}; expected an integer index into "choices"',
                            src)
        if not 0 <= gold < len(choices):
            raise DataError(f'field "gold" is {gold}, out of range; expected 0..{len(choices) - 1} '
                            f"for {len(choices)} choices", src)
        items.append(MultipleChoice(_item_id(obj, path, n, seen), query, tuple(choices), gold, src))
    return items


def read_data_file(path: str | os.PathLike, kind: str | None = None):
    """Read any supported file; ``kind`` is ``"text"``, ``"prompt_answer"`` or ``"multiple_choice"``, or None to
    tell from the file (``.txt`` is text; JSONL by the first line's fields)."""
    readers = {"text": None, "prompt_answer": read_prompt_answer_jsonl,
               "multiple_choice": read_multiple_choice_jsonl}
    path = Path(path)
    if kind is not None and kind not in readers:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {', '.join(readers)}")
    if kind is None:
        if path.suffix not in (".jsonl", ".json"):
            return read_text_file(path)
        expected = f"JSONL in one of the formats: {_EXPECT_TEXT}; {_EXPECT_PA}; {_EXPECT_MC}"
        _, first = next(_iter_jsonl(path, expected))
        if "query" in first or "choices" in first:
            kind = "multiple_choice"
        elif "prompt" in first or "answer" in first:
            kind = "prompt_answer"
        elif "text" in first:
            return read_text_jsonl(path)
        else:
            raise DataError(f"cannot tell the format from the first object's fields "
                            f"({', '.join(sorted(first)) or 'none'}); expected {expected}", str(path))
    if kind == "text":
        return read_text_jsonl(path) if path.suffix in (".jsonl", ".json") else read_text_file(path)
    return readers[kind](path)
