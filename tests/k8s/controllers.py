"""Stand-ins for the cluster's own controllers, acting through the API like the real ones.

`StatefulSetController` creates and deletes pods the way the StatefulSet controller does (names
NAME-ORDINAL from `ordinals.start`, the pod-index label, hostname/subdomain, owner reference).
`SimulatedKubelet` writes pod status: phase, container readiness and restart counts that a test
sets, and Ready computed from ContainersReady and every readiness gate, as the kubelet does.
The end-to-end harness replaces the simulated kubelet with real processes.
"""

from __future__ import annotations

import copy
import datetime
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

Obj = dict[str, Any]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def tolerate(status: int, call: Callable[..., Any], *args: Any) -> None:
    """Make the call; an ApiException with `status` (404 gone, 409 exists) is an expected race."""
    try:
        call(*args)
    except ApiException as exc:
        if exc.status != status:
            raise


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    import json

    response = call(*args, _preload_content=False, **kwargs)
    return json.loads(response.data) if response.data else None


class StatefulSetController:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.core = client.CoreV1Api()
        self.apps = client.AppsV1Api()

    def sync(self) -> None:
        statefulsets = raw(self.apps.list_namespaced_stateful_set, self.namespace)["items"]
        pods = raw(self.core.list_namespaced_pod, self.namespace)["items"]
        for sts in statefulsets:
            self._sync_one(sts, pods)

    def _sync_one(self, sts: Obj, pods: list[Obj]) -> None:
        name, uid = sts["metadata"]["name"], sts["metadata"]["uid"]
        start = (sts["spec"].get("ordinals") or {}).get("start", 0)
        wanted = {f"{name}-{i}": i for i in range(start, start + sts["spec"].get("replicas", 1))}
        owned = [p for p in pods if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]
        for pod in owned:
            if pod["metadata"]["name"] not in wanted and not pod["metadata"].get("deletionTimestamp"):
                self._delete(pod["metadata"]["name"])
        existing = {p["metadata"]["name"] for p in owned}
        for pod_name, ordinal in wanted.items():
            if pod_name not in existing:
                self._create(sts, pod_name, ordinal)

    def _create(self, sts: Obj, pod_name: str, ordinal: int) -> None:
        template = copy.deepcopy(sts["spec"]["template"])
        labels = dict(template.get("metadata", {}).get("labels") or {})
        labels["apps.kubernetes.io/pod-index"] = str(ordinal)
        labels["statefulset.kubernetes.io/pod-name"] = pod_name
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": self.namespace,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "StatefulSet",
                        "name": sts["metadata"]["name"],
                        "uid": sts["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**template["spec"], "hostname": pod_name, "subdomain": sts["spec"]["serviceName"]},
            "status": {"phase": "Pending"},
        }
        tolerate(409, self.core.create_namespaced_pod, self.namespace, pod)

    def _delete(self, pod_name: str) -> None:
        tolerate(404, self.core.delete_namespaced_pod, pod_name, self.namespace)


class SimulatedKubelet:
    """Pod status as a test dictates: containers ready or not, restart counts."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.core = client.CoreV1Api()
        self.containers_ready: dict[str, bool] = {}  # pod name -> containers ready
        self.restarts: dict[str, int] = {}
        self.default_ready = False

    def sync(self) -> None:
        for pod in raw(self.core.list_namespaced_pod, self.namespace)["items"]:
            self._sync_pod(pod)

    def _sync_pod(self, pod: Obj) -> None:
        name = pod["metadata"]["name"]
        ready = self.containers_ready.get(name, self.default_ready)
        status = pod.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        gates = [g["conditionType"] for g in pod["spec"].get("readinessGates") or []]
        gates_true = all(conditions.get(g, {}).get("status") == "True" for g in gates)
        wanted = {
            "ContainersReady": ready,
            "Ready": ready and gates_true,
        }
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
        patch = {
            "status": {
                "phase": "Running",
                "conditions": [
                    {"type": kind, "status": "True" if value else "False", "lastTransitionTime": _now()}
                    for kind, value in wanted.items()
                ],
                "containerStatuses": [
                    {
                        "name": "server",
                        "ready": ready,
                        "restartCount": restarts,
                        "image": "x",
                        "imageID": "",
                        "started": True,
                    }
                ],
            }
        }
        tolerate(404, self.core.patch_namespaced_pod_status, name, self.namespace, patch)


class GarbageCollector:
    """Deletes pods, StatefulSets and Services whose every owner is gone (orphans from races)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.core = client.CoreV1Api()
        self.apps = client.AppsV1Api()
        self.custom = client.CustomObjectsApi()

    def sync(self) -> None:
        services = raw(
            self.custom.list_namespaced_custom_object, "tpserve.io", "v1alpha1", self.namespace, "tpinferenceservices"
        )["items"]
        statefulsets = raw(self.apps.list_namespaced_stateful_set, self.namespace)["items"]
        kube_services = raw(self.core.list_namespaced_service, self.namespace)["items"]
        pods = raw(self.core.list_namespaced_pod, self.namespace)["items"]
        alive = {o["metadata"]["uid"] for o in services + statefulsets + kube_services + pods}
        deleters = (
            (statefulsets, self.apps.delete_namespaced_stateful_set),
            (kube_services, self.core.delete_namespaced_service),
            (pods, self.core.delete_namespaced_pod),
        )
        for objects, delete in deleters:
            for obj in objects:
                owners = obj["metadata"].get("ownerReferences") or []
                if owners and not any(o.get("uid") in alive for o in owners):
                    tolerate(404, delete, obj["metadata"]["name"], self.namespace)


class ControllerLoop:
    """Runs sync() of each controller in a background thread until stopped."""

    def __init__(self, *controllers: Any, interval_s: float = 0.1) -> None:
        self.controllers = controllers
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-controllers", daemon=True)
        self.errors: list[BaseException] = []

    def __enter__(self) -> ControllerLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for controller in self.controllers:
                try:
                    controller.sync()
                except Exception as exc:  # keep going; tests read .errors when something looks stuck
                    self.errors.append(exc)
