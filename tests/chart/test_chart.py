"""The Helm chart with the real `helm` (lint, template over a values matrix), every rendered object
through kubernetes-validate --strict, the examples against the CRD's schema, the Dockerfile through
hadolint."""

from __future__ import annotations

import copy
import json
import re
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
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
        "podMonitor": {"enabled": True, "interval": "10s"},
        "grafanaDashboard": {"enabled": True, "namespace": "grafana"},
    },
    "monitoring-all-namespaces": {"podMonitor": {"enabled": True}, "watchNamespaces": []},
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


@pytest.fixture(scope="session")
def third_party_crds() -> dict[str, jsonschema.Draft4Validator]:
    """Validators of the prometheus-operator and KEDA kinds, by apiVersion/kind, from their CRDs."""
    out = subprocess.run(
        ["bash", str(REPO / "tools/third_party_crds.sh")], check=True, capture_output=True, text=True, timeout=300
    )
    validators = {}
    for path in Path(out.stdout.strip().splitlines()[-1]).glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = f"{crd['spec']['group']}/{version['name']}/{crd['spec']['names']['kind']}"
            validators[key] = jsonschema.Draft4Validator(version["schema"]["openAPIV3Schema"])
    return validators


def validate_object(obj: dict, third_party: dict[str, jsonschema.Draft4Validator]) -> list[str]:
    """Built-in kinds through kubernetes-validate --strict; a CRD's kinds through its schema."""
    key = f"{obj['apiVersion']}/{obj['kind']}"
    if key in third_party:
        return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in third_party[key].iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [exc.message]
    return []


@pytest.mark.parametrize("case", list(VALUES_MATRIX))
def test_rendered_objects_are_valid_kubernetes(case: str, third_party_crds: dict) -> None:
    objects = render(VALUES_MATRIX[case])
    kinds = sorted({o["kind"] for o in objects})
    assert "Deployment" in kinds and "CustomResourceDefinition" in kinds
    for obj in objects:
        problems = validate_object(obj, third_party_crds)
        assert not problems, f"{case}: {obj['kind']}/{obj['metadata']['name']}: {problems}"


def test_monitors_and_dashboard_are_off_by_default_and_scrape_what_serves_metrics() -> None:
    kinds = {o["kind"] for o in render({})}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "ConfigMap"}
    objects = {o["kind"]: o for o in render(VALUES_MATRIX["monitoring"])}
    deployment, service = objects["Deployment"], objects["Service"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "METRICS_PORT", "value": "8081"} in container["env"]
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    monitor = objects["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    # The server pods the operator makes carry this label and name their API port `http`.
    pods = objects["PodMonitor"]["spec"]
    assert pods["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "tpserve-operator"}
    assert pods["podMetricsEndpoints"][0]["port"] == "http"
    dashboard = objects["ConfigMap"]
    assert (
        dashboard["metadata"]["namespace"] == "grafana" and dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    )
    shipped = json.loads((CHART / "dashboards" / "tpserve.json").read_text())
    assert json.loads(dashboard["data"]["tpserve.json"]) == shipped


@pytest.mark.parametrize("example", sorted(p.name for p in (CHART / "examples" / "autoscaling").glob("*.yaml")))
def test_autoscaling_examples_match_their_schemas(example: str, third_party_crds: dict) -> None:
    body = yaml.safe_load((CHART / "examples" / "autoscaling" / example).read_text())
    assert validate_object(body, third_party_crds) == []
    target = body["spec"]["scaleTargetRef"]
    # They scale groups through the CRD's scale subresource.
    assert (target["apiVersion"], target["kind"]) == ("tpserve.io/v1alpha1", "TPInferenceService")
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    text = (CHART / "examples" / "autoscaling" / example).read_text()
    assert "tpserve_num_requests_waiting" in text


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
    # flashinfer's prebuilt kernels come from flashinfer's own index (PyPI has no flashinfer-jit-cache),
    # for the CUDA version torch was built for.
    jit_index = re.search(r"ARG FLASHINFER_JIT_CACHE_INDEX=https://flashinfer\.ai/whl/(cu\d+)", text)
    torch_index = re.search(r"ARG TORCH_INDEX=https://download\.pytorch\.org/whl/(cu\d+)", text)
    assert jit_index and torch_index and jit_index[1] == torch_index[1]
    assert re.search(r"flashinfer-jit-cache==\S+ --index-url \"\$\{FLASHINFER_JIT_CACHE_INDEX\}\"", text)


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
