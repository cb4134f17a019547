"""Pure group logic: from a service's pods and last status, decide each group's state and actions.

A group is one leader pod (ordinal G of `NAME-leader`) plus the pods of `NAME-worker-G`. It is
Ready only when every one of its pods is Ready; then, and only then, the leader's readiness gate
is True. When a pod of a formed group restarts or vanishes, the whole group is recreated (NCCL
cannot re-admit a rank), with exponential backoff, until `maxGroupRestarts` is spent.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from .objects import LABEL_GROUP, LABEL_ROLE, LABEL_SPEC_HASH, POD_INDEX_LABEL
from .spec import ServiceSpec

Obj = dict[str, Any]

BACKOFF_CAP_S = 300.0


@dataclass(frozen=True)
class GroupPods:
    index: int
    leader: Obj | None = None
    workers: tuple[Obj, ...] = ()

    @property
    def pods(self) -> list[Obj]:
        return ([self.leader] if self.leader else []) + list(self.workers)


@dataclass(frozen=True)
class GroupDecision:
    index: int
    phase: str  # Pending | Starting | Ready | Restarting | Failed
    ready_ranks: int
    total_ranks: int
    restarts: int
    gate: bool  # the leader pod's tpserve.io/group-ready condition
    leader_pod: str | None
    delete_pods: list[str] = field(default_factory=list)
    pod_uids: list[str] = field(default_factory=list)
    spec_hash: str = ""
    last_restart_time: str | None = None
    failed_generation: int | None = None
    message: str = ""
    event: tuple[str, str, str] | None = None  # (type Normal|Warning, reason, message)
    rolling: bool = False

    def status_entry(self) -> Obj:
        entry: Obj = {
            "index": self.index,
            "phase": self.phase,
            "readyRanks": self.ready_ranks,
            "totalRanks": self.total_ranks,
            "restarts": self.restarts,
            "leaderPod": self.leader_pod or "",
            "podUIDs": self.pod_uids,
            "specHash": self.spec_hash,
            "message": self.message,
        }
        if self.last_restart_time:
            entry["lastRestartTime"] = self.last_restart_time
        if self.failed_generation is not None:
            entry["failedGeneration"] = self.failed_generation
        return entry


def pod_group(pod: Obj) -> int | None:
    labels = pod.get("metadata", {}).get("labels", {}) or {}
    if labels.get(LABEL_ROLE) == "worker":
        value = labels.get(LABEL_GROUP)
    else:
        value = labels.get(POD_INDEX_LABEL) or pod["metadata"]["name"].rsplit("-", 1)[-1]
    return int(value) if value is not None and str(value).isdigit() else None


def split_groups(pods: list[Obj], replicas: int) -> dict[int, GroupPods]:
    leaders: dict[int, Obj] = {}
    workers: dict[int, list[Obj]] = {}
    for pod in pods:
        group = pod_group(pod)
        if group is None:
            continue
        if pod["metadata"].get("labels", {}).get(LABEL_ROLE) == "leader":
            leaders[group] = pod
        else:
            workers.setdefault(group, []).append(pod)
    return {
        g: GroupPods(g, leaders.get(g), tuple(sorted(workers.get(g, []), key=lambda p: p["metadata"]["name"])))
        for g in range(replicas)
    }


def _condition(pod: Obj, kind: str) -> bool:
    for cond in pod.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind:
            return bool(cond.get("status") == "True")
    return False


def pod_serving_ready(pod: Obj, is_leader: bool) -> bool:
    # The leader's Ready includes the gate we are computing: judge its containers instead.
    return _condition(pod, "ContainersReady" if is_leader else "Ready")


def restart_count(pod: Obj) -> int:
    return sum(int(s.get("restartCount", 0)) for s in pod.get("status", {}).get("containerStatuses", []) or [])


def _alive(pod: Obj) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and pod.get("status", {}).get("phase") not in (
        "Failed",
        "Succeeded",
    )


def backoff_seconds(restarts: int, base_s: float) -> float:
    return min(BACKOFF_CAP_S, base_s * 2.0 ** max(0, restarts - 1))


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def decide_group(
    spec: ServiceSpec,
    group: GroupPods,
    previous: Obj,
    generation: int,
    now: datetime.datetime,
    may_roll: bool,
    backoff_base_s: float,
) -> GroupDecision:
    pods = group.pods
    present = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    present_uids = {p["metadata"].get("uid", "") for p in present}
    ranks_per_pod = spec.gpus_per_pod
    ready = [p for p in present if pod_serving_ready(p, p is group.leader) and _alive(p)]
    complete = group.leader is not None and len(present) == spec.nodes
    restarts = int(previous.get("restarts", 0))
    last_restart = previous.get("lastRestartTime")
    formed = list(previous.get("podUIDs") or [])
    base: dict[str, Any] = dict(
        index=group.index,
        total_ranks=spec.tensor_parallel_size,
        ready_ranks=len(ready) * ranks_per_pod,
        restarts=restarts,
        leader_pod=group.leader["metadata"]["name"] if group.leader else None,
        spec_hash=spec.spec_hash,
        last_restart_time=last_restart,
    )
    # A group that spent its restart budget stays Failed until the spec changes.
    failed_generation = previous.get("failedGeneration")
    if previous.get("phase") == "Failed" and failed_generation == generation:
        return GroupDecision(
            phase="Failed",
            gate=False,
            pod_uids=formed,
            failed_generation=failed_generation,
            message=previous.get("message", "restart budget exhausted"),
            **base,
        )

    old_pods = [p for p in present if p["metadata"].get("labels", {}).get(LABEL_SPEC_HASH) != spec.spec_hash]
    if old_pods:
        if not may_roll:
            return GroupDecision(
                phase="Ready" if complete and len(ready) == spec.nodes else "Starting",
                gate=complete and len(ready) == spec.nodes,
                pod_uids=formed,
                message="waiting to roll to the new spec",
                **base,
            )
        names = [p["metadata"]["name"] for p in present]
        return GroupDecision(
            phase="Restarting",
            gate=False,
            delete_pods=names,
            pod_uids=[],
            rolling=True,
            message="rolling to the new spec",
            event=(
                "Normal",
                "RollingGroup",
                f"group {group.index}: replacing pods {', '.join(names)} with the new spec",
            ),
            **base,
        )

    reason = None
    if spec.restart_policy == "RecreateGroup":
        restarted = [p for p in present if restart_count(p) > 0]
        lost = [uid for uid in formed if uid not in present_uids]
        if restarted:
            reason = f"pod {restarted[0]['metadata']['name']} restarted"
        elif lost and (present_uids & set(formed) or len(present) < spec.nodes):
            reason = f"{len(lost)} pod(s) of the formed group vanished"
    if reason is not None:
        if restarts >= spec.max_group_restarts:
            message = f"{reason}; restart budget of {spec.max_group_restarts} exhausted"
            return GroupDecision(
                phase="Failed",
                gate=False,
                pod_uids=formed,
                failed_generation=generation,
                message=message,
                event=("Warning", "GroupFailed", f"group {group.index}: {message}"),
                **base,
            )
        last = _parse_time(last_restart)
        wait = backoff_seconds(restarts + 1, backoff_base_s)
        if last is not None and (now - last).total_seconds() < wait:
            return GroupDecision(
                phase="Restarting",
                gate=False,
                pod_uids=formed,
                message=f"{reason}; recreating after backoff ({wait:.0f}s)",
                **base,
            )
        names = [p["metadata"]["name"] for p in present]
        base.update(restarts=restarts + 1, last_restart_time=now.isoformat().replace("+00:00", "Z"))
        return GroupDecision(
            phase="Restarting",
            gate=False,
            delete_pods=names,
            pod_uids=[],
            message=f"{reason}; group recreated",
            event=(
                "Warning",
                "GroupRestart",
                f"group {group.index}: {reason}; deleting {', '.join(names)} (restart {restarts + 1}/{spec.max_group_restarts})",
            ),
            **base,
        )

    if (complete and not formed) or (complete and not (present_uids & set(formed))):
        formed = sorted(present_uids)  # the group (re-)formed with these pods
    if not present:
        return GroupDecision(phase="Pending", gate=False, pod_uids=formed, message="waiting for pods", **base)
    all_ready = complete and len(ready) == spec.nodes
    if all_ready:
        return GroupDecision(phase="Ready", gate=True, pod_uids=formed, message="all ranks ready", **base)
    waiting = [p["metadata"]["name"] for p in present if p not in ready]
    missing = spec.nodes - len(present)
    detail = ", ".join(waiting) + (f"; {missing} pod(s) not created yet" if missing else "")
    return GroupDecision(phase="Starting", gate=False, pod_uids=formed, message=f"waiting for {detail}", **base)
