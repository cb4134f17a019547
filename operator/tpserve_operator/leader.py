"""Leader election on a coordination.k8s.io Lease, so several operator replicas are safe.

Only the holder of the Lease runs kopf and reconciles; the others wait, answering their liveness
probe, and take over once the holder stops renewing for `lease_s`. The holder renews every
`renew_s` from a thread; if it cannot renew before its own lease would expire (API server
unreachable, or someone else took the Lease), it exits at once: a replica that might have lost
the Lease must not act on the cluster, and its pod restarts as a follower.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _micro_time(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a Lease's times are MicroTime


def _parse(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class LeaseSettings:
    name: str
    namespace: str
    identity: str
    lease_s: int = 15
    renew_s: float = 5.0
    retry_s: float = 2.0

    @classmethod
    def from_env(cls) -> LeaseSettings | None:
        """LEADER_ELECTION=true with LEASE_NAME, POD_NAMESPACE and POD_NAME (the chart sets them)."""
        if os.environ.get("LEADER_ELECTION", "false").lower() != "true":
            return None
        return cls(
            name=os.environ.get("LEASE_NAME", "tpserve-operator"),
            namespace=os.environ["POD_NAMESPACE"],
            identity=os.environ.get("POD_NAME") or os.uname().nodename,
            lease_s=int(os.environ.get("LEASE_DURATION_S", "15")),
            renew_s=float(os.environ.get("LEASE_RENEW_S", "5")),
            retry_s=float(os.environ.get("LEASE_RETRY_S", "2")),
        )


class LeaderElector:
    def __init__(self, settings: LeaseSettings, api: client.CoordinationV1Api) -> None:
        self.settings = settings
        self.api: Any = api  # called with plain dicts, as the rest of the operator does

    def try_acquire(self) -> bool:
        """Take or renew the Lease if it is free, ours or expired; False while another holds it."""
        s = self.settings
        try:
            lease = self.api.read_namespaced_lease(s.name, s.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return self._create()
        body: dict[str, Any] = _json(lease)
        spec = body.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
        duration = int(spec.get("leaseDurationSeconds") or s.lease_s)
        expired = renewed is None or (_now() - renewed).total_seconds() > duration
        if holder and holder != s.identity and not expired:
            return False
        moment = _micro_time(_now())
        taking_over = holder != s.identity
        spec.update(
            holderIdentity=s.identity,
            leaseDurationSeconds=s.lease_s,
            renewTime=moment,
            **(
                {"acquireTime": moment, "leaseTransitions": int(spec.get("leaseTransitions") or 0) + 1}
                if taking_over
                else {}
            ),
        )
        body["spec"] = spec
        try:  # a replace carries resourceVersion: if another replica wrote in between, this is a 409
            self.api.replace_namespaced_lease(s.name, s.namespace, body, _preload_content=False)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        if taking_over:
            log.info("leader election: %s took the lease %s/%s from %s", s.identity, s.namespace, s.name, holder)
        return True

    def _create(self) -> bool:
        s = self.settings
        moment = _micro_time(_now())
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": s.name, "namespace": s.namespace},
            "spec": {
                "holderIdentity": s.identity,
                "leaseDurationSeconds": s.lease_s,
                "acquireTime": moment,
                "renewTime": moment,
                "leaseTransitions": 0,
            },
        }
        try:
            self.api.create_namespaced_lease(s.namespace, lease, _preload_content=False)
        except ApiException as exc:
            if exc.status == 409:
                return False  # another replica created it first
            raise
        log.info("leader election: %s created and holds the lease %s/%s", s.identity, s.namespace, s.name)
        return True

    def wait_until_leader(self) -> None:
        log.info("leader election: %s waiting for the lease %s", self.settings.identity, self.settings.name)
        while True:
            try:
                if self.try_acquire():
                    return
            except Exception:  # the API server is unreachable for now: keep waiting
                log.warning("leader election: reading the lease failed", exc_info=True)
            time.sleep(self.settings.retry_s)

    def keep_renewing(self, on_lost: Callable[[str], None]) -> threading.Event:
        """Renew from a daemon thread until the returned event is set; call on_lost (which must
        stop the process) if the lease is lost first."""
        stop = threading.Event()

        def renew() -> None:
            last_renewed = time.monotonic()
            while not stop.wait(self.settings.renew_s):
                try:
                    if self.try_acquire():
                        last_renewed = time.monotonic()
                        continue
                    on_lost("another replica holds the lease")
                    return
                except Exception:
                    log.warning("leader election: renewing the lease failed", exc_info=True)
                if time.monotonic() - last_renewed > self.settings.lease_s - self.settings.renew_s:
                    on_lost("the lease could not be renewed before it expires")
                    return

        threading.Thread(target=renew, name="lease-renewal", daemon=True).start()
        return stop

    def release(self) -> None:
        """Give the lease up on a clean shutdown, so a follower takes over at once, not after it expires."""
        s = self.settings
        try:
            body = _json(self.api.read_namespaced_lease(s.name, s.namespace, _preload_content=False))
            spec = body.get("spec") or {}
            if spec.get("holderIdentity") != s.identity:
                return
            spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=_micro_time(_now()))
            self.api.replace_namespaced_lease(s.name, s.namespace, body, _preload_content=False)
            log.info("leader election: %s released the lease %s/%s", s.identity, s.namespace, s.name)
        except Exception:  # it expires by itself anyway
            log.warning("leader election: releasing the lease failed", exc_info=True)


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


class FollowerHealth:
    """Answers the liveness probe (200 on /healthz) while this replica waits for the lease."""

    def __init__(self, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if self.path == "/healthz" else 404)
                self.end_headers()
                self.wfile.write(b"waiting for the lease\n")

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="follower-health", daemon=True)

    def __enter__(self) -> FollowerHealth:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()  # the port is kopf's once this replica leads
