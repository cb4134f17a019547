"""The operator SIGKILLed at random points of create, scale, roll and group restart, ten times in a row.

Each round starts an action, kills the operator after a random delay (before, during or after its
writes), starts a fresh one, and requires the cluster to converge to exactly the objects the spec
asks for: no orphans, no duplicates, every pod on the current spec, every group Ready.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from typing import Any

from tests.server.server_process import poll_until

from .cluster import OperatorCluster, small

ROUNDS = 10
CONVERGE_S = 60
SEED = 20261202  # fixed, so a failure can be replayed; the round's action and delay are in the message


def expected_pods(replicas: int) -> list[str]:
    return sorted([f"llama-leader-{g}" for g in range(replicas)] + [f"llama-worker-{g}-1" for g in range(replicas)])


def mismatch(cluster: OperatorCluster, replicas: int) -> str | None:
    """What still differs from the converged state (None once there is nothing)."""
    service = cluster.service("llama")
    status, uid = service.get("status") or {}, service["metadata"]["uid"]
    if status.get("observedGeneration") != service["metadata"]["generation"]:
        return "status describes an older spec"
    if status.get("phase") != "Ready" or status.get("readyReplicas") != replicas:
        return f"phase {status.get('phase')}, {status.get('readyReplicas')}/{replicas} ready"
    pods = cluster.pods()
    names = sorted(p["metadata"]["name"] for p in pods)
    if names != expected_pods(replicas) or any(p["metadata"].get("deletionTimestamp") for p in pods):
        return f"pods {names}"
    stale = [
        p["metadata"]["name"] for p in pods if p["metadata"]["labels"].get("tpserve.io/spec-hash") != status["specHash"]
    ]
    if stale:
        return f"pods on an old spec: {stale}"
    wanted = {"llama-leader", *(f"llama-worker-{g}" for g in range(replicas))}
    if cluster.statefulset_names() != wanted or cluster.service_names() != {"llama", "llama-headless"}:
        return f"objects {cluster.statefulset_names()} {cluster.service_names()}"
    owned = cluster.owned_by(uid)
    if len(owned) != len(wanted) + 2:
        return f"objects not owned by the service: {owned}"
    return None


def test_killed_operators_converge_to_the_same_objects(cluster: OperatorCluster) -> None:
    rng = random.Random(SEED)
    state: dict[str, Any] = {"replicas": 1, "prefill": 4096}
    cluster.kubelet.default_ready = True

    def create() -> None:
        cluster.create(small(replicas=1, maxGroupRestarts=1000))

    def scale() -> None:
        state["replicas"] = rng.choice([r for r in (1, 2, 3) if r != state["replicas"]])
        cluster.patch_spec("llama", {"replicas": state["replicas"]})

    def roll() -> None:
        state["prefill"] = rng.choice([p for p in (1024, 2048, 4096) if p != state["prefill"]])
        cluster.patch_spec("llama", {"engine": {"maxPrefillLength": state["prefill"]}})

    def restart() -> None:
        cluster.delete_pod(f"llama-worker-{rng.randrange(state['replicas'])}-1")  # a rank's pod is lost

    actions: list[Callable[[], None]] = [create] + [rng.choice([scale, roll, restart]) for _ in range(ROUNDS - 1)]
    operator = cluster.install.start(cluster.workdir / "chaos-0.log", **cluster.scoped_env())
    cluster.operators.append(operator)
    try:
        for round_, action in enumerate(actions, start=1):
            delay = rng.uniform(0.0, 2.5)
            action()
            time.sleep(delay)  # the operator is somewhere in whatever the action started
            operator.stop(signal.SIGKILL)
            operator = cluster.install.start(cluster.workdir / f"chaos-{round_}.log", **cluster.scoped_env())
            cluster.operators.append(operator)
            try:
                poll_until(lambda: mismatch(cluster, state["replicas"]) is None, CONVERGE_S, interval_s=0.3)
            except TimeoutError:
                detail = mismatch(cluster, state["replicas"])
                raise AssertionError(
                    f"round {round_} ({action.__name__}, killed after {delay:.2f}s): {detail}"
                ) from None
    finally:
        operator.stop()
