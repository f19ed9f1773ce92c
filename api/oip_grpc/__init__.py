"""The Open Inference Protocol over gRPC (KServe v2 and Triton's streaming), beside the REST routes."""
