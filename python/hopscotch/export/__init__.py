"""Export a skipped model: scalars folded into the weights; hopscotch, DeciLM or vanilla checkpoints, or a llama.cpp
GGUF file."""

from .fold import FoldError, output_scales
from .formats import FORMATS, ExportError
from .gguf_export import export_gguf
from .loader import from_pretrained
from .writer import export_model

__all__ = ["FORMATS", "ExportError", "FoldError", "export_gguf", "export_model", "from_pretrained", "output_scales"]
