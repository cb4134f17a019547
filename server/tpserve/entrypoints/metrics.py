"""Prometheus metrics of one server (own registry, so tests and several servers never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5, 10, 20, 40)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge("tpserve_num_requests_running", "Requests being prefilled or decoded", registry=r)
        self.waiting = Gauge("tpserve_num_requests_waiting", "Requests queued for admission", registry=r)
        self.kv_pages_used = Gauge("tpserve_kv_cache_pages_used", "KV cache pages in use", registry=r)
        self.kv_pages_total = Gauge("tpserve_kv_cache_pages_total", "KV cache pages in all", registry=r)
        self.prompt_tokens = Counter("tpserve_prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generation_tokens = Counter("tpserve_generation_tokens", "Tokens generated", registry=r)
        self.requests = Counter("tpserve_requests", "Finished requests by reason", ["finish_reason"], registry=r)
        self.ttft = Histogram(
            "tpserve_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "tpserve_inter_token_latency_seconds",
            "Time between tokens of a request",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ranks_ready = Gauge(
            "tpserve_ranks_ready", "Ranks of the group that are ready and heartbeating", registry=r
        )
        self.ranks_total = Gauge("tpserve_ranks_total", "Ranks in the group (tensor-parallel size)", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
