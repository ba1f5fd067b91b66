"""hopscotch: find the attention blocks a task does not need, skip them, and run the thinner model faster."""

__version__ = "0.1.0"

__all__ = ["__version__"]
