"""The Python front ends: ``LLM`` for offline batches, ``AsyncLLMEngine`` for servers.

Both drive the step loop of ``engine.step`` and hand back ``RequestOutput``s; the HTTP and gRPC
servers (``engine.api``) talk to ``AsyncLLMEngine`` alone.
"""
