"""Placement as kube-scheduler does it: one group per rack, a group within one rack, all or nothing.

Four simulated GPU nodes (4 GPUs each) in two racks; the real kube-scheduler (a profile of its
own, named by the service's `schedulerName`) places the pods by the affinity the operator
generates for `placement.exclusiveTopology`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.k8s.api import ControllerLoop, raw, tolerate
from tests.k8s.control_plane import ControlPlane
from tests.k8s.nodes import SimulatedKubelet
from tests.k8s.operator_install import OperatorInstall
from tests.server.server_process import poll_until

from .cluster import TIMEOUT, OperatorCluster, small

RACK = "example.com/rack"
SCHEDULER = "tpserve-test-scheduler"
PRIORITY = "tpserve-test-serving"
NODE_CAPACITY = {"nvidia.com/gpu": "4", "cpu": "64", "memory": "512Gi", "pods": "110"}


@pytest.fixture()
def priority_class() -> Iterator[str]:
    scheduling = client.SchedulingV1Api()
    body = {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": PRIORITY},
        "value": 1000,
    }
    tolerate(409, scheduling.create_priority_class, body)
    yield PRIORITY
    tolerate(404, scheduling.delete_priority_class, PRIORITY)


def racks_of(cluster: OperatorCluster, nodes: dict[str, str]) -> dict[int, set[str]]:
    """group index -> the racks its pods were placed in."""
    placed: dict[int, set[str]] = {}
    for pod in cluster.pods():
        name, node = pod["metadata"]["name"], pod["spec"].get("nodeName")
        group = int(name.split("-")[2]) if "-worker-" in name else int(name.rsplit("-", 1)[1])
        placed.setdefault(group, set()).add(nodes.get(node or "", "unplaced"))
    return placed


def budget(namespace: str, name: str) -> dict[str, Any]:
    """The PodDisruptionBudget, or {} while it does not exist yet."""
    try:
        return dict(raw(client.PolicyV1Api().read_namespaced_pod_disruption_budget, name, namespace))
    except client.ApiException as exc:
        if exc.status == 404:
            return {}
        raise


def scheduling_report(cluster: OperatorCluster) -> list[str]:
    report = []
    for pod in cluster.pods():
        conditions = {c["type"]: c for c in pod.get("status", {}).get("conditions") or []}
        scheduled = conditions.get("PodScheduled", {})
        report.append(f"{pod['metadata']['name']} on {pod['spec'].get('nodeName')}: {scheduled.get('message', '')}")
    return report


def test_groups_get_a_rack_each_and_one_too_many_is_unschedulable(
    control_plane: ControlPlane, namespace: str, operator_install: OperatorInstall, tmp_path: Path, priority_class: str
) -> None:
    cluster = OperatorCluster(namespace, operator_install, tmp_path)
    racks = {f"{namespace}-{rack}-{i}": f"{namespace}-rack-{rack}" for rack in "ab" for i in (1, 2)}
    nodes = [
        SimulatedKubelet(namespace, name=node, labels={RACK: rack}, capacity=NODE_CAPACITY, binds=False)
        for node, rack in racks.items()
    ]
    for node in nodes:
        node.default_ready = True
    body = small(
        tensorParallelSize=8,  # two pods of 4 GPUs: a group fills one rack
        replicas=2,
        model={"path": "/models/llama", "servedName": "llama", "volume": {"hostPath": {"path": "/models"}}},
        placement={"exclusiveTopology": RACK},
        schedulerName=SCHEDULER,
        priorityClassName=priority_class,
        terminationGracePeriodSeconds=90,
    )
    try:
        with control_plane.scheduler(SCHEDULER), ControllerLoop(*nodes) as loop, cluster.operator():
            cluster.create(body)
            try:
                poll_until(lambda: cluster.status("llama").get("readyReplicas") == 2, TIMEOUT, what="two groups placed")
            except TimeoutError:
                raise AssertionError(f"not placed: {scheduling_report(cluster)}") from None
            placed = racks_of(cluster, racks)
            assert all(len(r) == 1 for r in placed.values()), f"a group spans racks: {placed}"
            assert placed[0] != placed[1], f"two groups share a rack: {placed}"
            leader = cluster.pod("llama-leader-0")["spec"]
            assert leader["schedulerName"] == SCHEDULER and leader["priorityClassName"] == priority_class
            assert leader["priority"] == 1000 and leader["terminationGracePeriodSeconds"] == 90

            budgets = {
                b["metadata"]["name"]: b
                for b in raw(client.PolicyV1Api().list_namespaced_pod_disruption_budget, namespace)["items"]
            }
            assert {n: b["spec"]["maxUnavailable"] for n, b in budgets.items()} == {
                "llama-group-0": 0,
                "llama-group-1": 0,
            }
            poll_until(
                lambda: budget(namespace, "llama-group-0").get("status", {}).get("currentHealthy") == 2,
                TIMEOUT,
                what="the budget covers the leader and the worker",
            )

            eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "llama-worker-0-1"}}
            with pytest.raises(client.ApiException) as refused:  # what `kubectl drain` asks for
                client.CoreV1Api().create_namespaced_pod_eviction("llama-worker-0-1", namespace, eviction)
            assert refused.value.status == 429 and "disruption budget" in str(refused.value.body)

            cluster.patch_spec("llama", {"replicas": 3})  # no free rack is left for a third group
            degraded = poll_until(
                lambda: next(
                    (c for c in cluster.status("llama").get("conditions") or [] if c["reason"] == "Unschedulable"), None
                ),
                TIMEOUT,
                what="the third group reported Unschedulable",
            )
            assert "group 2: pod llama-" in degraded["message"] and "0/" in degraded["message"]
            assert cluster.status("llama")["groups"][2]["restarts"] == 0
            poll_until(
                lambda: budget(namespace, "llama-group-2").get("spec", {}).get("maxUnavailable") == 2,
                TIMEOUT,
                what="a group that does not serve protects nothing",
            )
        assert not loop.errors, loop.errors[:3]
        assert not cluster.forbidden_calls(), cluster.forbidden_calls()[:5]
    finally:
        for node in racks:
            tolerate(404, client.CoreV1Api().delete_node, node)
