"""Decoder architectures by Hugging Face ``architectures`` name (``registry``)."""
