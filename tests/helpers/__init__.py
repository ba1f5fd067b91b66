"""What the tests share, imported as ``tests.helpers.<module>``; none of these modules holds a test.

* ``model_testing``: tiny random models of every supported architecture, tolerances, padded batches, references.
* ``tiny_models``: a tiny trained tokenizer and a random Llama sized for it (the data, evaluate and CLI tests).
* ``op_testing``: devices, dtypes, shapes and oracles for the op tests.
* ``dispatch_counts``: which ops a patched model dispatches, and which the pure-torch references serve.
* ``cli_testing``: a tiny HF model directory, and ``run_cli`` (the ``hopscotch`` command in-process).
* ``decilm_reference``: an independent reader of a decilm export (what vLLM's DeciLM model computes).
* ``vllm_testing``: vLLM's offline engine and ``vllm serve`` in vLLM's own venv.

Scripts run in a subprocess, by path: ``cli_probe.py`` (many command lines in one process) and ``vllm_worker.py``
(runs under vLLM's python). A subprocess that imports a helper puts ``ROOT`` on its sys.path first.
"""

from pathlib import Path

HELPERS = Path(__file__).resolve().parent
ROOT = HELPERS.parents[1]  # the checkout: holds the ``tests`` package
DATA = ROOT / "tests" / "data_fixtures"  # committed files the tests read (plans)
