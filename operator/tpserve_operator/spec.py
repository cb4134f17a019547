"""The TPInferenceService spec as typed data, with the checks the CRD schema cannot express.

`ServiceSpec.parse` raises `SpecError` naming the field; the operator turns that into a condition
and an Event instead of crashing or retrying forever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
RENDEZVOUS_PORT = 29500

# Flags the operator derives itself: a user passing them in extraArgs would split the group's view.
DERIVED_FLAGS = (
    "--model",
    "--model-path",
    "--tp",
    "--tp-size",
    "--nnodes",
    "--node-rank",
    "--dist-init-addr",
    "--port",
    "--host",
    "--served-model-name",
    "--device",
    "--shutdown-timeout",  # from terminationGracePeriodSeconds
    "--revision",  # from model.hub.revision
)


class SpecError(ValueError):
    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"spec.{field_path}: {message}")
        self.field_path = field_path


@dataclass(frozen=True)
class EngineSpec:
    mem_fraction_static: float | None = None
    max_prefill_length: int | None = None
    page_size: int | None = None
    cuda_graph_max_bs: int | None = None
    attention: str | None = None
    disable_cuda_graph: bool = False
    enable_p2p_check: bool = False
    disable_custom_all_reduce: bool = False
    context_length: int | None = None
    dtype: str | None = None
    extra_args: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        valued = [
            ("--mem-fraction-static", self.mem_fraction_static),
            ("--max-prefill-length", self.max_prefill_length),
            ("--page-size", self.page_size),
            ("--cuda-graph-max-bs", self.cuda_graph_max_bs),
            ("--attn", self.attention),
            ("--context-length", self.context_length),
            ("--dtype", self.dtype),
        ]
        out = [item for name, value in valued if value is not None for item in (name, str(value))]
        switches = [
            ("--disable-cuda-graph", self.disable_cuda_graph),
            ("--enable-p2p-check", self.enable_p2p_check),
            ("--disable-custom-all-reduce", self.disable_custom_all_reduce),
        ]
        out += [name for name, on in switches if on]
        return out + list(self.extra_args)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class HubModel:
    """spec.model.hub: a hub id the pods download into spec.model.cache (mounted as HF_HOME)."""

    id: str
    revision: str | None = None
    token_secret: str | None = None
    token_key: str = "token"
    cache: dict[str, Any] | None = None  # a volume source; None: an emptyDir per pod


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    namespace: str
    model_path: str
    image: str
    tensor_parallel_size: int
    nodes: int = 1
    replicas: int = 1
    device: str = "cuda"
    served_name: str | None = None
    model_volume: dict[str, Any] | None = None
    hub: HubModel | None = None  # then model_path is the hub id
    model_mount_path: str = "/models"
    image_pull_policy: str = "IfNotPresent"
    engine: EngineSpec = EngineSpec()
    port: int = 30000
    resources: dict[str, Any] = field(default_factory=dict)
    shm_size: str = "16Gi"
    env: tuple[dict[str, Any], ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] = field(default_factory=dict)
    image_pull_secrets: tuple[dict[str, Any], ...] = ()
    service_account_name: str = ""
    restart_policy: str = "RecreateGroup"
    max_group_restarts: int = 5
    restart_budget_reset_s: int = 3600
    progress_deadline_s: int = 1800
    exclusive_topology: str = ""  # a node label key: one group per domain, a group within one domain
    scheduler_name: str = ""
    priority_class_name: str = ""
    termination_grace_period_s: int = 30
    disruption_budget: bool = True  # a PodDisruptionBudget per group
    kueue_queue_name: str = ""  # gangScheduling.kueueQueueName: Kueue admits each group as one pod group
    pod_group_label: str = ""  # gangScheduling.podGroupLabel: a label key naming each group's PodGroup
    spec_hash: str = ""  # of the rendered pod templates: objects.with_template_hash sets it

    @property
    def gpus_per_pod(self) -> int:
        return self.tensor_parallel_size // self.nodes

    @staticmethod
    def parse(name: str, namespace: str, spec: dict[str, Any]) -> ServiceSpec:
        model = _mapping(spec, "model")
        engine = _mapping(spec, "engine")
        tp = _int(spec, "tensorParallelSize", required=True)
        nodes = _int(spec, "nodes", default=1)
        if tp < 1 or tp & (tp - 1):
            raise SpecError("tensorParallelSize", f"must be a power of two, got {tp}")
        if nodes < 1 or nodes & (nodes - 1):
            raise SpecError("nodes", f"must be a power of two, got {nodes}")
        if tp % nodes:
            raise SpecError("tensorParallelSize", f"{tp} is not divisible by nodes {nodes}")
        hub = _hub_model(model)
        model_path = hub.id if hub is not None else model.get("path")  # a hub id is passed as --model
        if not isinstance(model_path, str) or (hub is None and not model_path.startswith("/")):
            raise SpecError("model.path", "must be an absolute path")
        image = spec.get("image")
        if not isinstance(image, str) or not image:
            raise SpecError("image", "is required")
        extra = tuple(str(a) for a in engine.get("extraArgs") or ())
        for arg in extra:
            if arg.split("=", 1)[0] in DERIVED_FLAGS:
                raise SpecError(
                    "engine.extraArgs",
                    f"{arg.split('=', 1)[0]} is derived by the operator; set the matching spec field instead",
                )
        resources = dict(spec.get("resources") or {})
        for section in ("limits", "requests"):
            if GPU_RESOURCE in (resources.get(section) or {}):
                raise SpecError(
                    f"resources.{section}", f"{GPU_RESOURCE} is derived from tensorParallelSize / nodes; do not set it"
                )
        device = spec.get("device", "cuda")
        if device not in ("cuda", "cpu"):
            raise SpecError("device", f"must be cuda or cpu, got {device!r}")
        restart_policy = spec.get("restartPolicy", "RecreateGroup")
        if restart_policy not in ("RecreateGroup", "None"):
            raise SpecError("restartPolicy", f"must be RecreateGroup or None, got {restart_policy!r}")
        return ServiceSpec(
            name=name,
            namespace=namespace,
            model_path=model_path,
            image=image,
            tensor_parallel_size=tp,
            nodes=nodes,
            replicas=_int(spec, "replicas", default=1),
            device=device,
            served_name=model.get("servedName"),
            model_volume=model.get("volume"),
            hub=hub,
            model_mount_path=model.get("mountPath", "/models"),
            image_pull_policy=spec.get("imagePullPolicy", "IfNotPresent"),
            engine=EngineSpec(
                mem_fraction_static=engine.get("memFractionStatic"),
                max_prefill_length=engine.get("maxPrefillLength"),
                page_size=engine.get("pageSize"),
                cuda_graph_max_bs=engine.get("cudaGraphMaxBs"),
                attention=engine.get("attention"),
                disable_cuda_graph=bool(engine.get("disableCudaGraph", False)),
                enable_p2p_check=bool(engine.get("enableP2PCheck", False)),
                disable_custom_all_reduce=bool(engine.get("disableCustomAllReduce", False)),
                context_length=engine.get("contextLength"),
                dtype=engine.get("dtype"),
                extra_args=extra,
            ),
            port=_int(spec, "port", default=30000),
            resources=resources,
            shm_size=spec.get("shmSize", "16Gi"),
            env=tuple(spec.get("env") or ()),
            node_selector=dict(spec.get("nodeSelector") or {}),
            tolerations=tuple(spec.get("tolerations") or ()),
            affinity=dict(spec.get("affinity") or {}),
            image_pull_secrets=tuple(spec.get("imagePullSecrets") or ()),
            service_account_name=spec.get("serviceAccountName", ""),
            restart_policy=restart_policy,
            max_group_restarts=_int(spec, "maxGroupRestarts", default=5),
            restart_budget_reset_s=_int(spec, "restartBudgetResetSeconds", default=3600),
            progress_deadline_s=_int(spec, "progressDeadlineSeconds", default=1800),
            exclusive_topology=str(_mapping(spec, "placement").get("exclusiveTopology") or ""),
            scheduler_name=str(spec.get("schedulerName") or ""),
            priority_class_name=str(spec.get("priorityClassName") or ""),
            termination_grace_period_s=_int(spec, "terminationGracePeriodSeconds", default=30),
            disruption_budget=bool(spec.get("podDisruptionBudget", True)),
            kueue_queue_name=str(_mapping(spec, "gangScheduling").get("kueueQueueName") or ""),
            pod_group_label=str(_mapping(spec, "gangScheduling").get("podGroupLabel") or ""),
        )


def _hub_model(model: dict[str, Any]) -> HubModel | None:
    if ("hub" in model) == ("path" in model):
        raise SpecError("model", "give exactly one of model.path and model.hub")
    if "hub" not in model:
        return None
    hub = _mapping(model, "hub")
    repo_id = hub.get("id")
    if not isinstance(repo_id, str) or not HUB_ID.match(repo_id):
        raise SpecError("model.hub.id", f"must be a hub id org/name, got {repo_id!r}")
    secret = _mapping(hub, "tokenSecret")
    cache = model.get("cache")
    return HubModel(
        id=repo_id,
        revision=hub.get("revision"),
        token_secret=secret.get("name"),
        token_key=secret.get("key", "token"),
        cache=dict(cache) if cache else None,
    )


def _mapping(spec: dict[str, Any], key: str) -> dict[str, Any]:
    value = spec.get(key) or {}
    if not isinstance(value, dict):
        raise SpecError(key, "must be an object")
    return value


def _int(spec: dict[str, Any], key: str, default: int | None = None, required: bool = False) -> int:
    value = spec.get(key, default)
    if value is None and required:
        raise SpecError(key, "is required")
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(key, f"must be an integer, got {value!r}")
    return value
