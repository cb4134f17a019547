"""A fake cluster for operator tests: API server, StatefulSet controller, simulated kubelet, operator."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Fast loops for tests; read by the operator's handlers at import.
os.environ.setdefault("TPSERVE_RECONCILE_INTERVAL_S", "0.5")
os.environ.setdefault("TPSERVE_RESTART_BACKOFF_BASE_S", "0.2")

from kopf.testing import KopfRunner

from tests.k8s.apiserver import ApiServerThread
from tests.k8s.controllers import ControllerLoop, GarbageCollector, SimulatedKubelet, StatefulSetController, raw

NAMESPACE = "default"


class FakeCluster:
    def __init__(self, api: ApiServerThread) -> None:
        from kubernetes import client, config

        config.load_kube_config(str(api.kubeconfig))
        self.api = api
        self.core = client.CoreV1Api()
        self.apps = client.AppsV1Api()
        self.custom = client.CustomObjectsApi()
        self.kubelet = SimulatedKubelet(NAMESPACE)
        self.statefulsets = StatefulSetController(NAMESPACE)

    # -- reads -------------------------------------------------------------------------------
    def service(self, name: str) -> dict[str, Any]:
        return raw(
            self.custom.get_namespaced_custom_object, "tpserve.io", "v1alpha1", NAMESPACE, "tpinferenceservices", name
        )

    def status(self, name: str) -> dict[str, Any]:
        return self.service(name).get("status") or {}

    def pods(self, selector: str = "") -> list[dict[str, Any]]:
        return raw(self.core.list_namespaced_pod, NAMESPACE, label_selector=selector or None)["items"]

    def pod(self, name: str) -> dict[str, Any]:
        return raw(self.core.read_namespaced_pod, name, NAMESPACE)

    def statefulset_names(self) -> set[str]:
        return {s["metadata"]["name"] for s in raw(self.apps.list_namespaced_stateful_set, NAMESPACE)["items"]}

    def service_names(self) -> set[str]:
        return {s["metadata"]["name"] for s in raw(self.core.list_namespaced_service, NAMESPACE)["items"]}

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in raw(self.core.list_namespaced_event, NAMESPACE)["items"] if e.get("reason") == reason]

    # -- writes ------------------------------------------------------------------------------
    def create(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object("tpserve.io", "v1alpha1", NAMESPACE, "tpinferenceservices", body)

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            "tpserve.io", "v1alpha1", NAMESPACE, "tpinferenceservices", name, {"spec": spec}
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object("tpserve.io", "v1alpha1", NAMESPACE, "tpinferenceservices", name)

    def gate(self, pod_name: str) -> str | None:
        for cond in self.pod(pod_name).get("status", {}).get("conditions") or []:
            if cond["type"] == "tpserve.io/group-ready":
                return cond["status"]
        return None


@contextmanager
def operator() -> Iterator[KopfRunner]:
    with KopfRunner(["run", "--standalone", "-A", "-m", "tpserve_operator.handlers"]) as runner:
        yield runner


@contextmanager
def fake_api(workdir: Path) -> Iterator[ApiServerThread]:
    with ApiServerThread(workdir) as api:
        yield api


@contextmanager
def fake_cluster(workdir: Path) -> Iterator[FakeCluster]:
    with fake_api(workdir) as api:
        cluster = FakeCluster(api)
        with ControllerLoop(cluster.statefulsets, cluster.kubelet, GarbageCollector(NAMESPACE)):
            yield cluster
