"""The chart's CRD and the Kubernetes behaviour the operator relies on, on a real API server.

etcd, kube-apiserver and kube-controller-manager built from pinned Go modules (tests/k8s/
control_plane.py); kubectl is the official binary (installed by `make`). What the API server
itself enforces (the CRD's schema and CEL rules, printer columns, the scale subresource) and what
the real controllers do (StatefulSets create pods, garbage collection follows owner references) is
asserted here as a user would see it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes import config as kube_config

from tpserve_operator.kube import Kube

from .control_plane import REPO, ControlPlane
from .operator_install import OperatorInstall

EXAMPLE = REPO / "charts" / "tpserve" / "examples" / "cpu-tiny.yaml"


@pytest.fixture(scope="module")
def crd(control_plane: ControlPlane, operator_install: OperatorInstall) -> None:
    """The CRD as users get it: from the chart's `helm install`."""
    control_plane.kubectl("wait", "--for=condition=Established", "crd/tpinferenceservices.tpserve.io", "--timeout=30s")


def _service(**spec: object) -> str:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["spec"].update(spec)
    return yaml.safe_dump(body)


def test_cel_rules_and_schema_are_enforced_by_the_api_server(
    control_plane: ControlPlane, crd: None, namespace: str
) -> None:
    bad = control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input_text=_service(tensorParallelSize=2, nodes=4), check=False
    )
    assert bad.returncode != 0
    assert "spec.tensorParallelSize" in bad.stderr and "tensorParallelSize must be divisible by nodes" in bad.stderr
    relative = yaml.safe_load(_service())
    relative["spec"]["model"]["path"] = "models/tiny"
    refused = control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(relative), check=False
    )
    assert refused.returncode != 0 and "spec.model.path" in refused.stderr
    both = yaml.safe_load(_service())
    both["spec"]["model"]["hub"] = {"id": "org/tiny"}
    refused = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(both), check=False)
    assert refused.returncode != 0 and "give exactly one of model.path and model.hub" in refused.stderr
    control_plane.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))


def test_kubectl_shows_printer_columns_explains_fields_and_scales(
    control_plane: ControlPlane, crd: None, namespace: str
) -> None:
    control_plane.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    table = control_plane.kubectl("get", "tpis", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "TP", "NODES", "READY", "PHASE", "ENDPOINT", "AGE"]
    assert table[1].split()[:3] == ["tiny", "2", "2"]
    explained = control_plane.kubectl("explain", "tpis.spec.engine").stdout
    assert "maxPrefillLength" in explained
    spec_fields = control_plane.kubectl("explain", "tpis.spec").stdout
    for field in (
        "restartBudgetResetSeconds",
        "progressDeadlineSeconds",
        "placement",
        "schedulerName",
        "priorityClassName",
        "terminationGracePeriodSeconds",
        "podDisruptionBudget",
    ):
        assert field in spec_fields, f"kubectl explain tpis.spec does not list {field}"
    assert "NVLink domain" in control_plane.kubectl("explain", "tpis.spec.placement.exclusiveTopology").stdout
    control_plane.kubectl("scale", "tpis", "tiny", "-n", namespace, "--replicas", "2")
    spec = json.loads(control_plane.kubectl("get", "tpis", "tiny", "-n", namespace, "-o", "json").stdout)["spec"]
    assert spec["replicas"] == 2


STATEFULSET = """apiVersion: apps/v1
kind: StatefulSet
metadata: {name: group}
spec:
  replicas: 2
  podManagementPolicy: Parallel
  serviceName: group
  selector: {matchLabels: {app: group}}
  template:
    metadata: {labels: {app: group}}
    spec:
      containers: [{name: c, image: registry.example.com/none:1}]
"""


def test_statefulset_pods_come_from_the_controller_and_go_with_their_owner(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=STATEFULSET)

    def pods() -> list[str]:
        out = control_plane.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout
        return sorted(out.split())

    control_plane.wait_for(lambda: pods() == ["pod/group-0", "pod/group-1"], "the StatefulSet's pods")
    control_plane.kubectl("delete", "statefulset", "group", "-n", namespace, "--cascade=background")
    control_plane.wait_for(lambda: pods() == [], "garbage collection of the StatefulSet's pods")


def _operator_kube(plane: ControlPlane) -> Kube:
    """The operator's API wrapper, talking to the test cluster as the admin."""
    api = kube_config.new_client_from_config(config_file=str(plane.kubeconfig))
    kube = Kube.__new__(Kube)  # its constructor reads the in-cluster or default kubeconfig
    kube.core, kube.apps, kube.custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
    return kube


def _statefulset(namespace: str, env: dict[str, str]) -> dict[str, object]:
    body = yaml.safe_load(STATEFULSET)
    body["metadata"]["namespace"] = namespace
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return body


def test_an_env_var_removed_from_the_spec_leaves_the_statefulset(control_plane: ControlPlane, namespace: str) -> None:
    kube = _operator_kube(control_plane)
    asyncio.run(kube.apply(_statefulset(namespace, {"KEEP": "1", "DROP": "2"})))
    assert asyncio.run(kube.apply(_statefulset(namespace, {"KEEP": "1"}))) == "patched"
    live = control_plane.kubectl("get", "statefulset", "group", "-n", namespace, "-o", "json").stdout
    env = json.loads(live)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["name"] for e in env] == ["KEEP"]


def test_a_changed_service_port_replaces_the_old_one(control_plane: ControlPlane, namespace: str) -> None:
    kube = _operator_kube(control_plane)

    def service(port: int) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "api", "namespace": namespace},
            "spec": {"selector": {"app": "group"}, "ports": [{"name": "http", "port": port, "targetPort": port}]},
        }

    asyncio.run(kube.apply(service(8000)))
    assert asyncio.run(kube.apply(service(9000))) == "patched"  # a strategic merge made this a 422
    live = json.loads(control_plane.kubectl("get", "service", "api", "-n", namespace, "-o", "json").stdout)
    assert [p["port"] for p in live["spec"]["ports"]] == [9000]


def test_applying_the_same_object_again_writes_nothing(control_plane: ControlPlane, namespace: str) -> None:
    kube = _operator_kube(control_plane)
    assert asyncio.run(kube.apply(_statefulset(namespace, {"A": "1"}))) == "created"
    assert asyncio.run(kube.apply(_statefulset(namespace, {"A": "1"}))) == "unchanged"


def test_a_status_written_between_read_and_apply_is_no_change(control_plane: ControlPlane, namespace: str) -> None:
    """The StatefulSet controller writes a new object's status within moments: written between the
    operator's read and its apply, it moves the resourceVersion, but the apply changed nothing, and
    says so (no Patched Event for it)."""
    kube = _operator_kube(control_plane)
    asyncio.run(kube.apply(_statefulset(namespace, {"A": "1"})))
    plain_call = kube._call
    calls = 0

    async def status_written_after_the_read(fn: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        result = await plain_call(fn, *args, **kwargs)
        calls += 1
        if calls == 1:  # the read: a controller writes the status now
            kube.apps.patch_namespaced_stateful_set_status("group", namespace, {"status": {"collisionCount": 3}})
        return result

    kube._call = status_written_after_the_read  # type: ignore[method-assign]
    assert asyncio.run(kube.apply(_statefulset(namespace, {"A": "1"}))) == "unchanged"
    assert calls == 2


def test_a_field_changed_by_hand_is_taken_back_and_foreign_fields_stay(
    control_plane: ControlPlane, namespace: str
) -> None:
    kube = _operator_kube(control_plane)
    asyncio.run(kube.apply(_statefulset(namespace, {"A": "1"})))
    control_plane.kubectl("set", "env", "statefulset/group", "-n", namespace, "A=2")
    control_plane.kubectl("annotate", "statefulset/group", "-n", namespace, "team.example.com/owner=ml")
    assert asyncio.run(kube.apply(_statefulset(namespace, {"A": "1"}))) == "patched"
    live = json.loads(control_plane.kubectl("get", "statefulset", "group", "-n", namespace, "-o", "json").stdout)
    assert live["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"}]
    assert live["metadata"]["annotations"]["team.example.com/owner"] == "ml"


def test_objects_written_before_server_side_apply_lose_removed_fields(
    control_plane: ControlPlane, namespace: str
) -> None:
    """An upgrade: the object was created and strategic-merge patched by the old operator's client."""
    kube = _operator_kube(control_plane)
    apps = kube.apps
    apps.create_namespaced_stateful_set(namespace, _statefulset(namespace, {"KEEP": "1", "DROP": "2"}))
    before = apps.read_namespaced_stateful_set("group", namespace).metadata.managed_fields
    assert [m.manager for m in before] == ["OpenAPI-Generator"], "the legacy manager this upgrade adopts"
    asyncio.run(kube.apply(_statefulset(namespace, {"KEEP": "1"})))
    shown = control_plane.kubectl("get", "sts", "group", "-n", namespace, "-o", "json", "--show-managed-fields")
    live = json.loads(shown.stdout)
    assert [e["name"] for e in live["spec"]["template"]["spec"]["containers"][0]["env"]] == ["KEEP"]
    managers = {(m["manager"], m["operation"]) for m in live["metadata"]["managedFields"]}
    assert ("tpserve-operator", "Apply") in managers and ("OpenAPI-Generator", "Update") not in managers
