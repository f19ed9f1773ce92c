"""OpenAI-compatible completions and chat completions."""
