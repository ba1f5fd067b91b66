"""hopscotch's version, in a module of its own: pyproject.toml reads it without importing anything, and the
package's modules import it without importing the package root."""

__version__ = "0.1.0"
