"""A tiny byte-level BPE tokenizer (no pad token, like many LM tokenizers) and a tiny random Llama sized to it,
both built in memory in well under a second, for the fast data and evaluation tests."""

from __future__ import annotations

import functools

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is the capital of France?\nAnswer: Paris",
    "Question: Which gas do plants take in?\nAnswer: carbon dioxide",
    "A cat sat on the mat. The dog sat on the log.",
    "Water boils at one hundred degrees. Ice melts at zero degrees.",
    "apple banana cherry grape lemon mango orange peach pear plum",
] * 4
EOS = "<|endoftext|>"


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer():
    """A fresh byte-level BPE tokenizer (~384 tokens) with EOS and no pad token."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json()), eos_token=EOS)


def tiny_llama(tokenizer, *, seed: int = 0, max_position_embeddings: int = 128):
    """A 2-layer random Llama (hidden 64) whose vocabulary matches ``tokenizer``, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                         pad_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger logits than the default init, so greedy answers and choices differ clearly
        model.lm_head.weight.mul_(20.0)
    return model
