"""Two operator replicas, as the chart runs them with `replicaCount: 2`: one leads, one takes over."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from kubernetes import client

from tests.k8s.operator_install import OperatorInstall
from tests.server.server_process import poll_until

from .cluster import TIMEOUT, OperatorCluster, bring_up, small

LEASE_S = 5


def holder(install: OperatorInstall, lease: str) -> str | None:
    try:
        return client.CoordinationV1Api().read_namespaced_lease(lease, install.namespace).spec.holder_identity
    except client.ApiException:
        return None


def test_one_replica_reconciles_and_the_other_takes_over_when_it_is_killed(
    cluster: OperatorCluster, operator_install: OperatorInstall, tmp_path: Path
) -> None:
    env = cluster.scoped_env() | {"LEASE_DURATION_S": str(LEASE_S), "LEASE_RENEW_S": "1", "LEASE_RETRY_S": "0.5"}
    lease = env["LEASE_NAME"]
    first = operator_install.start(tmp_path / "replica-1.log", **env)
    cluster.operators.append(first)
    poll_until(lambda: holder(operator_install, lease) == first.pod_name, TIMEOUT, what="the first replica leads")
    second = operator_install.start(tmp_path / "replica-2.log", **env)
    cluster.operators.append(second)
    try:
        cluster.create(small())
        bring_up(cluster, "llama")
        assert holder(operator_install, lease) == first.pod_name
        assert "waiting for the lease" in second.log()
        assert "Handler" not in second.log(), "the follower must not reconcile"

        first.stop(signal.SIGKILL)  # no clean shutdown: the lease is not released, it must expire
        killed = time.monotonic()
        poll_until(lambda: holder(operator_install, lease) == second.pod_name, TIMEOUT, what="takeover")
        assert time.monotonic() - killed < LEASE_S + 3, "taken over within the lease time (plus a retry)"
        cluster.patch_spec("llama", {"replicas": 2})  # the new leader reconciles
        bring_up(cluster, "llama", groups=2)
    finally:
        for replica in (first, second):
            replica.stop()
    assert holder(operator_install, lease) in ("", None), "a cleanly stopped leader releases the lease"
