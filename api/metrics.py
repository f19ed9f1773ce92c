"""Prometheus metrics (vLLM's set, ``engine:`` prefix), fed from the engine's outputs and stats."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from engine import AsyncLLMEngine, RequestOutput

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class _EngineStatsCollector:
    """Gauges read from the engine at scrape time, so they are never stale."""

    def __init__(self, engine: AsyncLLMEngine, labels: dict[str, str]) -> None:
        self.engine, self.labels = engine, labels

    def collect(self):
        stats = self.engine.stats()
        names, values = list(self.labels), list(self.labels.values())

        def gauge(name, doc, value):
            family = GaugeMetricFamily(name, doc, labels=names)
            family.add_metric(values, value)
            return family

        yield gauge("engine:num_requests_running", "Sequences in the running batch.", stats.num_running)
        yield gauge("engine:num_requests_waiting", "Sequences waiting to be scheduled.", stats.num_waiting)
        yield gauge("engine:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0..1).",
                    stats.num_used_blocks / stats.num_total_blocks)
        yield gauge("engine:kv_cache_used_blocks", "KV cache blocks in use.", stats.num_used_blocks)
        yield gauge("engine:kv_cache_total_blocks", "KV cache blocks in the pool.", stats.num_total_blocks)
        yield gauge("engine:prefix_cache_hit_rate", "Prompt tokens found in the prefix cache / tokens looked up.",
                    stats.prefix_cache_hits / stats.prefix_cache_queries if stats.prefix_cache_queries else 0.0)
        yield gauge("engine:compiled_graphs", "Compiled CPU decode graphs in use; full speed once equal to "
                    "engine:graphs_total.", stats.compiled_graphs)
        yield gauge("engine:graphs_total", "Compiled decode graphs the fast path needs (0: none on this device).",
                    stats.graphs_total)
        for name, doc, value in (
            ("engine:num_preemptions", "Requests preempted for lack of KV blocks.", stats.num_preemptions),
            ("engine:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", stats.prefix_cache_queries),
            ("engine:prefix_cache_hits", "Prompt tokens found in the prefix cache.", stats.prefix_cache_hits),
        ):
            counter = CounterMetricFamily(name, doc, labels=names)
            counter.add_metric(values, value)
            yield counter


class EngineMetrics:
    def __init__(self, engine: AsyncLLMEngine, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}
        self.registry.register(_EngineStatsCollector(engine, labels))
        label_names = list(labels)
        self._labels = labels
        self.prompt_tokens = Counter("engine:prompt_tokens", "Prompt tokens of admitted requests.",
                                     label_names, registry=self.registry)
        self.generation_tokens = Counter("engine:generation_tokens", "Generated tokens.", label_names,
                                         registry=self.registry)
        self.request_success = Counter("engine:request_success", "Finished requests by finish reason (of their last sequence).",
                                       label_names + ["finished_reason"], registry=self.registry)
        self.ttft = Histogram("engine:time_to_first_token_seconds", "Time to first token.", label_names,
                              buckets=LATENCY_BUCKETS, registry=self.registry)
        self.itl = Histogram("engine:inter_token_latency_seconds", "Time between two outputs of a request.",
                             label_names, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.e2e = Histogram("engine:e2e_request_latency_seconds", "Arrival to last token.", label_names,
                             buckets=LATENCY_BUCKETS, registry=self.registry)
        self.grpc_requests = Counter("engine:grpc_requests", "gRPC calls handled, by method and status code.",
                                     label_names + ["method", "code"], registry=self.registry)
        for metric in (self.prompt_tokens, self.generation_tokens, self.ttft, self.itl, self.e2e):
            metric.labels(**labels)  # expose zeros before the first request
        # request id -> (time of its last output, tokens counted so far)
        self._progress: dict[str, tuple[float, int]] = {}
        engine.add_output_listener(self.observe)

    def observe(self, output: RequestOutput) -> None:
        """Counts come from the request's metrics, not from the outputs' token lists, which hold only the new
        tokens of a stream (DELTA) and arrive once for a non-streaming request (FINAL_ONLY)."""
        now = time.monotonic()
        labels = self._labels
        stats = output.metrics
        previous = self._progress.get(output.request_id)
        if previous is None:
            self.prompt_tokens.labels(**labels).inc(len(output.prompt_token_ids))
            first = stats.first_token_time if stats.first_token_time is not None else now
            self.ttft.labels(**labels).observe(first - stats.arrival_time)
            counted = 0
        else:
            self.itl.labels(**labels).observe(now - previous[0])
            counted = previous[1]
        self.generation_tokens.labels(**labels).inc(stats.num_generated_tokens - counted)
        if output.finished:
            self._progress.pop(output.request_id, None)
            self.e2e.labels(**labels).observe(now - stats.arrival_time)
            reason = next((c.finish_reason for c in reversed(output.outputs) if c.finish_reason), "abort")
            self.request_success.labels(**labels, finished_reason=reason).inc()
        else:
            self._progress[output.request_id] = (now, stats.num_generated_tokens)

    def count_grpc(self, method: str, code: str) -> None:
        self.grpc_requests.labels(**self._labels, method=method, code=code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
