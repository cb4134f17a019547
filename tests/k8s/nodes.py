"""What a node does through the API, for a cluster with no kubelet or scheduler: the tests play it.

`Node` registers a Node object, binds the namespace's unscheduled pods to it (the Binding
subresource, as kube-scheduler does; a pod a test names in `unschedulable` is instead marked
PodScheduled=False, reason Unschedulable, with the scheduler's message) and completes the deletion of its terminating pods (a pod
bound to a node is only removed once its kubelet confirms, with a zero-grace delete).
`SimulatedKubelet` adds pod status as a test dictates: containers ready or not, restart counts,
terminating pods kept a while (a preStop hook draining), and Ready computed from ContainersReady
and every readiness gate, as the kubelet does. The end-to-end harness (tests/e2e/kubelet.py) runs
real processes on a `Node` instead.
"""

from __future__ import annotations

import datetime
from typing import Any

from kubernetes import client

from .api import raw, tolerate

Obj = dict[str, Any]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Node:
    """A node of the test cluster; with `binds=False` kube-scheduler places pods on it instead."""

    def __init__(
        self,
        namespace: str,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        capacity: dict[str, str] | None = None,
        binds: bool = True,
    ) -> None:
        self.namespace = namespace
        self.name = name or f"node-{namespace}"
        self.labels = labels or {}
        self.capacity = capacity or {}
        self.binds = binds
        self.core = client.CoreV1Api()
        self.unschedulable: dict[str, str] = {}  # pod name -> the scheduler's message
        self._registered = False

    def register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": {"kubernetes.io/hostname": self.name, **self.labels}},
        }
        tolerate(409, self.core.create_node, body)
        ready = [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test node"}]
        status = {"status": {"conditions": ready, "capacity": self.capacity, "allocatable": self.capacity}}
        self.core.patch_node_status(self.name, status, _preload_content=False)
        # What the node lifecycle controller does for a Ready node: lift the not-ready taint the
        # API server put on it at registration (kube-scheduler honours it).
        self.core.patch_node(self.name, {"spec": {"taints": []}}, _preload_content=False)
        self._registered = True

    def pods(self) -> list[Obj]:
        """The namespace's pods after binding the unscheduled ones here and removing confirmed deletions."""
        if not self._registered:
            self.register()
        live = []
        for pod in raw(self.core.list_namespaced_pod, self.namespace)["items"]:
            if not pod["spec"].get("nodeName"):
                if pod["metadata"].get("deletionTimestamp") or not self.binds:
                    continue  # an unbound pod is removed by the API server itself; or kube-scheduler binds
                message = self.unschedulable.get(pod["metadata"]["name"])
                if message is not None:
                    self._refuse(pod, message)
                    continue
                self._bind(pod)
                pod["spec"]["nodeName"] = self.name
            if pod["spec"]["nodeName"] == self.name:
                live.append(pod)
        return live

    def confirm_deletion(self, pod: Obj) -> None:
        """The kubelet's last word on a terminating pod: its containers are gone, remove it now."""
        options = {"gracePeriodSeconds": 0, "preconditions": {"uid": pod["metadata"]["uid"]}}
        # 404: gone already; 409: a newer pod of that name replaced it.
        tolerate((404, 409), self.core.delete_namespaced_pod, pod["metadata"]["name"], self.namespace, body=options)

    def _refuse(self, pod: Obj, message: str) -> None:
        """What kube-scheduler writes for a pod no node can take."""
        for cond in pod.get("status", {}).get("conditions") or []:
            if cond["type"] == "PodScheduled" and cond.get("message") == message:
                return
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": now(),
        }
        status = {"status": {"phase": "Pending", "conditions": [condition]}}
        tolerate(404, self.core.patch_namespaced_pod_status, pod["metadata"]["name"], self.namespace, status)

    def _bind(self, pod: Obj) -> None:
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
        }
        # 409: bound already, or a newer pod took the name; 404: deleted since it was listed.
        tolerate((404, 409), self.core.create_namespaced_pod_binding, pod["metadata"]["name"], self.namespace, binding)


class SimulatedKubelet(Node):
    """Pod status as a test dictates: containers ready or not, restart counts."""

    def __init__(self, namespace: str, **node: Any) -> None:
        super().__init__(namespace, **node)
        self.containers_ready: dict[str, bool] = {}  # pod name -> containers ready
        self.restarts: dict[str, int] = {}
        self.draining: set[str] = set()  # pods whose deletion waits, as a preStop hook would hold it
        self.default_ready = False

    def sync(self) -> None:
        for pod in self.pods():
            if pod["metadata"].get("deletionTimestamp"):
                if pod["metadata"]["name"] not in self.draining:
                    self.confirm_deletion(pod)
            else:
                self._sync_status(pod)

    def _sync_status(self, pod: Obj) -> None:
        name = pod["metadata"]["name"]
        ready = self.containers_ready.get(name, self.default_ready)
        status = pod.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        gates = [g["conditionType"] for g in pod["spec"].get("readinessGates") or []]
        gates_true = all(conditions.get(g, {}).get("status") == "True" for g in gates)
        wanted = {"ContainersReady": ready, "Ready": ready and gates_true}
        restarts = self.restarts.get(name, 0)
        current_restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
        changed = (
            status.get("phase") != "Running"
            or current_restarts != restarts
            or any(
                conditions.get(kind, {}).get("status") != ("True" if value else "False")
                for kind, value in wanted.items()
            )
        )
        if not changed:
            return
        container = pod["spec"]["containers"][0]
        patch = {
            "status": {
                "phase": "Running",
                "conditions": [
                    {"type": kind, "status": "True" if value else "False", "lastTransitionTime": now()}
                    for kind, value in wanted.items()
                ],
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "ready": ready,
                        "restartCount": restarts,
                        "image": container["image"],
                        "imageID": "",
                        "started": True,
                        "state": {"running": {"startedAt": now()}},
                    }
                ],
            }
        }
        tolerate(404, self.core.patch_namespaced_pod_status, name, self.namespace, patch)
