"""Anthropic's Messages API on the engine."""
