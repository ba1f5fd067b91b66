"""``format="executorch"``: the thin model as ExecuTorch's Llama export takes it, and the .pte it makes.

ExecuTorch (PyTorch's on-device runtime) exports Llama-family models with its own model code,
``executorch.examples.models.llama``: a Meta-layout checkpoint (``model.pth``) and a ``params.json`` of its
``ModelArgs``. Its ``layer_types`` takes ``"skip_attention"`` per layer: that layer gets an ``AttentionSkip``, no
q/k/v/o projections, no norm in front, no KV cache. This format writes exactly that:

- ``model.pth``: the folded weights (``fold.py``) under ExecuTorch's names (``layers.N.attention.wq.weight`` ...),
  none for a skipped attention block; q/k rows as transformers holds them (``use_hf_rope``: ExecuTorch's
  transformers-style rotary, so nothing is permuted); a tied head written as ``output.weight`` (ExecuTorch's model
  has its own output layer);
- ``params.json``: dims, heads, ``hidden_dim``, eps, ``rope_theta``, ``use_hf_rope``, ``layer_types``;
- the tokenizer (``tokenizer.json``, which ExecuTorch's runners read) and the plan (``hopscotch_plan/``);
- ``model.pte`` when an ExecuTorch python is given: ExecuTorch's own ``export_llama`` (KV cache, XNNPACK, float32
  by default) run in that interpreter's venv by ``executorch_pte.py`` (ExecuTorch pins its own torch, so it
  usually lives in a venv of its own: ``scripts/install_executorch.sh``).

What this route cannot express is refused up front (``formats.executorch_problems``): anything but plain Llama
layers, MLP skips (ExecuTorch's ``construct_transformer`` builds every layer's FFN), non-default RoPE, activations
other than SiLU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import torch

from ..arch import causal_lm
from ..plan import SkipPlan
from .fold import folded_weights
from .formats import ExportError, rope_settings

__all__ = ["CHECKPOINT", "PARAMS", "PTE", "PTE_SCRIPT", "check_context", "executorch_name", "executorch_params",
           "find_python", "lower_command", "lower_exports", "write_checkpoint"]

CHECKPOINT, PARAMS, PTE = "model.pth", "params.json", "model.pte"
PTE_SCRIPT = Path(__file__).with_name("executorch_pte.py")
PYTHON_ENV = "HOPSCOTCH_EXECUTORCH_PYTHON"
LOWER_TIMEOUT_S = 3600
_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_LAYER_NAMES = {"self_attn.q_proj.weight": "attention.wq.weight", "self_attn.k_proj.weight": "attention.wk.weight",
                "self_attn.v_proj.weight": "attention.wv.weight", "self_attn.o_proj.weight": "attention.wo.weight",
                "input_layernorm.weight": "attention_norm.weight",
                "post_attention_layernorm.weight": "ffn_norm.weight",
                "mlp.gate_proj.weight": "feed_forward.w1.weight", "mlp.down_proj.weight": "feed_forward.w2.weight",
                "mlp.up_proj.weight": "feed_forward.w3.weight"}
_TOP_NAMES = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
              "lm_head.weight": "output.weight"}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def executorch_name(hf_name: str) -> str:
    """ExecuTorch's Llama name of a transformers Llama weight."""
    m = _LAYER.match(hf_name)
    name = f"layers.{m.group(1)}.{_LAYER_NAMES.get(m.group(2))}" if m and m.group(2) in _LAYER_NAMES else \
        _TOP_NAMES.get(hf_name)
    if name is None:
        raise ExportError(f"weight {hf_name!r} has no place in ExecuTorch's Llama model (expected a Llama layer's "
                          "projections and norms, the embedding, the final norm or lm_head)")
    return name


def executorch_params(config, plan: SkipPlan) -> dict:
    """ExecuTorch's ``ModelArgs`` for this model and plan (``params.json``)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {"dim": config.hidden_size, "n_layers": config.num_hidden_layers, "n_heads": config.num_attention_heads,
            "n_kv_heads": config.num_key_value_heads, "head_dim": head_dim, "vocab_size": config.vocab_size,
            "hidden_dim": config.intermediate_size, "norm_eps": config.rms_norm_eps,
            "rope_theta": rope_settings(config)[0], "use_hf_rope": True,
            "layer_types": ["skip_attention" if i in plan.skipped_attention else "full_attention"
                            for i in range(config.num_hidden_layers)]}


def write_checkpoint(model, plan: SkipPlan, out: Path, dtype: torch.dtype | None = None) -> dict:
    """``model.pth`` and ``params.json`` in the directory ``out``; returns the params."""
    config = causal_lm(model).config
    if dtype is not None and dtype not in _DTYPES:
        raise ExportError(f"dtype {dtype}: format='executorch' writes {', '.join(map(str, _DTYPES))}")
    sd, materialize = folded_weights(model, plan)
    state = {executorch_name(name): materialize(name, dtype) for name in sd}
    if "output.weight" not in state:  # tied embeddings: ExecuTorch's output layer gets its own copy
        state["output.weight"] = state["tok_embeddings.weight"].clone()
    written = {t.dtype for t in state.values()}
    if len(written) != 1 or next(iter(written)) not in _DTYPES:
        raise ExportError(f"format='executorch' needs one weight dtype among {', '.join(map(str, _DTYPES))}; the "
                          f"weights are {sorted(map(str, written))} (pass dtype=torch.float32)")
    torch.save(state, out / CHECKPOINT)
    params = executorch_params(config, plan)
    (out / PARAMS).write_text(json.dumps(params, indent=2))
    return {**params, "dtype": _DTYPES[next(iter(written))]}


def find_python(python: str | os.PathLike | None = None) -> Path | None:
    """The python that runs ExecuTorch: ``python`` if given, else ``$HOPSCOTCH_EXECUTORCH_PYTHON``, else None."""
    chosen = python or os.environ.get(PYTHON_ENV)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_file():
        raise ExportError(f"ExecuTorch python {path}: no such file (expected the python of a venv with executorch, "
                          "e.g. .venv-executorch/bin/python from scripts/install_executorch.sh)")
    return path


def check_context(context) -> int:
    """The .pte's KV-cache capacity in tokens: an int >= 2 (a prompt of up to context - 1 tokens in one call)."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 2:
        raise ExportError(f"executorch_context {context!r}: expected an int >= 2 (tokens of KV cache in the .pte)")
    return context


def lower_command(python: str | os.PathLike, dirs: list[str | os.PathLike], *, context: int = 2048,
                  dtype: str = "fp32", summary: bool = False) -> list[str]:
    """The command that writes ``DIR/model.pte`` for each export directory (``executorch_pte.py``)."""
    return [str(python), str(PTE_SCRIPT), "--context", str(context), "--dtype", dtype, *(["--summary"] * summary),
            *map(str, dirs)]


def lower_exports(python: str | os.PathLike, dirs: list[str | os.PathLike], *, context: int = 2048,
                  dtype: str = "fp32", log: str | os.PathLike | None = None) -> list[dict]:
    """Run ExecuTorch's Llama export on each directory, in ExecuTorch's venv; returns each .pte's ``pte_summary``."""
    check_context(context)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.run(lower_command(python, dirs, context=context, dtype=dtype, summary=True), env=env,
                          capture_output=True, text=True, timeout=LOWER_TIMEOUT_S)
    if log is not None:
        Path(log).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise ExportError(f"ExecuTorch's export failed ({python}, exit {proc.returncode}); the end of its output:\n"
                          f"{tail}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
