"""Each package's ``__all__`` is its user API, as docs/ARCHITECTURE.md ("Public API") lists it (issue 48): a name
added to or dropped from a package's API changes this list, the document and the code together."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

from hopscotch.errors import HopscotchError
from tests.helpers import ROOT

PUBLIC_API = {
    "hopscotch": ["ArgumentError", "HopscotchCache", "HopscotchError", "PlanError", "SkipPlan", "__version__",
                  "apply_plan", "current_plan", "export_model", "from_pretrained", "is_patched", "patch_model",
                  "set_skips", "unpatch_model"],
    "hopscotch.patch": ["CacheCapacityError", "CacheMismatchError", "HopscotchCache", "apply_plan", "current_plan",
                        "is_patched", "kv_cache_bytes", "patch_model", "set_skips", "unpatch_model"],
    "hopscotch.export": ["ExportError", "FORMATS", "export_model", "from_pretrained"],
    "hopscotch.evaluate": ["Comparison", "Estimate", "LossResult", "MCResult", "answer_loss", "bootstrap_ci",
                           "compare_accuracy", "compare_loss", "lm_eval_accuracy", "mean_nll",
                           "multiple_choice_accuracy", "perplexity"],
    "hopscotch.data": ["DataError", "DataSplit", "Document", "MultipleChoice", "PromptAnswer", "load_task",
                       "pack_texts", "packaged_tasks", "prompt_answer_batches", "read_data_file",
                       "self_distill_targets", "split_items", "wikipedia_split"],
    "hopscotch.search": ["ConfigError", "FastConfig", "METHODS", "OBJECTIVES", "ScalarGuard", "SearchConfig",
                         "StateMismatchError", "search"],
    "hopscotch.bench": [],
    "hopscotch.cli": ["main"],
    "hopscotch_ext": ["EXTENSION_LOADED", "add_rms_norm", "functional", "info", "ops", "reference", "reference_calls",
                      "rms_norm", "rotary_embedding", "rotary_embedding_kv_cache", "rotary_embedding_out", "rotate_qk",
                      "scaled_add_rms_norm", "scaled_add_rms_norm_", "silu_and_mul", "silu_gate_up"],
}


def documented_api() -> dict[str, list[str]]:
    """docs/ARCHITECTURE.md's "Public API" section: package -> the names it lists (in backquotes)."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## 5. Public API", 1)[1].split("\n## ", 1)[0]
    entries = re.findall(r"^- `([\w.]+)`: (.*?)(?=^- |\Z)", section, flags=re.M | re.S)
    return {pkg: sorted(re.findall(r"`([\w.]+)`", body)) for pkg, body in entries}


@pytest.mark.parametrize("package", sorted(PUBLIC_API))
def test_each_package_exports_its_user_api(package):
    module = importlib.import_module(package)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{package} has no __all__"
    assert len(set(exported)) == len(exported), f"{package}.__all__ names something twice"
    assert sorted(exported) == sorted(PUBLIC_API[package])
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{package}.__all__ names {missing}, which it does not define"


def test_the_architecture_document_lists_the_same_api():
    assert documented_api() == {pkg: sorted(names) for pkg, names in PUBLIC_API.items()}


@pytest.mark.parametrize("package", sorted(p for p in PUBLIC_API if p.startswith("hopscotch.") or p == "hopscotch"))
def test_every_exported_error_is_a_hopscotch_error(package):
    """A user catches hopscotch's refusals with one class: each error a package exports derives from it."""
    module = importlib.import_module(package)
    errors = [n for n in module.__all__ if inspect.isclass(getattr(module, n)) and
              issubclass(getattr(module, n), BaseException)]
    assert [n for n in errors if not issubclass(getattr(module, n), HopscotchError)] == []
