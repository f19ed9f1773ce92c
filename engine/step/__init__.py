"""One engine step: schedule, build the batch, run the model, sample, turn tokens into outputs.

``LLMEngine`` owns the loop (``llm_engine``); ``ModelRunner`` runs a ``SchedulerOutput`` on the
model and its KV cache (``model_runner``, ``kv_cache``), eagerly, as a compiled CPU decode step
(``compiled_decode``) or through CUDA graphs (``cuda_graphs``), in one process or over tensor-
parallel ranks (``parallel_runner``).
"""
