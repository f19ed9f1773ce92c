"""Text and tokens at the engine's edges: prompts in (tokenizer, input processor), outputs out
(incremental detokenizer, stop strings, logprobs, ``RequestOutput``). No model code here."""
