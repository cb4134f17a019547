"""Group readiness: is every rank of the group ready, heartbeating, and (on node 0) warmed up?"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..distributed.status_board import GroupWatcher, Phase, RankStatus
from ..engine.launcher import LocalRanks

DRAINING = "draining: the server is shutting down"


@dataclass(frozen=True)
class HealthReport:
    ready: bool
    failed: str | None  # why the group can no longer serve; the process exits soon after
    missing: list[str] = field(default_factory=list)  # what readiness still waits for
    ranks: list[RankStatus] = field(default_factory=list)
    draining: bool = False  # SIGTERM: finishing in-flight requests, taking no new ones

    def body(self) -> dict[str, Any]:
        status = "ok" if self.ready else ("failed" if self.failed else ("draining" if self.draining else "starting"))
        return {
            "status": status,
            "failed": self.failed,
            "missing": self.missing,
            "ranks": [{"rank": r.rank, "phase": r.phase, "alive": r.alive} for r in self.ranks],
        }


class GroupMonitor:
    """Combines this node's processes with the status board; sticky once the group has failed."""

    def __init__(self, ranks: LocalRanks, world_size: int, watched_ranks: list[int]) -> None:
        self.local = ranks
        self.world_size = world_size
        self.watched = watched_ranks
        self.watcher: GroupWatcher | None = None
        self.engine_ready = False  # node 0: rank 0 reported EngineReady
        self.warmed_up = False  # node 0: a warm-up generation ran across all ranks
        self.needs_engine = ranks.config.node_rank == 0
        self._failed: str | None = None
        self.draining = False
        # The watch loop is the only caller of check(); /health serves its latest result, so the
        # store client and the heartbeat table are never used from two threads at once.
        self.latest = HealthReport(ready=False, failed=None, missing=["first health check"])

    def start_draining(self) -> None:
        """Unready from now on (the Service stops routing here), without waiting for the next check."""
        self.draining = True
        latest = self.latest
        self.latest = HealthReport(False, latest.failed, [*latest.missing, DRAINING], latest.ranks, draining=True)

    def fail(self, reason: str) -> None:
        self._failed = self._failed or reason

    @property
    def failed(self) -> str | None:
        return self._failed

    def check(self) -> HealthReport:
        """Blocking (reads the store): call it from a worker thread."""
        dead = self.local.dead_ranks()
        if dead:
            self.fail(self.local.failure or f"rank {dead[0]} exited")
        if self.local.failure:
            self.fail(self.local.failure)
        statuses: list[RankStatus] = []
        if self.watcher is None:
            missing = ["connection to node 0's rendezvous"]
        else:
            try:
                statuses = self.watcher.snapshot()
            except Exception as exc:  # node 0's store went away
                self.fail(f"lost node 0's rendezvous store ({type(exc).__name__})")
            missing = self._judge(statuses)
        if self.draining:
            missing.append(DRAINING)
        if self.needs_engine and not self.engine_ready:
            missing.append("engine: waiting for all ranks")
        elif self.needs_engine and not self.warmed_up:
            missing.append("warm-up generation")
        self.latest = HealthReport(
            ready=not missing and self._failed is None,
            failed=self._failed,
            missing=missing,
            ranks=statuses,
            draining=self.draining,
        )
        return self.latest

    def _judge(self, statuses: list[RankStatus]) -> list[str]:
        missing = []
        for status in statuses:
            if status.phase == Phase.FAILED.value:
                self.fail(f"rank {status.rank} failed: {status.message}")
            if not status.alive and status.phase != "missing":
                self.fail(f"rank {status.rank} stopped heartbeating")
            if status.rank in self.watched and status.phase != Phase.READY.value:
                missing.append(f"rank {status.rank}: {status.phase}")
        return missing

    @property
    def ranks_ready(self) -> int:
        """Ranks that are ready and heartbeating, as of the latest check."""
        if self._failed is not None:
            return 0
        return sum(r.phase == Phase.READY.value and r.alive for r in self.latest.ranks)
