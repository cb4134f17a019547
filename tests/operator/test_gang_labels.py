"""Gang-scheduler labels on a real API server: every pod of a group names its group when created.

The leader pods come from one shared StatefulSet template; the chart's MutatingAdmissionPolicy
(installed by helm with the operator) labels them at creation, which is when Kueue and the
coscheduling plugin read them.
"""

from __future__ import annotations

from tests.server.server_process import poll_until

from .cluster import TIMEOUT, OperatorCluster, small

POD_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"


def group_labels(cluster: OperatorCluster) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """pod name -> (labels, annotations), of the pods that exist."""
    return {
        p["metadata"]["name"]: (p["metadata"].get("labels") or {}, p["metadata"].get("annotations") or {})
        for p in cluster.pods()
    }


def assert_group_named(labels: dict[str, str], annotations: dict[str, str], group: int) -> None:
    name = f"llama-group-{group}"
    assert labels["tpserve.io/pod-group"] == name
    assert labels["kueue.x-k8s.io/pod-group-name"] == name
    assert labels[POD_GROUP_LABEL] == name
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
    assert annotations["kueue.x-k8s.io/pod-group-total-count"] == "2"
    assert labels["tpserve.io/group"] == str(group)


def test_every_pod_of_a_group_carries_its_gang_labels(cluster: OperatorCluster) -> None:
    gang = {"kueueQueueName": "team-a", "podGroupLabel": POD_GROUP_LABEL}
    with cluster.operator():
        cluster.create(small(replicas=2, gangScheduling=gang))
        pods = poll_until(lambda: len(found := group_labels(cluster)) == 4 and found, TIMEOUT, what="4 pods")
        for group in (0, 1):
            for pod in (f"llama-leader-{group}", f"llama-worker-{group}-1"):
                assert_group_named(*pods[pod], group)

        cluster.patch_spec("llama", {"replicas": 3})
        new = poll_until(lambda: group_labels(cluster).get("llama-leader-2"), TIMEOUT, what="third leader")
        assert_group_named(*new, 2)


def test_without_gang_scheduling_pods_still_name_their_group(cluster: OperatorCluster) -> None:
    with cluster.operator():
        cluster.create(small())
        pods = poll_until(lambda: len(found := group_labels(cluster)) == 2 and found, TIMEOUT, what="2 pods")
        for labels, annotations in pods.values():
            assert labels["tpserve.io/pod-group"] == "llama-group-0"
            assert not any(key.startswith("kueue.x-k8s.io/") for key in labels | annotations)
