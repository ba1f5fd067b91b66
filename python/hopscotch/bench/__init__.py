"""Benchmarks that ship with the package: timing and results helpers, the end-to-end benchmark.

No user API of its own: the benchmark is a command (``hopscotch bench``); ``e2e``, ``results`` and ``llama_cpp``
are its modules, and the scripts in benchmarks/ import them."""

__all__: list[str] = []
