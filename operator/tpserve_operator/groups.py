"""Pure group logic: from a service's pods and last status, decide each group's state and actions.

A group is one leader pod (ordinal G of `NAME-leader`) plus the pods of `NAME-worker-G`. It is
Ready only when every one of its pods is Ready; then, and only then, the leader's readiness gate
is True. When a container of the group that had started fails again, or a pod of a formed group
vanishes, the whole group is recreated (NCCL cannot re-admit a rank), with exponential backoff,
until `maxGroupRestarts` is spent; the count resets after `restartBudgetResetSeconds` of serving.
While the replaced pods of a restart or roll linger, the group's workers are held at none, so the
new pods rendezvous only with each other.
A pod the scheduler cannot place is reported (Unschedulable), never restarted: recreating it
would not find it a node.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from .objects import LABEL_GROUP, LABEL_ROLE, LABEL_SPEC_HASH, POD_INDEX_LABEL
from .spec import ServiceSpec

Obj = dict[str, Any]

BACKOFF_CAP_S = 300.0
WAITING_FOR_OLD_PODS = "; new workers wait until these old pods are gone: "


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
    ready_since: str | None = None
    roll_start_time: str | None = None
    unschedulable: str | None = None  # the scheduler's message for a pod it cannot place
    replacing_pod_uids: list[str] = field(default_factory=list)  # deleted for a restart or roll, maybe still there
    hold_workers: bool = False  # the group's worker StatefulSet at 0 replicas until its old pods are gone

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
        if self.ready_since:
            entry["readySince"] = self.ready_since
        if self.roll_start_time:
            entry["rollStartTime"] = self.roll_start_time
        if self.replacing_pod_uids:
            entry["replacingPodUIDs"] = self.replacing_pod_uids
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


def leader_routed(group: GroupPods) -> bool:
    """The group's leader pod is Ready (gate included): its Service routes to it."""
    return group.leader is not None and _condition(group.leader, "Ready")


def restart_count(pod: Obj) -> int:
    return sum(int(s.get("restartCount", 0)) for s in pod.get("status", {}).get("containerStatuses", []) or [])


def _alive(pod: Obj) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and pod.get("status", {}).get("phase") not in (
        "Failed",
        "Succeeded",
    )


def unschedulable_message(pod: Obj) -> str | None:
    """The scheduler's reason when it cannot place the pod (PodScheduled=False, Unschedulable)."""
    if pod.get("spec", {}).get("nodeName"):
        return None
    for cond in pod.get("status", {}).get("conditions", []) or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return f"pod {pod['metadata']['name']}: {cond.get('message') or 'unschedulable'}"
    return None


def _timestamp(moment: datetime.datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


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
    all_ready = complete and len(ready) == spec.nodes
    restarts = int(previous.get("restarts", 0))
    last_restart = previous.get("lastRestartTime")
    ready_since = previous.get("readySince") if previous.get("phase") == "Ready" else None
    if all_ready and restarts and ready_since:
        served = (now - (_parse_time(ready_since) or now)).total_seconds()
        if served >= spec.restart_budget_reset_s:
            restarts, last_restart = 0, None  # a long healthy run earns the whole budget back
    formed = list(previous.get("podUIDs") or [])
    base: dict[str, Any] = dict(
        index=group.index,
        total_ranks=spec.tensor_parallel_size,
        ready_ranks=len(ready) * ranks_per_pod,
        restarts=restarts,
        leader_pod=group.leader["metadata"]["name"] if group.leader else None,
        spec_hash=spec.spec_hash,
        last_restart_time=last_restart,
        roll_start_time=previous.get("rollStartTime"),
    )
    # A group that spent its restart budget stays Failed until the spec changes; a new spec
    # starts with the whole budget.
    failed_generation = previous.get("failedGeneration")
    if previous.get("phase") == "Failed" and failed_generation != generation:
        restarts, last_restart = 0, None
        base.update(restarts=0, last_restart_time=None)
    if previous.get("phase") == "Failed" and failed_generation == generation:
        return GroupDecision(
            phase="Failed",
            gate=False,
            pod_uids=formed,
            failed_generation=failed_generation,
            message=previous.get("message", "restart budget exhausted"),
            **base,
        )

    # Pods condemned by a restart or roll stay condemned until they are gone: one whose delete
    # failed or has not landed yet is deleted again, and nothing is counted twice. Until the last
    # of them is gone the group's workers are held at none: a new worker must rendezvous with the
    # new leader only, never with an old leader still draining under its preStop hook, whose
    # store would take it in and then vanish under it (and its restart would restart the group).
    replacing = set(previous.get("replacingPodUIDs") or [])
    lingering = [p for p in pods if p["metadata"].get("uid") in replacing]
    if lingering:
        terminating = [p["metadata"]["name"] for p in lingering if p["metadata"].get("deletionTimestamp")]
        reason = (previous.get("message") or "replacing the group's pods").split(WAITING_FOR_OLD_PODS)[0]
        return GroupDecision(
            phase="Restarting",
            gate=False,
            delete_pods=[p["metadata"]["name"] for p in lingering if not p["metadata"].get("deletionTimestamp")],
            replacing_pod_uids=_uids(lingering),
            pod_uids=[],
            message=reason + (WAITING_FOR_OLD_PODS + ", ".join(terminating) if terminating else ""),
            hold_workers=True,
            **base,
        )

    old_pods = [p for p in present if p["metadata"].get("labels", {}).get(LABEL_SPEC_HASH) != spec.spec_hash]
    reason = _restart_reason(spec, present, present_uids, formed)
    # A group whose turn to roll has come is replaced by the roll, whatever state it is in; one
    # still waiting for its turn is repaired if it breaks (which brings it up on the new spec).
    if reason is not None and not (old_pods and may_roll):
        return _restart(
            spec, group, present, reason, restarts, last_restart, generation, now, formed, backoff_base_s, base
        )
    if old_pods:
        if not may_roll:
            return GroupDecision(
                phase="Ready" if all_ready else "Starting",
                gate=all_ready,
                pod_uids=formed,
                ready_since=ready_since if all_ready else None,
                message="waiting to roll to the new spec",
                **base,
            )
        names = [p["metadata"]["name"] for p in present]
        base.update(roll_start_time=_timestamp(now))
        return GroupDecision(
            phase="Restarting",
            gate=False,
            delete_pods=names,
            replacing_pod_uids=_uids(pods),
            pod_uids=[],
            rolling=True,
            hold_workers=True,
            message="rolling to the new spec",
            event=(
                "Normal",
                "RollingGroup",
                f"group {group.index}: replacing pods {', '.join(names)} with the new spec",
            ),
            **base,
        )

    if (complete and not formed) or (complete and not (present_uids & set(formed))):
        formed = sorted(present_uids)  # the group (re-)formed with these pods
    if not present:
        return GroupDecision(phase="Pending", gate=False, pod_uids=formed, message="waiting for pods", **base)
    if all_ready:
        base.update(roll_start_time=None)
        return GroupDecision(
            phase="Ready",
            gate=True,
            pod_uids=formed,
            ready_since=ready_since or _timestamp(now),
            message="all ranks ready",
            **base,
        )
    unschedulable = next((m for p in present if (m := unschedulable_message(p))), None)
    if unschedulable is not None:
        return GroupDecision(
            phase="Pending", gate=False, pod_uids=formed, unschedulable=unschedulable, message=unschedulable, **base
        )
    waiting = [p["metadata"]["name"] for p in present if p not in ready]
    missing = spec.nodes - len(present)
    detail = ", ".join(waiting) + (f"; {missing} pod(s) not created yet" if missing else "")
    return GroupDecision(phase="Starting", gate=False, pod_uids=formed, message=f"waiting for {detail}", **base)


def _uids(pods: list[Obj]) -> list[str]:
    """The pods' UIDs, terminating ones included: a pod is condemned until it is gone."""
    return sorted(p["metadata"].get("uid", "") for p in pods)


def _restart_reason(spec: ServiceSpec, present: list[Obj], present_uids: set[str], formed: list[str]) -> str | None:
    """Why the group must be recreated: a container that had started failed again, or a pod of the
    formed group is gone. A pod that never started (Pending, unschedulable, pulling) is no reason."""
    if spec.restart_policy != "RecreateGroup":
        return None
    restarted = [p for p in present if restart_count(p) > 0]
    if restarted:
        return f"pod {restarted[0]['metadata']['name']} restarted"
    lost = [uid for uid in formed if uid not in present_uids]
    if lost and (present_uids & set(formed) or len(present) < spec.nodes):
        return f"{len(lost)} pod(s) of the formed group vanished"
    return None


def _restart(
    spec: ServiceSpec,
    group: GroupPods,
    present: list[Obj],
    reason: str,
    restarts: int,
    last_restart: str | None,
    generation: int,
    now: datetime.datetime,
    formed: list[str],
    backoff_base_s: float,
    base: dict[str, Any],
) -> GroupDecision:
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
    base.update(restarts=restarts + 1, last_restart_time=_timestamp(now))
    return GroupDecision(
        phase="Restarting",
        gate=False,
        delete_pods=names,
        replacing_pod_uids=_uids(group.pods),
        pod_uids=[],
        hold_workers=True,
        message=f"{reason}; group recreated",
        event=(
            "Warning",
            "GroupRestart",
            f"group {group.index}: {reason}; deleting {', '.join(names)} (restart {restarts + 1}/{spec.max_group_restarts})",
        ),
        **base,
    )
