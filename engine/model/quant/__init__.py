"""AWQ and GPTQ checkpoints: reading their settings, the quantized linear layer, and our quantizer."""
