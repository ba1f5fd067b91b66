"""``hopscotch export``: write a skipped model (scalars folded into the weights) as a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export.formats import FORMATS, format_problems
from .common import (PLAN_PATH, CliError, about, add_model_args, check_model_arg, emit, load_from_args, load_plan_arg,
                     path_arg)

DESCRIPTION = """Write the model with a plan applied as a checkpoint that loads elsewhere. The plan's scalars are
folded into the output projections; skipped blocks are not written.

formats:
  hopscotch  safetensors + config naming the skipped blocks; load with hopscotch.from_pretrained(dir):
             a patched model with the compact KV cache (the speed and memory gains)
  decilm     DeciLMForCausalLM (block_configs with attention.no_op), for vLLM, llama.cpp's converter, MLX
             and TensorRT-LLM; its config class ships with it (load with trust_remote_code=True).
             Llama-layer models without biases only; the first block kept must be an attention block
             (vLLM's DeciLM model): skip all of layer 0 or keep its attention.
  vanilla    the original architecture, skipped blocks kept with zeroed output projections: loads with plain
             AutoModelForCausalLM.from_pretrained, same outputs, but NO speed or memory gain.
  gguf       one llama.cpp file (--out NAME.gguf), DeciLM architecture: skipped attention blocks have 0 heads
             and no tensors, no KV cache. --save-dtype f32 / f16 / bf16, or quantized anew: q8_0 / q4_0 /
             q4_1 / q5_0 / q5_1 (K quants: llama-quantize on the f16 file); or `source`: a model loaded from a
             quantized GGUF (the packaged SmolLM2 is Q4_1) keeps that file's blocks, the scalars folded into
             their float16 scales, nothing requantized (docs/QUANTIZATION.md). The tokenizer and chat
             template come from the GGUF model (--model x.gguf, or the packaged SmolLM2); Llama-layer models
             without biases, attention block 0 kept, no MLP skips unless the layer's attention is skipped
             too.
  executorch ExecuTorch's Llama checkpoint (model.pth, params.json with layer_types "skip_attention": no
             projections and no KV cache for a skipped attention block) and, with --executorch-python
             (the python of a venv with executorch: scripts/install_executorch.sh) or
             $HOPSCOTCH_EXECUTORCH_PYTHON, model.pte made by ExecuTorch's own Llama export there (KV cache
             of --executorch-context tokens, XNNPACK). Without one, the command that makes it is printed.
             Llama-layer models without biases, default RoPE, attention skips only (no MLP skips).
  gptq       a GPTQ checkpoint (--model DIR, e.g. from gptqmodel) with the scalars folded into the output
             projections' float16 scales: the packed 4-bit weights are copied, nothing is requantized; loads
             where the source does (GPTQModel.load), skipped blocks' o_proj zero (docs/QUANTIZATION.md)."""


def register(sub) -> None:
    p = sub.add_parser("export", help="write a skipped model as a checkpoint", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--plan", metavar="PLAN.json", required=True, help="the plan to apply (from `hopscotch search`)")
    p.add_argument("--out", metavar="DIR", required=True,
                   help="output directory (must be empty or absent); a NAME.gguf file for --format gguf")
    p.add_argument("--format", default="hopscotch", choices=(*FORMATS, "gptq"))
    p.add_argument("--save-dtype", default=None,
                   help="dtype of the written weights (default: as loaded); gguf: f32, f16, bf16, q8_0, q4_0, q4_1, "
                        "q5_0, q5_1, or source (the loaded GGUF's own quantized blocks, scalars folded into them)")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    p.add_argument("--executorch-python", metavar="PYTHON", default=None,
                   help="--format executorch: the python of a venv with executorch; model.pte is written with it "
                        "(default $HOPSCOTCH_EXECUTORCH_PYTHON; neither: model.pth + params.json only)")
    p.add_argument("--executorch-context", type=int, default=2048, metavar="N",
                   help="--format executorch: the .pte's KV-cache capacity in tokens (default 2048)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --out that hopscotch wrote (an earlier export); refused for any other directory, "
                        "the working directory, or one that holds an input (the plan, the model)")
    p.set_defaults(handler=run)


def _executorch_how(path: Path, context: int) -> str:
    from ..export.executorch_export import PTE, lower_command

    if (path / PTE).is_file():
        return f"ExecuTorch's runtime (executorch.runtime, or its C++ llama runner) on {path / PTE}"
    cmd = " ".join(lower_command("EXECUTORCH_VENV/bin/python", [path], context=context))
    return f"ExecuTorch, once {PTE} is written (no ExecuTorch python was given):\n  {cmd}"


def run(args) -> int:
    from ..arch import causal_lm
    from ..errors import parse_size
    from ..export import export_model
    from ..export.checks import check_cli_destination
    from ..utils import parse_dtype

    path_arg("--plan", args.plan, kind="any", expected=PLAN_PATH, suffixes=(".json",))
    check_model_arg(args)
    gguf = args.format == "gguf"
    out = path_arg("--out", args.out, kind="file" if gguf else "dir", output=True)
    if gguf and out.suffix != ".gguf":
        raise CliError(f"--out {out}: --format gguf writes one file; give a path ending in .gguf")
    if gguf and args.model is not None and Path(args.model).suffix != ".gguf":
        raise CliError(f"--model {args.model}: --format gguf carries the tokenizer over from the GGUF file the model "
                       "was loaded from; give --model MODEL.gguf, or no --model for the packaged SmolLM2 (an HF "
                       "model's tokenizer is not converted: export --format decilm and run llama.cpp's "
                       "convert_hf_to_gguf.py on it)")
    max_shard_size = parse_size(args.max_shard_size, "--max-shard-size")
    if gguf:
        from ..export.gguf_export import GGUF_DTYPES

        if args.save_dtype and args.save_dtype.lower() not in (*GGUF_DTYPES, "float32", "float16", "bfloat16"):
            raise CliError(f"--save-dtype {args.save_dtype!r}: --format gguf writes {', '.join(GGUF_DTYPES)}")
        save_dtype = args.save_dtype
    else:
        try:
            save_dtype = parse_dtype(args.save_dtype) if args.save_dtype else None
        except ValueError as exc:
            raise CliError(f"--save-dtype: {exc}") from None
    if args.format == "gptq":
        return _export_gptq(args, out)
    plan_json = Path(args.plan) if Path(args.plan).suffix == ".json" else Path(args.plan) / "plan.json"
    check_cli_destination(out, overwrite=args.overwrite, gguf=gguf,
                          inputs={"plan": args.plan, "plan's scalars": plan_json.with_suffix(".safetensors"),
                                  "model": args.model})
    plan = load_plan_arg("--plan", args.plan)
    model, tok, _ = load_from_args(args)
    with about("--plan", args.plan):
        plan.validate(model)
    problems = format_problems(args.format, causal_lm(model).config, plan)
    if problems:
        raise CliError(f"--plan {args.plan}: --format {args.format} cannot represent this model with this plan "
                       f"exactly: {'; '.join(problems)}; use --format hopscotch or vanilla")
    gguf_tokenizer = args.model if gguf else None  # the GGUF file the model was loaded from (None: the packaged)
    extra = {}
    if args.format == "executorch":
        extra = {"executorch_python": args.executorch_python, "executorch_context": args.executorch_context}
    with about("--out", out, "write", refusals=False):
        path = export_model(model, plan, out, format=args.format, tokenizer=tok, overwrite=args.overwrite,
                            max_shard_size=max_shard_size, dtype=save_dtype, gguf_tokenizer=gguf_tokenizer, **extra)
    files = [path.name] if gguf else sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    size = path.stat().st_size if gguf else sum(
        p.stat().st_size for p in path.glob("*.safetensors") if not p.name.startswith("hopscotch_plan"))
    if args.format == "executorch":
        size = (path / "model.pth").stat().st_size
    how = {"hopscotch": "hopscotch.from_pretrained(dir)",
           "decilm": f"vllm serve {path} --trust-remote-code or mlx_lm.generate --model {path} (vLLM and MLX "
                     "run it in CI, docs/ENGINES.md) or hopscotch.models.load_model(dir)",
           "vanilla": "transformers.AutoModelForCausalLM.from_pretrained(dir)",
           "gguf": "llama.cpp (llama-cli -m FILE, llama-server, llama-cpp-python)",
           "executorch": _executorch_how(path, args.executorch_context)}[args.format]
    emit(args, {"out": str(path), "format": args.format, "files": files, "weight_bytes": size},
         f"wrote {args.format} {'file' if gguf else 'checkpoint'} to {path} ({size / 1e6:.1f} MB"
         f"{'' if gguf else ' of weights'}, {len(files)} files)\n"
         f"skipped attention blocks {plan.skipped_attention or '-'}, MLP blocks {plan.skipped_mlp or '-'}\n"
         f"load it with {how}")
    return 0


def _export_gptq(args, out: Path) -> int:
    """--format gptq: fold the plan into the GPTQ checkpoint --model; no model is loaded."""
    from ..export.gptq import export_gptq, fold_error

    if args.model is None:
        raise CliError("--format gptq folds the plan into a GPTQ checkpoint: give its directory as --model DIR")
    if args.save_dtype:
        raise CliError(f"--save-dtype {args.save_dtype!r}: --format gptq keeps the checkpoint's own types")
    plan = load_plan_arg("--plan", args.plan)
    with about("--out", out, "write", refusals=False):
        path = export_gptq(args.model, plan, out, overwrite=args.overwrite)
    err = fold_error(args.model, plan, path)
    emit(args, {"out": str(path), "format": "gptq", "fold_error": err},
         f"wrote gptq checkpoint to {path}: the scalars folded into the o_proj / down_proj scales "
         f"({err['dtype']}; largest rounding {err['max_rel']:.2g} of a scale, bound {err['bound']:.2g})\n"
         f"skipped attention blocks {plan.skipped_attention or '-'}, MLP blocks {plan.skipped_mlp or '-'}\n"
         "load it with GPTQModel.load(dir) (the source checkpoint's loader)")
    return 0
