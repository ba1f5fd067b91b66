"""What an export is: ``read_export_info(path)`` tells, from its config (or GGUF metadata) and plan, whether
``export_model`` wrote a directory or file, in which format and with which plan; a model loaded from an export
carries that ``ExportInfo`` (``export_info(model)``), and ``apply_plan``, ``search`` and ``export_model`` refuse
to put a plan on top of one whose plan is already in its weights."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError
from ..paths import json_problem
from ..plan import SkipPlan
from .formats import HOPSCOTCH_CONFIG_KEY, export_plan_path

__all__ = ["EXPORT_ATTRIBUTE", "ExportInfo", "export_info", "mark_export", "read_export_info"]

EXPORT_ATTRIBUTE = "hopscotch_export"  # where a loaded export carries its ExportInfo (read by apply_plan)


@dataclass(frozen=True)
class ExportInfo:
    """What an export directory (or gguf file) written by ``export_model`` holds: its format, the blocks its plan
    skips (already folded into its weights), the plan's method and where the plan's provenance is."""

    format: str
    path: Path
    skipped_attention: tuple[int, ...]
    skipped_mlp: tuple[int, ...]
    method: str | None = None
    plan: Path | None = None

    def describe(self) -> str:
        mlp = f", MLP blocks {list(self.skipped_mlp)}" if self.skipped_mlp else ""
        how = f" ({self.method})" if self.method else ""
        return (f"{self.format} export of a plan{how} skipping attention blocks "
                f"{list(self.skipped_attention) or '-'}{mlp}")


def read_export_info(path: str | os.PathLike) -> ExportInfo | None:
    """What ``path`` is if ``export_model`` wrote it (None: a plain model directory or GGUF file), read from its
    config (or GGUF metadata) and plan, without loading weights."""
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return _gguf_export_info(p)
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelLoadError(f"{cfg_path} is {json_problem(exc)}") from None
    plan_path = export_plan_path(p)
    entry = cfg.get(HOPSCOTCH_CONFIG_KEY) if isinstance(cfg, dict) else None
    if isinstance(entry, dict):
        return ExportInfo("hopscotch", p, tuple(entry.get("skipped_attention") or ()),
                          tuple(entry.get("skipped_mlp") or ()), entry.get("method"), plan_path)
    if isinstance(cfg, dict) and cfg.get("model_type") == "nemotron-nas":
        blocks = cfg.get("block_configs") or []
        method = _plan_method(plan_path)
        return ExportInfo("decilm", p, tuple(i for i, b in enumerate(blocks) if b.get("attention", {}).get("no_op")),
                          tuple(i for i, b in enumerate(blocks) if b.get("ffn", {}).get("no_op")), method, plan_path)
    if plan_path is not None:
        plan = SkipPlan.load(plan_path)
        return ExportInfo("vanilla", p, tuple(plan.skipped_attention), tuple(plan.skipped_mlp),
                          plan.provenance.get("method"), plan_path)
    return None


def _plan_method(plan_path: Path | None) -> str | None:
    if plan_path is None:
        return None
    return SkipPlan.load(plan_path).provenance.get("method")


def _gguf_export_info(path: Path) -> ExportInfo | None:
    try:
        import gguf

        fields = gguf.GGUFReader(path).fields
    except Exception:  # not a readable GGUF: transformers says why when it loads it
        return None
    if "hopscotch.skipped_attention" not in fields:
        return None

    def text(key):
        f = fields.get(key)
        return bytes(f.parts[f.data[0]]).decode("utf-8", "replace") if f is not None else None

    return ExportInfo("gguf", path, tuple(json.loads(text("hopscotch.skipped_attention") or "[]")), (),
                      text("hopscotch.method"))


def mark_export(model, path: str | os.PathLike, format: str, skipped_attention, skipped_mlp, method=None) -> None:
    """Record on ``model`` that it was loaded from an export (``export_info`` reads it; apply_plan refuses)."""
    setattr(model, EXPORT_ATTRIBUTE, ExportInfo(format, Path(path), tuple(skipped_attention), tuple(skipped_mlp),
                                                method, export_plan_path(path)))


def export_info(model) -> ExportInfo | None:
    """The ExportInfo of a model loaded from an export, else None."""
    return getattr(model, EXPORT_ATTRIBUTE, None)
