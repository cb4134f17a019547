"""Prometheus metrics of one server (own registry, so tests and several servers never collide).

Every tpserve metric carries `model_name` (the served name), as vLLM's do; the process_* metrics of
prometheus-client are the standard unlabelled ones. README's "Metrics" table lists them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..distributed.status_board import Phase, RankStatus
from ..engine.scheduler import CacheStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5, 10, 20, 40, 80)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
RANK_PHASES = [p.value for p in Phase] + ["missing"]


class ServerMetrics:
    def __init__(self, model_name: str, node_rank: int = 0, vllm_names: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        r = self.registry
        m = ["model_name"]

        def gauge(name: str, doc: str, exported: bool = True) -> Gauge:
            return Gauge(name, doc, m, registry=r if exported else None).labels(model_name)

        def histogram(name: str, doc: str, buckets: Iterable[float]) -> Histogram:
            return Histogram(name, doc, m, buckets=tuple(buckets), registry=r).labels(model_name)

        self.running = gauge("tpserve_num_requests_running", "Sequences being prefilled or decoded")
        self.waiting = gauge("tpserve_num_requests_waiting", "Sequences submitted but not running yet")
        self.kv_pages_used = gauge("tpserve_kv_cache_pages_used", "KV cache pages held by requests")
        self.kv_pages_total = gauge("tpserve_kv_cache_pages_capacity", "KV cache pages in all")
        self.kv_pages_free = gauge(
            "tpserve_kv_cache_pages_free", "KV pages neither held by a request nor caching a prefix"
        )
        self.kv_usage = gauge(
            "tpserve_kv_cache_usage_perc",
            "Share of KV pages in use, cached-but-evictable prefix pages counted as used (0-1)",
        )
        self.prefix_hit_rate = gauge(
            "tpserve_prefix_cache_hit_rate", "Prompt tokens found in the prefix cache / prompt tokens looked up (0-1)"
        )
        self.prompt_tokens = Counter(
            "tpserve_prompt_tokens", "Prompt tokens of admitted sequences", m, registry=r
        ).labels(model_name)
        self.generation_tokens = Counter("tpserve_generation_tokens", "Tokens generated", m, registry=r).labels(
            model_name
        )
        self._finished = Counter(
            "tpserve_requests",
            "Finished sequences (choices) by finish reason; abort: the client left or the request failed",
            [*m, "finish_reason"],
            registry=r,
        )
        self._http = Counter(
            "tpserve_http_requests",
            "HTTP requests answered, by route and status code",
            [*m, "endpoint", "status"],
            registry=r,
        )
        self.ttft = histogram("tpserve_time_to_first_token_seconds", "Time to first token", LATENCY_BUCKETS)
        self.itl = histogram(
            "tpserve_inter_token_latency_seconds", "Time between tokens of a sequence", LATENCY_BUCKETS
        )
        self.e2e = histogram(
            "tpserve_e2e_request_latency_seconds", "Submission to last token of a sequence", REQUEST_BUCKETS
        )
        self.queue_time = histogram(
            "tpserve_request_queue_time_seconds", "Waiting in the scheduler before first running", REQUEST_BUCKETS
        )
        self.prefill_time = histogram(
            "tpserve_request_prefill_time_seconds",
            "First running to first token (the prompt's prefill)",
            REQUEST_BUCKETS,
        )
        self.decode_time = histogram(
            "tpserve_request_decode_time_seconds", "First token to last token of a sequence", REQUEST_BUCKETS
        )
        self.prompt_length = histogram("tpserve_request_prompt_tokens", "Prompt length of a sequence", TOKEN_BUCKETS)
        self.generation_length = histogram(
            "tpserve_request_generation_tokens", "Tokens a finished sequence generated", TOKEN_BUCKETS
        )
        # The group's view lives on node 0; other nodes see only their own ranks and rank 0.
        on_node0 = node_rank == 0
        self.ranks_ready = gauge("tpserve_ranks_ready", "Ranks of the group ready and heartbeating", on_node0)
        self.ranks_total = gauge("tpserve_ranks_expected", "Ranks in the group (the tensor-parallel size)", on_node0)
        self._rejected = Counter(
            "tpserve_requests_rejected",
            "Generation requests refused before queueing, by reason",
            [*m, "reason"],
            registry=r,
        )
        self.timed_out = Counter(
            "tpserve_requests_timed_out", "Requests ended by --request-timeout", m, registry=r
        ).labels(model_name)
        self.loop_tasks = gauge("tpserve_event_loop_tasks", "asyncio tasks of the HTTP server (leak detector)")
        self.engine_totals = EngineTotals(model_name)
        r.register(self.engine_totals)
        self.local_ranks = LocalRankGauges(model_name, node_rank)
        r.register(self.local_ranks)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, open fds, CPU time
        self._num_pages = 0
        self.vllm_aliases: VllmAliases | None = None
        if vllm_names and on_node0:
            self.vllm_aliases = VllmAliases(model_name)
            r.register(self.vllm_aliases)

    def observe_load(self, running: int, waiting: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        if self.vllm_aliases is not None:
            self.vllm_aliases.running, self.vllm_aliases.waiting = running, waiting

    def finished(self, finish_reason: str) -> None:
        self._finished.labels(self.model_name, finish_reason).inc()

    def rejected(self, reason: str) -> None:
        self._rejected.labels(self.model_name, reason).inc()

    def http_response(self, endpoint: str, status: int) -> None:
        self._http.labels(self.model_name, endpoint, str(status)).inc()

    def set_num_pages(self, num_pages: int) -> None:
        self._num_pages = num_pages
        self.kv_pages_total.set(num_pages)

    def observe_cache(self, cache: CacheStats) -> None:
        self.kv_pages_used.set(cache.pages_in_use)
        used = cache.pages_in_use + cache.pages_cached
        self.kv_pages_free.set(max(0, self._num_pages - used))
        usage = used / self._num_pages if self._num_pages else 0.0
        self.kv_usage.set(usage)
        if self.vllm_aliases is not None:
            self.vllm_aliases.kv_usage = usage
        queried = cache.prefix_queried_tokens
        self.prefix_hit_rate.set(cache.prefix_hit_tokens / queried if queried else 0.0)
        self.engine_totals.latest = cache

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class SequenceTimes:
    """One finished sequence, as the front end saw it (monotonic seconds)."""

    submitted: float
    first_token: float | None
    last_token: float | None
    queued_s: float | None  # from the scheduler, with the first token
    prompt_tokens: int
    generated_tokens: int

    def observe(self, metrics: ServerMetrics, finished: float) -> None:
        metrics.e2e.observe(finished - self.submitted)
        metrics.prompt_length.observe(self.prompt_tokens)
        metrics.generation_length.observe(self.generated_tokens)
        if self.queued_s is not None:
            metrics.queue_time.observe(self.queued_s)
        if self.first_token is not None:
            queued = self.queued_s or 0.0
            metrics.prefill_time.observe(max(0.0, self.first_token - self.submitted - queued))
            metrics.decode_time.observe(max(0.0, (self.last_token or self.first_token) - self.first_token))


class EngineTotals(Collector):
    """Counters rank 0 keeps the totals of, exported as last reported (a restart starts them at 0)."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
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
            family = CounterMetricFamily(name, documentation, labels=["model_name"])
            family.add_metric([self.model_name], value)
            yield family


class LocalRankGauges(Collector):
    """The ranks this node runs, as of its latest health check: ready, heartbeat age, phase.

    Each node reports only its own ranks, so summing over a group's pods counts every rank once."""

    def __init__(self, model_name: str, node_rank: int) -> None:
        self.model_name = model_name
        self.node = str(node_rank)
        self.ranks: list[RankStatus] = []

    def collect(self) -> Iterator[Metric]:
        labels = ["model_name", "node", "rank"]
        ready = GaugeMetricFamily("tpserve_rank_ready", "1 while the rank is ready and heartbeating", labels=labels)
        age = GaugeMetricFamily(
            "tpserve_rank_heartbeat_age_seconds", "Seconds since the rank's heartbeat last advanced", labels=labels
        )
        phase = GaugeMetricFamily(
            "tpserve_rank_phase", "1 for the rank's current startup phase, 0 for the others", labels=[*labels, "phase"]
        )
        for status in self.ranks:
            key = [self.model_name, self.node, str(status.rank)]
            ready.add_metric(key, float(status.phase == Phase.READY.value and status.alive))
            age.add_metric(key, status.heartbeat_age_s)
            for name in RANK_PHASES:
                phase.add_metric([*key, name], float(status.phase == name))
        yield from (ready, age, phase)


class VllmAliases(Collector):
    """--vllm-metric-names: the load gauges again under vLLM's names, for gateways and autoscalers
    that only know those (Gateway API Inference Extension's default metric names, for one)."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.running = 0
        self.waiting = 0
        self.kv_usage = 0.0

    def collect(self) -> Iterator[Metric]:
        for name, documentation, value in (
            ("vllm:num_requests_running", "= tpserve_num_requests_running", self.running),
            ("vllm:num_requests_waiting", "= tpserve_num_requests_waiting", self.waiting),
            ("vllm:kv_cache_usage_perc", "= tpserve_kv_cache_usage_perc", self.kv_usage),
            ("vllm:gpu_cache_usage_perc", "= tpserve_kv_cache_usage_perc (vLLM's name before v0.10)", self.kv_usage),
        ):
            family = GaugeMetricFamily(name, documentation, labels=["model_name"])
            family.add_metric([self.model_name], value)
            yield family
