"""SkipPlan: which blocks a model skips, its learned scalars, and where the plan came from (docs/ARCHITECTURE.md §2.4).

A plan is data, not code: ``plan.save(path)`` writes a small JSON (fingerprint, skipped blocks, provenance)
and a safetensors file with the scalars, each written atomically. ``SkipPlan.load`` reads them back and checks
them; ``validate(model)`` says, in one error naming the mismatch, why a plan does not fit a model.

``path`` is either a ``.json`` file (the scalars go beside it, same stem, ``.safetensors``) or a directory
(``plan.json`` + ``scalars.safetensors`` inside it).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_bytes, atomic_write_text

__all__ = ["SCALAR_NAMES", "PlanError", "SkipPlan", "architecture_fingerprint", "FINGERPRINT_FIELDS", "package_versions"]

_FORMAT = "hopscotch-plan/1"
# The four scalars of every layer, in the paper's order (b_att, s_att, b_mlp, s_mlp): the patched layers'
# parameter names, the plan's safetensors keys and the columns of every [num_layers, 4] scalar tensor.
SCALAR_NAMES = ("attn_scale", "attn_residual_scale", "mlp_scale", "mlp_residual_scale")
# The config fields that decide whether a plan's block indices and scalars mean the same thing on a model.
FINGERPRINT_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps", "max_position_embeddings",
                      "tie_word_embeddings", "attention_bias", "mlp_bias", "hidden_act", "sliding_window",
                      "layer_types", "rope_parameters", "rope_theta", "rope_scaling")


class PlanError(ValueError):
    """A plan that cannot be read, or that does not fit the model it is applied to."""


def _config_of(model_or_config):
    cfg = getattr(model_or_config, "config", model_or_config)
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config(decoder=True)
    return cfg


def architecture_fingerprint(model_or_config) -> dict[str, Any]:
    """Identity of a model's architecture (the config fields above and a hash of them), not of its weights: a plan
    fits every model with this architecture. ``data.targets.weights_fingerprint`` identifies the weights."""
    cfg = _config_of(model_or_config)
    fields = {}
    for name in FINGERPRINT_FIELDS:
        value = getattr(cfg, name, None)
        if value is not None:
            fields[name] = json.loads(json.dumps(value, sort_keys=True, default=str))
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return {"model_type": fields.get("model_type"), "num_layers": fields.get("num_hidden_layers"),
            "hidden_size": fields.get("hidden_size"), "num_attention_heads": fields.get("num_attention_heads"),
            "num_key_value_heads": fields.get("num_key_value_heads"), "config_hash": digest, "config": fields}


def package_versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {"hopscotch": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix == ".json":
        return p, p.with_suffix(".safetensors")
    return p / "plan.json", p / "scalars.safetensors"


@dataclass
class SkipPlan:
    """Skipped attention / MLP blocks, the scalars ([num_layers, 4] float32: b_att, s_att, b_mlp, s_mlp), the
    model's fingerprint and the plan's provenance (method, data, seed, losses, versions, time)."""

    fingerprint: dict[str, Any]
    skipped_attention: list[int] = field(default_factory=list)
    skipped_mlp: list[int] = field(default_factory=list)
    scalars: torch.Tensor | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return int(self.fingerprint["num_layers"])

    @classmethod
    def for_model(cls, model, skipped_attention=(), skipped_mlp=(), scalars=None, **provenance) -> "SkipPlan":
        """A plan for ``model`` (scalars default to 1). Provenance gets versions and a timestamp."""
        prov = {"versions": package_versions(),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **provenance}
        plan = cls(architecture_fingerprint(model), sorted(int(i) for i in skipped_attention),
                   sorted(int(i) for i in skipped_mlp), scalars, prov)
        plan.check()
        return plan

    def scalar_tensor(self) -> torch.Tensor:
        """The scalars as [num_layers, 4] float32 (all ones when the plan has none)."""
        if self.scalars is None:
            return torch.ones(self.num_layers, len(SCALAR_NAMES))
        return self.scalars.detach().float().cpu()

    # ---- checks -------------------------------------------------------------------------------------------

    def check(self) -> None:
        """Checks that need no model: indices in range, no duplicates, scalars finite and of the right shape."""
        n = self.fingerprint.get("num_layers")
        if not isinstance(n, int) or n <= 0:
            raise PlanError(f"plan fingerprint has num_layers={n!r}; expected a positive integer")
        for name, idx in (("skipped_attention", self.skipped_attention), ("skipped_mlp", self.skipped_mlp)):
            if any(not isinstance(i, int) or isinstance(i, bool) for i in idx):
                raise PlanError(f"{name} holds {idx!r}; expected a list of integer block indices")
            if len(set(idx)) != len(idx):
                dups = sorted({i for i in idx if idx.count(i) > 1})
                raise PlanError(f"{name} lists blocks {dups} more than once")
            bad = [i for i in idx if not 0 <= i < n]
            if bad:
                raise PlanError(f"{name} holds {bad}, out of range for a model with {n} layers (0..{n - 1})")
        if self.scalars is not None:
            shape = tuple(self.scalars.shape)
            if shape != (n, len(SCALAR_NAMES)):
                raise PlanError(f"plan scalars have shape {shape}; expected ({n}, {len(SCALAR_NAMES)})")
            if not torch.isfinite(self.scalars).all():
                bad = sorted({int(i) for i in (~torch.isfinite(self.scalars)).nonzero()[:, 0]})
                raise PlanError(f"plan scalars of layers {bad} are NaN or infinite")

    def validate(self, model) -> None:
        """Raise PlanError naming the first mismatch if this plan does not fit ``model``."""
        self.check()
        mine, theirs = self.fingerprint, architecture_fingerprint(model)
        for key in ("model_type", "num_layers", "hidden_size", "num_attention_heads", "num_key_value_heads"):
            if mine.get(key) != theirs.get(key):
                raise PlanError(f"plan is for {key}={mine.get(key)!r} but the model has {key}={theirs.get(key)!r}")
        if mine.get("config_hash") != theirs.get("config_hash"):
            a, b = mine.get("config", {}), theirs.get("config", {})
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            detail = "; ".join(f"{k}: plan {a.get(k)!r}, model {b.get(k)!r}" for k in diff[:5]) or "unknown fields"
            raise PlanError(f"plan was made for another configuration of this architecture ({detail})")

    # ---- files --------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan JSON and the scalars (safetensors); returns the JSON path."""
        from safetensors.torch import save as st_save

        self.check()
        json_path, st_path = _paths(path)
        scalars = self.scalar_tensor().contiguous()
        blob = st_save({k: scalars[:, j].contiguous() for j, k in enumerate(SCALAR_NAMES)})
        doc = {"format": _FORMAT, "fingerprint": self.fingerprint, "skipped_attention": self.skipped_attention,
               "skipped_mlp": self.skipped_mlp, "scalars_file": st_path.name,
               "scalars_sha256": hashlib.sha256(blob).hexdigest(), "provenance": self.provenance}
        text = json.dumps(doc, indent=1, default=str)
        atomic_write_bytes(st_path, blob)
        atomic_write_text(json_path, text)
        return json_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SkipPlan":
        """Read a plan written by ``save``; PlanError names the file and what is wrong with it."""
        from safetensors.torch import load as st_load

        json_path, _ = _paths(path)
        if not json_path.is_file():
            raise PlanError(f"no plan at {json_path}")
        try:
            doc = json.loads(json_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlanError(f"{json_path} is not a valid plan file (corrupt or truncated JSON: {exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise PlanError(f"{json_path} is not a hopscotch plan (format {doc.get('format') if isinstance(doc, dict) else None!r}; "
                            f"expected {_FORMAT!r})")
        missing = [k for k in ("fingerprint", "skipped_attention", "skipped_mlp", "scalars_file") if k not in doc]
        if missing:
            raise PlanError(f"{json_path} lacks the fields {missing}")
        st_path = json_path.parent / doc["scalars_file"]
        try:
            blob = st_path.read_bytes()
        except OSError as exc:
            raise PlanError(f"cannot read the plan's scalars {st_path}: {exc}") from None
        if doc.get("scalars_sha256") and hashlib.sha256(blob).hexdigest() != doc["scalars_sha256"]:
            raise PlanError(f"{st_path} does not match {json_path.name} (checksum differs: corrupt, truncated or "
                            "from another plan)")
        try:
            tensors = st_load(blob)
            scalars = torch.stack([tensors[k].float() for k in SCALAR_NAMES], dim=1)
        except Exception as exc:  # safetensors raises its own error types
            raise PlanError(f"{st_path} is not a valid scalars file ({exc})") from None
        plan = cls(doc["fingerprint"], list(doc["skipped_attention"]), list(doc["skipped_mlp"]), scalars,
                   doc.get("provenance", {}))
        try:
            plan.check()
        except PlanError as exc:
            raise PlanError(f"{json_path}: {exc}") from None
        return plan

    def summary(self) -> str:
        return (f"SkipPlan({self.fingerprint.get('model_type')}, {self.num_layers} layers: skip attention "
                f"{self.skipped_attention or '-'}, mlp {self.skipped_mlp or '-'})")

    def __eq__(self, other) -> bool:
        if not isinstance(other, SkipPlan):
            return NotImplemented
        return (self.fingerprint == other.fingerprint and self.skipped_attention == other.skipped_attention
                and self.skipped_mlp == other.skipped_mlp and self.provenance == other.provenance
                and torch.equal(self.scalar_tensor(), other.scalar_tensor()))
