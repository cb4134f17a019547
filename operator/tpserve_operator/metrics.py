"""The operator's Prometheus metrics, served on METRICS_PORT (8081) beside kopf's liveness port.

They answer "is reconciliation healthy?": how many reconciles ran and how they ended, how long
they took, which API calls failed with which code, how many group restarts the operator made, and
how many services are in each phase. README's "Operator metrics" lists them.
"""

from __future__ import annotations

from collections.abc import Iterator

from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PHASES = ("Pending", "Starting", "Ready", "Degraded", "Failed")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REGISTRY = CollectorRegistry()
RECONCILES = Counter(
    "tpserve_operator_reconciliations",
    "Reconciles of a TPInferenceService, by result (ok|error)",
    ["result"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "tpserve_operator_reconcile_errors",
    "Reconciles that failed, by reason (the API status code's name, or the exception's type)",
    ["reason"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "tpserve_operator_reconcile_duration_seconds",
    "Time one reconcile took, its API calls included",
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
GROUP_RESTARTS = Counter(
    "tpserve_operator_group_restarts",
    "Groups the operator recreated because a rank failed (rolls to a new spec are not counted)",
    ["namespace", "service"],
    registry=REGISTRY,
)
API_ERRORS = Counter(
    "tpserve_operator_api_errors",
    "Kubernetes API calls that failed, by HTTP status code (0: no response, e.g. a timeout)",
    ["code"],
    registry=REGISTRY,
)


class ServicePhases(Collector):
    """TPInferenceServices by status phase, as of each one's latest reconcile."""

    def __init__(self) -> None:
        self.phases: dict[tuple[str, str], str] = {}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("tpserve_operator_services", "TPInferenceServices by phase", labels=["phase"])
        for phase in PHASES:
            family.add_metric([phase], sum(p == phase for p in self.phases.values()))
        yield family


SERVICE_PHASES = ServicePhases()
REGISTRY.register(SERVICE_PHASES)


def error_reason(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"api_{exc.status or 0}"
    return type(exc).__name__


def serve(port: int) -> None:
    start_http_server(port, registry=REGISTRY)
