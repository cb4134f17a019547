"""Prometheus metrics of one server (own registry, so tests and several servers never collide)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ..engine.scheduler import CacheStats

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
        self.kv_usage = Gauge(
            "tpserve_kv_cache_usage_perc",
            "Share of KV pages in use, cached-but-evictable prefix pages counted as used (0-1)",
            registry=r,
        )
        self.rejected = Counter(
            "tpserve_requests_rejected",
            "Generation requests refused before queueing, by reason",
            ["reason"],
            registry=r,
        )
        self.timed_out = Counter("tpserve_requests_timed_out", "Requests ended by --request-timeout", registry=r)
        self.loop_tasks = Gauge(
            "tpserve_event_loop_tasks", "asyncio tasks of the HTTP server (leak detector)", registry=r
        )
        self.engine_totals = EngineTotals()
        r.register(self.engine_totals)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, open fds, CPU time

        self._num_pages = 0

    def set_num_pages(self, num_pages: int) -> None:
        self._num_pages = num_pages
        self.kv_pages_total.set(num_pages)

    def observe_cache(self, cache: CacheStats) -> None:
        self.kv_pages_used.set(cache.pages_in_use)
        used = cache.pages_in_use + cache.pages_cached
        self.kv_usage.set(used / self._num_pages if self._num_pages else 0.0)
        self.engine_totals.latest = cache

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EngineTotals(Collector):
    """Counters rank 0 keeps the totals of, exported as last reported (a restart starts them at 0)."""

    def __init__(self) -> None:
        self.latest = CacheStats()

    def collect(self) -> Iterator[Metric]:
        stats = self.latest
        for name, documentation, value in (
            ("tpserve_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache", stats.prefix_hit_tokens),
            (
                "tpserve_prefix_cache_queries",
                "Prompt tokens looked up in the prefix cache",
                stats.prefix_queried_tokens,
            ),
            ("tpserve_num_preemptions", "Requests preempted to make room for others", stats.preemptions),
            ("tpserve_prefix_cache_evicted_pages", "Cached KV pages evicted", stats.evicted_pages),
        ):
            yield CounterMetricFamily(name, documentation, value=value)
