"""kopf handlers: they only fetch, diff, apply and report; decisions live in pure modules.

Reconciliation is level-triggered: on create/update/resume, on every event of a managed pod
(watched with a server-side label selector), when a time-based decision falls due, and on a long
operator-wide resync period, the same `reconcile` runs under a per-resource lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from typing import Any

import kopf

from . import metrics
from .kube import FIELD_MANAGER, Kube
from .objects import API_GROUP, LABEL_SERVICE, PLURAL
from .reconcile import ReconcileSettings, reconcile

VERSION = "v1alpha1"
MANAGED_BY = "app.kubernetes.io/managed-by"  # its value on our objects is the field manager's name
# A safety net only: reconciles are triggered by events and by timers for time-based decisions.
RECONCILE_INTERVAL_S = float(os.environ.get("TPSERVE_RECONCILE_INTERVAL_S", "120"))
RETRY_BACKOFF_S = 5.0  # after an API error; the timer re-reconciles anyway
SETTINGS = ReconcileSettings(backoff_base_s=float(os.environ.get("TPSERVE_RESTART_BACKOFF_BASE_S", "10")))

_locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
_queued: set[tuple[str, str]] = set()  # pods change in bursts: coalesce their reconciles
_wakeups: dict[tuple[str, str], asyncio.TimerHandle] = {}
_running: set[asyncio.Task[None]] = set()
_kube: Kube | None = None


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube()
    return _kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _kube
    _kube = None  # a fresh client and fresh locks for this run's event loop
    _locks.clear()
    _queued.clear()
    _wakeups.clear()
    settings.peering.standalone = True
    # Keep kopf's own bookkeeping in annotations: the status is ours and schema-checked.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="tpserve.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="tpserve.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own decisions are posted explicitly
    settings.watching.server_timeout = 120
    # Only our pods travel from the API server: the watch carries the label selector.
    settings.watching.label_selectors["v1", "pods"] = f"{MANAGED_BY}={FIELD_MANAGER}"
    settings.networking.request_timeout = 30


async def _post_events(service: Any, events: list[tuple[str, str, str]]) -> None:
    """Post what a reconcile decided, also when it failed half-way (its ApplyFailed above all).

    Posted through our own client rather than kopf.event: the resync loop runs outside kopf's
    handler context, where kopf.event cannot post."""
    for kind, reason, message in events:
        try:
            await kube().post_event(service, kind, reason, message)
        except Exception:  # an Event is informative: losing one must not stop reconciling
            logging.getLogger(__name__).warning("posting event %s failed", reason, exc_info=True)


async def _reconcile(body: Any) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    key = (namespace, name)
    if key in _queued:
        return  # a reconcile that has not read the cluster yet is already waiting: it will see this change
    _queued.add(key)
    try:
        await _locks[key].acquire()
    finally:
        _queued.discard(key)
    try:
        await _reconcile_measured(key)
    finally:
        _locks[key].release()


async def _reconcile_measured(key: tuple[str, str]) -> None:
    """One reconcile, counted by result and timed (operator metrics)."""
    started = time.monotonic()
    try:
        await _reconcile_fresh(key)
    except Exception as exc:
        metrics.RECONCILES.labels("error").inc()
        metrics.RECONCILE_ERRORS.labels(metrics.error_reason(exc)).inc()
        raise
    else:
        metrics.RECONCILES.labels("ok").inc()
    finally:
        metrics.RECONCILE_DURATION.observe(time.monotonic() - started)


async def _reconcile_fresh(key: tuple[str, str]) -> None:
    # Decide from the freshest copy: the body kopf hands over may predate our last status write,
    # and a decision from stale status would forget restarts it already counted.
    namespace, name = key
    fresh = await kube().read_service(namespace, name)
    if fresh is None or fresh["metadata"].get("deletionTimestamp"):
        metrics.SERVICE_PHASES.phases.pop(key, None)
        return
    metrics.SERVICE_PHASES.phases[key] = (fresh.get("status") or {}).get("phase", "")
    events: list[tuple[str, str, str]] = []
    try:
        due_s = await reconcile(kube(), fresh, lambda *event: events.append(event), SETTINGS)
    finally:
        restarts = sum(reason == "GroupRestart" for _, reason, _ in events)
        if restarts:
            metrics.GROUP_RESTARTS.labels(namespace, name).inc(restarts)
        await _post_events(fresh, events)
    _wake_later(key, due_s)


def _wake_later(key: tuple[str, str], due_s: float | None) -> None:
    """Reconcile `key` again when its next time-based decision falls due (one timer per service)."""
    pending = _wakeups.pop(key, None)
    if pending is not None:
        pending.cancel()
    if due_s is None:
        return
    namespace, name = key
    body = {"metadata": {"namespace": namespace, "name": name}}
    _wakeups[key] = asyncio.get_running_loop().call_later(due_s + 0.05, _start_reconcile, body)


def _start_reconcile(body: Any) -> None:
    task = asyncio.ensure_future(_reconcile_logged(body))
    _running.add(task)  # the loop keeps only weak references to tasks
    task.add_done_callback(_running.discard)


async def _reconcile_logged(body: Any) -> None:
    try:
        await _reconcile(body)
    except Exception:  # the next event or resync retries
        logging.getLogger(__name__).exception("reconciling %s failed", body["metadata"]["name"])


@kopf.on.resume(API_GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF_S)
@kopf.on.create(API_GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF_S)
@kopf.on.update(API_GROUP, VERSION, PLURAL, field="spec", backoff=RETRY_BACKOFF_S)
async def on_spec(body: kopf.Body, **_: Any) -> None:
    await _reconcile(body)


def watch_namespaces() -> list[str]:
    """WATCH_NAMESPACES as a list; empty means every namespace."""
    return [ns.strip() for ns in os.environ.get("WATCH_NAMESPACES", "").split(",") if ns.strip()]


async def _resync_forever(namespaces: list[str]) -> None:
    """Re-judge every service on a long period, so that anything missed (an event lost with a
    dropped watch) heals; time-based decisions have their own timers.

    One operator-wide loop rather than a kopf timer per resource: kopf guards per-resource
    timers with a finalizer, and a finalizer would make deletion depend on the operator.
    """
    while True:
        await asyncio.sleep(RECONCILE_INTERVAL_S)
        try:
            services = await kube().list_services(namespaces)
        except Exception:  # the API is unreachable for now: try again next period
            logging.getLogger(__name__).warning("listing TPInferenceServices failed", exc_info=True)
            continue
        present = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in services}
        for gone in set(metrics.SERVICE_PHASES.phases) - present:  # deleted while we did not look
            metrics.SERVICE_PHASES.phases.pop(gone, None)
        for service in services:
            await _reconcile_logged(service)  # one broken resource must not stop the others


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    memo["resync"] = asyncio.create_task(_resync_forever(watch_namespaces()))


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync")
    if task is not None:
        task.cancel()


@kopf.on.event("", "v1", "pods", labels={MANAGED_BY: FIELD_MANAGER})
async def on_pod_event(body: kopf.Body, **_: Any) -> None:
    """A managed pod changed: re-judge its group now rather than at the next timer tick."""
    name = body.get("metadata", {}).get("labels", {}).get(LABEL_SERVICE)
    namespace = body.get("metadata", {}).get("namespace")
    if not name or not namespace:
        return
    await _reconcile({"metadata": {"namespace": namespace, "name": name}})
