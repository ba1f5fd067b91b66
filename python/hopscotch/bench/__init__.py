"""Benchmarks that ship with the package: timing and results helpers, the end-to-end benchmark."""
