"""The pure spec -> objects builder, and the contract with the server's own argument parser."""

from __future__ import annotations

import re

import pytest

from tpserve.entrypoints.cli import build_parser
from tpserve_operator.objects import GROUP_READY_GATE, desired_objects, with_template_hash
from tpserve_operator.spec import ServiceSpec, SpecError

from .specs import service_body

UID = "0000-uid"


def build(**spec: object) -> dict[str, dict]:
    body = service_body(**spec)
    parsed = with_template_hash(ServiceSpec.parse("llama", "default", body["spec"]))
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in desired_objects(parsed, UID)}


def container(sts: dict) -> dict:
    return sts["spec"]["template"]["spec"]["containers"][0]


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """What the kubelet does to $(VAR) references in container args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def test_two_node_tp16_objects() -> None:
    objects = build(replicas=2)
    assert set(objects) == {
        "Service/llama-headless",
        "Service/llama",
        "StatefulSet/llama-leader",
        "StatefulSet/llama-worker-0",
        "StatefulSet/llama-worker-1",
    }
    headless = objects["Service/llama-headless"]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert objects["Service/llama"]["spec"]["selector"] == {"tpserve.io/service": "llama", "tpserve.io/role": "leader"}

    leader = objects["StatefulSet/llama-leader"]
    assert leader["spec"]["replicas"] == 2 and leader["spec"]["serviceName"] == "llama-headless"
    assert leader["spec"]["updateStrategy"] == {"type": "OnDelete"}
    pod = leader["spec"]["template"]["spec"]
    assert pod["readinessGates"] == [{"conditionType": GROUP_READY_GATE}]
    c = container(leader)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "models"}} in pod["volumes"]

    worker = objects["StatefulSet/llama-worker-1"]
    assert worker["spec"]["replicas"] == 1 and worker["spec"]["ordinals"] == {"start": 1}
    assert "readinessGates" not in worker["spec"]["template"]["spec"]
    assert container(worker)["resources"]["limits"]["nvidia.com/gpu"] == "8"
    for obj in objects.values():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == UID
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "tpserve-operator"


@pytest.mark.parametrize("group", [0, 1])
def test_rendered_commands_parse_with_the_servers_parser(group: int) -> None:
    """Contract: the pods' command lines are valid `tpserve` invocations with the intended group layout."""
    objects = build(replicas=2)
    parser = build_parser()
    leader = container(objects["StatefulSet/llama-leader"])
    assert leader["command"] == ["python3", "-m", "tpserve"]
    leader_ns = parser.parse_args(expand(leader["args"], {"TPSERVE_POD_NAME": f"llama-leader-{group}"}))
    worker = container(objects[f"StatefulSet/llama-worker-{group}"])
    worker_ns = parser.parse_args(
        expand(worker["args"], {"TPSERVE_NODE_RANK": "1", "TPSERVE_POD_NAME": f"llama-worker-{group}-1"})
    )
    node0 = f"llama-leader-{group}.llama-headless:29500"
    for ns, rank in ((leader_ns, 0), (worker_ns, 1)):
        assert (ns.tp, ns.nnodes, ns.node_rank, ns.dist_init_addr) == (16, 2, rank, node0)
        assert (ns.model, ns.served_model_name, ns.port) == ("/models/llama-3.1-70b", "llama-70b", 30000)
        assert (ns.mem_fraction_static, ns.max_prefill_length, ns.page_size) == (0.85, 4096, 16)
    worker_env = {e["name"]: e for e in worker["env"]}
    assert (
        worker_env["TPSERVE_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.labels['apps.kubernetes.io/pod-index']"
    )


def test_single_node_group_has_no_workers_and_local_rendezvous() -> None:
    objects = build(tensorParallelSize=8, nodes=1)
    assert "StatefulSet/llama-worker-0" not in objects
    ns = build_parser().parse_args(container(objects["StatefulSet/llama-leader"])["args"])
    assert (ns.tp, ns.nnodes, ns.dist_init_addr) == (8, 1, "127.0.0.1:29500")


def test_cpu_device_requests_no_gpus_and_engine_switches() -> None:
    objects = build(
        tensorParallelSize=2,
        nodes=2,
        device="cpu",
        engine={"disableCudaGraph": True, "attention": "torch", "extraArgs": ["--log-level", "debug"]},
    )
    c = container(objects["StatefulSet/llama-leader"])
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    ns = build_parser().parse_args(expand(c["args"], {"TPSERVE_POD_NAME": "llama-leader-0"}))
    assert ns.device == "cpu" and ns.disable_cuda_graph and ns.attn == "torch" and ns.log_level == "debug"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"tensorParallelSize": 6}, "tensorParallelSize"),
        ({"tensorParallelSize": 4, "nodes": 8}, "tensorParallelSize"),
        ({"engine": {"extraArgs": ["--tp", "4"]}}, "engine.extraArgs"),
        ({"resources": {"limits": {"nvidia.com/gpu": 4}}}, "resources.limits"),
        ({"model": {"path": "relative/dir"}}, "model.path"),
        ({"model": {"path": "/models/x", "hub": {"id": "org/x"}}}, "model"),
        ({"model": {"servedName": "x"}}, "model"),
        ({"model": {"hub": {"id": "not-an-id"}}}, "model.hub.id"),
    ],
)
def test_invalid_specs_name_the_field(spec: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        ServiceSpec.parse("x", "default", service_body(**spec)["spec"])
    assert info.value.field_path == field
    assert str(info.value).startswith(f"spec.{field}:")


def test_placement_adds_to_the_users_affinity_and_is_absent_without_it() -> None:
    node_affinity = {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": []}]}
    }
    plain = build(affinity={"nodeAffinity": node_affinity})
    assert plain["StatefulSet/llama-worker-0"]["spec"]["template"]["spec"]["affinity"] == {
        "nodeAffinity": node_affinity
    }
    placed = build(affinity={"nodeAffinity": node_affinity}, placement={"exclusiveTopology": "example.com/rack"})
    worker = placed["StatefulSet/llama-worker-0"]["spec"]["template"]
    affinity = worker["spec"]["affinity"]
    assert affinity["nodeAffinity"] == node_affinity
    [follow] = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert follow["topologyKey"] == "example.com/rack"
    assert follow["labelSelector"]["matchLabels"]["apps.kubernetes.io/pod-index"] == "0"
    assert len(affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]) == 3
    assert "tpserve.io/instance" in worker["metadata"]["labels"]


def test_a_hub_model_is_downloaded_by_an_init_container_into_the_cache() -> None:
    hub = {"id": "Qwen/Qwen3-32B", "revision": "v1.0", "tokenSecret": {"name": "hf", "key": "tok"}}
    cache = {"persistentVolumeClaim": {"claimName": "hub-cache"}}
    objects = build(model={"hub": hub, "cache": cache}, env=[{"name": "HF_ENDPOINT", "value": "http://mirror"}])
    for name in ("StatefulSet/llama-leader", "StatefulSet/llama-worker-0"):
        pod = objects[name]["spec"]["template"]["spec"]
        server = pod["containers"][0]
        [download] = pod["initContainers"]
        assert download["command"] == ["python3", "-m", "tpserve", "download"]
        assert download["args"] == ["--model", "Qwen/Qwen3-32B", "--revision", "v1.0"]
        assert {"name": "hub-cache", "persistentVolumeClaim": {"claimName": "hub-cache"}} in pod["volumes"]
        for c in (server, download):
            env = {e["name"]: e for e in c["env"]}
            assert env["HF_HOME"]["value"] == "/var/cache/tpserve-hub"
            assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "tok"}
            assert env["HF_ENDPOINT"]["value"] == "http://mirror"
            assert {"name": "hub-cache", "mountPath": "/var/cache/tpserve-hub"} in c["volumeMounts"]
        ns = build_parser().parse_args(expand(server["args"], {"TPSERVE_POD_NAME": "x", "TPSERVE_NODE_RANK": "1"}))
        assert (ns.model, ns.revision) == ("Qwen/Qwen3-32B", "v1.0")
    # Without a cache volume each pod downloads into its own emptyDir; a path model has no init container.
    pod = build(model={"hub": {"id": "org/m"}})["StatefulSet/llama-leader"]["spec"]["template"]["spec"]
    assert {"name": "hub-cache", "emptyDir": {}} in pod["volumes"]
    assert "initContainers" not in build()["StatefulSet/llama-leader"]["spec"]["template"]["spec"]
