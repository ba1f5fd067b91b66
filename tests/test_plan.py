"""SkipPlan: exact save/load round trips, every bad plan refused with nothing applied, switching and freeing."""

from __future__ import annotations

import json

import pytest
import torch

from hopscotch import PlanError, SkipPlan, apply_plan, current_plan, is_patched
from hopscotch.patch import get_scalars, patched_layers, set_skips
from tests.helpers import DATA, ROOT
from tests.helpers.model_testing import LOGIT_TOL, tiny_model, zeroed_attention


def _plan(model, attn=(1, 3), mlp=(), seed=0, **prov):
    scalars = 0.5 + torch.rand(5, 4, generator=torch.Generator().manual_seed(seed))
    return SkipPlan.for_model(model, attn, mlp, scalars, method="test", seed=seed, **prov)


@pytest.mark.parametrize("form", ["plan.json", "plan_dir"])
def test_save_load_round_trip_is_exact(tmp_path, form):
    model = tiny_model("llama")
    plan = _plan(model, losses=[1.5, 1.25], data={"task": "x"})
    path = plan.save(tmp_path / form)
    assert path.suffix == ".json" and path.is_file()
    loaded = SkipPlan.load(tmp_path / form)
    assert loaded == plan
    assert torch.equal(loaded.scalars, plan.scalars)
    assert loaded.provenance["versions"]["torch"] == torch.__version__
    assert loaded.fingerprint["num_layers"] == 5 and loaded.fingerprint["model_type"] == "llama"


def test_applied_plan_matches_its_definition_and_current_plan_reads_it_back():
    model = tiny_model("llama")
    plan = _plan(model, attn=(0, 4))
    ids = torch.randint(3, 97, (1, 9))
    apply_plan(model, plan)
    assert is_patched(model)
    assert torch.equal(get_scalars(model), plan.scalars)
    again = current_plan(model, method="test", seed=0)
    assert again.skipped_attention == [0, 4] and torch.equal(again.scalars, plan.scalars)
    # With every scalar at 1 the plan is exactly "those attention blocks output zero".
    apply_plan(model, SkipPlan.for_model(model, [0, 4]))
    with torch.no_grad():
        out = model(ids).logits
    from hopscotch import unpatch_model

    unpatch_model(model)
    with torch.no_grad(), zeroed_attention(model, [0, 4]):
        ref = model(ids).logits
    torch.testing.assert_close(out, ref, **LOGIT_TOL[torch.float32])


def _state(model):
    return ([(layer.attn_skipped, layer.mlp_skipped) for layer in patched_layers(model)], get_scalars(model))


def _bad_plans(model, tmp_path):
    good = _plan(model)
    other = tiny_model("llama", num_layers=4)
    wide = tiny_model("llama", hidden_size=96)
    qwen = tiny_model("qwen3")
    cases = {
        "wrong layer count": (SkipPlan.for_model(other, [1]), r"this plan is for a 4-layer llama model; this model has "
                                                              r"5 layers"),
        "wrong architecture": (SkipPlan.for_model(qwen, [1]), r"model_type='qwen3' but the model has "
                                                              r"model_type='llama'"),
        "wrong hidden size": (SkipPlan.for_model(wide, [1]), r"hidden_size=96 but the model has hidden_size=64"),
        "other config": (SkipPlan.for_model(tiny_model("llama", rope_theta=500.0), [1]),
                         r"another configuration of this architecture \(rope_parameters"),
        "index out of range": (SkipPlan(good.fingerprint, [1, 5]), r"out of range for a model with 5 layers"),
        "negative index": (SkipPlan(good.fingerprint, [-1]), r"holds \[-1\], out of range"),
        "duplicates": (SkipPlan(good.fingerprint, [2, 2]), r"lists blocks \[2\] more than once"),
        "non-integer": (SkipPlan(good.fingerprint, [1.5]), r"expected a list of integer block indices"),
        "scalars shape": (SkipPlan(good.fingerprint, [1], scalars=torch.ones(5, 3)), r"shape \(5, 3\); expected \(5, 4\)"),
        "nan scalars": (SkipPlan(good.fingerprint, [1], scalars=torch.ones(5, 4).index_fill_(0, torch.tensor([3]),
                                                                                           float("nan"))),
                        r"scalars of layers \[3\] are NaN or infinite"),
        "inf scalars": (SkipPlan(good.fingerprint, [1], scalars=torch.full((5, 4), float("inf"))), r"NaN or infinite"),
        "all attention": (SkipPlan(good.fingerprint, [0, 1, 2, 3, 4]), r"skips all 5 attention blocks; at most 4"),
        "all mlp": (SkipPlan(good.fingerprint, [], [0, 1, 2, 3, 4]), r"skips all 5 MLP blocks"),
        "mlp null": (SkipPlan(good.fingerprint, [1], None), r"skipped_mlp is None \(NoneType\); expected a list"),
        "scalars a list": (SkipPlan(good.fingerprint, [1], scalars=[[1.0] * 4] * 5), r"scalars are a list; expected"),
    }
    return cases


@pytest.mark.parametrize("case", ["wrong layer count", "wrong architecture", "wrong hidden size", "other config",
                                  "index out of range", "negative index", "duplicates", "non-integer",
                                  "scalars shape", "nan scalars", "inf scalars", "all attention", "all mlp",
                                  "mlp null", "scalars a list"])
def test_bad_plans_raise_and_leave_the_model_as_it_was(case, tmp_path):
    model = tiny_model("llama")
    apply_plan(model, _plan(model, attn=(2,), seed=1))
    before = _state(model)
    plan, pattern = _bad_plans(model, tmp_path)[case]
    with pytest.raises(PlanError, match=pattern):
        apply_plan(model, plan)
    after = _state(model)
    assert after[0] == before[0] and torch.equal(after[1], before[1])
    # An unpatched model stays unpatched.
    fresh = tiny_model("llama")
    with pytest.raises(PlanError):
        apply_plan(fresh, plan)
    assert not is_patched(fresh)


def _corrupt(tmp_path, model, how):
    path = _plan(model).save(tmp_path / "p.json")
    st = path.with_suffix(".safetensors")
    if how == "truncated json":
        path.write_text(path.read_text()[:40])
    elif how == "truncated scalars":
        st.write_bytes(st.read_bytes()[:30])
    elif how == "garbage scalars":
        blob = bytearray(st.read_bytes())
        blob[-4:] = b"\xff\xff\xff\xff"
        st.write_bytes(bytes(blob))
    elif how == "missing scalars":
        st.unlink()
    elif how == "not a plan":
        path.write_text(json.dumps({"format": "something-else"}))
    elif how == "missing field":
        doc = json.loads(path.read_text())
        del doc["skipped_attention"]
        path.write_text(json.dumps(doc))
    elif how == "bad index in file":
        doc = json.loads(path.read_text())
        doc["skipped_attention"] = [1, 99]
        path.write_text(json.dumps(doc))
    elif how == "non-utf8":
        path.write_bytes(b"\xff\xfe{not json")
    return path


@pytest.mark.parametrize("how,pattern", [
    ("truncated json", r"p\.json is not a valid plan file \(not valid JSON at line \d+, column \d+: corrupt or "
                       r"truncated"),
    ("truncated scalars", r"p\.safetensors does not match p\.json"),
    ("garbage scalars", r"checksum differs"),
    ("missing scalars", r"cannot read the plan's scalars .*p\.safetensors"),
    ("not a plan", r"is not a hopscotch plan \(format 'something-else'"),
    ("missing field", r"lacks the fields \['skipped_attention'\]"),
    ("bad index in file", r"p\.json: skipped_attention changed after the plan was saved"),
    ("non-utf8", r"not a valid plan file"),
])
def test_corrupt_or_truncated_files_are_refused_by_name(tmp_path, how, pattern):
    model = tiny_model("llama")
    path = _corrupt(tmp_path, model, how)
    with pytest.raises(PlanError, match=pattern):
        SkipPlan.load(path)
    with pytest.raises(PlanError, match="no plan at"):
        SkipPlan.load(tmp_path / "nothing.json")


def test_switching_plans_needs_no_reload_and_free_skipped_releases_weights():
    model = tiny_model("llama")
    ids = torch.randint(3, 97, (1, 9))
    plan_a, plan_b = _plan(model, attn=(0, 1), seed=2), _plan(model, attn=(3,), seed=3)
    with torch.no_grad():
        out_a = apply_plan(model, plan_a)(ids).logits
        out_b = apply_plan(model, plan_b)(ids).logits
        assert torch.equal(apply_plan(model, plan_a)(ids).logits, out_a)
        assert not torch.equal(out_a, out_b)
        n_before = sum(p.numel() for p in model.parameters())
        apply_plan(model, plan_a, free_skipped=True)
        freed = sum(p.numel() for p in model.parameters())
        assert torch.equal(model(ids).logits, out_a)
    layer = model.model.layers[2]
    per_block = sum(p.numel() for p in layer.self_attn.parameters()) + layer.input_layernorm.weight.numel()
    assert n_before - freed == 2 * per_block
    assert "weights freed" in repr(model)
    freed = r"attention blocks \[0, 1\] cannot be kept: their weights were released"  # one check, in set_skips
    with pytest.raises(PlanError, match=freed):
        apply_plan(model, plan_b)
    assert [layer.attn_skipped for layer in patched_layers(model)] == [True, True, False, False, False]
    apply_plan(model, _plan(model, attn=(0, 1, 4)))  # a plan that keeps them skipped is fine
    with pytest.raises(PlanError, match=freed.replace("0, 1", "0")):
        set_skips(model, attention=[1])
    assert [layer.attn_skipped for layer in patched_layers(model)] == [True, True, False, False, True]


def _edit(path, **changes):
    doc = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del doc[key]
        elif callable(value):
            doc[key] = value(doc[key])
        else:
            doc[key] = value
    path.write_text(json.dumps(doc, indent=1))


_DELETE = object()


@pytest.mark.parametrize("changes,pattern", [
    ({"skipped_attention": [1, 4]}, r"p\.json: skipped_attention changed after the plan was saved"),
    ({"skipped_mlp": None}, r"skipped_mlp changed after the plan was saved"),
    ({"fingerprint": lambda f: {**f, "num_layers": 6}}, r"fingerprint changed after the plan was saved"),
    ({"provenance": lambda p: {**p, "method": "hopscotch"}}, r"provenance changed after the plan was saved"),
    ({"checksums": lambda c: {**c, "skipped_attention": "0" * 64}}, r"checksums are missing or were edited"),
    ({"checksum": _DELETE}, r"checksums are missing or were edited"),
])
def test_a_hand_edited_plan_is_refused_naming_what_changed(tmp_path, changes, pattern):
    model = tiny_model("llama")
    path = _plan(model, attn=(1, 3)).save(tmp_path / "p.json")
    SkipPlan.load(path)  # as saved: loads
    _edit(path, **changes)
    with pytest.raises(PlanError, match=pattern):
        SkipPlan.load(path)


def test_a_plan_of_another_format_is_refused(tmp_path):
    """Format 2 is the first released (0.1.0) and the only one read: an unsigned format-1 plan is refused."""
    path = _plan(tiny_model("llama"), attn=(1, 3)).save(tmp_path / "p.json")
    _edit(path, format="hopscotch-plan/1", checksums=_DELETE, checksum=_DELETE)
    with pytest.raises(PlanError, match=r"p\.json is not a hopscotch plan \(format 'hopscotch-plan/1'; expected "
                                        r"'hopscotch-plan/2'\)"):
        SkipPlan.load(path)


def test_every_committed_plan_is_signed(tmp_path):
    """The plans in the repository (the studies' work archive, test fixtures) are in format 2: they load silently."""
    import tarfile
    import warnings

    with tarfile.open(ROOT / "experiments" / "results" / "work.tar.xz", "r:xz") as tar:
        tar.extractall(tmp_path, members=[m for m in tar.getmembers() if "/plans/" in m.name], filter="data")
    paths = sorted(tmp_path.glob("**/plans/*.json")) + sorted(DATA.glob("**/plan.json"))
    plans = [p for p in paths if '"hopscotch-plan/' in p.read_text(errors="replace")[:200]]
    assert len(plans) >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for p in plans:
            SkipPlan.load(p)


def test_load_and_save_refuse_a_path_that_is_not_one():
    from hopscotch.errors import ArgumentError

    with pytest.raises(ArgumentError, match=r"SkipPlan.load: path=None \(NoneType\); expected a path"):
        SkipPlan.load(None)
    with pytest.raises(ArgumentError, match=r"SkipPlan.save: path=3 \(int\); expected a path"):
        _plan(tiny_model("llama")).save(3)
