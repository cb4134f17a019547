"""The real kopf operator against the fake cluster: objects, readiness gate, restarts, scaling, rolling."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.server_process import poll_until

from .cluster import FakeCluster, fake_cluster, operator
from .specs import service_body

TIMEOUT = 30


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[FakeCluster]:
    with fake_cluster(tmp_path) as c:
        yield c


def small(name: str = "llama", **spec: object) -> dict:
    return service_body(name, **({"tensorParallelSize": 4, "nodes": 2} | spec))


def group_pods(cluster: FakeCluster, name: str, group: int) -> list[str]:
    return [f"{name}-leader-{group}", f"{name}-worker-{group}-1"]


def pod_ready(cluster: FakeCluster, pod: str) -> bool:
    conditions = cluster.pod(pod).get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def make_ready(cluster: FakeCluster, *pods: str, ready: bool = True) -> None:
    for pod in pods:
        cluster.kubelet.containers_ready[pod] = ready


def test_create_builds_objects_and_ready_group_opens_the_gate(cluster: FakeCluster) -> None:
    with operator():
        cluster.create(small())
        poll_until(lambda: {"llama-leader", "llama-worker-0"} <= cluster.statefulset_names(), TIMEOUT, what="statefulsets")
        assert {"llama", "llama-headless"} <= cluster.service_names()
        poll_until(lambda: len(cluster.pods("tpserve.io/service=llama")) == 2, TIMEOUT, what="pods")
        status = poll_until(lambda: (s := cluster.status("llama")).get("phase") == "Starting" and s, TIMEOUT)
        assert status["groups"][0]["readyRanks"] == 0 and status["groups"][0]["totalRanks"] == 4
        poll_until(lambda: cluster.gate("llama-leader-0") == "False", TIMEOUT, what="gate set False")

        make_ready(cluster, "llama-leader-0")  # the worker is not Ready yet: the gate stays shut
        poll_until(lambda: cluster.status("llama")["groups"][0]["readyRanks"] == 2, TIMEOUT, what="half ready")
        assert cluster.gate("llama-leader-0") == "False"

        make_ready(cluster, "llama-worker-0-1")
        poll_until(lambda: cluster.gate("llama-leader-0") == "True", TIMEOUT, what="gate True")
        status = poll_until(lambda: (s := cluster.status("llama")).get("phase") == "Ready" and s, TIMEOUT)
        assert status["readyReplicas"] == 1 and status["endpoint"] == "http://llama.default.svc:30000/v1"
        assert status["observedGeneration"] == 1
        assert {c["type"]: c["status"] for c in status["conditions"]} == {"Ready": "True", "Progressing": "False", "Degraded": "False"}
        # The kubelet folds the gate into the leader's Ready: only now would the Service route to it.
        poll_until(lambda: pod_ready(cluster, "llama-leader-0"), TIMEOUT, what="leader pod Ready")

        make_ready(cluster, "llama-worker-0-1", ready=False)  # a worker drops out: gate shuts at once
        poll_until(lambda: cluster.gate("llama-leader-0") == "False", TIMEOUT, what="gate False")
        assert poll_until(lambda: cluster.status("llama")["phase"] == "Starting", TIMEOUT)
