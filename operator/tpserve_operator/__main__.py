"""`python -m tpserve_operator`: run the operator.

Environment: TPSERVE_LOG_LEVEL (debug|info|warning|error), WATCH_NAMESPACES (comma-separated; empty = all namespaces), LIVENESS_PORT (8080),
METRICS_PORT (8081; 0 turns the Prometheus endpoint off),
TPSERVE_RECONCILE_INTERVAL_S, TPSERVE_RESTART_BACKOFF_BASE_S; LEADER_ELECTION=true with LEASE_NAME,
POD_NAMESPACE, POD_NAME (and LEASE_DURATION_S, LEASE_RENEW_S, LEASE_RETRY_S) for several replicas.
"""

from __future__ import annotations

import logging
import os
import threading

import kopf
from kubernetes import client, config

from . import (
    handlers,  # importing registers the handlers
    metrics,
)
from .leader import FollowerHealth, LeaderElector, LeaseSettings


def main() -> None:
    level = os.environ.get("TPSERVE_LOG_LEVEL", "info").lower()
    kopf.configure(debug=level == "debug", verbose=level == "debug", quiet=level in ("warning", "error"))
    namespaces = handlers.watch_namespaces()
    port = int(os.environ.get("LIVENESS_PORT", "8080"))
    metrics_port = int(os.environ.get("METRICS_PORT", "8081"))
    if metrics_port:
        metrics.serve(metrics_port)  # followers too: a scrape shows which replica leads (it reconciles)
    lease = LeaseSettings.from_env()
    if lease is None:
        run_kopf(namespaces, port)
        return
    elector, stop_renewing = lead(lease, port)
    try:
        run_kopf(namespaces, port)
    finally:
        stop_renewing.set()
        elector.release()


def run_kopf(namespaces: list[str], port: int) -> None:
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{port}/healthz",
    )


def lead(lease: LeaseSettings, port: int) -> tuple[LeaderElector, threading.Event]:
    """Return once this replica holds the Lease, with the event that stops its renewal; lose the
    lease before that and the process ends."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    elector = LeaderElector(lease, client.CoordinationV1Api())
    with FollowerHealth(port):
        elector.wait_until_leader()

    def lost(why: str) -> None:
        logging.getLogger(__name__).error("leader election: %s; exiting so that only one replica acts", why)
        os._exit(1)  # at once, from the renewal thread: no handler may act after this

    return elector, elector.keep_renewing(lost)


if __name__ == "__main__":
    main()
