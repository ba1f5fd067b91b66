"""Export a skipped model: scalars folded into the weights; hopscotch, DeciLM or vanilla checkpoints."""

from .fold import FoldError, output_scales
from .formats import FORMATS, ExportError
from .loader import from_pretrained
from .writer import export_model

__all__ = ["FORMATS", "ExportError", "FoldError", "export_model", "from_pretrained", "output_scales"]
