"""KServe Open Inference Protocol v2 with Triton's generate extension."""
