"""The Helm chart with the real `helm` (lint, template over a values matrix), every rendered object
through kubernetes-validate --strict, the examples against the CRD's schema, the Dockerfile through
hadolint."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tpserve"
CRD = REPO / "crds" / "tpinferenceservices.tpserve.io.yaml"
K8S_VERSION = "1.35.0"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed (make test installs it)"
    return found


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=120)


def values_args(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


def render(values: dict) -> list[dict]:
    proc = helm(
        "template", "tpserve", str(CHART), "--namespace", "tpserve-system", "--include-crds", *values_args(values)
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


VALUES_MATRIX = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "existing-sa": {
        "serviceAccount": {"create": False, "name": "ops"},
        "image": {"repository": "r.example/op", "tag": "1.2.3", "pullPolicy": "Always"},
    },
    "scheduling": {
        "nodeSelector": {"pool": "cpu"},
        "tolerations": [{"key": "x", "operator": "Exists"}],
        "imagePullSecrets": [{"name": "regcred"}],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
        "podAnnotations": {"a": "b"},
        "logLevel": "debug",
        "priorityClassName": "system-cluster-critical",
    },
}


def test_helm_lint_strict() -> None:
    proc = helm("lint", str(CHART), "--strict")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, values in VALUES_MATRIX.items():
        proc = helm("lint", str(CHART), "--strict", *values_args(values))
        assert proc.returncode == 0, f"{name}: {proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("case", list(VALUES_MATRIX))
def test_rendered_objects_are_valid_kubernetes(case: str) -> None:
    objects = render(VALUES_MATRIX[case])
    kinds = sorted({o["kind"] for o in objects})
    assert "Deployment" in kinds and "CustomResourceDefinition" in kinds
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{case}: {obj['kind']}/{obj['metadata']['name']}: {exc.message}")


def test_operator_deployment_is_hardened() -> None:
    [deployment] = [o for o in render({}) if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"]
    assert deployment["spec"]["replicas"] == 1


def test_rbac_is_least_privilege() -> None:
    for case in ("defaults", "namespaced"):
        objects = render(VALUES_MATRIX[case])
        roles = [o for o in objects if o["kind"] in ("Role", "ClusterRole")]
        for role in roles:
            for rule in role["rules"]:
                assert (
                    "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule.get("apiGroups", [])
                )
    namespaced = render(VALUES_MATRIX["namespaced"])
    roles = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in namespaced if o["kind"] == "Role"}
    service_roles = [ns for ns, name in roles if not name.endswith("-leader-election")]
    assert sorted(service_roles) == ["team-a", "team-b"]
    # Leader election needs one Lease, in the operator's own namespace, and nothing else.
    [(lease_namespace, _)] = [key for key in roles if key[1].endswith("-leader-election")]
    [lease_rule] = roles[(lease_namespace, "tpserve-leader-election")]["rules"]
    assert lease_namespace != "team-a" and lease_rule["resources"] == ["leases"]
    assert set(lease_rule["verbs"]) == {"get", "create", "update"}
    cluster_roles = [o for o in namespaced if o["kind"] == "ClusterRole"]
    # Only discovery (CRDs, namespaces) stays cluster-wide in namespaced mode, and it is read-only.
    assert [r["metadata"]["name"] for r in cluster_roles] == ["tpserve-discovery"]
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in cluster_roles[0]["rules"])
    [deployment] = [o for o in namespaced if o["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WATCH_NAMESPACES"] == "team-a,team-b"


def test_several_replicas_elect_a_leader() -> None:
    [deployment] = [o for o in render({"replicaCount": 2}) if o["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LEADER_ELECTION"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    proc = helm("template", "t", str(CHART), "--set", "replicaCount=2", "--set", "leaderElection.enabled=false")
    assert proc.returncode != 0, "two replicas without leader election would both reconcile"


def test_bad_values_are_refused_by_the_schema() -> None:
    proc = helm("template", "t", str(CHART), "--set", "logLevel=loud")
    assert proc.returncode != 0 and "logLevel" in proc.stderr
    proc = helm("template", "t", str(CHART), "--set", "serviceAccount.create=false")
    assert proc.returncode != 0 and "serviceAccount.name is required" in proc.stderr


def test_chart_ships_the_same_crd() -> None:
    assert (CHART / "crds" / CRD.name).read_text() == CRD.read_text()
    crd = yaml.safe_load(CRD.read_text())
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    version = crd["spec"]["versions"][0]
    assert {c["name"] for c in version["additionalPrinterColumns"]} == {
        "TP",
        "Nodes",
        "Ready",
        "Phase",
        "Endpoint",
        "Age",
    }
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert crd["spec"]["names"]["shortNames"] == ["tpis"]


def _undocumented(schema: dict, path: str) -> list[str]:
    missing = [] if schema.get("description") or path.endswith(("metadata", ".items")) else [path]
    for key, child in (schema.get("properties") or {}).items():
        missing += _undocumented(child, f"{path}.{key}")
    if isinstance(schema.get("items"), dict) and schema["items"].get("properties"):
        missing += _undocumented(schema["items"], f"{path}.items")
    return missing


def test_every_crd_field_is_documented() -> None:
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [p for p in _undocumented(schema, "") if p not in ("", ".metadata")]
    assert missing == []


def crd_validator() -> jsonschema.Draft4Validator:
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(schema)  # OpenAPI v3.0 schemas use draft-4 style bounds


@pytest.mark.parametrize("example", sorted(p.name for p in (CHART / "examples").glob("*.yaml")))
def test_examples_match_the_crd_schema(example: str) -> None:
    body = yaml.safe_load((CHART / "examples" / example).read_text())
    errors = [e.message for e in crd_validator().iter_errors(body)]
    assert errors == []
    spec = body["spec"]
    assert spec["tensorParallelSize"] % spec.get("nodes", 1) == 0


def test_schema_rejects_bad_resources() -> None:
    body = yaml.safe_load((CHART / "examples" / "two-node-2x8.yaml").read_text())
    for field, value in (("tensorParallelSize", 12), ("nodes", 3), ("restartPolicy", "Always"), ("port", 0)):
        broken = copy.deepcopy(body)
        broken["spec"][field] = value
        assert list(crd_validator().iter_errors(broken)), f"{field}={value} accepted"


def test_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run([tool("hadolint"), str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (REPO / "Dockerfile").read_text()
    assert "AS server" in text and "AS operator" in text
    assert text.count("USER 10001") == 2, "both images run as a non-root user"


def test_the_group_labels_policy_is_installed_where_the_api_is_served() -> None:
    api = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"
    assert not [o for o in render({}) if o["kind"].startswith("MutatingAdmissionPolicy")], "API not served: skipped"
    proc = helm(
        "template", "t", str(CHART), "--api-versions", api, *values_args({"watchNamespaces": ["team-a", "team-b"]})
    )
    assert proc.returncode == 0, proc.stderr
    objects = {o["kind"]: o for o in yaml.safe_load_all(proc.stdout) if o}
    policy, binding = objects["MutatingAdmissionPolicy"], objects["MutatingAdmissionPolicyBinding"]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"] == ["CREATE"]
    [namespaces] = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert namespaces["values"] == ["team-a", "team-b"]
    proc = helm("template", "t", str(CHART), "--api-versions", api, "--set", "groupLabelsPolicy.enabled=false")
    assert "MutatingAdmissionPolicy" not in proc.stdout
