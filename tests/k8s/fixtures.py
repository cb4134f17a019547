"""pytest fixtures over the real control plane: the cluster, a namespace per test, the chart installed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client
from kubernetes import config as kube_config

from .api import raw
from .control_plane import ControlPlane, start_control_plane
from .operator_install import OperatorInstall, install

OPERATOR_NAMESPACE = "tpserve-system"


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """A real etcd + kube-apiserver + kube-controller-manager for the whole run (tests/k8s/control_plane.py)."""
    plane = start_control_plane()
    kube_config.load_kube_config(str(plane.kubeconfig))  # the suite's own client calls act as the admin
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture()
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace for one test, once its default ServiceAccount exists (pods need it)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    core = client.CoreV1Api()
    control_plane.wait_for(
        lambda: any(
            a["metadata"]["name"] == "default" for a in raw(core.list_namespaced_service_account, name)["items"]
        ),
        f"the default ServiceAccount of {name}",
    )
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="session")
def operator_install(control_plane: ControlPlane) -> OperatorInstall:
    """The chart, installed once with `helm install` (CRD, cluster-wide RBAC, ServiceAccount)."""
    return install(control_plane, "tpserve", OPERATOR_NAMESPACE)
