"""The end-to-end benchmark's choices, in a module light enough for the command line to import at start-up."""

# Who is timed (bench/e2e.py says what each is) and how a decode cache is filled.
PROVIDERS = ("hf", "hf_identity", "hopscotch", "hopscotch_compiled")
FILLS = ("prefill", "random")
