"""Pure functions: a TPInferenceService spec -> the Kubernetes objects that serve it.

Per service NAME:
- `NAME-headless`: headless Service for rendezvous DNS, publishing not-ready addresses (ranks must
  find node 0 before anyone is Ready);
- `NAME`: the Service clients use; it selects leader pods only;
- `NAME-leader`: StatefulSet with one leader pod per group (ordinal = group index);
- `NAME-worker-G`: per group G, a StatefulSet of `nodes - 1` pods with ordinals 1..nodes-1, so a
  worker's pod index *is* its `--node-rank`.

Both kinds of StatefulSet use `OnDelete`: the operator, not the StatefulSet controller, decides
when pods are replaced, because a group must be replaced as a whole.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from .gang import gang_metadata
from .spec import GPU_RESOURCE, RENDEZVOUS_PORT, ServiceSpec

API_GROUP = "tpserve.io"
API_VERSION = "tpserve.io/v1alpha1"
KIND = "TPInferenceService"
PLURAL = "tpinferenceservices"

GROUP_READY_GATE = "tpserve.io/group-ready"
LABEL_SERVICE = "tpserve.io/service"
LABEL_ROLE = "tpserve.io/role"
LABEL_GROUP = "tpserve.io/group"
LABEL_SPEC_HASH = "tpserve.io/spec-hash"
LABEL_INSTANCE = "tpserve.io/instance"  # one value per TPInferenceService, across namespaces
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
SHUTDOWN_MARGIN_S = 5  # of terminationGracePeriodSeconds, for stopping the ranks after the drain
PRE_STOP_MAX_S = 5  # a stopping leader keeps serving this long: the Service stops routing to it first


def pre_stop_s(spec: ServiceSpec) -> int:
    """Seconds a stopping leader keeps admitting requests before SIGTERM starts its drain: the
    endpoint controller and every proxy must have stopped routing to it, or a request sent in
    that window would meet a refusing server."""
    return min(PRE_STOP_MAX_S, spec.termination_grace_period_s // 3)


def shutdown_timeout_s(spec: ServiceSpec) -> int:
    """The server's --shutdown-timeout: the grace period, less the pre-stop wait and the ranks' stop."""
    return max(0, spec.termination_grace_period_s - pre_stop_s(spec) - SHUTDOWN_MARGIN_S)


Obj = dict[str, Any]


def headless_name(name: str) -> str:
    return f"{name}-headless"


def leader_name(name: str) -> str:
    return f"{name}-leader"


def worker_name(name: str, group: int) -> str:
    return f"{name}-worker-{group}"


def leader_pod_name(name: str, group: int) -> str:
    return f"{leader_name(name)}-{group}"


def leader_address(name: str, group: int) -> str:
    """node 0's rendezvous address for group `group` (the leader pod's stable DNS name)."""
    return f"{leader_pod_name(name, group)}.{headless_name(name)}:{RENDEZVOUS_PORT}"


def endpoint(spec: ServiceSpec) -> str:
    return f"http://{spec.name}.{spec.namespace}.svc:{spec.port}/v1"


def common_labels(spec: ServiceSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tpserve",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/managed-by": "tpserve-operator",
        "app.kubernetes.io/part-of": "tpserve",
        LABEL_SERVICE: spec.name,
    }


def leader_selector(name: str) -> dict[str, str]:
    return {LABEL_SERVICE: name, LABEL_ROLE: "leader"}


def owner_reference(owner_name: str, owner_uid: str) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner_name,
        "uid": owner_uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(spec: ServiceSpec, name: str, owner_uid: str, extra_labels: dict[str, str] | None = None) -> Obj:
    return {
        "name": name,
        "namespace": spec.namespace,
        "labels": common_labels(spec) | (extra_labels or {}),
        "ownerReferences": [owner_reference(spec.name, owner_uid)],
    }


def server_args(spec: ServiceSpec, node_rank: str, dist_init_addr: str) -> list[str]:
    """The server's command-line flags; `node_rank` may be a $(VAR) the kubelet expands."""
    args = [
        "--model",
        spec.model_path,
        "--tp",
        str(spec.tensor_parallel_size),
        "--nnodes",
        str(spec.nodes),
        "--node-rank",
        node_rank,
        "--dist-init-addr",
        dist_init_addr,
        "--host",
        "0.0.0.0",
        "--port",
        str(spec.port),
        "--device",
        spec.device,
        # The drain must end before the kubelet's SIGKILL: leave the ranks time to stop after it.
        "--shutdown-timeout",
        str(shutdown_timeout_s(spec)),
    ]
    if spec.served_name:
        args += ["--served-model-name", spec.served_name]
    if spec.hub is not None and spec.hub.revision:
        args += ["--revision", spec.hub.revision]
    return args + spec.engine.flags()


HUB_CACHE_MOUNT = "/var/cache/tpserve-hub"  # HF_HOME of every server pod of a hub model


def hub_env(spec: ServiceSpec) -> list[Obj]:
    """HF_HOME on the cache volume, and HF_TOKEN from the token Secret."""
    if spec.hub is None:
        return []
    env: list[Obj] = [{"name": "HF_HOME", "value": HUB_CACHE_MOUNT}]
    if spec.hub.token_secret:
        secret = {"name": spec.hub.token_secret, "key": spec.hub.token_key}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": secret}})
    return env


def download_container(spec: ServiceSpec) -> Obj:
    """Fetches the hub model into the cache before the server starts (once per cache: a file lock
    lets one pod download while the others sharing the cache wait, then find it there)."""
    assert spec.hub is not None
    args = ["--model", spec.hub.id] + (["--revision", spec.hub.revision] if spec.hub.revision else [])
    return {
        "name": "download",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["python3", "-m", "tpserve", "download"],
        "args": args,
        "env": hub_env(spec) + [dict(e) for e in spec.env],
        "volumeMounts": [{"name": "hub-cache", "mountPath": HUB_CACHE_MOUNT}],
    }


def _probe(spec: ServiceSpec, period: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _container(spec: ServiceSpec, args: list[str], env: list[Obj], leader: bool) -> Obj:
    resources = {k: dict(v) for k, v in spec.resources.items()}
    if spec.device == "cuda":
        resources.setdefault("limits", {})[GPU_RESOURCE] = str(spec.gpus_per_pod)
        resources.setdefault("requests", {})[GPU_RESOURCE] = str(spec.gpus_per_pod)
    mounts: list[Obj] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if spec.model_volume:
        mounts.append({"name": "model", "mountPath": spec.model_mount_path, "readOnly": True})
    if spec.hub is not None:
        mounts.append({"name": "hub-cache", "mountPath": HUB_CACHE_MOUNT})
    ports = [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}]
    if leader:
        ports.append({"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"})
    container: Obj = {
        "name": "server",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["python3", "-m", "tpserve"],
        "args": args,
        "env": env + hub_env(spec) + [dict(e) for e in spec.env],
        "ports": ports,
        "resources": resources,
        "volumeMounts": mounts,
        # Loading a large model can take many minutes: the startup probe allows an hour, polled
        # every 5 s so a group is routed to soon after it is ready.
        "startupProbe": _probe(spec, period=5, failures=720),
        "readinessProbe": _probe(spec, period=5, failures=1),
        "livenessProbe": _probe(spec, period=10, failures=3),
    }
    if leader and pre_stop_s(spec) > 0:
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": pre_stop_s(spec)}}}
    return container


def instance_id(spec: ServiceSpec) -> str:
    return hashlib.sha256(f"{spec.namespace}/{spec.name}".encode()).hexdigest()[:16]


def _term(topology: str, match: dict[str, str], exclude: tuple[str, str] | None = None, **extra: Any) -> Obj:
    """A required pod (anti-)affinity term over `topology`: pods with `match`, minus label value `exclude`."""
    selector: Obj = {"matchLabels": match}
    if exclude is not None:
        selector["matchExpressions"] = [{"key": exclude[0], "operator": "NotIn", "values": [exclude[1]]}]
    return {"labelSelector": selector, "topologyKey": topology, **extra}


def placement_affinity(spec: ServiceSpec, group: int | None) -> Obj:
    """Pod affinity for `placement.exclusiveTopology`: all pods of a group in one topology domain,
    and no other TP group (of this service or any other) in that domain.

    Workers (group G) require their leader's domain and refuse domains holding another group's
    leader or workers; leaders refuse domains with another leader of this service. Required
    anti-affinity is enforced both ways by the scheduler, so a leader cannot join a domain whose
    workers belong to another group either. The leaders' shared template cannot name its group.
    """
    key = spec.exclusive_topology
    ours = {LABEL_SERVICE: spec.name}
    others = {
        "labelSelector": {
            "matchExpressions": [
                {"key": LABEL_SERVICE, "operator": "Exists"},
                {"key": LABEL_INSTANCE, "operator": "NotIn", "values": [instance_id(spec)]},
            ]
        },
        "namespaceSelector": {},  # groups of other services in every namespace
        "topologyKey": key,
    }
    if group is None:
        return {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [_term(key, ours | {LABEL_ROLE: "leader"}), others]
            }
        }
    index = str(group)
    return {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                _term(key, ours | {LABEL_ROLE: "leader", POD_INDEX_LABEL: index})
            ]
        },
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                _term(key, ours | {LABEL_ROLE: "leader"}, exclude=(POD_INDEX_LABEL, index)),
                _term(key, ours | {LABEL_ROLE: "worker"}, exclude=(LABEL_GROUP, index)),
                others,
            ]
        },
    }


def _merged_affinity(user: Obj, placement: Obj) -> Obj:
    """The user's affinity with the placement terms added to its required pod (anti-)affinity."""
    merged = {k: dict(v) for k, v in user.items()}
    for kind, terms in placement.items():
        section = merged.setdefault(kind, {})
        required = list(section.get("requiredDuringSchedulingIgnoredDuringExecution") or [])
        section["requiredDuringSchedulingIgnoredDuringExecution"] = (
            required + terms["requiredDuringSchedulingIgnoredDuringExecution"]
        )
    return merged


def _pod_template(
    spec: ServiceSpec, labels: dict[str, str], container: Obj, leader: bool, group: int | None = None
) -> Obj:
    volumes: list[Obj] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}}]
    if spec.model_volume:
        volumes.append({"name": "model", **spec.model_volume})
    if spec.hub is not None:
        volumes.append({"name": "hub-cache", **(spec.hub.cache or {"emptyDir": {}})})
    pod_spec: Obj = {
        "containers": [container],
        "volumes": volumes,
        "enableServiceLinks": False,
        # The server drains within this (tpserve's SIGTERM handling), then the kubelet kills it.
        "terminationGracePeriodSeconds": spec.termination_grace_period_s,
    }
    if leader:
        pod_spec["readinessGates"] = [{"conditionType": GROUP_READY_GATE}]
    affinity = spec.affinity
    if spec.exclusive_topology:
        affinity = _merged_affinity(spec.affinity, placement_affinity(spec, None if leader else group))
        labels = labels | {LABEL_INSTANCE: instance_id(spec)}  # or our own pods would count as "other"
    optional = {
        "nodeSelector": spec.node_selector,
        "tolerations": [dict(t) for t in spec.tolerations],
        "affinity": affinity,
        "schedulerName": spec.scheduler_name,
        "priorityClassName": spec.priority_class_name,
        "imagePullSecrets": [dict(s) for s in spec.image_pull_secrets],
        "serviceAccountName": spec.service_account_name,
    }
    pod_spec.update({k: v for k, v in optional.items() if v})
    if spec.hub is not None:
        pod_spec["initContainers"] = [download_container(spec)]
    gang_labels, annotations = gang_metadata(spec, None if leader else group)
    metadata: Obj = {"labels": labels | gang_labels}
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": pod_spec}


def _statefulset(
    spec: ServiceSpec,
    name: str,
    owner_uid: str,
    labels: dict[str, str],
    selector: dict[str, str],
    replicas: int,
    template: Obj,
    first_ordinal: int,
) -> Obj:
    sts_spec: Obj = {
        "replicas": replicas,
        "serviceName": headless_name(spec.name),
        "podManagementPolicy": "Parallel",  # ranks must start together to rendezvous
        "updateStrategy": {"type": "OnDelete"},  # the operator replaces whole groups
        "selector": {"matchLabels": selector},
        "template": template,
    }
    if first_ordinal:
        sts_spec["ordinals"] = {"start": first_ordinal}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(spec, name, owner_uid, labels),
        "spec": sts_spec,
    }


def leader_statefulset(spec: ServiceSpec, owner_uid: str) -> Obj:
    labels = common_labels(spec) | {
        LABEL_ROLE: "leader",
        "app.kubernetes.io/component": "leader",
        LABEL_SPEC_HASH: spec.spec_hash,
    }
    env = [_field_env("TPSERVE_POD_NAME", "metadata.name")]
    # Node 0 hosts the rendezvous; with one node it never leaves the pod.
    address = (
        f"$(TPSERVE_POD_NAME).{headless_name(spec.name)}:{RENDEZVOUS_PORT}"
        if spec.nodes > 1
        else f"127.0.0.1:{RENDEZVOUS_PORT}"
    )
    container = _container(spec, server_args(spec, "0", address), env, leader=True)
    return _statefulset(
        spec,
        leader_name(spec.name),
        owner_uid,
        {LABEL_ROLE: "leader"},
        leader_selector(spec.name),
        spec.replicas,
        _pod_template(spec, labels, container, leader=True),
        first_ordinal=0,
    )


def worker_statefulset(spec: ServiceSpec, owner_uid: str, group: int, held: bool = False) -> Obj:
    role = {LABEL_ROLE: "worker", LABEL_GROUP: str(group)}
    labels = common_labels(spec) | role | {"app.kubernetes.io/component": "worker", LABEL_SPEC_HASH: spec.spec_hash}
    env = [
        _field_env("TPSERVE_POD_NAME", "metadata.name"),
        _field_env("TPSERVE_NODE_RANK", f"metadata.labels['{POD_INDEX_LABEL}']"),
    ]
    container = _container(
        spec, server_args(spec, "$(TPSERVE_NODE_RANK)", leader_address(spec.name, group)), env, leader=False
    )
    return _statefulset(
        spec,
        worker_name(spec.name, group),
        owner_uid,
        role,
        {LABEL_SERVICE: spec.name} | role,
        0 if held else spec.nodes - 1,
        _pod_template(spec, labels, container, leader=False, group=group),
        first_ordinal=1,
    )


def headless_service(spec: ServiceSpec, owner_uid: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, headless_name(spec.name), owner_uid),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_SERVICE: spec.name},
            "ports": [
                {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT, "protocol": "TCP"},
                {"name": "http", "port": spec.port, "targetPort": spec.port, "protocol": "TCP"},
            ],
        },
    }


def leader_service(spec: ServiceSpec, owner_uid: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, spec.name, owner_uid),
        "spec": {
            "type": "ClusterIP",
            "selector": leader_selector(spec.name),
            "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def disruption_budget_name(name: str, group: int) -> str:
    return f"{name}-group-{group}"


def group_disruption_budget(spec: ServiceSpec, owner_uid: str, group: int, serving: bool) -> Obj:
    """A PodDisruptionBudget over one group's pods (the leader carries the group label too).

    While the group serves, no voluntary disruption may take any of its pods (losing one rank
    loses the group); while it does not, nothing is protected, so a broken group never blocks
    a node drain.
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec, disruption_budget_name(spec.name, group), owner_uid, {LABEL_GROUP: str(group)}),
        "spec": {
            "maxUnavailable": 0 if serving else spec.nodes,
            "selector": {"matchLabels": {LABEL_SERVICE: spec.name, LABEL_GROUP: str(group)}},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def with_template_hash(spec: ServiceSpec) -> ServiceSpec:
    """The spec with `spec_hash` set: a hash of the pod templates it renders (without the hash label).

    Whatever changes a pod rolls its group: a spec field, the number of nodes, or an operator
    upgrade that renders the pods differently; replicas and the restart budget change no pod.
    """
    unhashed = replace(spec, spec_hash="")
    templates = [leader_statefulset(unhashed, "")["spec"]["template"]]
    if spec.nodes > 1:
        templates.append(worker_statefulset(unhashed, "", 0)["spec"]["template"])
    rendered = json.dumps({"nodes": spec.nodes, "templates": templates}, sort_keys=True)
    return replace(spec, spec_hash=hashlib.sha256(rendered.encode()).hexdigest()[:12])


def desired_objects(spec: ServiceSpec, owner_uid: str, held_groups: frozenset[int] = frozenset()) -> list[Obj]:
    """Every object the service needs; the workers of `held_groups` at none (their old pods linger)."""
    objects = [headless_service(spec, owner_uid), leader_service(spec, owner_uid), leader_statefulset(spec, owner_uid)]
    if spec.nodes > 1:
        objects += [worker_statefulset(spec, owner_uid, g, g in held_groups) for g in range(spec.replicas)]
    return objects


def _field_env(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}
