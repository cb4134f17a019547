"""The few Kubernetes API calls the operator makes, as plain dicts, off the event loop.

The official client is synchronous, so every call runs in a worker thread (`asyncio.to_thread`).
Responses are read raw (`_preload_content=False`) and parsed as JSON: the operator works on the
same dict shapes it builds, with no model classes in between.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from . import metrics
from .objects import API_GROUP, KIND, PLURAL

Obj = dict[str, Any]
FIELD_MANAGER = "tpserve-operator"
# Field managers of the operator's writes before it used server-side apply: the official Python
# client's default user agent.
LEGACY_MANAGERS = ("OpenAPI-Generator",)
REQUEST_TIMEOUT_S = 30


class Kube:
    def __init__(self) -> None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.ApiClient()
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.policy = client.PolicyV1Api(api)

    @staticmethod
    async def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj | None:
        def run() -> Obj | None:
            # A bounded wait: a hung API call must fail and be retried, not stall reconciliation.
            try:
                response = fn(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
            except ApiException as exc:
                metrics.API_ERRORS.labels(str(exc.status or 0)).inc()
                raise
            except Exception:  # no answer at all: refused, reset, timed out
                metrics.API_ERRORS.labels("0").inc()
                raise
            data = response.data
            return json.loads(data) if data else None

        return await asyncio.to_thread(run)

    # -- generic apply ---------------------------------------------------------------------------
    def _ops(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """(read, patch) of a kind we apply: server-side apply creates with a patch too."""
        if kind == "StatefulSet":
            return (
                self.apps.read_namespaced_stateful_set,
                self.apps.patch_namespaced_stateful_set,
            )
        if kind == "Service":
            return (
                self.core.read_namespaced_service,
                self.core.patch_namespaced_service,
            )
        if kind == "PodDisruptionBudget":
            return (
                self.policy.read_namespaced_pod_disruption_budget,
                self.policy.patch_namespaced_pod_disruption_budget,
            )
        raise ValueError(f"unsupported kind {kind}")

    async def apply(self, obj: Obj) -> str:
        """Server-side apply of the whole desired object as FIELD_MANAGER; returns created|patched|unchanged.

        The API server merges by field ownership: a field we applied before and no longer send
        (a removed env var, toleration, volume, Service port) is removed, fields other managers own
        (an HPA's replicas, a mutating webhook's annotations) stay, and `force` takes over fields we
        set that someone else changed by hand. Applying an unchanged object writes nothing.
        """
        meta = obj["metadata"]
        read, patch = self._ops(obj["kind"])
        try:
            current = await self._call(read, meta["name"], meta["namespace"])
        except ApiException as exc:
            if exc.status != 404:
                raise
            current = None
        else:
            await self._adopt_legacy_fields(obj, current)
        applied = await self._call(
            patch,
            meta["name"],
            meta["namespace"],
            obj,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        if current is None:
            return "created"
        return "unchanged" if _content(applied or {}) == _content(current) else "patched"

    async def _adopt_legacy_fields(self, obj: Obj, current: Obj | None) -> None:
        """Objects written by an operator before server-side apply are owned by its client's update
        manager, and SSA never removes fields another manager owns: hand those entries to us once."""
        entries = (current or {}).get("metadata", {}).get("managedFields") or []
        legacy = [e for e in entries if e.get("manager") in LEGACY_MANAGERS and e.get("operation") == "Update"]
        if not legacy or any(e.get("subresource") for e in legacy):
            return
        adopted = [
            {**e, "manager": FIELD_MANAGER, "operation": "Apply"} if e in legacy else e
            for e in entries
            if not (e.get("manager") == FIELD_MANAGER and e.get("operation") == "Apply")
        ]
        _, patch = self._ops(obj["kind"])
        meta = obj["metadata"]
        await self._call(
            patch,
            meta["name"],
            meta["namespace"],
            [{"op": "replace", "path": "/metadata/managedFields", "value": adopted}],
            _content_type="application/json-patch+json",
        )

    # -- reads -----------------------------------------------------------------------------------
    async def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        result = await self._call(self.core.list_namespaced_pod, namespace, label_selector=selector)
        return list((result or {}).get("items", []))

    async def list_disruption_budgets(self, namespace: str, selector: str) -> list[Obj]:
        result = await self._call(self.policy.list_namespaced_pod_disruption_budget, namespace, label_selector=selector)
        return list((result or {}).get("items", []))

    async def delete_disruption_budget(self, namespace: str, name: str) -> None:
        await self._ignore_404(self.policy.delete_namespaced_pod_disruption_budget, name, namespace)

    async def label_pod(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        await self._ignore_404(self.core.patch_namespaced_pod, name, namespace, {"metadata": {"labels": labels}})

    async def list_statefulsets(self, namespace: str, selector: str) -> list[Obj]:
        result = await self._call(self.apps.list_namespaced_stateful_set, namespace, label_selector=selector)
        return list((result or {}).get("items", []))

    async def read_service(self, namespace: str, name: str) -> Obj | None:
        try:
            return await self._call(
                self.custom.get_namespaced_custom_object, API_GROUP, "v1alpha1", namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list_services(self, namespaces: list[str]) -> list[Obj]:
        """Every TPInferenceService in the watched namespaces (all namespaces when none are given)."""
        if not namespaces:
            result = await self._call(self.custom.list_cluster_custom_object, API_GROUP, "v1alpha1", PLURAL)
            return list((result or {}).get("items", []))
        items: list[Obj] = []
        for namespace in namespaces:
            result = await self._call(
                self.custom.list_namespaced_custom_object, API_GROUP, "v1alpha1", namespace, PLURAL
            )
            items += (result or {}).get("items", [])
        return items

    # -- writes ----------------------------------------------------------------------------------
    async def delete_pod(self, namespace: str, name: str) -> None:
        await self._ignore_404(self.core.delete_namespaced_pod, name, namespace)

    async def delete_statefulset(self, namespace: str, name: str) -> None:
        await self._ignore_404(self.apps.delete_namespaced_stateful_set, name, namespace)

    async def set_pod_condition(self, namespace: str, name: str, condition: Obj) -> None:
        # Strategic merge on pod status merges conditions by type: other conditions stay.
        await self._ignore_404(
            self.core.patch_namespaced_pod_status, name, namespace, {"status": {"conditions": [condition]}}
        )

    async def patch_service_status(self, namespace: str, name: str, status: Obj) -> None:
        metrics.SERVICE_PHASES.phases[namespace, name] = status.get("phase", "")
        await self._ignore_404(
            self.custom.patch_namespaced_custom_object_status,
            API_GROUP,
            "v1alpha1",
            namespace,
            PLURAL,
            name,
            {"status": status},
        )

    async def post_event(self, service: Obj, kind: str, reason: str, message: str) -> None:
        """A core/v1 Event about the TPInferenceService (what `kubectl describe tpis` lists)."""
        meta = service["metadata"]
        moment = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/v1alpha1",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],  # the API server's limit on an Event's message
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": socket.gethostname(),
            "firstTimestamp": moment,
            "lastTimestamp": moment,
            "count": 1,
        }
        await self._call(self.core.create_namespaced_event, meta["namespace"], event)

    async def _ignore_404(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await self._call(fn, *args)
        except ApiException as exc:
            if exc.status != 404:
                raise


def _content(obj: Obj) -> Obj:
    """What an apply can change: the object without its status and the metadata every write moves.

    A resourceVersion alone would not do: a controller writing the status (a StatefulSet's, right
    after it is created) between our read and our apply moves it with nothing applied.
    """
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in ("resourceVersion", "managedFields")}
    return {k: v for k, v in obj.items() if k != "status"} | {"metadata": metadata}
