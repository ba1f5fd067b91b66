"""The command line: every subcommand on a tiny model, and the bad-argument paths (one line, non-zero exit)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.cli_testing import run_cli


SEARCH = ["--task", "arc_easy", "--calibration", 4, "--evaluation", 4, "--max-new-tokens", 4, "--final-epochs", 1,
          "--quiet"]


def test_search_eval_export_round(tiny_dir, tmp_path, capsys):
    plan = tmp_path / "plans" / "p.json"
    code, out, err = run_cli(capsys, "search", "--model", tiny_dir, *SEARCH, "--num-skip", 1, "--out", plan, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["plan"] == str(plan) and plan.is_file() and len(res["skipped_attention"]) == 1
    assert {"eval_loss", "acc", "wiki_ppl"} <= set(res["before"]) and res["after"]
    assert res["kv_bytes_per_token"]["saved_fraction"] == pytest.approx(0.25)
    assert res["speed"]["decode_speedup"] > 0
    assert (tmp_path / "plans" / "p.state.json").is_file()  # resumable
    # Human-readable output of a second search (resumed from the state file: same plan).
    code, out, _ = run_cli(capsys, "search", "--model", tiny_dir, *SEARCH, "--num-skip", 1, "--out", plan, "--no-speed")
    assert code == 0 and f"plan saved to {plan}" in out and "held-out loss" in out and "KV cache per token" in out
    code, out, err = run_cli(capsys, "eval", "--model", tiny_dir, "--plan", plan, "--task", "arc_easy",
                          "--calibration", 4, "--evaluation", 4, "--quiet", "--json")
    assert code == 0, err
    assert json.loads(out)["skipped_attention"] == res["skipped_attention"]
    for fmt in ("hopscotch", "vanilla"):
        code, out, err = run_cli(capsys, "export", "--model", tiny_dir, "--plan", plan, "--out", tmp_path / fmt,
                              "--format", fmt, "--quiet")
        assert code == 0, err
        assert f"wrote {fmt} checkpoint" in out and (tmp_path / fmt / "config.json").is_file()
    code, _, err = run_cli(capsys, "export", "--model", tiny_dir, "--plan", plan, "--out", tmp_path / "hopscotch")
    assert code == 2 and "is not empty; pass --overwrite" in err
    code, _, err = run_cli(capsys, "export", "--model", tiny_dir, "--plan", plan, "--out", tmp_path / "d",
                        "--format", "decilm", "--quiet")
    assert code == 2 and "--format decilm cannot represent this model with this plan exactly" in err


def test_search_baselines_and_local_data(tiny_dir, tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Question: {i} plus {i}?\nAnswer:", "answer": f" {2 * i}"})
                              for i in range(12)) + "\n")
    for method in ("llm-drop", "random"):
        code, out, err = run_cli(capsys, "search", "--model", tiny_dir, "--data", data, "--objective", "nll",
                              "--calibration", 6, "--evaluation", 6, "--method", method, "-k", 2, "--no-speed",
                              "--out", tmp_path / f"{method}.json", "--json", "--quiet")
        assert code == 0, err
        assert len(json.loads(out)["skipped_attention"]) == 2


def test_bench_and_info(tmp_path, capsys):
    code, out, err = run_cli(capsys, "bench", "--random-shape", "tiny", "--ks", "0,1", "--batches", 1, "--contexts", 16,
                          "--new-tokens", 2, "--budget", 0.01, "--rounds", 2, "--csv", tmp_path / "e2e.csv", "--json",
                          "--quiet")
    assert code == 0, err
    res = json.loads(out)
    assert {r["provider"] for r in res["rows"]} == {"hf", "hf_identity", "hopscotch"}
    # One row per (provider, k, phase, batch): hf, hopscotch at k=0, hf_identity, hopscotch at k=1; prefill and
    # one decode batch. The repetitions of both rounds are pooled into each row (at least 3 per round).
    keys = [(r["provider"], r["k"], r["phase"], r["batch"]) for r in res["rows"]]
    assert len(keys) == len(set(keys)) == 4 * 2 and all(r["reps"] >= 6 for r in res["rows"])
    assert (tmp_path / "e2e.csv").is_file() and res["plot"].endswith(".png")
    code, out, _ = run_cli(capsys, "info", "--json")
    assert code == 0 and "arc_easy" in json.loads(out)["tasks"]


@pytest.mark.parametrize("argv,message", [
    (["search", "--model", "/no/such/model"], "--model /no/such/model: no such file or directory"),
    (["search", "--task", "nope"], "--task 'nope' is not a packaged task"),
    (["search", "--data", "/no/such.jsonl"], "--data /no/such.jsonl: no such file"),
    (["search", "--screen-fraction", "0"], "--screen-fraction 0.0: expected a fraction"),
    (["search", "--holdout", "1.5"], "--holdout 1.5: expected a fraction in [0, 1)"),
    (["search", "--max-shortlist", "0"], "--max-shortlist 0: expected 1 or more"),
    (["search", "--num-skip", "-1"], "--num-skip -1: expected 0 or more"),
    (["search", "--dtype", "int8"], "--dtype: unknown dtype 'int8'"),
    (["search", "--device", "cuda:0"], "CUDA"),
    (["eval", "--plan", "/no/plan.json"], "--plan /no/plan.json: no such file"),
    (["export", "--plan", "/no/plan.json", "--out", "x"], "--plan /no/plan.json: no such file"),
    (["bench", "--ks", "0,x"], "--ks '0,x': expected integers"),
    (["bench", "--batches", "0"], "--batches '0': expected positive integers"),
    (["bench", "--providers", "vllm"], "--providers 'vllm': unknown vllm; expected some of hf"),
    (["bench", "--rounds", "0"], "--rounds 0: expected 1 or more"),
])
def test_bad_arguments_give_one_line_and_a_nonzero_exit(argv, message, capsys):
    if "--device" in argv and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_corrupt_plan_and_bad_data_are_one_line(tiny_dir, tmp_path, capsys):
    bad_plan = tmp_path / "bad.json"
    bad_plan.write_text("{ not json")
    code, _, err = run_cli(capsys, "eval", "--model", tiny_dir, "--plan", bad_plan)
    assert code == 2 and "is not a valid plan file" in err and "Traceback" not in err
    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": 3}\n')
    code, _, err = run_cli(capsys, "search", "--model", tiny_dir, "--data", str(bad_data), "-k", 1, "--quiet")
    assert code == 2 and "bad.jsonl, line 2" in err and err.count("\n") == 1


def test_module_entry_point_and_help_in_a_subprocess():
    for sub in ("search", "eval", "export", "bench", "info"):
        proc = subprocess.run([sys.executable, "-m", "hopscotch", sub, "--help"], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and "usage: hopscotch " + sub in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "hopscotch", "eval", "--plan", "/nope.json"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
