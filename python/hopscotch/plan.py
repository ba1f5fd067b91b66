"""SkipPlan: which blocks a model skips, its learned scalars, and where the plan came from (docs/ARCHITECTURE.md §2.4).

A plan is data, not code: ``plan.save(path)`` writes a small JSON (fingerprint, skipped blocks, provenance)
and a safetensors file with the scalars, each written atomically. ``SkipPlan.load`` reads them back and checks
them; ``validate(model)`` says, in one error naming the mismatch, why a plan does not fit a model.

A plan is one signed whole (format 2): the JSON holds a SHA-256 of each part (fingerprint, skip lists,
provenance, scalars file) and one checksum over those, so a plan edited by hand is refused with the name of the
part that changed. This guards against edits and corruption, not against someone who recomputes the checksums.
Format 2 is the first format released (0.1.0); no other is read.

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

from ._version import __version__
from .atomic import atomic_write_bytes, atomic_write_text
from .errors import PlanError, as_index_list, as_path
from .limits import check_skip_lists
from .paths import json_problem, os_reason

__all__ = ["SCALAR_NAMES", "PlanError", "SkipPlan", "architecture_fingerprint", "FINGERPRINT_FIELDS",
           "package_versions"]

_FORMAT = "hopscotch-plan/2"
# The parts of a plan each checksum covers, in the order an edit is reported.
_SIGNED = ("fingerprint", "skipped_attention", "skipped_mlp", "provenance", "scalars")
# The four scalars of every layer, in the paper's order (b_att, s_att, b_mlp, s_mlp): the patched layers'
# parameter names, the plan's safetensors keys and the columns of every [num_layers, 4] scalar tensor.
SCALAR_NAMES = ("attn_scale", "attn_residual_scale", "mlp_scale", "mlp_residual_scale")
# The config fields that decide whether a plan's block indices and scalars mean the same thing on a model.
FINGERPRINT_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps", "max_position_embeddings",
                      "tie_word_embeddings", "attention_bias", "mlp_bias", "hidden_act", "sliding_window",
                      "layer_types", "rope_parameters", "rope_theta", "rope_scaling")


def _digest(value) -> str:
    """SHA-256 of a JSON value in one canonical spelling (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _checksums(doc: dict, scalars_blob: bytes) -> dict[str, str]:
    sums = {k: _digest(doc.get(k)) for k in _SIGNED if k != "scalars"}
    sums["scalars"] = hashlib.sha256(scalars_blob).hexdigest()
    return sums


def _signature(doc: dict) -> str:
    """The one checksum over the parts' checksums (and the format and scalars file name)."""
    return _digest({"format": doc.get("format"), "scalars_file": doc.get("scalars_file"),
                    "checksums": doc.get("checksums")})


def _check_signature(doc: dict, blob: bytes, json_path: Path, st_path: Path) -> None:
    """Refuse a format-2 plan whose parts no longer match their checksums, naming the parts that changed."""
    sums = doc.get("checksums")
    if not isinstance(sums, dict) or doc.get("checksum") != _signature(doc):
        raise PlanError(f"{json_path}: its checksums are missing or were edited, so the plan cannot be trusted; "
                        "make it again (hopscotch search, or SkipPlan.for_model(...).save)")
    changed = [k for k, v in _checksums(doc, blob).items() if sums.get(k) != v]
    if changed == ["scalars"]:
        raise PlanError(f"{st_path} does not match {json_path.name} (checksum differs: corrupt, truncated or "
                        "from another plan)")
    if changed:
        raise PlanError(f"{json_path}: {', '.join(changed)} changed after the plan was saved (checksum differs); "
                        "a hand-edited plan is refused: make a new one (hopscotch search, or "
                        "SkipPlan.for_model(model, attention, mlp, scalars).save(path))")


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
    # The JSON file this plan was loaded from (None for a plan made in memory): commands that write files refuse
    # to overwrite it.
    source: Path | None = field(default=None, repr=False, compare=False)

    @property
    def num_layers(self) -> int:
        return int(self.fingerprint["num_layers"])

    @classmethod
    def for_model(cls, model, skipped_attention=(), skipped_mlp=(), scalars=None, **provenance) -> "SkipPlan":
        """A plan for ``model`` (scalars default to 1). Provenance gets versions and a timestamp."""
        prov = {"versions": package_versions(),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **provenance}
        attention = sorted(as_index_list(skipped_attention, "SkipPlan.for_model", "skipped_attention"))
        mlp = sorted(as_index_list(skipped_mlp, "SkipPlan.for_model", "skipped_mlp"))
        plan = cls(architecture_fingerprint(model), attention, mlp, scalars, prov)
        plan.check()
        return plan

    def scalar_tensor(self) -> torch.Tensor:
        """The scalars as [num_layers, 4] float32 (all ones when the plan has none)."""
        if self.scalars is None:
            return torch.ones(self.num_layers, len(SCALAR_NAMES))
        return self.scalars.detach().float().cpu()

    # ---- checks -------------------------------------------------------------------------------------------

    def check(self) -> None:
        """Checks that need no model: the skip lists within ``limits`` (integers in range, no duplicates, some
        attention and some MLP kept), scalars finite and of the right shape."""
        if not isinstance(self.fingerprint, dict):
            raise PlanError(f"plan fingerprint is {self.fingerprint!r}; expected a dict (architecture_fingerprint)")
        n = self.fingerprint.get("num_layers")
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise PlanError(f"plan fingerprint has num_layers={n!r}; expected a positive integer")
        check_skip_lists(self.skipped_attention, self.skipped_mlp, n)
        if self.scalars is not None and not isinstance(self.scalars, torch.Tensor):
            raise PlanError(f"plan scalars are a {type(self.scalars).__name__}; expected a torch.Tensor "
                            f"[{n}, {len(SCALAR_NAMES)}] or None")
        if self.scalars is not None:
            shape = tuple(self.scalars.shape)
            if shape != (n, len(SCALAR_NAMES)):
                raise PlanError(f"plan scalars have shape {shape}; expected ({n}, {len(SCALAR_NAMES)})")
            if not torch.isfinite(self.scalars).all():
                bad = sorted({int(i) for i in (~torch.isfinite(self.scalars)).nonzero()[:, 0]})
                raise PlanError(f"plan scalars of layers {bad} are NaN or infinite")

    def validate(self, model) -> None:
        """Raise PlanError naming the first mismatch if this plan does not fit ``model``: the model's identity is
        compared first (a plan for a 32-layer model on a 30-layer one says so), then the plan's own checks."""
        mine, theirs = self.fingerprint, architecture_fingerprint(model)
        if not isinstance(mine, dict):
            self.check()
        if mine.get("model_type") == theirs.get("model_type") and mine.get("num_layers") != theirs.get("num_layers"):
            raise PlanError(f"this plan is for a {mine.get('num_layers')}-layer {mine.get('model_type')} model; this "
                            f"model has {theirs.get('num_layers')} layers")
        for key in ("model_type", "num_layers", "hidden_size", "num_attention_heads", "num_key_value_heads"):
            if mine.get(key) != theirs.get(key):
                raise PlanError(f"plan is for {key}={mine.get(key)!r} but the model has {key}={theirs.get(key)!r}")
        self.check()
        if mine.get("config_hash") != theirs.get("config_hash"):
            a, b = mine.get("config", {}), theirs.get("config", {})
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            detail = "; ".join(f"{k}: plan {a.get(k)!r}, model {b.get(k)!r}" for k in diff[:5]) or "unknown fields"
            raise PlanError(f"plan was made for another configuration of this architecture ({detail})")

    # ---- files --------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan JSON and the scalars (safetensors), signed as one whole; returns the JSON path."""
        from safetensors.torch import save as st_save

        path = as_path(path, "SkipPlan.save", "path")
        self.check()
        json_path, st_path = _paths(path)
        scalars = self.scalar_tensor().contiguous()
        blob = st_save({k: scalars[:, j].contiguous() for j, k in enumerate(SCALAR_NAMES)})
        doc = {"format": _FORMAT, "fingerprint": self.fingerprint, "skipped_attention": self.skipped_attention,
               "skipped_mlp": self.skipped_mlp, "scalars_file": st_path.name, "provenance": self.provenance}
        doc = json.loads(json.dumps(doc, default=str))  # what load() will read back, digested the same way
        doc["checksums"] = _checksums(doc, blob)
        doc["checksum"] = _signature(doc)
        text = json.dumps(doc, indent=1)
        atomic_write_bytes(st_path, blob)
        atomic_write_text(json_path, text)
        return json_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SkipPlan":
        """Read a plan written by ``save``; PlanError names the file and what is wrong with it (an edited part
        of a signed plan by name)."""
        path = as_path(path, "SkipPlan.load", "path")
        if path.is_file() and path.suffix != ".json":
            raise PlanError(f"{path} is not a plan file; expected PLAN.json (its scalars PLAN.safetensors beside "
                            "it) or a directory holding plan.json")
        json_path, _ = _paths(path)
        if not json_path.is_file():
            raise PlanError(f"no plan at {json_path}")
        try:
            doc = json.loads(json_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise PlanError(f"{json_path} is not a valid plan file ({json_problem(exc)})") from None
        fmt = doc.get("format") if isinstance(doc, dict) else None
        if fmt != _FORMAT:
            raise PlanError(f"{json_path} is not a hopscotch plan (format {fmt!r}; expected {_FORMAT!r})")
        missing = [k for k in ("fingerprint", "skipped_attention", "skipped_mlp", "scalars_file") if k not in doc]
        if missing:
            raise PlanError(f"{json_path} lacks the fields {missing}")
        if not isinstance(doc["scalars_file"], str) or not doc["scalars_file"]:
            raise PlanError(f"{json_path}: scalars_file is {doc['scalars_file']!r}; expected a file name")
        st_path = json_path.parent / doc["scalars_file"]
        try:
            blob = st_path.read_bytes()
        except OSError as exc:
            raise PlanError(f"cannot read the plan's scalars {st_path}: {os_reason(exc)}") from None
        _check_signature(doc, blob, json_path, st_path)
        return cls._from_doc(doc, blob, json_path, st_path)

    @classmethod
    def _from_doc(cls, doc: dict, blob: bytes, json_path: Path, st_path: Path) -> "SkipPlan":
        from safetensors.torch import load as st_load

        for key, kind in (("fingerprint", dict), ("skipped_attention", list), ("skipped_mlp", list),
                          ("provenance", dict)):
            if key in doc and not isinstance(doc[key], kind):
                what = "a list of integer block indices" if kind is list else "a JSON object"
                raise PlanError(f"{json_path}: {key} is {json.dumps(doc[key])}; expected {what}")
        try:
            tensors = st_load(blob)
            scalars = torch.stack([tensors[k].float() for k in SCALAR_NAMES], dim=1)
        except Exception:  # safetensors raises its own error types; a missing scalar is a KeyError
            raise PlanError(f"{st_path} is not a valid scalars file (a safetensors file holding "
                            f"{', '.join(SCALAR_NAMES)})") from None
        plan = cls(doc["fingerprint"], list(doc["skipped_attention"]), list(doc["skipped_mlp"]), scalars,
                   doc.get("provenance", {}), source=json_path)
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
