"""The chart's operator on a real API server: objects, readiness gate, restarts, scaling, rolling.

Every test runs the operator with the chart's ServiceAccount token and fails if the API server
refused it any call: the chart's RBAC is checked against everything these tests make it do.
"""

from __future__ import annotations

from pathlib import Path

from tests.k8s.api import ControllerLoop
from tests.k8s.control_plane import ControlPlane
from tests.k8s.operator_install import helm, install
from tests.server.server_process import poll_until

from .cluster import TIMEOUT, OperatorCluster, bring_up, group_pods, make_ready, pod_ready, small, uids, wait_replaced


def test_create_builds_objects_and_ready_group_opens_the_gate(cluster: OperatorCluster) -> None:
    with cluster.operator():
        cluster.create(small())
        poll_until(
            lambda: {"llama-leader", "llama-worker-0"} <= cluster.statefulset_names(), TIMEOUT, what="statefulsets"
        )
        assert {"llama", "llama-headless"} <= cluster.service_names()
        poll_until(lambda: len(cluster.pods("tpserve.io/service=llama")) == 2, TIMEOUT, what="pods")
        status = poll_until(lambda: (s := cluster.status("llama")).get("phase") == "Starting" and s, TIMEOUT)
        assert status["groups"][0]["readyRanks"] == 0 and status["groups"][0]["totalRanks"] == 4
        poll_until(lambda: cluster.gate("llama-leader-0") == "False", TIMEOUT, what="gate set False")

        make_ready(cluster, "llama-leader-0")  # the worker is not Ready yet: the gate stays shut
        poll_until(lambda: cluster.status("llama")["groups"][0]["readyRanks"] == 2, TIMEOUT, what="half ready")
        assert cluster.gate("llama-leader-0") == "False"

        make_ready(cluster, "llama-worker-0-1")
        poll_until(lambda: cluster.gate("llama-leader-0") == "True", TIMEOUT, what="gate True")
        status = poll_until(lambda: (s := cluster.status("llama")).get("phase") == "Ready" and s, TIMEOUT)
        assert status["readyReplicas"] == 1 and status["endpoint"] == f"http://llama.{cluster.namespace}.svc:30000/v1"
        assert status["observedGeneration"] == 1
        assert {c["type"]: c["status"] for c in status["conditions"]} == {
            "Ready": "True",
            "Progressing": "False",
            "Degraded": "False",
        }
        # The kubelet folds the gate into the leader's Ready: only now would the Service route to it.
        poll_until(lambda: pod_ready(cluster, "llama-leader-0"), TIMEOUT, what="leader pod Ready")

        make_ready(cluster, "llama-worker-0-1", ready=False)  # a worker drops out: gate shuts at once
        poll_until(lambda: cluster.gate("llama-leader-0") == "False", TIMEOUT, what="gate False")
        assert poll_until(lambda: cluster.status("llama")["phase"] == "Starting", TIMEOUT)


def test_worker_restart_recreates_the_whole_group(cluster: OperatorCluster) -> None:
    with cluster.operator():
        cluster.create(small())
        bring_up(cluster, "llama")
        members = group_pods(cluster, "llama", 0)
        before = uids(cluster, members)
        cluster.kubelet.restarts["llama-worker-0-1"] = 1  # the worker's container restarted
        poll_until(lambda: cluster.status("llama")["groups"][0]["restarts"] == 1, TIMEOUT, what="restart counted")
        cluster.kubelet.restarts.clear()
        wait_replaced(cluster, members, before, "leader and worker both replaced")
        poll_until(lambda: cluster.status("llama")["phase"] == "Ready", TIMEOUT, what="ready again")
        cluster.wait_events("GroupRestart")  # the decision is an Event


def test_vanished_worker_pod_recreates_the_group(cluster: OperatorCluster) -> None:
    with cluster.operator():
        cluster.create(small())
        bring_up(cluster, "llama")
        poll_until(lambda: len(cluster.status("llama")["groups"][0]["podUIDs"]) == 2, TIMEOUT)
        leader_uid = uids(cluster, ["llama-leader-0"])["llama-leader-0"]
        cluster.delete_pod("llama-worker-0-1")  # e.g. its node was drained
        poll_until(lambda: cluster.status("llama")["groups"][0]["restarts"] == 1, TIMEOUT, what="restart counted")
        poll_until(
            lambda: uids(cluster, ["llama-leader-0"]).get("llama-leader-0") not in (None, leader_uid),
            TIMEOUT,
            what="leader replaced",
        )


def test_exhausted_restart_budget_fails_until_the_spec_changes(cluster: OperatorCluster) -> None:
    with cluster.operator():
        cluster.create(small(maxGroupRestarts=1))
        bring_up(cluster, "llama")
        cluster.kubelet.restarts["llama-worker-0-1"] = 1
        poll_until(lambda: cluster.status("llama")["groups"][0]["restarts"] == 1, TIMEOUT)
        # The recreated worker crashes again: the budget of one restart is spent.
        poll_until(
            lambda: cluster.status("llama")["groups"][0]["restarts"] == 1 and uids(cluster, ["llama-worker-0-1"]),
            TIMEOUT,
        )
        cluster.kubelet.restarts["llama-worker-0-1"] = 3
        status = poll_until(lambda: (s := cluster.status("llama"))["phase"] == "Failed" and s, TIMEOUT, what="Failed")
        assert "restart budget of 1 exhausted" in status["groups"][0]["message"]
        assert {c["type"]: c["status"] for c in status["conditions"]}["Degraded"] == "True"
        cluster.wait_events("GroupFailed")
        assert cluster.gate("llama-leader-0") == "False"
        # Failed is sticky: nothing is recreated while the spec stays the same.
        assert cluster.status("llama")["groups"][0]["restarts"] == 1
        cluster.kubelet.restarts.clear()
        cluster.patch_spec("llama", {"engine": {"maxPrefillLength": 2048}})
        poll_until(lambda: cluster.status("llama")["phase"] == "Ready", TIMEOUT, what="recovered after spec change")


def test_scale_groups_up_and_down(cluster: OperatorCluster) -> None:
    with cluster.operator():
        cluster.create(small())
        bring_up(cluster, "llama")
        cluster.patch_spec("llama", {"replicas": 3})
        status = poll_until(
            lambda: (s := cluster.status("llama")).get("readyReplicas") == 3 and s, TIMEOUT, what="3 groups"
        )
        assert [g["leaderPod"] for g in status["groups"]] == ["llama-leader-0", "llama-leader-1", "llama-leader-2"]
        assert {"llama-worker-0", "llama-worker-1", "llama-worker-2"} <= cluster.statefulset_names()
        assert status["readyText"] == "3/3"
        cluster.patch_spec("llama", {"replicas": 1})
        poll_until(
            lambda: not {"llama-worker-1", "llama-worker-2"} & cluster.statefulset_names(),
            TIMEOUT,
            what="workers removed",
        )
        poll_until(lambda: len(cluster.pods("tpserve.io/service=llama")) == 2, TIMEOUT, what="pods removed")
        # The status follows the objects on the next reconcile: wait for it rather than race it.
        poll_until(lambda: cluster.status("llama")["replicas"] == 1, TIMEOUT, what="status says 1 replica")


def test_spec_change_rolls_group_by_group(cluster: OperatorCluster) -> None:
    def hashes(group: int) -> set[str]:
        members = group_pods(cluster, "llama", group)
        return {
            p["metadata"]["labels"]["tpserve.io/spec-hash"] for p in cluster.pods() if p["metadata"]["name"] in members
        }

    with cluster.operator():
        cluster.create(small(replicas=2))
        bring_up(cluster, "llama", groups=2)
        old_hash = cluster.status("llama")["specHash"]
        # From now on only group 1's pods report ready: group 0's replacements will hang unready.
        cluster.kubelet.default_ready = False
        make_ready(cluster, *group_pods(cluster, "llama", 1))
        cluster.patch_spec("llama", {"engine": {"maxPrefillLength": 1024}})
        new_hash = poll_until(
            lambda: (h := cluster.status("llama")["specHash"]) != old_hash and h, TIMEOUT, what="new spec seen"
        )
        poll_until(lambda: hashes(0) == {new_hash}, TIMEOUT, what="group 0 replaced")
        poll_until(lambda: cluster.status("llama")["groups"][0]["phase"] == "Starting", TIMEOUT)
        assert hashes(1) == {old_hash}, "group 1 keeps serving while group 0 is not ready"
        assert cluster.status("llama")["groups"][1]["phase"] == "Ready"

        cluster.kubelet.containers_ready.clear()
        cluster.kubelet.default_ready = True
        poll_until(lambda: hashes(1) == {new_hash}, TIMEOUT, what="group 1 rolled after group 0 is ready")
        poll_until(lambda: cluster.status("llama")["phase"] == "Ready", TIMEOUT)
        args = cluster.pod("llama-leader-1")["spec"]["containers"][0]["args"]
        assert args[args.index("--max-prefill-length") + 1] == "1024"
        cluster.wait_events("RollingGroup", count=2)
        assert all(g["restarts"] == 0 for g in cluster.status("llama")["groups"]), "a roll is not a restart"


def test_delete_leaves_nothing_behind(cluster: OperatorCluster) -> None:
    with cluster.operator():
        cluster.create(small(replicas=2))
        bring_up(cluster, "llama", groups=2)
        assert not cluster.service("llama")["metadata"].get("finalizers"), "deletion must not wait for the operator"
        cluster.delete("llama")
        try:
            # The garbage collector learns a CRD created after it started on its next discovery
            # resync (every 30 s): the first deletion right after `helm install` may wait for it.
            poll_until(
                lambda: not cluster.statefulset_names() and not cluster.service_names() and not cluster.pods(),
                TIMEOUT + 30,
            )
        except TimeoutError:
            left = [cluster.statefulset_names(), cluster.service_names(), [p["metadata"] for p in cluster.pods()]]
            raise AssertionError(f"left behind: {left}") from None


def test_invalid_spec_gets_a_condition_and_others_keep_reconciling(cluster: OperatorCluster) -> None:
    with cluster.operator():
        cluster.create(small("broken", engine={"extraArgs": ["--tp", "2"]}))
        cluster.create(small("healthy"))
        status = poll_until(
            lambda: (s := cluster.status("broken")).get("phase") == "Failed" and s, TIMEOUT, what="broken Failed"
        )
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "InvalidSpec" and "spec.engine.extraArgs" in ready["message"]
        cluster.wait_events("InvalidSpec", containing="spec.engine.extraArgs")
        bring_up(cluster, "healthy")
        assert not any(name.startswith("broken") for name in cluster.statefulset_names())
        cluster.patch_spec("broken", {"engine": {"extraArgs": []}})
        poll_until(lambda: "broken-leader" in cluster.statefulset_names(), TIMEOUT, what="fixed spec reconciled")


def test_operator_restart_converges(cluster: OperatorCluster) -> None:
    with cluster.operator():
        cluster.create(small(replicas=2))
        poll_until(lambda: "llama-worker-1" in cluster.statefulset_names(), TIMEOUT)
    # The operator stopped mid-way: groups exist but nothing has been judged Ready yet.
    cluster.kubelet.default_ready = True
    poll_until(lambda: len(cluster.pods()) == 4, TIMEOUT, what="all pods created")
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods()}
    with cluster.operator():
        poll_until(lambda: cluster.status("llama").get("readyReplicas") == 2, TIMEOUT, what="converged")
        assert cluster.gate("llama-leader-0") == "True" and cluster.gate("llama-leader-1") == "True"
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods()}
    assert after == before, "a restarted operator does not recreate healthy groups"
    assert cluster.statefulset_names() == {"llama-leader", "llama-worker-0", "llama-worker-1"}


def test_a_namespaced_install_is_enough_for_its_namespace(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """`watchNamespaces` set: Roles in the watched namespace, only discovery cluster-wide."""
    release = f"tpserve-{namespace}"
    scoped = install(control_plane, release, f"{namespace}-operator", watchNamespaces=[namespace])
    try:
        roles = control_plane.kubectl("get", "roles", "-n", namespace, "-o", "name").stdout.split()
        assert roles == [f"role.rbac.authorization.k8s.io/{release}"]
        cluster = OperatorCluster(namespace, scoped, tmp_path)
        with ControllerLoop(cluster.kubelet), cluster.operator():
            cluster.create(small(replicas=2))
            bring_up(cluster, "llama", groups=2)
            cluster.patch_spec("llama", {"replicas": 1})
            poll_until(lambda: cluster.status("llama")["replicas"] == 1, TIMEOUT, what="scaled down")
            cluster.delete("llama")
            poll_until(lambda: not cluster.statefulset_names(), TIMEOUT + 30, what="all gone")  # GC resync
        assert not cluster.forbidden_calls(), "\n".join(cluster.forbidden_calls()[:5])
    finally:
        helm(control_plane, "uninstall", release, "-n", f"{namespace}-operator")
