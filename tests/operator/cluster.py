"""A test's view of the real control plane for operator tests: its namespace, its node, its operator.

Pods come from the real StatefulSet controller and go with the real garbage collector; the
simulated kubelet (tests/k8s/nodes.py) binds them to the test's node and writes their status; the
operator is the chart's, run with the chart's ServiceAccount (tests/k8s/operator_install.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.k8s.api import raw
from tests.k8s.nodes import SimulatedKubelet
from tests.k8s.operator_install import OperatorInstall, OperatorProcess
from tests.server.server_process import poll_until

from .specs import service_body

GROUP, VERSION, PLURAL = "tpserve.io", "v1alpha1", "tpinferenceservices"


class OperatorCluster:
    def __init__(self, namespace: str, install: OperatorInstall, workdir: Path) -> None:
        self.namespace = namespace
        self.install = install
        self.workdir = workdir
        self.core = client.CoreV1Api()
        self.apps = client.AppsV1Api()
        self.custom = client.CustomObjectsApi()
        self.kubelet = SimulatedKubelet(namespace)
        self.operators: list[OperatorProcess] = []

    @contextmanager
    def operator(self, server: str | None = None) -> Iterator[OperatorProcess]:
        """The chart's operator, watching this test's namespace, until the block ends; `server`
        points it at a proxy in front of the API server."""
        log = self.workdir / f"operator-{len(self.operators)}.log"
        with self.install.run(log, server, **self.scoped_env()) as process:
            self.operators.append(process)
            yield process

    def scoped_env(self) -> dict[str, str]:
        """What makes the suite's operators independent: each watches only its test's namespace
        and elects its leader on its own Lease (the chart's values otherwise)."""
        return {"WATCH_NAMESPACES": self.namespace, "LEASE_NAME": f"{self.install.release}-{self.namespace}"}

    # -- reads -------------------------------------------------------------------------------
    def service(self, name: str) -> dict[str, Any]:
        return raw(self.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        return self.service(name).get("status") or {}

    def pods(self, selector: str = "") -> list[dict[str, Any]]:
        return raw(self.core.list_namespaced_pod, self.namespace, label_selector=selector or None)["items"]

    def pod(self, name: str) -> dict[str, Any]:
        return raw(self.core.read_namespaced_pod, name, self.namespace)

    def statefulset_names(self) -> set[str]:
        return {s["metadata"]["name"] for s in raw(self.apps.list_namespaced_stateful_set, self.namespace)["items"]}

    def statefulset_replicas(self, name: str) -> int:
        return int(raw(self.apps.read_namespaced_stateful_set, name, self.namespace)["spec"]["replicas"])

    def service_names(self) -> set[str]:
        return {s["metadata"]["name"] for s in raw(self.core.list_namespaced_service, self.namespace)["items"]}

    def owned_by(self, uid: str) -> list[str]:
        """StatefulSets and Services whose owner references name `uid`."""
        objects = raw(self.apps.list_namespaced_stateful_set, self.namespace)["items"]
        objects += raw(self.core.list_namespaced_service, self.namespace)["items"]
        return [
            o["metadata"]["name"]
            for o in objects
            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
        ]

    def events(self, reason: str) -> list[dict[str, Any]]:
        items = raw(self.core.list_namespaced_event, self.namespace)["items"]
        return [e for e in items if e.get("reason") == reason]

    def wait_events(self, reason: str, containing: str = "", count: int = 1) -> list[dict[str, Any]]:
        """Events with `reason` (and `containing` in their message), once there are `count` of them:
        the operator posts a reconcile's Events after that reconcile's writes."""
        return poll_until(
            lambda: (
                len(found := [e for e in self.events(reason) if containing in e.get("message", "")]) >= count and found
            ),
            TIMEOUT,
            what=f"{count} {reason} Event(s)",
        )

    def gate(self, pod_name: str) -> str | None:
        for cond in self.pod(pod_name).get("status", {}).get("conditions") or []:
            if cond["type"] == "tpserve.io/group-ready":
                return cond["status"]
        return None

    # -- writes ------------------------------------------------------------------------------
    def create(self, body: dict[str, Any]) -> None:
        body = {**body, "metadata": {**body["metadata"], "namespace": self.namespace}}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec})

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def delete_pod(self, name: str) -> None:
        self.core.delete_namespaced_pod(name, self.namespace)

    def forbidden_calls(self) -> list[str]:
        return [line for process in self.operators for line in process.forbidden_calls()]


# -- helpers shared by the operator tests ------------------------------------------------------
TIMEOUT = 30


def small(name: str = "llama", **spec: object) -> dict:
    return service_body(name, **({"tensorParallelSize": 4, "nodes": 2} | spec))


def group_pods(cluster: OperatorCluster, name: str, group: int) -> list[str]:
    return [f"{name}-leader-{group}", f"{name}-worker-{group}-1"]


def pod_ready(cluster: OperatorCluster, pod: str) -> bool:
    conditions = cluster.pod(pod).get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def make_ready(cluster: OperatorCluster, *pods: str, ready: bool = True) -> None:
    for pod in pods:
        cluster.kubelet.containers_ready[pod] = ready


def bring_up(cluster: OperatorCluster, name: str, groups: int = 1) -> None:
    cluster.kubelet.default_ready = True
    poll_until(lambda: cluster.status(name).get("readyReplicas") == groups, TIMEOUT, what=f"{groups} group(s) ready")


def uids(cluster: OperatorCluster, pods: list[str]) -> dict[str, str]:
    """The uids of those pods that exist and are not terminating."""
    return {
        p["metadata"]["name"]: p["metadata"]["uid"]
        for p in cluster.pods()
        if p["metadata"]["name"] in pods and not p["metadata"].get("deletionTimestamp")
    }


def wait_replaced(cluster: OperatorCluster, pods: list[str], before: dict[str, str], what: str) -> None:
    """Until every one of `pods` exists again with a uid none of them had `before`."""
    poll_until(
        lambda: len(now := uids(cluster, pods)) == len(pods) and set(now.values()).isdisjoint(before.values()),
        TIMEOUT,
        what=what,
    )
