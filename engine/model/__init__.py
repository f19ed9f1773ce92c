"""The model and what its forward reads: decoder architectures, layers, loaders for safetensors
and GGUF files, quantized linears, the step's tensors (``forward_batch``) and tensor-parallel
shards (``parallel``). Knows nothing of requests or text."""
