"""Every script under experiments/ imports against the package as it is now.

The studies are run by hand, rarely, so a renamed helper breaks them silently: both_orders.py imported
``append_row`` from ``hopscotch.bench.results`` for a whole landing after it had moved to experiments/rows.py. Importing
a script runs no study (each starts under ``if __name__ == "__main__"``)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
SCRIPTS = sorted(p.stem for p in EXPERIMENTS.glob("*.py"))


def test_there_are_scripts():
    assert "both_orders" in SCRIPTS and "rows" in SCRIPTS, SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_imports(name, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    # experiments/common.py sets a default results folder in the environment: keep it from the other tests
    monkeypatch.setenv("HOPSCOTCH_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", [name])
    before = {m: sys.modules.pop(m) for m in SCRIPTS if m in sys.modules}
    try:
        importlib.import_module(name)
    finally:  # the scripts' modules (their `common` among them) leave with the test: benchmarks/ has a `common` too
        for m in SCRIPTS:
            sys.modules.pop(m, None)
        sys.modules.update(before)
