"""What the next token may be and how it is drawn: ``SamplingParams`` (validated per request), the
batched ``Sampler`` and the grammars of structured outputs."""
