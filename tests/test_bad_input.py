"""The command line probed with bad input, as a demanding user would (issue 36): every case runs `hopscotch` in a
subprocess and checks the exit status, that stderr is ONE line naming the bad value, that no traceback escapes,
and that the working directory holds exactly what it held before (nothing written, nothing deleted).

Most cases fail before any model is loaded; they all run in one subprocess (``tests/helpers/cli_probe.py``: ``hopscotch.cli.main``
per case, file descriptors captured), so the suite costs one interpreter start, not one per case. A few run
through the real ``hopscotch`` executable, and the SmolLM2 cases (``slow``) in a subprocess of their own.
The Python API's probes are tests/test_bad_input_api.py; killed writers, tests/test_interrupted_writes.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import DATA, HELPERS

NOISE = ("hopscotch_ext._C could not be loaded", "import hopscotch_ext")  # the pure-torch fallback's import warning


@dataclass
class Case:
    id: str
    argv: list
    says: tuple = ()  # substrings of the one error line (the bad value, the flag, what was expected)
    code: int = 2


# A search of the tiny model that writes nothing in the working directory but its state and plan.
TINY_SEARCH = ("--model", "tiny", "--num-skip", "1", "--method", "random", "--objective", "nll", "--data", "qa.jsonl",
               "--calibration", "2", "--evaluation", "0", "--no-eval", "--no-speed", "--quiet")


def _c(id, *argv, says=(), code=2):
    return Case(id, [str(a) for a in argv], (says,) if isinstance(says, str) else tuple(says), code)


# ---- cases that fail before a model is loaded (or load only the 4-layer tiny model) --------------------------
CASES = [
    # search
    _c("search: --num-skip not an int", "search", "--num-skip", "x",
       says=("argument --num-skip/-k: invalid int value: 'x'", "hopscotch search --help")),
    _c("search: unknown --method", "search", "--method", "magic", says="argument --method: invalid choice: 'magic'"),
    _c("search: --lr 0", "search", "--lr", "0", says="--lr 0.0: expected a positive learning rate"),
    _c("search: --lr nan", "search", "--lr", "nan", says="--lr nan: expected a positive learning rate"),
    _c("search: --final-lr negative", "search", "--final-lr", "-1", says="--final-lr -1.0: expected a positive"),
    _c("search: --batch-size 0", "search", "--batch-size", "0", says="--batch-size 0: expected 1 or more"),
    _c("search: --max-new-tokens 0", "search", "--max-new-tokens", "0", says="--max-new-tokens 0: expected 1 or more"),
    _c("search: --margin negative", "search", "--margin", "-0.1", says="--margin -0.1: expected 0 or more"),
    _c("search: --final-epochs negative", "search", "--final-epochs", "-1", says="--final-epochs -1"),
    _c("search: --calibration 0", "search", "--calibration", "0", says="--calibration 0: expected 1 or more"),
    _c("search: --nproc 0", "search", "--nproc", "0", says="--nproc 0: expected 1 or more"),
    _c("search: --dist-timeout nan", "search", "--dist-timeout", "nan",
       says="--dist-timeout nan: expected a number of seconds above 0"),
    _c("search: --budget-ratio 0.5", "search", "--budget-ratio", "0.5", says="--budget-ratio 0.5: expected more than 1"),
    _c("search: --out under a file", "search", "--out", "file.txt/plan.json",
       says="--out file.txt/plan.json: file.txt is a file, not a directory"),
    _c("search: --state a directory", "search", "--state", "somedir", says="--state somedir is a directory"),
    _c("search: --out the user's JSON", "search", "--out", "user.json",
       says="--out user.json: user.json exists and is not a hopscotch plan"),
    _c("search: --out the data file", "search", "--data", "qa.jsonl", "--out", "qa.jsonl",
       says="--out qa.jsonl would write over or into --data qa.jsonl"),
    _c("search: --model missing", "search", "--model", "no/such", says="--model no/such: no such file or directory"),
    _c("search: --model a hopscotch export", "search", "--model", "hop",
       says=("--model hop is a hopscotch export of a plan", "skipping attention blocks [1]", "search the original")),
    _c("search: --model a vanilla export", "search", "--model", "van", says="--model van is a vanilla export"),
    _c("search: --model a decilm export", "search", "--model", "deci", says="--model deci is a decilm export"),
    _c("search: --device not a device", "search", "--device", "banana", says="--device 'banana' is not a device"),
    _c("search: --dtype int8", "search", "--dtype", "int8", says="--dtype: unknown dtype 'int8'"),
    _c("search: --task unknown", "search", "--task", "nope", says="--task 'nope' is not a packaged task"),
    _c("search: unknown option", "search", "--bogus", says="unrecognized arguments: --bogus"),
    _c("search: --num-skip = layers", "search", "--model", "tiny", "--num-skip", "4", "--quiet",
       says="--num-skip 4: expected 0 to 3 for a model with 4 layers (at least one attention block must remain)"),
    _c("search: --num-skip joint", "search", "--model", "tiny", "--method", "llm-drop", "--target", "joint", "-k", "7",
       "--quiet", says="--num-skip 7: expected 0 to 6 for a model with 4 layers"),
    # eval
    _c("eval: --resamples 10", "eval", "--resamples", "10", says="--resamples 10: expected at least 100"),
    _c("eval: --evaluation 0", "eval", "--evaluation", "0", says="--evaluation 0: expected 1 or more"),
    _c("eval: --wiki-blocks negative", "eval", "--wiki-blocks", "-1", says="--wiki-blocks -1: expected 0 or more"),
    _c("eval: --plan missing", "eval", "--plan", "missing.json", says="--plan missing.json: no such file"),
    _c("eval: --plan not a plan file", "eval", "--plan", "notes.txt",
       says="--plan notes.txt is not a .json file; expected a plan: PLAN.json"),
    _c("eval: --plan corrupt JSON", "eval", "--plan", "corrupt.json",
       says="--plan corrupt.json is not a valid plan file (not valid JSON at line 1, column 3: corrupt or truncated)"),
    _c("eval: --plan skipped_attention edited", "eval", "--plan", "edited.json",
       says="edited.json: skipped_attention changed after the plan was saved"),
    _c("eval: --plan skipped_mlp null (signed)", "eval", "--plan", "nullmlp.json",
       says="nullmlp.json: skipped_mlp changed after the plan was saved"),
    _c("eval: --plan of another format", "eval", "--plan", "v1.json",
       says="v1.json is not a hopscotch plan (format 'hopscotch-plan/1'; expected 'hopscotch-plan/2')"),
    _c("eval: --compare missing", "eval", "--compare", "missing.json", says="--compare missing.json: no such file"),
    _c("eval: --plan on a hopscotch export", "eval", "--model", "hop", "--plan", "p.json",
       says=("--plan p.json: --model hop is a hopscotch export", "its plan already in its weights")),
    _c("eval: --compare on a vanilla export", "eval", "--model", "van", "--compare", "original",
       says="--compare original: --model van is a vanilla export"),
    _c("eval: --data missing", "eval", "--data", "missing.jsonl", says="--data missing.jsonl: no such file"),
    _c("eval: --model missing", "eval", "--model", "no/such", says="--model no/such: no such file or directory"),
    _c("eval: --model a text file", "eval", "--model", "notes.txt", "--quiet",
       says="--model notes.txt is neither an HF model directory nor a .gguf file"),
    _c("eval: --model a directory without config", "eval", "--model", "emptydir", "--quiet",
       says="--model emptydir is a directory but has no config.json"),
    _c("eval: --model missing weights", "eval", "--model", "broken", "--quiet",
       says=("broken: 1 weights missing", "would initialise them at random", "model.layers.2.mlp.down_proj.weight")),
    _c("eval: plan for a 5-layer model", "eval", "--model", "tiny", "--plan", "other5.json", "--quiet",
       says="--plan other5.json: this plan is for a 5-layer llama model; this model has 4 layers"),
    # issue 48: every path option checked by one helper, every refusal of a plan naming its option, a library's or
    # the OS's error on a user's file said as what happened to that file
    _c("eval: --data a directory", "eval", "--data", "somedir",
       says="--data somedir is a directory; expected a data file"),
    _c("eval: --compare for another layer count", "eval", "--model", "tiny", "--compare", "other5.json", "--quiet",
       says="--compare other5.json: this plan is for a 5-layer llama model; this model has 4 layers"),
    _c("eval: --compare for another architecture", "eval", "--model", "tiny", "--compare", "qwen.json", "--quiet",
       says="--compare qwen.json: plan is for model_type='qwen2' but the model has model_type='llama'"),
    _c("eval: --compare not a plan file", "eval", "--compare", "notes.txt",
       says="--compare notes.txt is not a .json file"),
    _c("eval: --compare edited", "eval", "--compare", "edited.json",
       says="--compare edited.json: skipped_attention changed after the plan was saved"),
    _c("eval: --plan a directory without a plan", "eval", "--plan", "emptydir",
       says="--plan emptydir: no plan at emptydir/plan.json"),
    _c("eval: --plan a broken link", "eval", "--plan", "link.json", says="--plan link.json is a broken symbolic link"),
    _c("eval: --plan under a file", "eval", "--plan", "file.txt/p.json",
       says="--plan file.txt/p.json: file.txt is a file, not a directory"),
    _c("eval: --data not UTF-8", "eval", "--model", "tiny", "--data", "latin1.jsonl", "--quiet",
       says="--data latin1.jsonl, line 1: bytes that are not UTF-8 at column"),
    _c("eval: --model config not JSON", "eval", "--model", "badcfg", "--quiet",
       says="--model badcfg: badcfg/config.json is not valid JSON at line 1, column 3: corrupt or truncated"),
    _c("eval: --model a .gguf that is not one", "eval", "--model", "bad.gguf", "--quiet",
       says="--model bad.gguf is not a GGUF file (it does not start with GGUF's magic bytes"),
    _c("eval: --model weights corrupt", "eval", "--model", "badst", "--quiet",
       says="--model badst: badst/model.safetensors is not a valid safetensors file (corrupt or truncated)"),
    _c("eval: --model without weights", "eval", "--model", "cfgonly", "--quiet",
       says="--model cfgonly holds no weights (model.safetensors,"),
    _c("eval: --model an unknown architecture", "eval", "--model", "unknown", "--quiet",
       says="--model unknown: transformers cannot load it: The checkpoint you are trying to load has model type"),
    _c("search: --data a directory", "search", "--data", "somedir", says="--data somedir is a directory; expected a"),
    _c("search: --data under a file", "search", "--data", "file.txt/qa.jsonl",
       says="--data file.txt/qa.jsonl: file.txt is a file, not a directory"),
    _c("search: --out where nothing may be written", "search", *TINY_SEARCH, "--out", "/sys/p.json",
       says="--out /sys/p.json: cannot write the search state beside it (/sys/p.state.json): permission denied"),
    _c("search: --state where nothing may be written", "search", *TINY_SEARCH, "--state", "/sys/s.json",
       says="--state /sys/s.json: cannot write it: permission denied"),
    _c("export: --plan a directory without a plan", "export", "--plan", "emptydir", "--out", "x",
       says="--plan emptydir: no plan at emptydir/plan.json"),
    _c("export: --out under a file", "export", "--plan", "p.json", "--out", "file.txt/x",
       says="--out file.txt/x: file.txt is a file, not a directory"),
    _c("export: --out where nothing may be written", "export", "--model", "tiny", "--plan", "p.json", "--out",
       "/sys/x", "--quiet", says="--out /sys/x: cannot write it: permission denied"),
    # export
    _c("export: --max-shard-size banana", "export", "--plan", "p.json", "--out", "x", "--max-shard-size", "banana",
       says="--max-shard-size 'banana': expected a size such as 5GB"),
    _c("export: --max-shard-size 0", "export", "--plan", "p.json", "--out", "x", "--max-shard-size", "0",
       says="--max-shard-size '0': expected a positive size"),
    _c("export: --save-dtype unknown", "export", "--plan", "p.json", "--out", "x", "--save-dtype", "int3",
       says="--save-dtype: unknown dtype 'int3'"),
    _c("export: gguf --out not .gguf", "export", "--plan", "p.json", "--out", "x.bin", "--format", "gguf",
       says="--out x.bin: --format gguf writes one file"),
    _c("export: gguf --save-dtype q4", "export", "--plan", "p.json", "--out", "x.gguf", "--format", "gguf",
       "--save-dtype", "q4", says="--save-dtype 'q4': --format gguf writes f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, source"),
    _c("export: --out holds the plan (--overwrite)", "export", "--plan", "sb/p.json", "--out", "sb", "--overwrite",
       says="--out sb holds the plan sb/p.json: writing there would destroy it"),
    _c("export: --out holds the model (--overwrite)", "export", "--model", "nest/tiny", "--plan", "p.json", "--out",
       "nest", "--overwrite", says="--out nest holds the model nest/tiny"),
    _c("export: --out is the model", "export", "--model", "tiny", "--plan", "p.json", "--out", "tiny", "--overwrite",
       says="--out tiny is the model tiny"),
    _c("export: --out . (--overwrite)", "export", "--plan", "p.json", "--out", ".", "--overwrite",
       says="--out . is the working directory or a parent of it"),
    _c("export: --out .. (--overwrite)", "export", "--plan", "p.json", "--out", "..", "--overwrite",
       says="--out .. is the working directory or a parent of it"),
    _c("export: --overwrite on the user's directory", "export", "--plan", "p.json", "--out", "userdir", "--overwrite",
       says="--out userdir holds files hopscotch did not write (notes.txt)"),
    _c("export: --overwrite on an export with a user file in it", "export", "--plan", "p.json", "--out", "hopplus",
       "--overwrite", says="--out hopplus holds files hopscotch did not write (notes.txt)"),
    _c("export: --out not empty", "export", "--plan", "p.json", "--out", "userdir",
       says="userdir is not empty; pass --overwrite to replace it"),
    _c("export: --out an existing file", "export", "--plan", "p.json", "--out", "notes.txt",
       says="notes.txt exists and is not a directory"),
    _c("export: gguf --out a file hopscotch did not write", "export", "--plan", "p.json", "--out", "user.gguf",
       "--format", "gguf", "--overwrite", says="--out user.gguf holds a file hopscotch did not write (user.gguf)"),
    _c("export: unknown --format", "export", "--plan", "p.json", "--out", "x", "--format", "onnx",
       says="argument --format: invalid choice: 'onnx'"),
    _c("export: --plan missing", "export", "--plan", "missing.json", "--out", "x",
       says="--plan missing.json: no such file"),
    _c("export: --plan edited", "export", "--plan", "edited.json", "--out", "x",
       says="skipped_attention changed after the plan was saved"),
    _c("export: --plan not given", "export", "--out", "x", says="the following arguments are required: --plan"),
    _c("export: --model an export", "export", "--model", "hop", "--plan", "p.json", "--out", "x",
       says=("--model hop is a hopscotch export", "`hopscotch export` needs the original model")),
    _c("export: decilm a plan vLLM cannot run", "export", "--model", "tiny", "--plan", "mlp0.json", "--out", "x",
       "--format", "decilm", "--quiet", says=("--plan mlp0.json: --format decilm cannot represent this model with this "
                                             "plan exactly", "MLP block 0 runs with no attention block before it")),
    _c("export: gguf without a GGUF tokenizer", "export", "--model", "tiny", "--plan", "p.json", "--out", "x.gguf",
       "--format", "gguf", says="--model tiny: --format gguf carries the tokenizer over from the GGUF file"),
    # bench (its own options are cli/bench_cmd.py's; --model goes through the shared loader)
    _c("bench: --ks not integers", "bench", "--ks", "0,x", says="--ks '0,x': expected integers"),
    _c("bench: --rounds 0", "bench", "--rounds", "0", says="--rounds 0: expected 1 or more"),
    _c("bench: --new-tokens 0", "bench", "--new-tokens", "0", says="--new-tokens 0: expected 1 or more"),
    _c("bench: --budget -1", "bench", "--budget", "-1", says="--budget -1.0: expected a positive number"),
    _c("bench: --csv under a file", "bench", "--csv", "/dev/null/x.csv",
       says="--csv /dev/null/x.csv: /dev/null is not a directory"),
    _c("bench: --csv a directory", "bench", "--csv", "nest/tiny",
       says="--csv nest/tiny is a directory; expected a file"),
    _c("bench: --max-kv-fraction 2", "bench", "--max-kv-fraction", "2", says="--max-kv-fraction 2.0: expected a"),
    _c("bench: --model an export", "bench", "--model", "hop", "--quiet",
       says="--model hop is a hopscotch export of a plan"),
    # info, doctor, the top level
    _c("info: --partials-in missing", "info", "--partials-in", "no/such", says="--partials-in no/such: no such directory"),
    _c("info: --partials-in a file", "info", "--partials-in", "notes.txt",
       says="--partials-in notes.txt is a file, not a directory; expected a directory"),
    _c("info: unknown option", "info", "--bogus", says="unrecognized arguments: --bogus"),
    _c("doctor: unknown --arch", "doctor", "--arch", "gpt2", says="--arch 'gpt2'; expected one of"),
    _c("no command", says="the following arguments are required: COMMAND"),
    _c("unknown command", "frobnicate", says="argument COMMAND: invalid choice: 'frobnicate'"),
]


def _plan_file_edit(src: Path, dst: Path, **changes) -> Path:
    """A copy of plan ``src``'s JSON as ``dst`` (reading the same scalars file) with fields replaced."""
    doc = json.loads(src.read_text())
    for k, v in changes.items():
        if v is None and k in ("checksums", "checksum"):
            doc.pop(k, None)
        else:
            doc[k] = v
    dst.write_text(json.dumps(doc, indent=1))
    return dst


def _tiny_dir(path: Path, num_layers: int = 4) -> Path:
    """A random Llama (intermediate 256, so the decilm format can hold it) and the tiny tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers.tiny_models import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    base = tiny_llama(tok, max_position_embeddings=256)
    config = LlamaConfig(**{**base.config.to_dict(), "num_hidden_layers": num_layers, "intermediate_size": 256})
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Everything the cases name: a tiny model, a plan, edited plans, its three directory exports, user files."""
    from safetensors.torch import load_file, save_file

    from hopscotch import SkipPlan, export_model
    from hopscotch.models import load_model

    root = tmp_path_factory.mktemp("probe")
    tiny = _tiny_dir(root / "tiny")
    model, tok = load_model(tiny)
    plan = SkipPlan.for_model(model, [1], [], 0.9 + 0.2 * torch.rand(4, 4), method="probe")
    p = plan.save(root / "p.json")
    for fmt, name in (("hopscotch", "hop"), ("vanilla", "van"), ("decilm", "deci")):
        export_model(model, plan, root / name, format=fmt, tokenizer=tok)
    shutil.copytree(root / "hop", root / "hopplus")
    (root / "hopplus" / "notes.txt").write_text("the user's notes")
    SkipPlan.for_model(model, [0], [], method="probe").save(root / "mlp0.json")
    _plan_file_edit(p, root / "edited.json", skipped_attention=[2])
    _plan_file_edit(p, root / "nullmlp.json", skipped_mlp=None)
    _plan_file_edit(p, root / "v1.json", format="hopscotch-plan/1", checksums=None, checksum=None)
    from transformers import LlamaConfig

    SkipPlan.for_model(LlamaConfig(**{**model.config.to_dict(), "num_hidden_layers": 5}), [1]).save(root / "other5.json")
    from transformers import Qwen2Config

    qwen = {k: v for k, v in model.config.to_dict().items() if k not in ("model_type", "architectures")}
    SkipPlan.for_model(Qwen2Config(**qwen), [1]).save(root / "qwen.json")
    (root / "notes.txt").write_text("the user's notes")
    (root / "corrupt.json").write_text("{ not json")
    (root / "link.json").symlink_to(root / "gone.json")
    (root / "bad.gguf").write_bytes(b"not a gguf file")
    (root / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9", "answer": " x"}\n'.encode("latin-1"))
    unknown = json.dumps({**json.loads((tiny / "config.json").read_text()), "model_type": "frobnicator"})
    for name, file, text in (("badcfg", "config.json", "{ nope"), ("badst", "model.safetensors", "\0" * 20),
                             ("cfgonly", "model.safetensors", None), ("unknown", "config.json", unknown)):
        shutil.copytree(tiny, root / name)  # a copy of the tiny model with one file broken, or gone
        if text is None:
            (root / name / file).unlink()
        else:
            (root / name / file).write_text(text)
    (root / "user.json").write_text('{"mine": true}')
    (root / "file.txt").write_text("a file")
    (root / "user.gguf").write_bytes(b"not a gguf of ours")
    for d in ("somedir", "emptydir", "userdir", "sb", "nest"):
        (root / d).mkdir()
    (root / "userdir" / "notes.txt").write_text("the user's notes")
    for f in ("p.json", "p.safetensors", "notes.txt"):
        shutil.copyfile(root / f if f != "notes.txt" else root / "notes.txt", root / "sb" / f)
    shutil.copytree(tiny, root / "nest" / "tiny")
    shutil.copytree(tiny, root / "broken")
    sd = load_file(str(root / "broken" / "model.safetensors"))
    del sd["model.layers.2.mlp.down_proj.weight"]
    save_file(sd, str(root / "broken" / "model.safetensors"), metadata={"format": "pt"})
    lines = [json.dumps({"prompt": f"Question: {i} plus {i}?\nAnswer:", "answer": f" {2 * i}"}) for i in range(12)]
    (root / "qa.jsonl").write_text("\n".join(lines) + "\n")
    return root


def probe(root: Path, cases: list[list[str]], timeout: int = 600) -> list[dict]:
    """Run the argv lists through cli_probe.py in one subprocess; returns its per-case results."""
    proc = subprocess.run([sys.executable, str(HELPERS / "cli_probe.py"), str(root)], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not any(n in line for n in NOISE)]


def assert_refused(res: dict, case: Case) -> None:
    """Exit status, one line naming the value, no traceback, nothing written or removed."""
    assert res["escaped"] is None, res["escaped"]
    lines = error_lines(res["stderr"])
    assert res["code"] == case.code, (res["code"], lines)
    assert "Traceback" not in res["stderr"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("hopscotch") and " error: " in lines[0], lines[0]
    for text in case.says:
        assert text in lines[0], (text, lines[0])
    assert res["stdout"] == ""
    assert res["after"] == res["before"], "the working directory changed"


@pytest.fixture(scope="module")
def results(workdir):
    return dict(zip((c.id for c in CASES), probe(workdir, [c.argv for c in CASES])))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_command_line(case, results):
    assert_refused(results[case.id], case)


def test_exports_are_evaluated_as_what_they_are_and_overwrite_replaces_only_an_export(workdir):
    """Finding 1: an export given to `eval --model` is loaded as itself (patched for the hopscotch format, the plan
    named); `--overwrite` replaces an earlier export and leaves nothing else."""
    ev = ["--data", "qa.jsonl", "--objective", "nll", "--calibration", 4, "--evaluation", 6, "--wiki-blocks", 2,
          "--resamples", 200, "--quiet"]
    cases = [["eval", "--model", name, *ev, "--json"] for name in ("hop", "van", "deci")]
    cases += [["eval", "--model", "hop", *ev], ["eval", "--model", "tiny", "--plan", "p.json", *ev, "--json"]]
    cases += [["export", "--model", "tiny", "--plan", "p.json", "--out", "hop", "--overwrite", "--quiet"]]
    res = probe(workdir, [[str(a) for a in c] for c in cases])
    for r in res:
        assert r["code"] == 0 and r["escaped"] is None, r["stderr"][-2000:]
        assert "Traceback" not in r["stderr"] and not error_lines(r["stderr"]), r["stderr"]
    outs = [json.loads(r["stdout"]) for r in res[:3]]
    for out, fmt in zip(outs, ("hopscotch", "vanilla", "decilm")):
        assert out["export"]["format"] == fmt and out["skipped_attention"] == [1] and out["plan"] is None
        assert out["export"]["method"] == "probe"
    assert "hop is a hopscotch export of a plan (probe) skipping attention blocks [1]" in res[3]["stdout"]
    assert "(none: the original model)" not in res[3]["stdout"]
    # The export computes what the original model with the plan computes: same held-out loss, to float rounding.
    with_plan = json.loads(res[4]["stdout"])
    assert outs[0]["eval_loss"] == pytest.approx(with_plan["eval_loss"], rel=1e-4)
    assert outs[2]["eval_loss"] == pytest.approx(with_plan["eval_loss"], rel=1e-3)  # one eps: exact up to it
    overwrite = res[5]
    changed = {k for k in set(overwrite["before"]) | set(overwrite["after"])
               if overwrite["before"].get(k) != overwrite["after"].get(k)}
    assert changed and all(k == "hop" or k.startswith("hop/") for k in changed), changed


def test_the_real_executable_gives_one_line_and_the_exit_status(workdir):
    """Through the console script itself (what a user runs), a usage error, a refused plan and a refused
    overwrite: one line each, the exit status, no traceback."""
    exe = Path(sys.executable).with_name("hopscotch")
    if not exe.is_file():
        pytest.skip("no hopscotch executable beside this interpreter")
    for argv, says in ((["search", "--num-skip", "x"], "invalid int value: 'x'"),
                       (["eval", "--plan", "edited.json"], "skipped_attention changed"),
                       (["export", "--plan", "sb/p.json", "--out", "sb", "--overwrite"], "holds the plan")):
        before = sorted(p.name for p in (workdir / "sb").iterdir())
        proc = subprocess.run([str(exe), *argv], cwd=workdir, capture_output=True, text=True, timeout=300)
        lines = error_lines(proc.stderr)
        assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr and sorted(p.name for p in (workdir / "sb").iterdir()) == before


@pytest.mark.slow
def test_smollm2_export_is_evaluated_as_itself(tmp_path):
    """Finding 1 on the packaged SmolLM2: export a learned plan (default format), evaluate the export: it loads as
    a hopscotch export, the result is reported as that model, and --plan on top of it is refused."""
    plan = DATA / "smollm2_learned_plan"
    ev = ["--task", "wikipedia", "--evaluation", 4, "--wiki-blocks", 2, "--resamples", 200, "--quiet"]
    cases = [["export", "--plan", plan, "--out", "thin", "--quiet"], ["eval", "--model", "thin", *ev],
             ["eval", "--model", "thin", "--plan", plan, *ev], ["eval", "--plan", plan, *ev]]
    res = probe(tmp_path, [[str(a) for a in c] for c in cases], timeout=1200)
    assert res[0]["code"] == 0 and res[1]["code"] == 0, (res[0]["stderr"][-1500:], res[1]["stderr"][-1500:])
    assert "thin is a hopscotch export of a plan (hopscotch-fast) skipping attention blocks [6, 7, 25, 29]" \
        in res[1]["stdout"]
    assert_refused(res[2], Case("", [], ("--plan", "its plan already in its weights")))
    ppl = [float(next(line for line in r["stdout"].splitlines() if line.startswith("Wikipedia perplexity")).split()[2])
           for r in (res[1], res[3])]
    assert ppl[0] == pytest.approx(ppl[1], rel=1e-3)  # the export computes what the model with the plan computes
