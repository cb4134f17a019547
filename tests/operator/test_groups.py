"""Group decisions on a real API server: what restarts a group, what does not, and what is reported."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from tests.k8s.control_plane import ControlPlane
from tests.k8s.fault_proxy import Fault, FaultProxy
from tests.server.server_process import poll_until

from .cluster import TIMEOUT, OperatorCluster, bring_up, group_pods, make_ready, small, uids, wait_replaced

NO_GPU = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."


def condition(cluster: OperatorCluster, name: str, kind: str) -> dict[str, Any]:
    return next((c for c in cluster.status(name).get("conditions") or [] if c["type"] == kind), {})


def holds(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """predicate() stays true for `seconds` (several reconcile periods of the test operator)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), f"{what} stopped holding"
        time.sleep(0.2)


def test_an_unschedulable_group_is_reported_and_never_restarted(cluster: OperatorCluster) -> None:
    cluster.kubelet.unschedulable["llama-worker-0-1"] = NO_GPU
    cluster.kubelet.default_ready = True
    with cluster.operator():
        cluster.create(small())
        degraded = poll_until(
            lambda: (c := condition(cluster, "llama", "Degraded")).get("reason") == "Unschedulable" and c,
            TIMEOUT,
            what="Degraded/Unschedulable",
        )
        assert degraded["status"] == "True" and "pod llama-worker-0-1: " + NO_GPU in degraded["message"]
        members = group_pods(cluster, "llama", 0)
        before = uids(cluster, members)
        holds(
            lambda: cluster.status("llama")["groups"][0]["restarts"] == 0 and uids(cluster, members) == before,
            3,
            "no restart of the unschedulable group",
        )
        assert cluster.status("llama")["groups"][0]["phase"] == "Pending"
        assert not cluster.events("GroupRestart")

        del cluster.kubelet.unschedulable["llama-worker-0-1"]  # a GPU node joined
        poll_until(lambda: cluster.status("llama").get("phase") == "Ready", TIMEOUT, what="Ready once placed")
        assert condition(cluster, "llama", "Degraded")["status"] == "False"


def test_the_restart_budget_comes_back_after_a_stable_period(cluster: OperatorCluster) -> None:
    def crash_worker() -> None:
        cluster.kubelet.restarts["llama-worker-0-1"] = 1
        poll_until(lambda: cluster.status("llama")["groups"][0]["restarts"] == 1, TIMEOUT, what="restart counted")
        cluster.kubelet.restarts.clear()
        poll_until(lambda: cluster.status("llama")["phase"] == "Ready", TIMEOUT, what="ready after the restart")

    with cluster.operator():
        cluster.create(small(maxGroupRestarts=1, restartBudgetResetSeconds=2))
        bring_up(cluster, "llama")
        crash_worker()
        # Two seconds of serving later the one restart allowed is available again...
        poll_until(lambda: cluster.status("llama")["groups"][0]["restarts"] == 0, TIMEOUT, what="budget reset")
        assert "lastRestartTime" not in cluster.status("llama")["groups"][0]
        # ...so the next crash is repaired instead of failing the group.
        crash_worker()
        assert not cluster.events("GroupFailed")


def test_a_restart_is_recorded_before_its_pods_are_deleted_and_counted_once(
    cluster: OperatorCluster, control_plane: ControlPlane
) -> None:
    members = group_pods(cluster, "llama", 0)
    with FaultProxy(control_plane.url, control_plane.ca_file) as proxy:
        [refused] = proxy.add(
            Fault(path=f"/namespaces/{cluster.namespace}/pods/llama-", method="DELETE", status=500, times=10**6)
        )
        with cluster.operator(server=proxy.url):
            cluster.create(small())
            bring_up(cluster, "llama")
            before = uids(cluster, members)
            cluster.kubelet.restarts["llama-worker-0-1"] = 1
            # Every delete fails, yet the restart is in status: it was written first. (The worker
            # goes all the same: its StatefulSet is held at none until the old leader is gone.)
            poll_until(lambda: cluster.status("llama")["groups"][0]["restarts"] == 1, TIMEOUT, what="recorded")
            poll_until(lambda: refused.hits >= 4, TIMEOUT, what="the deletes retried")
            assert uids(cluster, members) == {"llama-leader-0": before["llama-leader-0"]}
            assert cluster.statefulset_replicas("llama-worker-0") == 0
            assert cluster.status("llama")["groups"][0]["restarts"] == 1, "retried deletes are not new restarts"

            refused.times = refused.hits  # the API server takes deletes again
            cluster.kubelet.restarts.clear()
            wait_replaced(cluster, members, before, "group recreated")
            poll_until(lambda: cluster.status("llama")["phase"] == "Ready", TIMEOUT, what="ready again")
            assert cluster.status("llama")["groups"][0]["restarts"] == 1
            assert len(cluster.events("GroupRestart")) == 1


def test_a_recreated_group_starts_no_worker_while_its_old_leader_drains(cluster: OperatorCluster) -> None:
    """A new worker must rendezvous with the new leader only: the old one, still draining under its
    preStop hook, would take it into a dying group, and its failure would restart the group again."""
    members = group_pods(cluster, "llama", 0)
    with cluster.operator():
        cluster.create(small())
        bring_up(cluster, "llama")
        before = uids(cluster, members)
        cluster.kubelet.draining.add("llama-leader-0")
        cluster.kubelet.restarts["llama-worker-0-1"] = 1
        poll_until(lambda: cluster.status("llama")["groups"][0]["restarts"] == 1, TIMEOUT, what="restart counted")
        cluster.kubelet.restarts.clear()
        poll_until(
            lambda: cluster.pod("llama-leader-0")["metadata"].get("deletionTimestamp"), TIMEOUT, what="leader deleted"
        )
        poll_until(lambda: not uids(cluster, ["llama-worker-0-1"]), TIMEOUT, what="the old worker gone")

        def held() -> bool:
            return (
                not uids(cluster, members)
                and cluster.statefulset_replicas("llama-worker-0") == 0
                and cluster.status("llama")["groups"][0]["phase"] == "Restarting"
            )

        holds(held, 3, "no new pod while the old leader drains")
        message = cluster.status("llama")["groups"][0]["message"]
        assert message.startswith("pod llama-worker-0-1 restarted") and message.endswith("gone: llama-leader-0")

        cluster.kubelet.draining.clear()  # its preStop hook is done: the old leader goes
        wait_replaced(cluster, members, before, "group recreated")
        poll_until(lambda: cluster.status("llama")["phase"] == "Ready", TIMEOUT, what="ready again")
        assert cluster.statefulset_replicas("llama-worker-0") == 1
        assert cluster.status("llama")["groups"][0]["restarts"] == 1
        assert len(cluster.events("GroupRestart")) == 1


def test_an_object_the_api_server_refuses_is_named_and_others_keep_reconciling(cluster: OperatorCluster) -> None:
    with cluster.operator():
        # Valid for the CRD's schema, refused by the StatefulSet API: requests above limits.
        cluster.create(small("broken", resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}))
        cluster.create(small("healthy"))
        degraded = poll_until(
            lambda: (c := condition(cluster, "broken", "Degraded")).get("reason") == "ApiError" and c,
            TIMEOUT,
            what="Degraded/ApiError",
        )
        assert degraded["status"] == "True"
        assert degraded["message"].startswith("StatefulSet broken-leader: ")
        assert "must be less than or equal to cpu limit" in degraded["message"]
        cluster.wait_events("ApplyFailed", containing="StatefulSet broken-leader")
        bring_up(cluster, "healthy")

        cluster.patch_spec("broken", {"resources": {"requests": {"cpu": "1"}}})
        poll_until(lambda: cluster.status("broken").get("phase") == "Ready", TIMEOUT, what="fixed spec reconciled")
        assert condition(cluster, "broken", "Degraded")["reason"] == "AsExpected"


def test_a_stuck_rollout_reports_its_progress_deadline(cluster: OperatorCluster) -> None:
    with cluster.operator():
        cluster.create(small(progressDeadlineSeconds=2))
        bring_up(cluster, "llama")
        cluster.kubelet.default_ready = False  # the new spec's pods never become ready
        cluster.patch_spec("llama", {"engine": {"maxPrefillLength": 1024}})
        progressing = poll_until(
            lambda: (c := condition(cluster, "llama", "Progressing")).get("reason") == "ProgressDeadlineExceeded" and c,
            TIMEOUT,
            what="Progressing/ProgressDeadlineExceeded",
        )
        assert progressing["status"] == "False" and "group 0" in progressing["message"]
        cluster.wait_events("ProgressDeadlineExceeded")

        cluster.kubelet.default_ready = True  # whatever held it up is fixed: the rollout completes
        poll_until(lambda: cluster.status("llama")["phase"] == "Ready", TIMEOUT, what="rolled")
        assert condition(cluster, "llama", "Progressing")["reason"] == "Stable"
        assert "rollStartTime" not in cluster.status("llama")["groups"][0]


def test_a_change_of_nodes_rolls_the_group(cluster: OperatorCluster) -> None:
    with cluster.operator():
        cluster.create(small())
        bring_up(cluster, "llama")
        old_hash = cluster.status("llama")["specHash"]
        cluster.patch_spec("llama", {"nodes": 1})  # tp 4 on one node of 4 GPUs

        def rolled_onto_one_pod() -> bool:
            # One listing, read once: the old leader-0 may be deleted between a list and a read.
            pods = cluster.pods()
            return [p["metadata"]["name"] for p in pods] == ["llama-leader-0"] and (
                pods[0]["metadata"]["labels"]["tpserve.io/spec-hash"] != old_hash
            )

        poll_until(rolled_onto_one_pod, TIMEOUT, what="one new pod per group")
        assert cluster.statefulset_names() == {"llama-leader"}
        poll_until(lambda: cluster.status("llama")["phase"] == "Ready", TIMEOUT, what="ready on one node")
        args = cluster.pod("llama-leader-0")["spec"]["containers"][0]["args"]
        assert args[args.index("--nnodes") + 1] == "1"


def test_other_groups_are_repaired_while_a_rollout_waits(cluster: OperatorCluster) -> None:
    with cluster.operator():
        cluster.create(small(replicas=2))
        bring_up(cluster, "llama", groups=2)
        cluster.kubelet.default_ready = False
        make_ready(cluster, *group_pods(cluster, "llama", 1))  # only group 1 stays up
        cluster.patch_spec("llama", {"engine": {"maxPrefillLength": 1024}})
        poll_until(
            lambda: (g := cluster.status("llama")["groups"][0])["phase"] == "Starting" and g.get("rollStartTime"),
            TIMEOUT,
            what="group 0 rolled and stuck",
        )
        cluster.kubelet.restarts["llama-worker-1-1"] = 1  # group 1 breaks while the rollout waits on group 0
        poll_until(lambda: cluster.status("llama")["groups"][1]["restarts"] == 1, TIMEOUT, what="group 1 repaired")
        cluster.kubelet.restarts.clear()
        poll_until(lambda: cluster.status("llama")["groups"][1]["phase"] == "Ready", TIMEOUT, what="group 1 back")
        assert cluster.status("llama")["groups"][0]["phase"] == "Starting"


def test_time_based_decisions_fall_due_without_events_or_resync(cluster: OperatorCluster) -> None:
    """With the safety-net resync five minutes away, a deadline is still reported on time."""
    env = cluster.scoped_env() | {"TPSERVE_RECONCILE_INTERVAL_S": "300"}
    with cluster.install.run(cluster.workdir / "operator-slow-resync.log", **env) as process:
        cluster.operators.append(process)
        cluster.create(small(progressDeadlineSeconds=3))
        bring_up(cluster, "llama")
        cluster.kubelet.default_ready = False
        cluster.patch_spec("llama", {"engine": {"maxPrefillLength": 1024}})
        poll_until(
            lambda: condition(cluster, "llama", "Progressing").get("reason") == "ProgressDeadlineExceeded",
            TIMEOUT,
            what="the deadline's own timer",
        )


def test_the_operator_watches_only_its_pods_and_namespaces(
    cluster: OperatorCluster, control_plane: ControlPlane
) -> None:
    with FaultProxy(control_plane.url, control_plane.ca_file) as proxy:
        with cluster.operator(server=proxy.url):
            cluster.create(small())
            bring_up(cluster, "llama")
        pod_reads = [r for r in proxy.requests if r.startswith("GET ") and "/pods" in r.split("?")[0]]
    watches = [r for r in pod_reads if "watch=true" in r]
    assert watches, "the operator watches pods"
    for request in pod_reads:
        assert f"/namespaces/{cluster.namespace}/pods" in request, f"pods read outside its namespace: {request}"
    for request in watches:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.split(" ", 1)[1]).query)
        assert query["labelSelector"] == ["app.kubernetes.io/managed-by=tpserve-operator"], request
