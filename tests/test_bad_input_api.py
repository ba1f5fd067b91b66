"""The Python API probed with bad input (issue 36): every public function checks its arguments and raises a
project error naming the function, the argument, the value and what was expected, never an AttributeError or
TypeError from inside; skip sets follow one rule everywhere (``hopscotch.limits``); a model loaded from an export
is what it is, and nothing is applied on top of it; no loader lets a missing weight be initialised at random."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hopscotch import PlanError, SkipPlan, apply_plan, export_model, from_pretrained, patch_model, set_skips
from hopscotch.errors import ArgumentError, HopscotchError
from hopscotch.export import ExportError
from hopscotch.limits import SkipLimitError
from hopscotch.models import ModelLoadError, export_info, load_model
from hopscotch.search import search
from tests.helpers.model_testing import tiny_model


@pytest.fixture
def model():
    return tiny_model("llama")  # 5 layers


@pytest.fixture
def plan(model):
    return SkipPlan.for_model(model, [1, 3], [], 0.9 + 0.2 * torch.rand(5, 4))


def _batches():
    ids = torch.randint(3, 90, (2, 8))
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}]


def _patched(m):
    patch_model(m)
    return m


# (function call, error type, message pattern): the argument, the value, what was expected
CALLS = {
    "apply_plan: a path for the plan": (
        lambda m, p: apply_plan(m, "plan.json"), ArgumentError,
        r"apply_plan: plan='plan\.json' \(str\); expected a SkipPlan: load it with SkipPlan\.load\('plan\.json'\)"),
    "apply_plan: not a model": (lambda m, p: apply_plan("model", p), ArgumentError,
                                r"apply_plan: model='model' \(str\); expected a loaded transformers causal LM"),
    "apply_plan: free_skipped not a bool": (lambda m, p: apply_plan(m, p, free_skipped="yes"), ArgumentError,
                                            r"apply_plan: free_skipped='yes' \(str\); expected True or False"),
    "set_skips: an int for the list": (lambda m, p: set_skips(_patched(m), attention=5), ArgumentError,
                                       r"set_skips: attention=5 \(int\); expected an iterable of integer block"),
    "set_skips: strings": (lambda m, p: set_skips(_patched(m), attention=["1"]), ArgumentError,
                           r"set_skips: attention=\['1'\] \(list\) holds '1'"),
    "set_skips: a bool": (lambda m, p: set_skips(_patched(m), mlp=[True]), ArgumentError, r"mlp=\[True\] \(list\)"),
    "set_skips: a float": (lambda m, p: set_skips(_patched(m), attention=[1.5]), ArgumentError, r"holds 1\.5"),
    "set_skips: duplicates": (lambda m, p: set_skips(_patched(m), attention=[1, 1]), SkipLimitError,
                              r"attention lists blocks \[1\] more than once"),
    "set_skips: out of range": (lambda m, p: set_skips(_patched(m), attention=[5]), SkipLimitError,
                                r"attention holds \[5\], out of range for a model with 5 layers"),
    "set_skips: every attention block": (lambda m, p: set_skips(_patched(m), attention=range(5)), SkipLimitError,
                                         r"attention skips all 5 attention blocks; at most 4 may be skipped"),
    "set_skips: every MLP block": (lambda m, p: set_skips(_patched(m), mlp=range(5)), SkipLimitError,
                                   r"mlp skips all 5 MLP blocks"),
    "set_skips: unpatched model": (lambda m, p: set_skips(m, attention=[1]), ArgumentError,
                                   r"set_skips: model=<LlamaForCausalLM>; expected a patched model \(call hopscotch\.patch_model"),
    "patch_model: not a model": (lambda m, p: patch_model("gpt2"), ArgumentError,
                                 r"patch_model: model='gpt2' \(str\); expected a loaded transformers causal LM"),
    "SkipPlan.load: None": (lambda m, p: SkipPlan.load(None), ArgumentError,
                            r"SkipPlan\.load: path=None \(NoneType\); expected a path"),
    "SkipPlan.load: a number": (lambda m, p: SkipPlan.load(3), ArgumentError, r"SkipPlan\.load: path=3 \(int\)"),
    "SkipPlan.for_model: a float index": (lambda m, p: SkipPlan.for_model(m, [1.5]), ArgumentError,
                                          r"SkipPlan\.for_model: skipped_attention=\[1\.5\] \(list\) holds 1\.5"),
    "SkipPlan.for_model: every attention block": (lambda m, p: SkipPlan.for_model(m, range(5)), SkipLimitError,
                                                  r"skipped_attention skips all 5 attention blocks"),
    "export_model: a path for the plan": (lambda m, p: export_model(m, "plan.json", "out"), ArgumentError,
                                          r"export_model: plan='plan\.json' \(str\); expected a SkipPlan"),
    "export_model: out_dir None": (lambda m, p: export_model(m, p, None), ArgumentError,
                                   r"export_model: out_dir=None \(NoneType\); expected a path"),
    "export_model: max_shard_size banana": (lambda m, p: export_model(m, p, "out", max_shard_size="banana"),
                                            ArgumentError, r"max_shard_size 'banana': expected a size such as 5GB"),
    "export_model: overwrite not a bool": (lambda m, p: export_model(m, p, "out", overwrite="yes"), ArgumentError,
                                           r"export_model: overwrite='yes' \(str\); expected True or False"),
    "export_model: format not a string": (lambda m, p: export_model(m, p, "out", format=3), ExportError,
                                          r"unknown export format 3; expected one of hopscotch"),
    "export_model: tokenizer a string": (lambda m, p: export_model(m, p, "out", tokenizer="tok"), ArgumentError,
                                         r"export_model: tokenizer='tok' \(str\); expected None or a transformers"),
    "export_model: dtype a number": (lambda m, p: export_model(m, p, "out", dtype=16), ArgumentError,
                                     r"export_model: dtype=16 \(int\)"),
    "from_pretrained: None": (lambda m, p: from_pretrained(None), ArgumentError,
                              r"from_pretrained: path=None \(NoneType\); expected a path"),
    "from_pretrained: unknown dtype": (lambda m, p: from_pretrained("x", dtype="int3"), ArgumentError,
                                       r"from_pretrained: dtype='int3': unknown dtype 'int3'"),
    "from_pretrained: device a number": (lambda m, p: from_pretrained("x", device=3.5), ArgumentError,
                                         r"from_pretrained: device=3\.5 \(float\)"),
    "load_model: a number": (lambda m, p: load_model(3), ArgumentError, r"load_model: model=3 \(int\)"),
    "load_model: dtype a number": (lambda m, p: load_model("x", dtype=16), ArgumentError,
                                   r"load_model: dtype=16 \(int\)"),
    "search: batches a string": (lambda m, p: search(m, "batches"), ArgumentError,
                                 r"search: batches='batches' \(str\); expected a list of dicts"),
    "search: num_skip a string": (lambda m, p: search(m, _batches(), num_skip="2"), ArgumentError,
                                  r"search: num_skip='2' \(str\); expected an integer"),
    "search: lr a string": (lambda m, p: search(m, _batches(), lr="fast"), ArgumentError,
                            r"search: lr='fast' \(str\); expected a finite number"),
    "search: lr nan": (lambda m, p: search(m, _batches(), lr=float("nan")), ArgumentError, r"search: lr=nan"),
    "search: not a model": (lambda m, p: search(None, _batches()), ArgumentError, r"search: model=None"),
    "search: every attention block": (lambda m, p: search(m, _batches(), num_skip=5, method="random"),
                                      SkipLimitError, r"num_skip 5: expected 0 to 4 for a model with 5 layers"),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_bad_argument(name, model, plan, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    call, error, pattern = CALLS[name]
    with pytest.raises(error, match=pattern) as info:
        call(model, plan)
    assert isinstance(info.value, HopscotchError)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_benchmark_may_time_a_model_without_attention(model):
    """The one exemption from the rule: benchmarks time the attention-free floor (``hopscotch bench --ks all``)."""
    set_skips(_patched(model), attention=range(5), allow_no_attention=True)
    with torch.no_grad():
        assert model(torch.randint(3, 90, (1, 5))).logits.isfinite().all()


def test_the_limit_is_the_same_for_plans_set_skips_search_and_exports(model, tmp_path):
    """Skipping 4 of 5 attention blocks is allowed everywhere; 5 is refused everywhere with the same words."""
    from hopscotch.limits import check_num_skip, check_skip_lists

    ok = SkipPlan.for_model(model, range(4))
    apply_plan(model, ok)
    export_model(model, ok, tmp_path / "four", format="vanilla")
    words = "skips all 5 attention blocks; at most 4 may be skipped"
    for call in (lambda: SkipPlan(ok.fingerprint, list(range(5))).check(),
                 lambda: set_skips(model, attention=range(5)),
                 lambda: check_skip_lists(range(5), (), 5)):
        with pytest.raises(SkipLimitError, match=words):
            call()
    assert check_num_skip(4, 5) == 4
    with pytest.raises(SkipLimitError, match="at least one attention block must remain"):
        check_num_skip(5, 5)


def test_a_model_loaded_from_an_export_refuses_a_plan_on_top(model, plan, tmp_path):
    apply_plan(model, plan)
    ids = torch.randint(3, 90, (1, 7))
    with torch.no_grad():
        ref = model(ids).logits
    for fmt in ("hopscotch", "vanilla"):
        out = export_model(model, plan, tmp_path / fmt, format=fmt)
        loaded = load_model(out, with_tokenizer=False)
        info = export_info(loaded)
        assert info.format == fmt and info.skipped_attention == (1, 3) and info.plan is not None
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, ref, atol=2e-3, rtol=1e-3)
        with pytest.raises(PlanError, match=rf"this model is a {fmt} export of a plan skipping attention blocks "
                                            r"\[1, 3\].*cannot be applied on top"):
            apply_plan(loaded, plan)
        with pytest.raises(ExportError, match=r"its plan is already in its weights"):
            export_model(loaded, plan, tmp_path / f"{fmt}-again")
        with pytest.raises(PlanError, match=r"search the original model"):
            search(loaded, _batches(), num_skip=1)
    assert export_info(from_pretrained(tmp_path / "hopscotch")).format == "hopscotch"
    with pytest.raises(ExportError, match=r"not a format='hopscotch' export"):
        from_pretrained(tmp_path / "vanilla")


@pytest.mark.filterwarnings("ignore:attention block 0 is skipped")
def test_a_decilm_export_loads_as_what_it_is_without_running_its_code(tmp_path):
    model = tiny_model("llama", intermediate_size=256)
    plan = SkipPlan.for_model(model, [0, 2], [0], 0.9 + 0.2 * torch.rand(5, 4))
    apply_plan(model, plan)
    ids = torch.randint(3, 90, (1, 7))
    out = export_model(model, plan, tmp_path / "deci", format="decilm")
    (out / "configuration_decilm.py").write_text("raise SystemExit('this code must not run')\n")
    loaded = load_model(out, with_tokenizer=False)
    assert export_info(loaded).format == "decilm" and export_info(loaded).skipped_mlp == (0,)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=2e-3, rtol=1e-3)


def test_missing_or_mis_shaped_weights_are_an_error_in_every_loader(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_model("llama")
    plan = SkipPlan.for_model(model, [1])
    model.save_pretrained(tmp_path / "plain")
    export_model(model, plan, tmp_path / "hop")
    for folder, loader in (("plain", load_model), ("hop", from_pretrained)):
        f = tmp_path / folder / "model.safetensors"
        sd = load_file(str(f))
        sd.pop("model.layers.2.mlp.up_proj.weight")
        save_file(sd, str(f), metadata={"format": "pt"})
        with pytest.raises(HopscotchError, match=r"model\.layers\.2\.mlp\.up_proj\.weight"):
            loader(tmp_path / folder) if loader is from_pretrained else loader(tmp_path / folder,
                                                                               with_tokenizer=False)
    sd["model.layers.2.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(sd, str(tmp_path / "hop" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ExportError, match=r"weights of the wrong shape.*up_proj\.weight \(3, 3\)"):
        from_pretrained(tmp_path / "hop")
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "plain", with_tokenizer=False)


def test_overwrite_refuses_inputs_the_working_directory_and_foreign_files(model, plan, tmp_path, monkeypatch):
    """Finding 2 through the API: export_model knows its inputs (the plan file it was loaded from, the model's
    directory) and refuses to write over them, over the working directory, or over files it did not write."""
    sb = tmp_path / "sb"
    loaded_plan = SkipPlan.load(plan.save(sb / "P.json"))
    (sb / "notes.txt").write_text("mine")
    before = sorted(p.name for p in sb.iterdir())
    with pytest.raises(ExportError, match=r"out_dir .*sb holds the plan .*P\.json: writing there would destroy it"):
        export_model(model, loaded_plan, sb, overwrite=True)
    with pytest.raises(ExportError, match=r"holds files hopscotch did not write \(P\.json, P\.safetensors, notes"):
        export_model(model, plan, sb, overwrite=True)  # the same plan, not loaded from there: still foreign files
    assert sorted(p.name for p in sb.iterdir()) == before
    monkeypatch.chdir(sb)
    with pytest.raises(ExportError, match=r"out_dir \. is the working directory"):
        export_model(model, plan, ".", overwrite=True)
    with pytest.raises(ExportError, match=r"out_dir \.\. is the working directory or a parent of it"):
        export_model(model, plan, "..", overwrite=True)
    assert sorted(p.name for p in sb.iterdir()) == before
    model.save_pretrained(tmp_path / "m" / "weights")
    from_dir = load_model(tmp_path / "m" / "weights", with_tokenizer=False)
    with pytest.raises(ExportError, match=r"holds the model"):
        export_model(from_dir, plan, tmp_path / "m", overwrite=True)
    assert (tmp_path / "m" / "weights" / "config.json").is_file()


def test_stale_partials_are_named_and_removed_by_the_next_writer_of_the_same_destination(tmp_path, caplog):
    from hopscotch.atomic import PARTIAL_TAG, atomic_write_bytes, partial_path

    dead = tmp_path / f".p.json{PARTIAL_TAG}999999999-0a1b2c3d"
    dead.write_bytes(b"x" * 1000)
    other = tmp_path / f".q.json{PARTIAL_TAG}999999999"
    other.write_bytes(b"y")
    with caplog.at_level("WARNING", logger="hopscotch"):
        atomic_write_bytes(tmp_path / "p.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["p.json", other.name])  # q.json's is not ours
    assert [r.getMessage() for r in caplog.records] == [
        f"removed 1 partial copy of {tmp_path / 'p.json'} left by an interrupted run (0.0 MB): {dead.name}"]
    assert partial_path(tmp_path / "p.json").name == f".p.json{PARTIAL_TAG}{os.getpid()}"
    assert Path(partial_path(tmp_path / "d", unique=True)).parent == tmp_path
