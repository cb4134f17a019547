"""The operator behind the fault-injecting proxy: API errors and lost watches, survived and converged."""

from __future__ import annotations

from pathlib import Path

from tests.k8s.api import ControllerLoop
from tests.k8s.control_plane import ControlPlane
from tests.k8s.fault_proxy import Fault, FaultProxy
from tests.k8s.operator_install import OperatorInstall
from tests.server.server_process import poll_until
from tpserve.testing.metrics_text import scrape_text, value

from .cluster import OperatorCluster
from .specs import service_body

TIMEOUT = 60


def test_errors_and_dropped_watches_are_survived_and_objects_converge(
    control_plane: ControlPlane, namespace: str, operator_install: OperatorInstall, tmp_path: Path
) -> None:
    cluster = OperatorCluster(namespace, operator_install, tmp_path)
    ns = f"/namespaces/{namespace}/"
    with FaultProxy(control_plane.url, control_plane.ca_file) as proxy, ControllerLoop(cluster.kubelet):
        faults = proxy.add(
            Fault(path=ns + r"statefulsets/llama-leader\?", method="PATCH", status=500),
            Fault(path=ns + r"services/llama\?", method="PATCH", status=429, retry_after_s=1),
            Fault(path=ns + r"tpinferenceservices/llama(/status)?$", method="PATCH", status=409),
            Fault(path=ns + r"pods\?.*watch=true", status=410),
            Fault(path=ns + r"tpinferenceservices\?.*watch=true", drop_after_s=3),
            Fault(path=ns + "statefulsets/", method="GET", delay_s=2),
        )
        with cluster.operator(server=proxy.url) as operator:
            cluster.create(service_body("llama", tensorParallelSize=4, nodes=2))
            cluster.kubelet.default_ready = True
            poll_until(lambda: cluster.status("llama").get("readyReplicas") == 1, TIMEOUT, what="ready despite faults")
            assert [f.hits for f in faults] == [1] * len(faults), "every fault was met"
            # The operator's metrics say what went wrong on the way.
            page = scrape_text(operator.metrics_url)
            for code in ("500", "429", "409"):
                assert value(page, "tpserve_operator_api_errors_total", code=code) >= 1, code
            assert value(page, "tpserve_operator_reconcile_errors_total", reason="api_500") >= 1
            assert value(page, "tpserve_operator_reconciliations_total", result="error") >= 1

            assert proxy.drop_watches() >= 2  # the operator's watches of services and pods
            cluster.patch_spec("llama", {"replicas": 2})  # seen only through re-established watches
            poll_until(lambda: cluster.status("llama").get("readyReplicas") == 2, TIMEOUT, what="scaled after drop")

    assert cluster.statefulset_names() == {"llama-leader", "llama-worker-0", "llama-worker-1"}
    assert cluster.service_names() == {"llama", "llama-headless"}
    names = [p["metadata"]["name"] for p in cluster.pods()]
    assert sorted(names) == ["llama-leader-0", "llama-leader-1", "llama-worker-0-1", "llama-worker-1-1"]
    assert not cluster.forbidden_calls()
