"""One level-triggered reconciliation of a TPInferenceService: fetch, diff, apply, report.

Everything the operator knows lives in the cluster (objects, pods, the resource's status), so a
restarted operator converges to the same objects and decisions.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from .groups import GroupDecision, backoff_seconds, decide_group, leader_routed, split_groups
from .kube import Kube
from .objects import (
    GROUP_READY_GATE,
    LABEL_GROUP,
    LABEL_ROLE,
    LABEL_SERVICE,
    desired_objects,
    disruption_budget_name,
    endpoint,
    group_disruption_budget,
    with_template_hash,
    worker_statefulset,
)
from .spec import ServiceSpec, SpecError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
EventSink = Callable[[str, str, str], None]  # (type, reason, message)
DEADLINE = "ProgressDeadlineExceeded"


@dataclass(frozen=True)
class ReconcileSettings:
    backoff_base_s: float = 10.0


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _timestamp(moment: datetime.datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


async def reconcile(kube: Kube, body: Obj, emit: EventSink, settings: ReconcileSettings) -> float | None:
    """Bring the service's objects to its spec and report; returns in how many seconds a pending
    decision (a restart backoff, the restart budget's reset, a progress deadline) falls due, if any."""
    meta = body["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta.get("uid", "")
    generation = int(meta.get("generation", 1))
    previous = dict(body.get("status") or {})
    try:
        spec = with_template_hash(ServiceSpec.parse(name, namespace, dict(body.get("spec") or {})))
    except SpecError as exc:
        if previous.get("message") != str(exc):
            emit("Warning", "InvalidSpec", str(exc))
        await kube.patch_service_status(namespace, name, invalid_spec_status(previous, generation, str(exc)))
        return None

    pods = await kube.list_pods(namespace, f"{LABEL_SERVICE}={name}")
    groups = split_groups(pods, spec.replicas)
    previous_groups = {g.get("index"): g for g in previous.get("groups") or []}
    moment = now_utc()
    decisions: list[GroupDecision] = []
    for index, group in groups.items():
        # Roll one group at a time, in index order: a group is replaced only once every group
        # before it serves again, so at most one group is ever down for a spec change. "Serves"
        # means its leader pod is Ready, so the Service routes to it: a group whose gate opened
        # this very moment is not routed yet, and replacing the next one then would leave a
        # two-group service without an endpoint.
        may_roll = all(d.phase == "Ready" and leader_routed(groups[d.index]) for d in decisions)
        decision = decide_group(
            spec, group, previous_groups.get(index, {}), generation, moment, may_roll, settings.backoff_base_s
        )
        decisions.append(decision)

    # The objects after the decisions: a group being replaced has its workers held at none. A hold
    # that status already records goes in now; a new one (a restart or roll decided just now) only
    # once status records it, with the deletes: its scale-down deletes pods too.
    held = frozenset(d.index for d in decisions if d.hold_workers)
    recorded = frozenset(i for i in held if previous_groups.get(i, {}).get("replacingPodUIDs"))
    try:
        for obj in desired_objects(spec, uid, recorded):
            action = await kube.apply(obj)
            if action != "unchanged":
                emit("Normal", action.capitalize(), f"{obj['kind']} {obj['metadata']['name']} {action}")
    except ApiException as exc:
        # Say which object the API server refused and why, then let the caller retry with backoff.
        message = f"{obj['kind']} {obj['metadata']['name']}: {api_error_message(exc)}"
        if previous.get("message") != message:
            emit("Warning", "ApplyFailed", message)
        await kube.patch_service_status(namespace, name, api_error_status(previous, generation, message))
        raise
    await _remove_stale_workers(kube, spec, emit)

    # The readiness gates first: the status must not say Ready before the Service routes to the
    # group, and a gate that shuts must shut at once.
    for decision, group in zip(decisions, groups.values()):
        if group.leader is not None and not decision.delete_pods:
            await _label_leader(kube, group.leader, decision.index)
            await _set_gate(kube, group.leader, decision.gate, decision.message, moment)

    # Record decisions (restart counts above all) before deleting pods: an operator that dies
    # between the two must not forget a restart it made.
    status = service_status(spec, previous, generation, decisions, moment)
    if _status_changed(previous, status):
        if status["phase"] != previous.get("phase"):
            emit(
                "Normal" if status["phase"] in ("Ready", "Starting") else "Warning",
                f"Phase{status['phase']}",
                status["message"],
            )
        if (
            _condition_reason(status, "Progressing") == DEADLINE
            and _condition_reason(previous, "Progressing") != DEADLINE
        ):
            emit("Warning", DEADLINE, _condition_message(status, "Progressing"))
        await kube.patch_service_status(namespace, name, status)

    for decision in decisions:
        if decision.event is not None:
            emit(*decision.event)
        if decision.index in held - recorded and spec.nodes > 1:
            await kube.apply(worker_statefulset(spec, uid, decision.index, held=True))
        for pod_name in decision.delete_pods:
            await kube.delete_pod(namespace, pod_name)
    await _apply_disruption_budgets(kube, spec, uid, decisions)
    return next_due_s(spec, decisions, moment, settings.backoff_base_s)


async def _label_leader(kube: Kube, leader: Obj, group: int) -> None:
    """Give a leader pod its group label: the leaders' shared template cannot, and the group's
    PodDisruptionBudget selects its pods by it."""
    if (leader["metadata"].get("labels") or {}).get(LABEL_GROUP) != str(group):
        await kube.label_pod(leader["metadata"]["namespace"], leader["metadata"]["name"], {LABEL_GROUP: str(group)})


async def _apply_disruption_budgets(kube: Kube, spec: ServiceSpec, uid: str, decisions: list[GroupDecision]) -> None:
    wanted = {}
    if spec.disruption_budget:
        wanted = {
            disruption_budget_name(spec.name, d.index): group_disruption_budget(spec, uid, d.index, d.phase == "Ready")
            for d in decisions
        }
    for budget in wanted.values():
        await kube.apply(budget)
    for existing in await kube.list_disruption_budgets(spec.namespace, f"{LABEL_SERVICE}={spec.name}"):
        if existing["metadata"]["name"] not in wanted:
            await kube.delete_disruption_budget(spec.namespace, existing["metadata"]["name"])


def next_due_s(
    spec: ServiceSpec, decisions: list[GroupDecision], moment: datetime.datetime, backoff_base_s: float
) -> float | None:
    """Seconds until the first time-based decision falls due: no event may come to trigger it."""
    due: list[float] = []
    for d in decisions:
        if d.phase == "Restarting" and not d.delete_pods and d.last_restart_time:  # waiting out a backoff
            due.append(backoff_seconds(d.restarts + 1, backoff_base_s) - _age_s(d.last_restart_time, moment))
        if d.phase == "Ready" and d.restarts and d.ready_since:
            due.append(spec.restart_budget_reset_s - _age_s(d.ready_since, moment))
        if d.phase != "Ready" and d.roll_start_time:
            due.append(spec.progress_deadline_s - _age_s(d.roll_start_time, moment))
    return max(0.1, min(due)) if due else None


def api_error_message(exc: ApiException) -> str:
    """The API server's own message from a refused call (its Status body), or the HTTP reason."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or f"{exc.status} {exc.reason}")


def _condition_reason(status: Obj, kind: str) -> str | None:
    return next((c.get("reason") for c in status.get("conditions") or [] if c.get("type") == kind), None)


def _condition_message(status: Obj, kind: str) -> str:
    return next((c.get("message", "") for c in status.get("conditions") or [] if c.get("type") == kind), "")


async def _remove_stale_workers(kube: Kube, spec: ServiceSpec, emit: EventSink) -> None:
    workers = await kube.list_statefulsets(spec.namespace, f"{LABEL_SERVICE}={spec.name},{LABEL_ROLE}=worker")
    for sts in workers:
        group = int(sts["metadata"].get("labels", {}).get(LABEL_GROUP, "-1"))
        if spec.nodes == 1 or group >= spec.replicas:
            await kube.delete_statefulset(spec.namespace, sts["metadata"]["name"])
            emit("Normal", "Deleted", f"StatefulSet {sts['metadata']['name']} deleted (group {group} no longer wanted)")


async def _set_gate(kube: Kube, leader: Obj, ready: bool, message: str, moment: datetime.datetime) -> None:
    wanted = "True" if ready else "False"
    for cond in leader.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == GROUP_READY_GATE and cond.get("status") == wanted:
            return
    await kube.set_pod_condition(
        leader["metadata"]["namespace"],
        leader["metadata"]["name"],
        {
            "type": GROUP_READY_GATE,
            "status": wanted,
            "reason": "GroupReady" if ready else "GroupNotReady",
            "message": message,
            "lastTransitionTime": _timestamp(moment),
        },
    )


def _condition(
    previous: Obj, kind: str, status: bool, reason: str, message: str, generation: int, moment: datetime.datetime
) -> Obj:
    value = "True" if status else "False"
    old = next((c for c in previous.get("conditions") or [] if c.get("type") == kind), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value else _timestamp(moment)
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }


def service_status(
    spec: ServiceSpec, previous: Obj, generation: int, decisions: list[GroupDecision], moment: datetime.datetime
) -> Obj:
    ready = sum(d.phase == "Ready" for d in decisions)
    failed = [d for d in decisions if d.phase == "Failed"]
    total = spec.replicas
    if total == 0:
        phase, message = "Pending", "scaled to zero groups"
    elif ready == total:
        phase, message = "Ready", f"all {total} group(s) ready"
    elif failed and ready == 0:
        phase, message = "Failed", "; ".join(d.message for d in failed)
    elif ready > 0 or failed:
        phase, message = "Degraded", f"{ready}/{total} group(s) ready" + (f"; {failed[0].message}" if failed else "")
    else:
        phase, message = (
            "Starting",
            f"0/{total} group(s) ready; " + "; ".join(f"group {d.index}: {d.message}" for d in decisions),
        )
    progressing = phase != "Ready" and not failed
    progress_reason = "Reconciling" if progressing else "Stable"
    progress_message = message
    stuck = [d for d in decisions if d.roll_start_time and _age_s(d.roll_start_time, moment) > spec.progress_deadline_s]
    if stuck:
        progressing, progress_reason = False, DEADLINE
        progress_message = (
            f"group {stuck[0].index} is not ready {spec.progress_deadline_s}s after it was rolled to the new spec: "
            f"{stuck[0].message}"
        )
    unschedulable = [d for d in decisions if d.unschedulable]
    degraded = phase in ("Degraded", "Failed") or bool(unschedulable)
    if failed:
        degraded_reason, degraded_message = "GroupFailed", message
    elif unschedulable:
        degraded_reason = "Unschedulable"
        degraded_message = "; ".join(f"group {d.index}: {d.unschedulable}" for d in unschedulable)
    else:
        degraded_reason = "GroupsNotReady" if phase == "Degraded" else "AsExpected"
        degraded_message = message
    conditions = [
        _condition(
            previous,
            "Ready",
            phase == "Ready",
            "AllGroupsReady" if phase == "Ready" else "GroupsNotReady",
            message,
            generation,
            moment,
        ),
        _condition(previous, "Progressing", progressing, progress_reason, progress_message, generation, moment),
        _condition(previous, "Degraded", degraded, degraded_reason, degraded_message, generation, moment),
    ]
    return {
        "phase": phase,
        "replicas": total,
        "readyReplicas": ready,
        "readyText": f"{ready}/{total}",
        "selector": f"{LABEL_SERVICE}={spec.name},{LABEL_ROLE}=leader",
        "observedGeneration": generation,
        "endpoint": endpoint(spec) if ready else "",
        "message": message,
        "specHash": spec.spec_hash,
        "groups": [d.status_entry() for d in decisions],
        "conditions": conditions,
    }


def _age_s(timestamp: str, moment: datetime.datetime) -> float:
    return (moment - datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds()


def api_error_status(previous: Obj, generation: int, message: str) -> Obj:
    """The last status, with Degraded naming the object the API server refused and its message."""
    moment = now_utc()
    kept = [c for c in previous.get("conditions") or [] if c.get("type") != "Degraded"]
    degraded = _condition(previous, "Degraded", True, "ApiError", message, generation, moment)
    return {"message": message, "conditions": [*kept, degraded]}


def invalid_spec_status(previous: Obj, generation: int, message: str) -> Obj:
    moment = now_utc()
    return {
        "phase": "Failed",
        "observedGeneration": generation,
        "message": message,
        "conditions": [
            _condition(previous, "Ready", False, "InvalidSpec", message, generation, moment),
            _condition(previous, "Progressing", False, "InvalidSpec", message, generation, moment),
            _condition(previous, "Degraded", True, "InvalidSpec", message, generation, moment),
        ],
    }


def _status_changed(previous: Obj, status: Obj) -> bool:
    def strip(s: Obj) -> Obj:
        return {k: v for k, v in s.items() if k != "conditions"} | {
            "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in s.get("conditions") or []]
        }

    return strip(previous) != strip(status)
