"""An in-process Kubernetes API server for tests: kmock plus what a real API server adds.

kmock (the pinned emulator from PyPI) stores objects and serves list/watch/CRUD. This layer adds
the API-server behaviour our operator and kopf rely on and kmock leaves out: uid,
resourceVersion, creationTimestamp, generation (bumped on spec changes only), 201 on create,
generateName, label selectors on lists, status-subresource isolation (the main resource cannot
write status, `/status` can write only status), strategic merge of pod conditions by type, and
owner-reference garbage collection (cascading deletes).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import os
import secrets
import threading
import uuid
from pathlib import Path
from typing import Any

import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import enums, rendering

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "tpinferenceservices.tpserve.io.yaml"

# Resources with a status subresource, as a real cluster has them.
STATUS_SUBRESOURCE = {("", "pods"), ("apps", "statefulsets"), ("", "services"), ("tpserve.io", "tpinferenceservices")}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def label_selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based selectors (`a=b,c!=d,e`), the subset clients use with us."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@attrs.define(kw_only=True)
class RealisticKubernetes(kmock.KubernetesEmulator):
    _versions: Any = attrs.field(factory=lambda: itertools.count(1000), init=False)

    @staticmethod
    def _key_of(resource: Any) -> tuple[str, str]:
        return (resource.group or "", resource.plural)

    def _stored(self, resource: Any, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key in self.objects and not self.objects[key].deleted:
            return copy.deepcopy(dict(self.objects[key].raw))
        return None

    async def _handle(self, request: rendering.Request) -> Any:
        resource = request.resource
        if resource is None:
            return await super()._handle(request)
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            _replace_contents(request.data, self._on_create(request, copy.deepcopy(request.data)))
            response = await super()._handle(request)
            if response.status == 200:
                response.set_status(201)
            return response
        if request.action == enums.action.UPDATE and request.name is not None and isinstance(request.data, list):
            current = self._stored(resource, request.namespace, request.name)
            if current is not None:
                request.data[:] = self._on_json_patch(request, current, request.data)
        if request.action == enums.action.UPDATE and request.name is not None and isinstance(request.data, dict):
            current = self._stored(resource, request.namespace, request.name)
            if current is not None:
                _replace_contents(request.data, self._on_update(request, current, copy.deepcopy(request.data)))
        if request.action in (enums.action.DELETE, enums.action.UPDATE) and request.name is not None:
            before = self._stored(resource, request.namespace, request.name)
            if before is not None and request.action == enums.action.DELETE:
                # Marking for deletion is a change: it gets a new resourceVersion (kopf skips
                # watch events whose version it has already seen).
                self.objects[resource, request.namespace, request.name].patch(
                    {"metadata": {"resourceVersion": str(next(self._versions))}}
                )
            response = await super()._handle(request)
            # Deleted now (directly, or by its last finalizer going away): cascade to dependents.
            if before is not None and self._stored(resource, request.namespace, request.name) is None:
                await self._collect_garbage(before["metadata"].get("uid"))
            return response
        if request.action == enums.action.LIST and request.params.get("labelSelector"):
            return await self._filtered_list(request)
        return await super()._handle(request)

    def _on_create(self, request: rendering.Request, data: dict[str, Any]) -> dict[str, Any]:
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if request.namespace:
            meta["namespace"] = request.namespace
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = str(next(self._versions))
        meta["creationTimestamp"] = _now()
        if "spec" in data:
            meta["generation"] = 1
        if self._key_of(request.resource) in STATUS_SUBRESOURCE and self._key_of(request.resource) != ("", "pods"):
            data.pop("status", None)  # status is written through /status only
        return data

    def _on_update(self, request: rendering.Request, current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
        has_status = self._key_of(request.resource) in STATUS_SUBRESOURCE
        if request.subresource == "status":
            patch = {"status": patch.get("status", {})}
        elif has_status:
            patch.pop("status", None)
        if self._key_of(request.resource) == ("", "pods") and "conditions" in patch.get("status", {}):
            patch["status"]["conditions"] = _merge_by_type(
                current.get("status", {}).get("conditions") or [], patch["status"]["conditions"]
            )
        meta_patch = patch.setdefault("metadata", {})
        for immutable in ("uid", "creationTimestamp", "generation", "name", "namespace"):
            meta_patch.pop(immutable, None)
        if "spec" in patch and request.subresource != "status":
            merged = kmock.Object(current)
            merged.patch({"spec": patch["spec"]})
            if dict(merged.raw).get("spec") != current.get("spec"):
                meta_patch["generation"] = int(current["metadata"].get("generation", 1)) + 1
        meta_patch["resourceVersion"] = str(next(self._versions))
        return patch

    def _on_json_patch(
        self, request: rendering.Request, current: dict[str, Any], ops: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """RFC 6902 patches (kopf's): failed `test` ops are 422 as on a real server; status isolation applies."""
        try:
            patched = jsonpatch.apply_patch(current, ops, in_place=False)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as exc:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=f"the patch failed: {exc}") from None
        on_status = request.subresource == "status"
        if self._key_of(request.resource) in STATUS_SUBRESOURCE:
            ops = [op for op in ops if op["op"] == "test" or op["path"].startswith("/status") == on_status]
        extra = [{"op": "add", "path": "/metadata/resourceVersion", "value": str(next(self._versions))}]
        if not on_status and patched.get("spec") != current.get("spec"):
            extra.append(
                {
                    "op": "add",
                    "path": "/metadata/generation",
                    "value": int(current["metadata"].get("generation", 1)) + 1,
                }
            )
        return ops + extra

    async def _filtered_list(self, request: rendering.Request) -> Any:
        selector = request.params["labelSelector"]
        items = []
        for (resource, namespace, _), obj in list(self.objects.items()):
            if resource != request.resource or obj.deleted:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            raw = dict(obj.raw)
            if label_selector_matches(selector, raw.get("metadata", {}).get("labels") or {}):
                items.append(raw)
        return await self._render_payload(
            request, {"metadata": {"resourceVersion": str(next(self._versions))}, "items": items}
        )

    async def _render_payload(self, request: rendering.Request, payload: dict[str, Any]) -> Any:
        import aiohttp.web

        return aiohttp.web.json_response(payload)

    async def _collect_garbage(self, owner_uid: str | None) -> None:
        """Cascade deletion to dependents, as the garbage collector does (background propagation)."""
        if not owner_uid:
            return
        for (resource, _namespace, _name), obj in list(self.objects.items()):
            if obj.deleted:
                continue
            refs = dict(obj.raw).get("metadata", {}).get("ownerReferences") or []
            if any(ref.get("uid") == owner_uid for ref in refs):
                uid = dict(obj.raw)["metadata"].get("uid")
                raw = copy.deepcopy(dict(obj.raw))
                obj.delete()
                await self._buses[resource].put({"type": "DELETED", "object": raw})
                await self._collect_garbage(uid)


def _replace_contents(target: dict[str, Any], new: dict[str, Any]) -> None:
    # The parsed request is frozen and matched by identity downstream: edit its body in place.
    target.clear()
    target.update(new)


def _merge_by_type(current: list[dict[str, Any]], updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged = {c.get("type"): dict(c) for c in current}
    for update in updates:
        merged[update.get("type")] = {**merged.get(update.get("type"), {}), **update}
    return list(merged.values())


class ApiServerThread:
    """Runs the API server on its own event loop in a thread; writes a kubeconfig pointing at it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.url = ""
        self.handler: RealisticKubernetes | None = None
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="fake-apiserver", daemon=True)

    def __enter__(self) -> ApiServerThread:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("fake API server did not start")
        # The path was fixed before `kubernetes` was imported (tests/conftest.py); only the content changes.
        self.kubeconfig = Path(os.environ["KUBECONFIG"])
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "test",
                    "clusters": [{"name": "test", "cluster": {"server": self.url}}],
                    "users": [{"name": "test", "user": {"token": "test-token"}}],
                    "contexts": [
                        {"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}
                    ],
                }
            )
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with RealisticKubernetes() as handler, kmock.Server(handler) as server:
            self.handler = handler
            register_resources(handler)
            self.url = str(server.url).rstrip("/")
            self._started.set()
            await self._stop.wait()


def register_resources(handler: RealisticKubernetes) -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    names = crd["spec"]["names"]
    handler.resources["tpserve.io/v1alpha1/tpinferenceservices"] = kmock.ResourceInfo(
        kind=names["kind"],
        singular=names["singular"],
        namespaced=True,
        shortnames=set(names["shortNames"]),
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        subresources={"status", "scale"},
    )
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    for plural, kind, subresources in (
        ("pods", "Pod", {"status"}),
        ("services", "Service", {"status"}),
        ("events", "Event", set()),
    ):
        handler.resources[f"v1/{plural}"] = kmock.ResourceInfo(
            kind=kind, singular=plural[:-1], namespaced=True, verbs=verbs, subresources=subresources
        )
    handler.resources["apps/v1/statefulsets"] = kmock.ResourceInfo(
        kind="StatefulSet", singular="statefulset", namespaced=True, verbs=verbs, subresources={"status", "scale"}
    )
    handler.resources["events.k8s.io/v1/events"] = kmock.ResourceInfo(
        kind="Event", singular="event", namespaced=True, verbs=verbs
    )
    handler.resources["v1/namespaces"] = kmock.ResourceInfo(
        kind="Namespace", singular="namespace", namespaced=False, verbs=verbs
    )
    handler.objects[kmock.resource("", "v1", "namespaces"), None, "default"] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "default", "uid": str(uuid.uuid4())},
    }
    # kopf watches CRDs to notice resources appearing; serve ours as a real cluster would.
    handler.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", singular="customresourcedefinition", namespaced=False, verbs=verbs
    )
    crd_resource = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    handler.objects[crd_resource, None, crd["metadata"]["name"]] = crd
