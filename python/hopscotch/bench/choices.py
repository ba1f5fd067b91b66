"""The end-to-end benchmark's choices, in a module light enough for the command line to import at start-up."""

# Who is timed (bench/e2e.py says what each is) and how a decode cache is filled.
PROVIDERS = ("hf", "hf_identity", "hopscotch", "hopscotch_compiled")
FILLS = ("prefill", "random")
# `hopscotch bench --random-shape`: Llama configurations benchmarked with random weights (bench.e2e.random_model).
RANDOM_SHAPES = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, max_position_embeddings=1024),
}
