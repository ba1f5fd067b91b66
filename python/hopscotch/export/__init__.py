"""Export a skipped model: scalars folded into the weights; hopscotch, DeciLM or vanilla checkpoints, or a llama.cpp
GGUF file."""

from .formats import FORMATS, ExportError
from .loader import from_pretrained
from .writer import export_model

__all__ = ["FORMATS", "ExportError", "export_model", "from_pretrained"]
