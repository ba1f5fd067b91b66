"""Shared by the CLI tests: a tiny HF model directory and a way to run the `hopscotch` command in-process."""

from __future__ import annotations

from pathlib import Path


def save_tiny_llama_dir(path: Path, num_layers: int = 4) -> Path:
    """A random Llama of ``num_layers`` layers and its tiny tokenizer, saved as an HF model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers.tiny_models import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    base = tiny_llama(tok, max_position_embeddings=256)
    config = LlamaConfig(**{**base.config.to_dict(), "num_hidden_layers": num_layers})
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``hopscotch ARGV...`` in this process: (exit code, stdout, stderr)."""
    from hopscotch.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err
