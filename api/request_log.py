"""One INFO line per finished request, with its token counts and rates."""

from __future__ import annotations

import logging
import time

from engine import RequestOutput

logger = logging.getLogger("engine.api.requests")


def log_finished_request(output: RequestOutput) -> None:
    if not output.finished:
        return
    metrics = output.metrics
    elapsed = time.monotonic() - metrics.arrival_time
    generated = metrics.num_generated_tokens
    first = (metrics.first_token_time - metrics.arrival_time) if metrics.first_token_time else float("nan")
    reasons = ",".join(sorted({c.finish_reason or "abort" for c in output.outputs}))
    logger.info(
        "request %s finished (%s): %d prompt + %d generated tokens in %.2f s, first token after %.3f s, %.1f tokens/s",
        output.request_id, reasons, len(output.prompt_token_ids), generated, elapsed, first,
        generated / elapsed if elapsed > 0 else 0.0,
    )
